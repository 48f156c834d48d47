#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672 (guest/guest) and, with TLS, on
# 127.0.0.1:5671, as the RabbitMQ tests and benchmarks expect. Idempotent and fast when it
# already runs; otherwise installs Debian's rabbitmq-server if needed, gives it a TLS
# listener whose certificate a test CA signed ($TLS_DIR/ca.pem, made here once), starts it
# bound to loopback and waits for it. Exits non-zero, saying why, when it cannot get
# RabbitMQ up.
set -euo pipefail

HOST=127.0.0.1
PORT=5672
TLS_PORT=5671
TLS_DIR=/etc/rabbitmq/event-binder-tls
CONF=/etc/rabbitmq/rabbitmq.conf
STARTUP_TIMEOUT=${RABBITMQ_STARTUP_TIMEOUT:-120}

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# Test runs leave queues behind until they expire, and quorum queues keep files open: the
# node needs more than the 1,024 open files PAM gives the rabbitmq user by default (Debian's
# start script runs it through su, which applies /etc/security/limits.d).
OPEN_FILES=20000
LIMITS=/etc/security/limits.d/event-binder-rabbitmq.conf

# Whether the running node may open fewer than $OPEN_FILES files.
few_open_files() {
    local pid soft
    pid=$(pgrep -o -f 'beam.smp.*rabbit') || return 1
    soft=$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null) || return 1
    [ -n "$soft" ] && [ "$soft" != unlimited ] && [ "$soft" -lt "$OPEN_FILES" ]
}

if answers && answers "$TLS_PORT" && ! few_open_files; then
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

# A test CA and a server certificate for 127.0.0.1, made once.
if [ ! -s "$TLS_DIR/server.pem" ]; then
    command -v openssl >/dev/null 2>&1 ||
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl ||
        fail "openssl is missing and could not be installed"
    as_root mkdir -p "$TLS_DIR"
    as_root openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=event-binder test CA" \
        -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null ||
        fail "could not make the test CA in $TLS_DIR"
    as_root openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null ||
        fail "could not make the server key in $TLS_DIR"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' |
        as_root tee "$TLS_DIR/server.ext" >/dev/null
    as_root openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 3650 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.pem" 2>/dev/null ||
        fail "could not sign the server certificate in $TLS_DIR"
    as_root chmod 644 "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem"
    as_root chmod 640 "$TLS_DIR/server.key"
    as_root chown -R rabbitmq:rabbitmq "$TLS_DIR" 2>/dev/null || true
fi

# The TLS listener, loopback only; the node reads it when it starts.
if ! grep -q '^listeners.ssl.default' "$CONF" 2>/dev/null; then
    as_root mkdir -p "$(dirname "$CONF")"
    as_root tee -a "$CONF" >/dev/null <<TLS
listeners.ssl.default = $HOST:$TLS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
TLS
fi

if [ ! -s "$LIMITS" ]; then
    printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$OPEN_FILES" "$OPEN_FILES" |
        as_root tee "$LIMITS" >/dev/null || fail "could not write $LIMITS"
fi

# A node that started before its TLS listener or its open-files limit was configured:
# restart it to read them.
if answers && { ! answers "$TLS_PORT" || few_open_files; } && node_runs; then
    echo "scripts/rabbitmq.sh: restarting RabbitMQ to open its TLS listener on $HOST:$TLS_PORT and let it open $OPEN_FILES files" >&2
    as_root rabbitmqctl -q stop || fail "rabbitmqctl stop failed"
    stop_deadline=$((SECONDS + STARTUP_TIMEOUT))
    while node_runs || answers; do
        [ "$SECONDS" -lt "$stop_deadline" ] || fail "RabbitMQ did not stop within ${STARTUP_TIMEOUT}s"
        sleep 0.5
    done
fi

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
until answers && answers "$TLS_PORT"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "RabbitMQ started but nothing answers on $HOST:$PORT and $HOST:$TLS_PORT (TLS); see /var/log/rabbitmq/"
    sleep 0.2
done
