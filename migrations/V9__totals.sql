-- Totals per day (of the start time, in UTC), state, provider and model,
-- so that statistics and the metrics add up a few thousand rows instead of
-- scanning every batch (25 to 80 s at 100M batches).
--
-- Writers do not update these totals in place: all of them would queue on
-- one row (today's running batches of one model) until the writer ahead
-- commits. Each statement appends what it changed to batch_total_changes
-- instead, and the upkeep folds those rows into batch_totals (function
-- batch_totals_fold). Readers add the two up in one snapshot, and a fold
-- is one transaction, so the sum is exact at every moment.
CREATE TABLE batch_totals (
    day      date    NOT NULL,
    state    text    NOT NULL,
    provider text    NOT NULL,
    model    text    NOT NULL,
    -- No check that it is positive: a fold proposes the change itself as
    -- the row (ON CONFLICT), before adding it to the stored one.
    batches  bigint  NOT NULL,
    -- numeric: a sum of bigints may exceed one; readers saturate.
    samples  numeric NOT NULL,
    tokens   numeric NOT NULL,
    PRIMARY KEY (day, state, provider, model)
);

-- The same columns, without a key: the fold takes every row, and readers
-- scan the few written since the last fold.
CREATE TABLE batch_total_changes (LIKE batch_totals);

-- Per statement, not per row: an import or a purge of 10,000 batches
-- appends a handful of rows, and a change that moves no total (a label, a
-- metadata correction) appends none. Bulk loads are counted like any write.
CREATE FUNCTION batch_totals_record() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO batch_total_changes
        SELECT (start_time AT TIME ZONE 'UTC')::date, state, provider, model,
               count(*), sum(samples_generated), sum(total_tokens)
        FROM new_rows
        GROUP BY 1, 2, 3, 4;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO batch_total_changes
        SELECT (start_time AT TIME ZONE 'UTC')::date, state, provider, model,
               -count(*), -sum(samples_generated), -sum(total_tokens)
        FROM old_rows
        GROUP BY 1, 2, 3, 4;
    ELSE
        INSERT INTO batch_total_changes
        SELECT day, state, provider, model, sum(batches), sum(samples), sum(tokens)
        FROM (
            SELECT (start_time AT TIME ZONE 'UTC')::date AS day, state, provider, model,
                   1 AS batches, samples_generated AS samples, total_tokens AS tokens
            FROM new_rows
            UNION ALL
            SELECT (start_time AT TIME ZONE 'UTC')::date, state, provider, model,
                   -1, -samples_generated, -total_tokens
            FROM old_rows
        ) moved
        GROUP BY day, state, provider, model
        HAVING sum(batches) <> 0 OR sum(samples) <> 0 OR sum(tokens) <> 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION batch_totals_clear() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM batch_totals;
    DELETE FROM batch_total_changes;
    RETURN NULL;
END
$$;

-- Moves the changes recorded so far into batch_totals, dropping the groups
-- left with no batch; returns how many change rows it folded.
CREATE FUNCTION batch_totals_fold() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
    emptied tid[];
BEGIN
    WITH taken AS (
        DELETE FROM batch_total_changes RETURNING *
    ), summed AS (
        SELECT day, state, provider, model,
               sum(batches) AS batches, sum(samples) AS samples, sum(tokens) AS tokens,
               count(*) AS changes
        FROM taken
        GROUP BY day, state, provider, model
    ), upserted AS (
        INSERT INTO batch_totals AS total (day, state, provider, model, batches, samples, tokens)
        SELECT day, state, provider, model, batches, samples, tokens FROM summed
        ON CONFLICT (day, state, provider, model) DO UPDATE SET
            batches = total.batches + EXCLUDED.batches,
            samples = total.samples + EXCLUDED.samples,
            tokens = total.tokens + EXCLUDED.tokens
        RETURNING ctid, batches
    )
    SELECT (SELECT coalesce(sum(changes), 0) FROM summed),
           (SELECT array_agg(ctid) FROM upserted WHERE batches = 0)
    INTO folded, emptied;
    IF emptied IS NOT NULL THEN
        DELETE FROM batch_totals WHERE ctid = ANY(emptied);
    END IF;
    RETURN folded;
END
$$;

-- Writers wait while the totals are counted (2.7 s for a million imported
-- batches here), so that none is counted twice or missed; readers do not.
LOCK TABLE batches IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO batch_totals
SELECT (start_time AT TIME ZONE 'UTC')::date, state, provider, model,
       count(*), sum(samples_generated), sum(total_tokens)
FROM batches
GROUP BY 1, 2, 3, 4;

CREATE TRIGGER batch_totals_insert AFTER INSERT ON batches
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_totals_record();
CREATE TRIGGER batch_totals_update AFTER UPDATE ON batches
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_totals_record();
CREATE TRIGGER batch_totals_delete AFTER DELETE ON batches
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_totals_record();
CREATE TRIGGER batch_totals_truncate AFTER TRUNCATE ON batches
    FOR EACH STATEMENT EXECUTE FUNCTION batch_totals_clear();
