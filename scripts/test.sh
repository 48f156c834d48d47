#!/usr/bin/env bash
# The whole test suite: makes sure every broker the tests need is up (installing and
# starting it where it is missing), then runs every test of every crate with every backend
# feature on. A missing broker fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/rabbitmq.sh
scripts/kafka.sh
cargo test --workspace --all-features "$@"
