-- GetBatch's statement (src/store/sql.rs, Get) on a random one of the newest
-- :hot seeded batches (loadgen's --hot).
\set first :seeded - least(:hot, :seeded)
\set n random(:first, :seeded - 1)
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version FROM batches WHERE batch_id = 'seed-' || lpad(:n::text, greatest(7, length(:n::text)), '0')
  AND start_time = batch_start_time('seed-' || lpad(:n::text, greatest(7, length(:n::text)), '0'));
