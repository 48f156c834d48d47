#!/usr/bin/env bash
# What the code costs per message on the in-memory backend (shared/BENCHMARKS.md, part 2):
# instructions counted by callgrind and allocations counted by the bench's allocator, each
# the difference between runs of 1,000 and 2,000 messages, divided by 1,000.
# Built with the `cost` profile (root Cargo.toml: `lto = "fat"`, `codegen-units = 1`), the build
# issue #11's targets are stated for; PROFILE=bench measures the plain bench build instead.
# FEATURES=otel (say) measures a build with those cargo features on as well.
# Usage: scripts/cost.sh [scenario ...]   (default: every scenario of benches/memory_cost.rs)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "scripts/cost.sh: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

profile=${PROFILE:-cost}
# Cargo puts the bench profile's output in target/release and any other profile's in a
# directory named after it; checking the directory keeps a stale binary of another profile
# from being measured.
case $profile in bench | release) dir=release ;; *) dir=$profile ;; esac

bench=$(cargo bench --profile "$profile" --bench memory_cost ${FEATURES:+--features "$FEATURES"} --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*memory_cost[^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bench" ] || { echo "scripts/cost.sh: building benches/memory_cost.rs failed; run cargo bench --profile $profile --bench memory_cost" >&2; exit 1; }
case $bench in
*/"$dir"/deps/*) ;;
*) echo "scripts/cost.sh: cargo reported $bench, not a $profile-profile binary" >&2; exit 1 ;;
esac

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(raw-json backend-json backend-raw runtime-json runtime-raw runtime-layers runtime-batch publish)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

instructions() {
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
        --callgrind-out-file="$work/out" "$bench" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

echo "profile: $profile${FEATURES:+, features: $FEATURES} ($bench)"
"$bench"
printf '\n%-14s %s\n' scenario 'instructions per message'
for scenario in "${scenarios[@]}"; do
    small=$(instructions "$scenario" 1000)
    large=$(instructions "$scenario" 2000)
    printf '%-14s %d\n' "$scenario" $(((large - small) / 1000))
done
