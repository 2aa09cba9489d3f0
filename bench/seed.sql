-- Seeds :rows batches: ids seed-0000000 onwards (at least 7 digits), one second apart from
-- 2025-01-01, every tenth one RUNNING and the rest COMPLETED, as loadgen and
-- the pgbench scripts expect. Run with psql -v rows=N. A bulk load: no
-- change notices (migration V2); the ids are registered and the daily totals
-- folded at the end.
--
-- A million rows per transaction: the totals trigger keeps each statement's
-- rows until its end, and checkpoints can recycle the WAL of committed
-- chunks, so a hundred million rows need no more scratch space than one.
SET batch_history.bulk_load = 'on';
SET bench.rows = :rows;
SELECT count(batches_add_month(day))
FROM generate_series(to_timestamp(1735689600), to_timestamp(1735689600 + :rows), interval '1 day') AS day;
DO $$
DECLARE
    total CONSTANT bigint := current_setting('bench.rows')::bigint;
    chunk CONSTANT bigint := 1000000;
BEGIN
    FOR low IN 0..total - 1 BY chunk LOOP
        INSERT INTO batches (batch_id, state, provider, model, current_model, topic_filter,
                             difficulty_filter, reasoning_instruction, target_count,
                             samples_generated, total_tokens, errors, error_count, metadata,
                             start_time, end_time, update_time)
        SELECT 'seed-' || lpad(i::text, greatest(7, length(i::text)), '0'),
               CASE WHEN i % 10 = 0 THEN 'RUNNING' ELSE 'COMPLETED' END,
               (ARRAY['groq', 'cerebras'])[i % 2 + 1],
               'llama-3.3-70b-versatile', 'llama-3.3-70b-versatile',
               'Contract Law - Formation', 'advanced', '',
               100, i % 100, (i % 100) * 1500,
               '[{"message": "429 Too Many Requests", "time": "2025-01-01T00:00:00Z", "details": {"sample": 3}}]', 1,
               '{"smart_mode": true}',
               to_timestamp(1735689600 + i),
               CASE WHEN i % 10 = 0 THEN NULL ELSE to_timestamp(1735689600 + i + 60) END,
               to_timestamp(1735689600 + i + 60)
        FROM generate_series(low, least(low + chunk, total) - 1) AS i;
        INSERT INTO batch_ids
        SELECT 'seed-' || lpad(i::text, greatest(7, length(i::text)), '0'), to_timestamp(1735689600 + i)
        FROM generate_series(low, least(low + chunk, total) - 1) AS i;
        COMMIT;
    END LOOP;
END
$$;
SELECT batch_totals_fold();
VACUUM ANALYZE batches, batch_ids;
