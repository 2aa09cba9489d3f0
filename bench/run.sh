#!/usr/bin/env bash
# Measures batch-history against raw PostgreSQL in one run: for each table
# size, seeds a scratch database, starts the release server, drives it with
# examples/loadgen.rs, drives the same statements with pgbench (-M prepared,
# same client count), prints one table, and cleans up.
#
#   bench/run.sh                 # 10k and 1M batches, 32 clients, 10 s per operation
#   SIZES="10000 1000000 10000000" bench/run.sh
#   bench/run.sh --smoke         # a few seconds, for CI: no thresholds
#
# Environment: PGHOST/PGPORT/PGUSER (default 127.0.0.1:5432 postgres) of a
# server where a scratch database may be created; SIZES, CLIENTS, STATS_CLIENTS
# (default 1: GetBatchStats reads the whole table), BENCH_SECONDS
# (bash reserves SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"10000 1000000"}
CLIENTS=${CLIENTS:-32}
SECONDS_PER_OP=${BENCH_SECONDS:-10}
if [[ ${1:-} == --smoke ]]; then
    SIZES=2000 CLIENTS=4 SECONDS_PER_OP=1
fi
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
DB=bh_bench_$$
PORT=${BENCH_PORT:-50651}
OPS=(create progress get list-deep list-filtered)
# GetBatchStats reads the whole table: a dashboard panel, one caller at a time.
STATS_CLIENTS=${STATS_CLIENTS:-1}

cargo build --release --locked --quiet --bin batch-history --example loadgen
BIN=target/release/batch-history
LOADGEN=target/release/examples/loadgen
RESULTS=$(mktemp -d)
SERVER=

cleanup() {
    [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    psql -qd postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$RESULTS"
}
trap cleanup EXIT

rss_kb() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

for rows in $SIZES; do
    psql -qd postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
    export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
    LOG_FORMAT=json RUST_LOG=warn "$BIN" migrate
    echo "seeding $rows batches" >&2
    psql -qd "$DB" -v rows="$rows" -f bench/seed.sql >/dev/null

    # The seeded RUNNING batches are old: the stale sweep would stop them.
    STALE_AFTER=0 LISTEN_ADDR=127.0.0.1:$PORT LOG_FORMAT=json RUST_LOG=warn "$BIN" serve &
    SERVER=$!
    until "$BIN" healthcheck --addr "127.0.0.1:$PORT" 2>/dev/null; do sleep 0.2; done
    idle=$(rss_kb "$SERVER" VmRSS)

    "$LOADGEN" --addr "http://127.0.0.1:$PORT" --clients "$CLIENTS" --seconds "$SECONDS_PER_OP" \
        --seeded "$rows" --ops "$(IFS=,; echo "${OPS[*]}")" --json > "$RESULTS/service-$rows.jsonl"
    "$LOADGEN" --addr "http://127.0.0.1:$PORT" --clients "$STATS_CLIENTS" --seconds "$SECONDS_PER_OP" \
        --seeded "$rows" --ops stats --json >> "$RESULTS/service-$rows.jsonl"
    peak=$(rss_kb "$SERVER" VmHWM)
    kill "$SERVER"; wait "$SERVER" || true; SERVER=

    for op in "${OPS[@]}" stats; do
        clients=$CLIENTS
        [[ $op == stats ]] && clients=$STATS_CLIENTS
        pgbench -n -M prepared -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" -T "$SECONDS_PER_OP" \
            -D seeded="$rows" \
            -f "bench/pgbench/$op.sql" "$DB" 2>&1 \
            | awk -v op="$op" '/^tps = / { print op, $3 } /^latency average/ { print op "-latency", $4 }' \
            >> "$RESULTS/pgbench-$rows.txt"
    done
    echo "$rows $idle $peak" >> "$RESULTS/rss.txt"
done

python3 - "$RESULTS" <<'PY'
import json, pathlib, sys
results = pathlib.Path(sys.argv[1])
rows_list = [line.split() for line in (results / "rss.txt").read_text().splitlines()]
print(f"\n{'operation':<14} {'rows':>9} {'clients':>7} {'service/s':>10} {'pgbench/s':>10} {'ratio':>6}"
      f" {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}  errors")
p50 = {}
for rows, idle, peak in rows_list:
    pg = dict(line.split() for line in (results / f"pgbench-{rows}.txt").read_text().splitlines())
    for line in (results / f"service-{rows}.jsonl").read_text().splitlines():
        r = json.loads(line)
        tps = float(pg.get(r["op"], "nan"))
        p50[(r["op"], rows)] = r["p50_ms"]
        print(f"{r['op']:<14} {rows:>9} {r['clients']:>7} {r['ops_per_second']:>10.0f} {tps:>10.0f}"
              f" {r['ops_per_second'] / tps:>6.2f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
              f" {r['p999_ms']:>9.2f}  {r['errors'] or 'none'}")
print()
for rows, idle, peak in rows_list:
    print(f"server RSS at {rows} rows: idle {int(idle) / 1024:.1f} MiB, peak under load {int(peak) / 1024:.1f} MiB")
sizes = [r for r, _, _ in rows_list]
if len(sizes) > 1:
    small, large = sizes[0], sizes[-1]
    for op in ("list-deep", "list-filtered"):
        print(f"{op} p50 at {large} rows / at {small} rows: {p50[(op, large)] / p50[(op, small)]:.2f}")
PY
