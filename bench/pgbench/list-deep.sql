-- ListBatches' keyset statement, newest first, one page of 50 (plus one to
-- detect a next page) after a random one of the newest :deep seeded
-- batches, as deep as loadgen's page tokens reach.
\set n :seeded - 1 - random(0, :deep - 1)
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version FROM batches
WHERE true AND (start_time, batch_id) < (to_timestamp(1735689600 + :n), 'seed-' || lpad(:n::text, greatest(7, length(:n::text)), '0'))
  AND start_time <= to_timestamp(1735689600 + :n)
ORDER BY start_time DESC, batch_id DESC LIMIT 51;
