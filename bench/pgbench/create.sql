-- CreateBatch's statement (src/store/sql.rs, Create), server-generated id.
\set r random(1, 4000000000000)
WITH registered AS (
    INSERT INTO batch_ids (batch_id, start_time)
    VALUES ('pgb-' || :client_id || '-' || :r, COALESCE(NULL::timestamptz, now()))
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING start_time
), inserted AS (
    INSERT INTO batches (batch_id, state, provider, model, current_model, topic_filter, difficulty_filter,
                         reasoning_instruction, target_count, metadata, start_time, update_time)
    SELECT 'pgb-' || :client_id || '-' || :r, 'RUNNING', 'groq', 'llama-3.3-70b-versatile', 'llama-3.3-70b-versatile', '', '', '', 100, '{}',
           start_time, now()
    FROM registered
    RETURNING batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version
)
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version, true AS created FROM inserted
UNION ALL
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version, false AS created FROM batches
WHERE batch_id = 'pgb-' || :client_id || '-' || :r
  AND start_time = batch_start_time('pgb-' || :client_id || '-' || :r)
  AND NOT EXISTS (SELECT FROM inserted);
