#!/usr/bin/env bash
# Measures batch-history against raw PostgreSQL in one run: for each table
# size, seeds a scratch database, starts the release server, and for each
# operation drives it with examples/loadgen.rs and the same statements with
# pgbench (-M prepared, same client count), back to back, in rounds that
# alternate which goes first; prints medians with their range, the ratio,
# and CPU per call of the server and of PostgreSQL (bench/harness.py).
#
#   bench/run.sh                 # 10k and 1M batches, 32 clients, 3 rounds of 10 s per operation
#   SIZES="10000 1000000 10000000" ROUNDS=5 bench/run.sh
#   bench/run.sh --smoke         # a few seconds, for CI: no thresholds
#
# Environment: PGHOST/PGPORT/PGUSER (default 127.0.0.1:5432 postgres) of a
# server on this machine where a scratch database may be created; SIZES,
# CLIENTS, STATS_CLIENTS (default 1: GetBatchStats reads the whole table),
# ROUNDS, BENCH_SECONDS (bash reserves SECONDS), BENCH_PORT, OPS (a subset
# of the operations), HOT_ROWS (get and progress on the newest N seeded
# batches, as a dashboard uses its recent ones; all by default), DB_POOLER
# (`transaction`: the statements sent behind a transaction pooler, against
# PostgreSQL itself), SERVER_ENV (`NAME=value` settings for the server alone,
# e.g. `TOKIO_WORKER_THREADS=1`), BENCH_BIN (another server binary, e.g. an
# earlier commit's, to compare in one run).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/harness.py "$@"
