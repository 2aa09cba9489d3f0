-- Moves every month of `loaded`, a partitioned table like the batches
-- (whose months batches_add_month added to it), into the batches; returns
-- how many. A bulk load writes the months the history does not have yet
-- into such a table, without indexes, and moves them in whole: ATTACH
-- builds each month's indexes in one sorted pass, where inserting into the
-- batches grows them row by row (a million legacy rows into new months:
-- 38 s that way, 26 s this way, docs/PERFORMANCE.md). The caller holds
-- SHARE UPDATE EXCLUSIVE on the batches from before it looked which months
-- they lack, so that no other session adds one of those months meanwhile.
CREATE FUNCTION batches_move_months(loaded regclass) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month regclass;
    bounds text;
    moved integer := 0;
BEGIN
    -- The bounds are read back as text: in a fixed style, for this call only.
    PERFORM set_config('DateStyle', 'ISO', true), set_config('TimeZone', 'UTC', true);
    FOR month, bounds IN
        SELECT c.oid::regclass, pg_get_expr(c.relpartbound, c.oid)
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = loaded
    LOOP
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', loaded, month);
        EXECUTE format('ALTER TABLE batches ATTACH PARTITION %s %s', month, bounds);
        moved := moved + 1;
    END LOOP;
    RETURN moved;
END
$$;
