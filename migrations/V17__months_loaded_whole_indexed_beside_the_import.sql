-- An import now stages the months the history lacks on a connection of its
-- own and commits them before its transaction reads them, so that the same
-- connection can build the months' indexes while the transaction registers
-- the ids and records the batches, each of those on one core: at 10M
-- legacy rows, the builds took most of the 34 to 54 s of moving the months
-- in (docs/PERFORMANCE.md). The import's transaction holds SHARE UPDATE
-- EXCLUSIVE on the batches from before the months are staged until they
-- are moved in, or dropped with `import_months` if it rolls back.

-- Builds on every month of `loaded` (see batches_move_months) the indexes
-- the batches have, each as ATTACH would build it, so that ATTACH finds
-- them and builds none. The key's index is named as ATTACH names it, for
-- batches_key_months to make it the month's primary key.
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

-- Makes the key's index that batches_index_months built on each month of
-- `loaded` the month's primary key: ATTACH takes a unique index for the
-- batches' key only if it backs a key of the month.
CREATE FUNCTION batches_key_months(loaded regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    month regclass;
    key text;
BEGIN
    FOR month, key IN
        SELECT c.oid::regclass, c.relname || '_pkey'
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = loaded AND to_regclass(quote_ident(c.relname || '_pkey')) IS NOT NULL
    LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I',
                       month, key, key);
    END LOOP;
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

-- Adds a month as V11's function did, now under another name, once an
-- import that holds the month staged, committed, has ended: it holds this
-- lock from before staging it, so that a write into the month lands in it
-- once the import moved it in, or in a month of its own if the import
-- rolled back. Staged with nobody holding the lock, the month was left by
-- an import that died: its staging goes, as the next import would drop it.
ALTER FUNCTION batches_add_month(timestamptz, text) RENAME TO batches_create_month;

CREATE FUNCTION batches_add_month(at timestamptz, parent text DEFAULT 'batches')
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    month text := 'batches_' || to_char(date_trunc('month', at AT TIME ZONE 'UTC'), '"y"YYYY"m"MM');
BEGIN
    IF parent = 'batches' AND batches_month_staged(month) THEN
        LOCK TABLE batches IN SHARE UPDATE EXCLUSIVE MODE;
        IF batches_month_staged(month) THEN
            DROP TABLE import_months;
        END IF;
    END IF;
    RETURN batches_create_month(at, parent);
END
$$;
