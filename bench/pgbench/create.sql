-- CreateBatch's statement (src/store/sql.rs, CREATE), server-generated id.
\set r random(1, 4000000000000)
WITH inserted AS (
    INSERT INTO batches (batch_id, state, provider, model, current_model, topic_filter, difficulty_filter,
                         reasoning_instruction, target_count, metadata, start_time, update_time)
    VALUES ('pgb-' || :client_id || '-' || :r, 'RUNNING', 'groq', 'llama-3.3-70b-versatile', 'llama-3.3-70b-versatile', '', '', '', 100, '{}',
            COALESCE(NULL::timestamptz, now()), now())
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version
)
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version, true AS created FROM inserted
UNION ALL
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version, false AS created FROM batches
WHERE batch_id = 'pgb-' || :client_id || '-' || :r AND NOT EXISTS (SELECT FROM inserted);
