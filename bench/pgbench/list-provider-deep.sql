-- ListBatches' keyset statement for one provider's batches (every other
-- seeded one), newest first, a page of 50 (plus one) after a random one of
-- the newest 2 × :deep seeded batches, as deep as loadgen's tokens reach.
\set n :seeded - 1 - random(0, least(2 * :deep, :seeded) - 1)
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version FROM batches
WHERE true AND provider = ('groq') AND (start_time, batch_id) < (to_timestamp(1735689600 + :n), 'seed-' || lpad(:n::text, greatest(7, length(:n::text)), '0'))
  AND start_time <= to_timestamp(1735689600 + :n)
ORDER BY start_time DESC, batch_id DESC LIMIT 51;
