#!/usr/bin/env bash
# The whole test suite: makes sure every broker the tests need is up (installing and
# starting it where it is missing), then runs every test of every crate with every backend
# feature on. A missing broker fails the run; nothing is skipped. The brokers are set up
# while the tests compile.
set -euo pipefail
cd "$(dirname "$0")/.."

pids=()
for broker in rabbitmq kafka sns-sqs; do
    scripts/$broker.sh &
    pids+=("$!")
done
compiled=0
cargo test --workspace --all-features --no-run || compiled=$?
for pid in "${pids[@]}"; do
    wait "$pid"
done
[ "$compiled" -eq 0 ] || exit "$compiled"

# The SNS+SQS tests talk to the moto emulator only; it takes any credentials, and they
# reach the backend through the standard AWS provider chain, as in production.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
# Most tests wait on a broker, not on the CPU: more of them run at once than there are cores.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-8}
cargo test --workspace --all-features "$@"
