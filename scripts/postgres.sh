#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 with a database `test` that user
# `postgres` reaches without a password over local TCP, as the PostgreSQL store's tests
# expect. Idempotent and fast when it already does; otherwise installs Debian's postgresql
# if needed, trusts local connections (pg_hba.conf: a test server, loopback only), starts
# the cluster with pg_ctlcluster (stores/postgres/tests/restart.rs stops and starts it with
# the same command), creates the database and waits until it answers. Exits non-zero,
# saying why, when it cannot get PostgreSQL up.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
DATABASE=test
DB_USER=postgres
STARTUP_TIMEOUT=${POSTGRES_STARTUP_TIMEOUT:-60}

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# Whether PostgreSQL itself answers a query in $1 (default the test database) as $DB_USER.
queries() {
    psql -h "$HOST" -p "$PORT" -U "$DB_USER" -d "${1:-$DATABASE}" -tAqc 'SELECT 1' \
        >/dev/null 2>&1 </dev/null
}

if answers && command -v psql >/dev/null 2>&1 && queries; then
    exit 0
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1 ||
    [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    command -v apt-get >/dev/null 2>&1 ||
        fail "PostgreSQL is not installed and there is no apt-get to install it; install PostgreSQL and start it on $HOST:$PORT"
    echo "scripts/postgres.sh: installing postgresql" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        fail "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql ||
        fail "apt-get install postgresql failed"
fi

# The cluster: Debian's package makes `main` of its version; make it if it did not.
version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
if [ -z "$version" ] || [ ! -d "/etc/postgresql/$version/main" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    [ -n "$version" ] || fail "no PostgreSQL server version in /usr/lib/postgresql"
    echo "scripts/postgres.sh: creating cluster $version/main" >&2
    as_root pg_createcluster --port "$PORT" "$version" main ||
        fail "pg_createcluster $version main failed"
fi
conf_dir=/etc/postgresql/$version/main
log=/var/log/postgresql/postgresql-$version-main.log
cluster_port=$(sed -n 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$conf_dir/postgresql.conf" | tail -n 1)
[ "${cluster_port:-5432}" = "$PORT" ] ||
    fail "cluster $version/main listens on port $cluster_port, not $PORT; see $conf_dir/postgresql.conf"

# Local connections trusted, as on the developers' machines and CI: first match wins, so
# these go before Debian's peer and scram-sha-256 lines.
hba=$conf_dir/pg_hba.conf
hba_changed=false
if ! grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba" ||
    ! grep -Eq '^[[:space:]]*local[[:space:]]+all[[:space:]]+all[[:space:]]+trust' "$hba"; then
    echo "scripts/postgres.sh: trusting local connections in $hba" >&2
    as_root cp "$hba" "$hba.before-event-binder" || fail "could not back up $hba"
    {
        echo '# event-binder tests (scripts/postgres.sh): local connections are trusted.'
        echo 'local all all trust'
        echo "host all all 127.0.0.1/32 trust"
        echo 'host all all ::1/128 trust'
        cat "$hba.before-event-binder"
    } | as_root tee "$hba" >/dev/null || fail "could not write $hba"
    hba_changed=true
fi

cluster_runs() {
    pg_lsclusters -h 2>/dev/null | awk -v v="$version" '$1 == v && $2 == "main" { print $4 }' |
        grep -q '^online'
}

if cluster_runs; then
    if [ "$hba_changed" = true ]; then
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload ||
            fail "pg_ctlcluster $version main reload failed; see $log"
    fi
else
    echo "scripts/postgres.sh: starting PostgreSQL $version on $HOST:$PORT" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
        fail "pg_ctlcluster $version main start failed; see $log"
fi

deadline=$((SECONDS + STARTUP_TIMEOUT))
until answers && queries postgres; do
    [ "$SECONDS" -lt "$deadline" ] ||
        fail "PostgreSQL did not answer queries of user $DB_USER on $HOST:$PORT within ${STARTUP_TIMEOUT}s; see $log and $hba"
    sleep 0.2
done

if ! queries; then
    echo "scripts/postgres.sh: creating database $DATABASE" >&2
    psql -h "$HOST" -p "$PORT" -U "$DB_USER" -d postgres -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $DATABASE" </dev/null ||
        fail "could not create database $DATABASE"
    queries || fail "database $DATABASE was created but does not answer"
fi
