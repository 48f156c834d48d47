#!/usr/bin/env bash
# Makes sure an SNS+SQS emulator answers on 127.0.0.1:4566, as the SNS+SQS tests and
# benchmarks expect. The emulator is moto (PyPI `moto[server]` 5.x) in a virtualenv kept
# in a cache directory that survives between runs (installed only when missing there; well
# under a minute). Idempotent and fast when the emulator already answers; otherwise starts
# it detached and waits for it. Exits non-zero, saying why, when it cannot get it up.
set -euo pipefail

HOST=127.0.0.1
PORT=4566
MOTO_VERSION=5.2.5
VENV=${EVENT_BINDER_CACHE:-$HOME/.cache/event-binder}/moto-$MOTO_VERSION
STARTUP_TIMEOUT=${SNS_SQS_STARTUP_TIMEOUT:-30}

fail() {
    echo "scripts/sns-sqs.sh: $*" >&2
    exit 1
}

answers() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

if answers; then
    exit 0
fi

if [ ! -x "$VENV/bin/moto_server" ]; then
    command -v python3 >/dev/null 2>&1 || fail "python3 is needed to install moto $MOTO_VERSION"
    echo "scripts/sns-sqs.sh: installing moto $MOTO_VERSION into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv $VENV failed"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" ||
        fail "pip install moto[server]==$MOTO_VERSION failed"
fi

echo "scripts/sns-sqs.sh: starting moto on $HOST:$PORT (log: $VENV/moto.log)" >&2
setsid nohup "$VENV/bin/moto_server" -H "$HOST" -p "$PORT" >"$VENV/moto.log" 2>&1 </dev/null &
pid=$!

deadline=$((SECONDS + STARTUP_TIMEOUT))
until answers; do
    kill -0 "$pid" 2>/dev/null || fail "moto exited while starting; see $VENV/moto.log"
    [ "$SECONDS" -lt "$deadline" ] || fail "moto did not answer on $HOST:$PORT within ${STARTUP_TIMEOUT}s; see $VENV/moto.log"
    sleep 0.2
done
