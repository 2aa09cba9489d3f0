#!/bin/bash
# Entrypoint of the CI stand-in for postgres:15-alpine (see standins.sh): the
# official image's documented contract, as far as compose uses it. On an
# empty $PGDATA: POSTGRES_PASSWORD is required; POSTGRES_USER (default
# postgres) becomes the superuser with that password, POSTGRES_DB (default
# the user's name) is created; a socket-only server does the set-up, then
# the real one listens on every address, password auth over TCP.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown -R postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    exec runuser -u postgres -- "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "Error: Database is uninitialized and superuser password is not specified." >&2
        exit 1
    fi
    user="${POSTGRES_USER:-postgres}"
    database="${POSTGRES_DB:-$user}"
    password_file="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" >"$password_file"
    initdb --username="$user" --pwfile="$password_file" --auth-local=trust \
        --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$database" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -q \
            -c "CREATE DATABASE \"$database\""
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "PostgreSQL init process complete; ready for start up."
fi
if [ "${1:-}" = postgres ]; then
    shift
    # The official image stops with SIGINT (fast shutdown); `docker import`
    # cannot set STOPSIGNAL, so compose's SIGTERM is passed on as SIGINT.
    postgres -D "$PGDATA" -c listen_addresses='*' "$@" &
    server=$!
    trap 'kill -INT "$server"' TERM INT
    wait "$server" || wait "$server"
    exit
fi
exec "$@"
