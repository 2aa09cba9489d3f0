#!/usr/bin/env bash
# What the number of months kept costs a call by id, before migration V18
# and after: GetBatch's and RecordProgress's pgbench scripts, as they are
# (the month from batch_start_time) and as they were (the month from a
# subquery), alternating, on two scratch databases of 27,777 batches: one a
# hour over 39 months, one every 6 minutes over 7 (with the months ahead).
# Migrates with the release binary, as bench/run.sh does.
#
#   bench/month_count.sh       # PGHOST/PGPORT/PGUSER as for bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"; for db in bh_months_39 bh_months_7; do dropdb --if-exists "$db"; done' EXIT

seed() {
    local db=$1 seconds_apart=$2
    dropdb --if-exists "$db"
    createdb "$db"
    RUST_LOG=warn DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$db" target/release/batch-history migrate
    psql -q -v ON_ERROR_STOP=1 -d "$db" -v apart="$seconds_apart" >/dev/null <<'SQL'
SET batch_history.bulk_load = 'on';
SELECT count(batches_add_month(day))
FROM generate_series(to_timestamp(1735689600), to_timestamp(1735689600 + 27776 * :apart), interval '1 day') AS day;
INSERT INTO batches (batch_id, state, provider, model, current_model, topic_filter, difficulty_filter,
                     reasoning_instruction, target_count, samples_generated, total_tokens, errors,
                     error_count, metadata, start_time, end_time, update_time)
SELECT 'seed-' || lpad(i::text, 7, '0'), CASE WHEN i % 2 = 0 THEN 'RUNNING' ELSE 'COMPLETED' END,
       'groq', 'm', 'm', 't', 'advanced', '', 100, 1, 1, '[]', 0, '{}',
       to_timestamp(1735689600 + i * :apart),
       CASE WHEN i % 2 = 1 THEN to_timestamp(1735689600 + i * :apart + 60) END,
       to_timestamp(1735689600 + i * :apart + 60)
FROM generate_series(0, 27776) AS i;
INSERT INTO batch_ids
SELECT 'seed-' || lpad(i::text, 7, '0'), to_timestamp(1735689600 + i * :apart) FROM generate_series(0, 27776) AS i;
SELECT batch_totals_fold();
VACUUM ANALYZE;
SQL
}
seed bh_months_39 3600
seed bh_months_7 360

# Every second seeded batch: the RUNNING ones, which progress reports apply to.
lookup="(SELECT start_time FROM batch_ids WHERE batch_id = \\1)"
for op in get progress; do
    sed 's/^\\set first.*$//; s/^\\set n .*$/\\set n 2 * random(0, 13888)/' \
        "bench/pgbench/$op.sql" > "$scratch/$op-function.sql"
    perl -pe "s/batch_start_time\\(('seed-' \\|\\| lpad\\(:n::text, greatest\\(7, length\\(:n::text\\)\\), '0'\\))\\)/$lookup/g" \
        "$scratch/$op-function.sql" > "$scratch/$op-subquery.sql"
done

printf '%-6s %-8s %3s %5s  %-8s %9s %10s\n' months op cl round lookup "avg ms" "calls/s"
for db in bh_months_39 bh_months_7; do
    for op in get progress; do
        for clients in 1 8; do
            for round in 1 2 3; do
                for lookup in subquery function; do
                    result=$(pgbench -n -M prepared -c "$clients" -j "$(( clients > 1 ? 2 : 1 ))" \
                        -T 5 -f "$scratch/$op-$lookup.sql" "$db" 2>&1)
                    printf '%-6s %-8s %3s %5s  %-8s %9s %10.0f\n' "${db#bh_months_}" "$op" \
                        "$clients" "$round" "$lookup" \
                        "$(grep -oP 'latency average = \K[0-9.]+' <<<"$result")" \
                        "$(grep -oP 'tps = \K[0-9.]+' <<<"$result")"
                done
            done
        done
    done
done
