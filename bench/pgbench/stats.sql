-- GetBatchStats over every batch (src/store/sql.rs, Listing::stats): the
-- daily totals and the changes not yet folded into them.
SELECT state, provider, model, sum(batches)::bigint, least(sum(samples), 9223372036854775807)::bigint, least(sum(tokens), 9223372036854775807)::bigint FROM (SELECT state, provider, model, batches, samples, tokens FROM batch_totals WHERE true UNION ALL SELECT state, provider, model, batches, samples, tokens FROM batch_total_changes WHERE true) counted GROUP BY state, provider, model HAVING sum(batches) > 0;
