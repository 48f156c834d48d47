#!/usr/bin/env bash
# Makes sure Redis answers on 127.0.0.1:6379 (no password), as the Redis store's tests
# expect. Idempotent and fast when it already runs; otherwise installs Debian's
# redis-server if needed, starts it bound to loopback and persisting nothing (the tests
# need no durability; stores/redis/tests/restart.rs starts it again with the same command)
# and waits until it answers. Exits non-zero, saying why, when it cannot get Redis up.
set -euo pipefail

HOST=127.0.0.1
PORT=6379
DATA_DIR=/var/lib/redis
LOG_DIR=/var/log/redis
LOG=$LOG_DIR/ci.log
STARTUP_TIMEOUT=${REDIS_STARTUP_TIMEOUT:-30}

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# Whether Redis itself answers a PING on $HOST:$PORT (not just something on the port).
pongs() {
    [ "$(redis-cli -h "$HOST" -p "$PORT" ping 2>/dev/null)" = PONG ]
}

if answers && command -v redis-cli >/dev/null 2>&1 && pongs; then
    exit 0
fi

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 ||
        fail "Redis is not installed and there is no apt-get to install it; install Redis and start it on $HOST:$PORT"
    echo "scripts/redis.sh: installing redis-server" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        fail "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server ||
        fail "apt-get install redis-server failed"
fi

# Debian's package may have started the service already; if not, start it.
if ! answers; then
    echo "scripts/redis.sh: starting Redis on $HOST:$PORT" >&2
    as_root mkdir -p "$DATA_DIR" "$LOG_DIR"
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$PORT" --save "" \
        --appendonly no --dir "$DATA_DIR" --logfile "$LOG" ||
        fail "redis-server failed to start; see $LOG"
fi

deadline=$((SECONDS + STARTUP_TIMEOUT))
until pongs; do
    [ "$SECONDS" -lt "$deadline" ] ||
        fail "Redis did not answer a PING on $HOST:$PORT within ${STARTUP_TIMEOUT}s; see $LOG"
    sleep 0.2
done
