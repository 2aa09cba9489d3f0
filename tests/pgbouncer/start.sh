#!/usr/bin/env bash
# Starts a PgBouncer in front of the PostgreSQL server at $UPSTREAM_HOST
# (default 127.0.0.1) port $UPSTREAM_PORT (default 5432), trust auth, any
# database, listening on 127.0.0.1:$1 (default 6432) in pool mode $3
# (default transaction, as production poolers are set up). The second run of
# the API suite goes through one (TEST_PGBOUNCER). Its files live under $2
# (default target/tmp/pgbouncer); `stop.sh` there stops it.
set -euo pipefail
port="${1:-6432}"
dir="$(realpath -m "${2:-target/tmp/pgbouncer}")"
mode="${3:-transaction}"
mkdir -p "$dir"
cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=${UPSTREAM_HOST:-127.0.0.1} port=${UPSTREAM_PORT:-5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
pool_mode = $mode
auth_type = trust
auth_file = $dir/userlist.txt
max_client_conn = 4000
default_pool_size = 20
server_lifetime = 3600
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
echo '"postgres" ""' >"$dir/userlist.txt"
printf '#!/bin/sh\nkill "$(cat %s/pgbouncer.pid 2>/dev/null)" 2>/dev/null || true\n' "$dir" >"$dir/stop.sh"
chmod +x "$dir/stop.sh"
"$dir/stop.sh"
sleep 0.2
# PgBouncer refuses to run as root; it then runs as postgres.
as=()
if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$dir"
    as=(-u postgres)
fi
pgbouncer -d "${as[@]}" "$dir/pgbouncer.ini"
for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p "$port" && exit 0
    sleep 0.1
done
echo "PgBouncer did not start; see $dir/pgbouncer.log" >&2
exit 1
