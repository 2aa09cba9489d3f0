-- RecordProgress's statement (src/store/sql.rs, RECORD_PROGRESS) on a random
-- seeded RUNNING batch (every tenth) of the newest :hot (loadgen's --hot).
\set first :seeded - least(:hot, :seeded)
\set n 10 * random((:first + 9) / 10, (:seeded - 1) / 10)
WITH updated AS (
    UPDATE batches SET
        samples_generated = samples_generated + 1,
        total_tokens = total_tokens + 1500,
        errors = jsonb_append_keep_newest(errors, '[]'::jsonb, 1000),
        error_count = error_count + jsonb_array_length('[]'::jsonb),
        model_switches = model_switches || '[]'::jsonb,
        update_time = now(),
        version = version + 1
    WHERE batch_id = 'seed-' || lpad(:n::text, greatest(7, length(:n::text)), '0')
      AND start_time = batch_start_time('seed-' || lpad(:n::text, greatest(7, length(:n::text)), '0')) AND state = 'RUNNING'
    RETURNING batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version
)
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version, true AS applied FROM updated
UNION ALL
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version, false AS applied FROM batches
WHERE batch_id = 'seed-' || lpad(:n::text, greatest(7, length(:n::text)), '0')
      AND start_time = batch_start_time('seed-' || lpad(:n::text, greatest(7, length(:n::text)), '0')) AND NOT EXISTS (SELECT FROM updated);
