#!/usr/bin/env bash
# What the change feed costs writes. pgbench runs CreateBatch's statement
# (bench/pgbench/create.sql) at CLIENTS clients, silent (no watch lease: the
# trigger returns early) and watched (a lease held, so every write logs its
# change, and one reader doing the feed's read every 50 ms,
# bench/pgbench/feed_read.sql, as while a watcher is connected), in ROUNDS
# rounds that alternate which goes first. Twice: on the PostgreSQL at
# PGHOST/PGPORT (default 127.0.0.1:5432), and on a throwaway primary with a
# synchronous standby (synchronous_standby_names = '*').
#
#   bench/feed_cost.sh                       # 32 clients, 3 rounds of 10 s
#   CLIENTS=8 ROUNDS=5 BENCH_SECONDS=20 bench/feed_cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${CLIENTS:-32}
seconds=${BENCH_SECONDS:-10}
rounds=${ROUNDS:-3}
bin=${BENCH_BIN:-target/release/batch-history}
pgbin=/usr/lib/postgresql/15/bin
cargo build --release --locked --quiet --bin batch-history

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Prints one line per round: silent and watched commits per second.
measure() {
    local host=$1 port=$2 label=$3
    local db=bh_feed_$$
    local url="postgres://postgres@$host:$port/$db"
    psql -qh "$host" -p "$port" -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db" \
        -c "CREATE DATABASE $db"
    DATABASE_URL=$url "$bin" migrate >/dev/null 2>&1
    local ratios=()
    for round in $(seq "$rounds"); do
        local order=(silent watched)
        if [ $((round % 2)) = 0 ]; then order=(watched silent); fi
        declare -A tps=()
        for mode in "${order[@]}"; do
            local reader=
            if [ "$mode" = watched ]; then
                psql -qh "$host" -p "$port" -U postgres -d "$db" \
                    -c "INSERT INTO batch_watch_leases VALUES ('bench', now() + interval '1 hour')"
                local since
                since=$(psql -qtAh "$host" -p "$port" -U postgres -d "$db" \
                    -c "SELECT pg_current_snapshot()")
                pgbench -n -M simple -c 1 -T $((seconds + 2)) -D "since=$since" \
                    -h "$host" -p "$port" -U postgres -f bench/pgbench/feed_read.sql "$db" \
                    >/dev/null 2>&1 &
                reader=$!
            fi
            tps[$mode]=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$seconds" \
                -h "$host" -p "$port" -U postgres -f bench/pgbench/create.sql "$db" 2>/dev/null |
                awk '/^tps = / {print $3}')
            if [ -n "$reader" ]; then
                kill "$reader" 2>/dev/null || true
                wait "$reader" 2>/dev/null || true
                psql -qh "$host" -p "$port" -U postgres -d "$db" -c "DELETE FROM batch_watch_leases"
            fi
        done
        local ratio
        ratio=$(python3 -c "print(f'{${tps[watched]} / ${tps[silent]}:.2f}')")
        ratios+=("$ratio")
        printf '%-22s round %d: silent %8.0f/s  watched %8.0f/s  ratio %s\n' \
            "$label" "$round" "${tps[silent]}" "${tps[watched]}" "$ratio"
        unset tps
    done
    printf '%-22s median ratio %s\n' "$label" \
        "$(printf '%s\n' "${ratios[@]}" | sort -n | python3 -c 'import sys, statistics; print(statistics.median(float(l) for l in sys.stdin))')"
    psql -qh "$host" -p "$port" -U postgres -d postgres -c "DROP DATABASE $db WITH (FORCE)"
}

measure "${PGHOST:-127.0.0.1}" "${PGPORT:-5432}" "direct"

work=$(mktemp -d)
trap 'as_postgres $pgbin/pg_ctl stop -m immediate -D "$work/standby" >/dev/null 2>&1 || true
      as_postgres $pgbin/pg_ctl stop -m immediate -D "$work/primary" >/dev/null 2>&1 || true
      rm -rf "$work"' EXIT
chmod 755 "$work"
if [ "$(id -u)" = 0 ]; then chown postgres "$work"; fi
primary_port=55433
standby_port=55434
as_postgres "$pgbin/initdb" -A trust -U postgres -D "$work/primary" >/dev/null
cat >>"$work/primary/postgresql.conf" <<EOF
port = $primary_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 100
synchronous_standby_names = '*'
EOF
as_postgres "$pgbin/pg_ctl" start -w -D "$work/primary" -l "$work/primary.log" >/dev/null
as_postgres "$pgbin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -R -X stream \
    -c fast -D "$work/standby"
cat >>"$work/standby/postgresql.conf" <<EOF
port = $standby_port
unix_socket_directories = '$work'
EOF
as_postgres "$pgbin/pg_ctl" start -w -D "$work/standby" -l "$work/standby.log" >/dev/null
until [ "$(psql -qtAh 127.0.0.1 -p "$primary_port" -U postgres -d postgres \
    -c "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")" = 1 ]; do
    sleep 0.2
done
measure 127.0.0.1 "$primary_port" "synchronous standby"
