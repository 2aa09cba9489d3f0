-- GetBatchStats over every batch.
SELECT state, provider, model, count(*), coalesce(sum(samples_generated), 0)::bigint, coalesce(sum(total_tokens), 0)::bigint FROM batches WHERE true GROUP BY state, provider, model;
