#!/usr/bin/env bash
# The fuzz targets of fuzz/ (issue #15): every decoder of foreign input (SQS message
# attributes, AMQP properties and header tables, Kafka record headers, channel URLs), each run
# for SECONDS (default 30) from its committed corpus, fuzz/corpus/<target>/. Fails on the
# first crash (a panic, a timeout, running out of memory); libFuzzer then prints the input and
# cargo fuzz saves it under fuzz/artifacts/<target>/.
#
# New corpus entries go to a temporary directory, so the committed corpus stays as it is;
# with --keep-corpus, those that add coverage are merged into it (libFuzzer's set-cover
# merge: the fewest inputs that keep every feature; check the count before committing).
# FUZZ_ARGS adds libFuzzer options (e.g. FUZZ_ARGS="-jobs=1 -workers=1").
#
# --build-only builds the targets and runs none (CI builds them while the tests run).
#
# Usage: scripts/fuzz.sh [SECONDS] [--keep-corpus] [--build-only] [TARGET ...]
#        (default: 30 seconds, every target)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
keep=false
build_only=false
targets=()
for arg in "$@"; do
    case $arg in
    --keep-corpus) keep=true ;;
    --build-only) build_only=true ;;
    -*) echo "scripts/fuzz.sh: unknown option $arg" >&2; exit 2 ;;
    *[!0-9]*) targets+=("$arg") ;;
    *) seconds=$arg ;;
    esac
done

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# No sanitizer: the targets are safe Rust, where AddressSanitizer finds nothing a panic does
# not, at the cost of a slower build and run; and without one, cargo fuzz passes rustc only
# stable flags, so the stable toolchain builds the targets (AddressSanitizer needs nightly,
# or RUSTC_BOOTSTRAP=1, which also makes cargo rebuild every crate behind a proc macro). The
# coverage instrumentation that guides libFuzzer stays. --dev: fuzz/Cargo.toml's dev
# profile, optimised where inputs are decoded only (a cold build in half the time), with
# overflow checks and debug assertions on, as in tests.
flags=(--sanitizer none --dev)

cd fuzz
cargo fuzz build "${flags[@]}"
$build_only && exit 0
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

for target in "${targets[@]}"; do
    new=$(mktemp -d)
    trap 'rm -rf "$new"' EXIT
    echo "== $target: ${seconds}s"
    # libFuzzer writes new entries to the first directory and reads all of them.
    # -timeout: an input taking 10 s is a hang worth a failure.
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
    cargo fuzz run "${flags[@]}" "$target" "$new" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 ${FUZZ_ARGS:-}
    if $keep; then
        cargo fuzz run "${flags[@]}" "$target" "corpus/$target" "$new" -- -set_cover_merge=1
    fi
    rm -rf "$new"
done
