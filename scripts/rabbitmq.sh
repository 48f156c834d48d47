#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672 (guest/guest), as the RabbitMQ tests and
# benchmarks expect. Idempotent and fast when it already runs; otherwise installs Debian's
# rabbitmq-server if needed, starts it bound to loopback and waits for it. Exits non-zero,
# saying why, when it cannot get RabbitMQ up.
set -euo pipefail

HOST=127.0.0.1
PORT=5672
STARTUP_TIMEOUT=${RABBITMQ_STARTUP_TIMEOUT:-120}

fail() {
    echo "scripts/rabbitmq.sh: $*" >&2
    exit 1
}

answers() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        fail "need root (or sudo) to run: $*"
    fi
}

if answers; then
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 ||
        fail "RabbitMQ is not installed and there is no apt-get to install it; install RabbitMQ and start it on $HOST:$PORT"
    echo "scripts/rabbitmq.sh: installing rabbitmq-server" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        fail "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server ||
        fail "apt-get install rabbitmq-server failed"
fi

node_runs() {
    as_root rabbitmqctl -q ping >/dev/null 2>&1
}

# Debian's package may have started the service already; if not, start the node bound to
# loopback (AMQP, epmd and Erlang distribution alike).
if ! answers; then
    echo "scripts/rabbitmq.sh: starting RabbitMQ on $HOST:$PORT" >&2
    if node_runs; then
        # The node runs but the RabbitMQ application does not (rabbitmqctl stop_app).
        as_root rabbitmqctl -q start_app || fail "rabbitmqctl start_app failed"
    else
        as_root env \
            RABBITMQ_NODE_IP_ADDRESS=$HOST \
            ERL_EPMD_ADDRESS=$HOST \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
            rabbitmq-server -detached || fail "rabbitmq-server -detached failed"
    fi
fi

deadline=$((SECONDS + STARTUP_TIMEOUT))
until node_runs; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the RabbitMQ node did not come up within ${STARTUP_TIMEOUT}s; see /var/log/rabbitmq/"
    sleep 0.5
done
if ! as_root rabbitmqctl -q --timeout "$STARTUP_TIMEOUT" await_startup; then
    fail "RabbitMQ did not start within ${STARTUP_TIMEOUT}s; see /var/log/rabbitmq/"
fi
until answers; do
    [ "$SECONDS" -lt "$deadline" ] || fail "RabbitMQ started but nothing answers on $HOST:$PORT"
    sleep 0.2
done
