-- An import now stages the months the history lacks on a connection of its
-- own and commits them before its transaction reads them, so that the same
-- connection can build the months' indexes while the transaction registers
-- the ids and records the batches, each of those on one core: at 10M
-- legacy rows, the builds took most of the 38 to 54 s of moving the months
-- in (docs/PERFORMANCE.md). The import's transaction holds SHARE UPDATE
-- EXCLUSIVE on the batches from before the months are staged until they
-- are moved in, or dropped with `import_months` if it rolls back.

-- Builds on every month of `loaded` (see batches_move_months) the indexes
-- the batches have, each as ATTACH would build it, so that ATTACH finds
-- them and builds none. The key's index is named as ATTACH names it, for
-- batches_move_months to make it the month's primary key.
CREATE FUNCTION batches_index_months(loaded regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    month regclass;
    name text;
    definition text;
    is_key boolean;
BEGIN
    FOR month, name IN
        SELECT c.oid::regclass, c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = loaded
          AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    LOOP
        FOR definition, is_key IN
            SELECT pg_get_indexdef(x.indexrelid), x.indisprimary
            FROM pg_index x
            WHERE x.indrelid = 'batches'::regclass
        LOOP
            -- "CREATE [UNIQUE] INDEX batches_... ON ONLY public.batches USING ..."
            EXECUTE regexp_replace(definition, ' INDEX \S+ ON ONLY \S+ ',
                format(' INDEX %s ON %s ',
                       CASE WHEN is_key THEN quote_ident(name || '_pkey') ELSE '' END,
                       month));
        END LOOP;
    END LOOP;
END
$$;

-- As in V14, and a month that batches_index_months indexed first gets its
-- primary key from the index built for it: ATTACH takes a unique index for
-- the batches' key only if it backs a key of the month.
CREATE OR REPLACE FUNCTION batches_move_months(loaded regclass) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month regclass;
    name text;
    bounds text;
    moved integer := 0;
BEGIN
    -- The bounds are read back as text: in a fixed style, for this call only.
    PERFORM set_config('DateStyle', 'ISO', true), set_config('TimeZone', 'UTC', true);
    FOR month, name, bounds IN
        SELECT c.oid::regclass, c.relname, pg_get_expr(c.relpartbound, c.oid)
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = loaded
    LOOP
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', loaded, month);
        IF to_regclass(quote_ident(name || '_pkey')) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I',
                           month, name || '_pkey', name || '_pkey');
        END IF;
        EXECUTE format('ALTER TABLE batches ATTACH PARTITION %s %s', month, bounds);
        moved := moved + 1;
    END LOOP;
    RETURN moved;
END
$$;

-- Whether the month table named `month` is an import's, staged in
-- `import_months`.
CREATE FUNCTION batches_month_staged(month text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pg_inherits
                   WHERE inhrelid = to_regclass(month)
                     AND inhparent = to_regclass('import_months'))
$$;

-- As in V11, and a month an import holds staged, committed, waits for
-- that import to end (it holds this lock from before staging it), so that
-- a write into the month lands in it once the import moved it in, or in a
-- month of its own if the import rolled back. Staged with nobody holding
-- the lock, the month was left by an import that died: its staging goes,
-- as the next import would drop it.
CREATE OR REPLACE FUNCTION batches_add_month(at timestamptz, parent text DEFAULT 'batches')
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    first timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    month text := 'batches_' || to_char(first, '"y"YYYY"m"MM');
BEGIN
    IF parent = 'batches' AND batches_month_staged(month) THEN
        LOCK TABLE batches IN SHARE UPDATE EXCLUSIVE MODE;
        IF batches_month_staged(month) THEN
            DROP TABLE import_months;
        END IF;
    END IF;
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
