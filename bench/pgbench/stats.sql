-- GetBatchStats over every batch.
SELECT state, provider, model, count(*), least(coalesce(sum(samples_generated), 0), 9223372036854775807)::bigint, least(coalesce(sum(total_tokens), 0), 9223372036854775807)::bigint FROM batches WHERE true GROUP BY state, provider, model;
