-- Attaching a month to the batches proves, by a scan of the month, that
-- every row is within its bounds, unless a CHECK constraint of the month
-- already says so. The months an import loads whole get that constraint
-- while still empty, so each row is checked as it is copied in, for next
-- to nothing, and the attach scans nothing: a sixth of the move, 0.50
-- against 0.60 s a month of 88k legacy rows (docs/PERFORMANCE.md). Once
-- attached, the month's partition bound says the same, and the constraint
-- goes.

-- Gives every month of `loaded` (see batches_move_months), while empty,
-- its partition constraint as a CHECK named `loaded_bounds`.
CREATE FUNCTION batches_bound_months(loaded regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    month regclass;
BEGIN
    FOR month IN
        SELECT c.oid::regclass
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = loaded
          AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT loaded_bounds CHECK (%s)',
                       month, pg_get_partition_constraintdef(month));
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION batches_move_months(loaded regclass) RETURNS integer
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
        -- IF EXISTS: an importer of the version before V16 bounds no month.
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS loaded_bounds', month);
        moved := moved + 1;
    END LOOP;
    RETURN moved;
END
$$;
