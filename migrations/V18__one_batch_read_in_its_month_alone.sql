-- Every statement on one batch found its month by a subquery on the ids'
-- registry (migration V11): `start_time = (SELECT start_time FROM
-- batch_ids WHERE batch_id = ...)`. A subquery's value is known only as
-- the statement runs, so PostgreSQL pruned the other months only after
-- opening every month and its key's index: the statements' cost grew with
-- the months kept. With 39 months of a few hundred rows each, pgbench ran
-- GetBatch's statement at 0.38-0.40 ms a call, against 0.15-0.16 ms with
-- 7 months (bench/month_count.sh, docs/PERFORMANCE.md).
--
-- A stable function's value is known as the statement starts: a plan made
-- for any id prunes on it before opening a month, and so opens the
-- batch's month alone, whatever the number kept. Such a plan also costs
-- what a plan for one id costs (neither can prune while planning), so
-- PostgreSQL keeps it from the sixth call on.

-- The start time `wanted` is registered with: its month. NULL if none.
CREATE FUNCTION batch_start_time(wanted text) RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    -- PL/pgSQL, not SQL: a SQL function's query is planned anew in every
    -- statement that calls it, PL/pgSQL's once a session.
    RETURN (SELECT start_time FROM batch_ids WHERE batch_id = wanted);
END
$$;
