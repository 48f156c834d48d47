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

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

if answers; then
    exit 0
fi

if [ ! -x "$VENV/bin/moto_server" ]; then
    pip_install_into "$VENV" "moto[server]==$MOTO_VERSION"
fi

echo "scripts/sns-sqs.sh: starting moto on $HOST:$PORT (log: $VENV/moto.log)" >&2
setsid nohup "$VENV/bin/moto_server" -H "$HOST" -p "$PORT" >"$VENV/moto.log" 2>&1 </dev/null &
pid=$!

wait_until_started "$pid" moto "$VENV/moto.log"
