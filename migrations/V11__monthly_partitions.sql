-- The history split by month of start time (UTC), so that retention drops
-- a month in one statement instead of deleting it row by row, and every
-- index a write or a lookup touches is a month's, not the whole history's.
--
-- A unique key of a partitioned table must hold the partition key, so the
-- batches' key is (start_time, batch_id), which also serves the keyset
-- listings. batch_ids keeps ids unique across months and tells every call
-- by id which month to look in. A batch's start time never changes.
CREATE TABLE batch_ids (
    batch_id   text COLLATE "C" PRIMARY KEY,
    start_time timestamptz NOT NULL
);

-- Adds the month holding `at` to `parent` (the batches, or during this
-- migration their successor); false if it is there already. ATTACH takes
-- a lock that lets reads and writes go on; CREATE TABLE ... PARTITION OF
-- would lock every reader out until the caller's transaction ends.
CREATE FUNCTION batches_add_month(at timestamptz, parent text DEFAULT 'batches')
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    first timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    month text := 'batches_' || to_char(first, '"y"YYYY"m"MM');
BEGIN
    IF to_regclass(month) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   month, parent);
    -- Bounds spelled out in UTC, whatever the session's time zone and date style.
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   parent, month,
                   to_char(first, 'YYYY-MM-DD') || ' 00:00:00+00',
                   to_char(first + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
    RETURN true;
EXCEPTION WHEN duplicate_table OR duplicate_object OR unique_violation THEN
    -- Another session added it first (which of the three a racing CREATE
    -- TABLE meets depends on where it catches up with the other's).
    RETURN false;
END
$$;

-- Months dropped whole whose ids the upkeep has yet to clear from
-- batch_ids: dropping a month does not touch its ids, which would take as
-- long as deleting its batches. Until cleared, an id of a dropped batch is
-- cleared by the first call that wants it back. `detached` names the
-- month's table, out of the batches, until it is dropped.
CREATE TABLE batch_dropped_months (
    first    timestamptz PRIMARY KEY,
    next     timestamptz NOT NULL,
    detached text
);

-- Takes out the oldest month that ended by `ended_before` if every batch in
-- it is one the row-by-row purge would delete (finished, and ended before
-- `ended_before`), with its daily totals; returns the month's start, or
-- NULL if there is none to take out, or if the batches could not be locked
-- within a second (readers and writers wait behind the lock meanwhile).
-- The month's table is detached, not dropped: deleting its files (seconds
-- for a month of millions) would hold that lock. batches_drop_detached
-- drops it, after.
CREATE FUNCTION batches_drop_month(ended_before timestamptz) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    month regclass;
    first timestamptz;
    next timestamptz;
    -- Whether the month holds a batch the purge would keep. Each probe is
    -- ordered as an index is, so that it walks the index whatever the
    -- month's statistics say: with EXISTS alone, the planner expects to
    -- meet such a batch early in a scan, and reads the whole month.
    keeps text := 'SELECT EXISTS (SELECT FROM (SELECT FROM %1$s WHERE state = ''RUNNING''
                                              ORDER BY state, start_time LIMIT 1) AS running)
                       OR EXISTS (SELECT FROM (SELECT FROM %1$s
                                              WHERE state <> ''RUNNING'' AND end_time >= $1
                                              ORDER BY end_time LIMIT 1) AS ended_since)
                       OR EXISTS (SELECT FROM (SELECT FROM %1$s
                                              WHERE state <> ''RUNNING'' AND end_time IS NULL
                                              ORDER BY end_time LIMIT 1) AS never_ended)';
    kept boolean;
    detached text;
BEGIN
    -- The bounds are read back as text: in a fixed style, for this call only.
    PERFORM set_config('DateStyle', 'ISO', true), set_config('TimeZone', 'UTC', true);
    FOR month, first, next IN
        SELECT c.oid::regclass, bounds[1]::timestamptz, bounds[2]::timestamptz
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid,
        LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                             'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS bounds
        WHERE i.inhparent = 'batches'::regclass
        ORDER BY 2
    LOOP
        EXIT WHEN next > ended_before;
        EXECUTE format(keeps, month) INTO kept USING ended_before;
        CONTINUE WHEN kept;
        -- First the month alone, which no call reads or writes any more,
        -- without holding up the others: this lock waits out (and stops) an
        -- autovacuum of the month, which gives way only after
        -- deadlock_timeout (a second by default).
        PERFORM set_config('lock_timeout', '5s', true);
        EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', month);
        -- Then every month, for as short a time as the drop takes. Again
        -- under the lock, which no writer holds, since a batch may have been
        -- written into the month meanwhile.
        PERFORM set_config('lock_timeout', '1s', true);
        LOCK TABLE batches IN ACCESS EXCLUSIVE MODE;
        EXECUTE format(keeps, month) INTO kept USING ended_before;
        IF kept THEN
            RETURN NULL;
        END IF;
        detached := month::text || '_detached';
        EXECUTE format('ALTER TABLE batches DETACH PARTITION %s', month);
        EXECUTE format('ALTER TABLE %s RENAME TO %I', month, detached);
        DELETE FROM batch_total_changes
        WHERE day >= (first AT TIME ZONE 'UTC')::date AND day < (next AT TIME ZONE 'UTC')::date;
        DELETE FROM batch_totals
        WHERE day >= (first AT TIME ZONE 'UTC')::date AND day < (next AT TIME ZONE 'UTC')::date;
        INSERT INTO batch_dropped_months VALUES (first, next, detached)
        ON CONFLICT ON CONSTRAINT batch_dropped_months_pkey DO UPDATE SET detached = EXCLUDED.detached;
        RETURN first;
    END LOOP;
    RETURN NULL;
EXCEPTION WHEN lock_not_available THEN
    RETURN NULL;
END
$$;

-- Drops the months' tables batches_drop_month detached; returns how many.
CREATE FUNCTION batches_drop_detached() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month text;
    dropped integer := 0;
BEGIN
    FOR month IN SELECT detached FROM batch_dropped_months WHERE detached IS NOT NULL LOOP
        EXECUTE format('DROP TABLE IF EXISTS %I', month);
        UPDATE batch_dropped_months SET detached = NULL WHERE detached = month;
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;

-- Writers wait while the history is copied; readers go on reading the old
-- table until the swap at the end.
LOCK TABLE batches IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE batches_by_month (LIKE batches INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (start_time);

SELECT batches_add_month(month, 'batches_by_month')
FROM (
    SELECT DISTINCT date_trunc('month', start_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    FROM batches
    UNION
    SELECT now() + make_interval(months => ahead) FROM generate_series(0, 2) AS ahead
) months (month);

-- Indexes are built after the copy, each in one sorted pass: three times
-- faster than growing them row by row.
INSERT INTO batches_by_month SELECT * FROM batches ORDER BY start_time, batch_id;
INSERT INTO batch_ids SELECT batch_id, start_time FROM batches ORDER BY batch_id;
CREATE INDEX batch_ids_start_time_idx ON batch_ids (start_time);

ALTER TABLE batches_by_month ADD CONSTRAINT batches_key PRIMARY KEY (start_time, batch_id);
CREATE INDEX batches_state_idx ON batches_by_month (state, start_time, batch_id);
CREATE INDEX batches_ended_idx ON batches_by_month (end_time) WHERE state <> 'RUNNING';
CREATE INDEX batches_labels_idx ON batches_by_month USING gin (labels jsonb_path_ops);

-- Requests go with their batch's id: a month dropped whole takes its ids'
-- requests with it once the upkeep clears those ids.
ALTER TABLE batch_requests DROP CONSTRAINT batch_requests_batch_id_fkey;
DROP TABLE batches;
ALTER TABLE batches_by_month RENAME TO batches;
ALTER TABLE batch_requests ADD CONSTRAINT batch_requests_batch_id_fkey
    FOREIGN KEY (batch_id) REFERENCES batch_ids (batch_id) ON DELETE CASCADE;

CREATE TRIGGER batches_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON batches
    FOR EACH ROW
    WHEN (current_setting('batch_history.bulk_load', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION batches_notify_change();
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

-- The planner's figures for the copied months, before the first listing.
ANALYZE batches;
