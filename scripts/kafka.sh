#!/usr/bin/env bash
# Makes sure a Kafka-compatible broker answers on 127.0.0.1:9092, as the Kafka tests and
# benchmarks expect. The broker is tansu 0.6.0 (a Kafka-compatible broker written in Rust,
# from crates.io) with in-memory storage: no Apache Kafka can be fetched on the project's
# machines. Idempotent and fast when the broker already answers; otherwise builds tansu
# into a cache directory that survives between runs (only when it is missing there; about
# 8 minutes cold on 2 cores), starts it detached and waits for it. Exits non-zero, saying
# why, when it cannot get the broker up.
set -euo pipefail

HOST=127.0.0.1
PORT=9092
TANSU_VERSION=0.6.0
CACHE=${EVENT_BINDER_CACHE:-$HOME/.cache/event-binder}/tansu-$TANSU_VERSION
STARTUP_TIMEOUT=${KAFKA_STARTUP_TIMEOUT:-30}

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

if answers; then
    exit 0
fi

if [ ! -x "$CACHE/bin/tansu" ]; then
    command -v cargo >/dev/null 2>&1 || fail "cargo is needed to build tansu $TANSU_VERSION"
    echo "scripts/kafka.sh: building tansu $TANSU_VERSION into $CACHE (several minutes)" >&2
    mkdir -p "$CACHE"
    cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked --root "$CACHE" ||
        fail "cargo install tansu $TANSU_VERSION failed"
    [ -x "$CACHE/bin/tansu" ] || fail "cargo install finished but $CACHE/bin/tansu is missing"
fi

echo "scripts/kafka.sh: starting tansu on $HOST:$PORT (log: $CACHE/tansu.log)" >&2
# The advertised URL is set explicitly: tansu's default is localhost:9092 whatever the
# listener says.
setsid nohup "$CACHE/bin/tansu" broker \
    --listener-url "tcp://$HOST:$PORT" \
    --advertised-listener-url "tcp://$HOST:$PORT" \
    --storage-engine memory://tansu/ \
    >"$CACHE/tansu.log" 2>&1 </dev/null &
pid=$!

wait_until_started "$pid" tansu "$CACHE/tansu.log"
