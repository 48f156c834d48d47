#!/usr/bin/env bash
# The whole test suite: makes sure every broker and database the tests need is up
# (installing and starting it where it is missing), then runs every test of every crate with
# every feature on: cargo-nextest for unit and integration tests (each test a process of its
# own, many at once: .config/nextest.toml), cargo test for doc tests. A missing broker or
# database fails the run; nothing is skipped. They are set up while the tests compile. Arguments are
# test-name filters, passed to both.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "scripts/test.sh: installing cargo-nextest (a few minutes, once)" >&2
    cargo install cargo-nextest --locked
fi

pids=()
for broker in rabbitmq kafka sns-sqs postgres redis asyncapi; do
    scripts/$broker.sh &
    pids+=("$!")
done
compiled=0
cargo nextest run --workspace --all-features --no-run || compiled=$?
for pid in "${pids[@]}"; do
    wait "$pid"
done
[ "$compiled" -eq 0 ] || exit "$compiled"

# The SNS+SQS tests talk to the moto emulator only; it takes any credentials, and they
# reach the backend through the standard AWS provider chain, as in production.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
cargo nextest run --workspace --all-features --no-fail-fast "$@"
cargo test --workspace --all-features --doc "$@"
# The example that needs PostgreSQL: the order whose event is delivered twice reserves once.
if [ "$#" -eq 0 ]; then
    out=$(cargo run -q --all-features --example monolith_outbox_inbox)
    echo "$out"
    grep -qx "stock book: 3 left" <<<"$out"
    # The runtime's metrics in the Prometheus text format, labelled with their binding.
    out=$(cargo run -q --all-features --example prometheus_metrics)
    echo "$out"
    grep -qx 'event_binder_handled_total{destination="orders",group="billing",handler="prometheus_metrics::bill"} 3' <<<"$out"
fi
