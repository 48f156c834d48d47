#!/usr/bin/env bash
# The whole test suite: makes sure every broker the tests need is up (installing and
# starting it where it is missing), then runs every test of every crate with every backend
# feature on. A missing broker fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/rabbitmq.sh
scripts/kafka.sh
scripts/sns-sqs.sh
# The SNS+SQS tests talk to the moto emulator only; it takes any credentials, and they
# reach the backend through the standard AWS provider chain, as in production.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
cargo test --workspace --all-features "$@"
