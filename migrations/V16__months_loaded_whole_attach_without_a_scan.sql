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

-- Drops the `loaded_bounds` of the months batches_move_months attached.
CREATE FUNCTION batches_unbound_months() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    month regclass;
BEGIN
    FOR month IN
        SELECT k.conrelid::regclass
        FROM pg_constraint k
        JOIN pg_inherits i ON i.inhrelid = k.conrelid AND i.inhparent = 'batches'::regclass
        WHERE k.conname = 'loaded_bounds'
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT loaded_bounds', month);
    END LOOP;
END
$$;
