-- The change feed reads a log instead of listening for NOTIFY. PostgreSQL
-- serialises notifying commits on one lock held through the commit's WAL
-- flush (and a synchronous standby's acknowledgement): with a watcher
-- connected, 32 writers committed 0.48 times as fast as with none, 0.38
-- with a synchronous standby (bench/feed_cost.sh, docs/PERFORMANCE.md).
-- Appending a row takes no lock that other writers wait for.
--
-- Each replica's feed reads the rows whose transactions committed between
-- two of its snapshots (PgQ's design): no row is missed or read twice
-- whatever order the transactions end in, and a long transaction holds
-- back only its own rows. `xid` is the writing transaction's id, `position`
-- orders the rows of one transaction. The upkeep deletes rows every feed
-- has read. Replicas older than this migration hear no more changes: their
-- watchers see nothing new until they are upgraded.
--
-- Unlogged: no WAL to write, or for a synchronous standby to acknowledge.
-- A crash empties the table, and a failover leaves it behind, but either
-- also breaks every feed's connection, and a broken feed ends its watch
-- streams (ABORTED: watch again for a fresh snapshot), so nothing is lost
-- that a watcher relies on. Positions need only order one transaction's
-- rows, which one backend writes: each backend takes them 64 at a time
-- rather than queueing for the sequence at every row.
CREATE UNLOGGED TABLE batch_change_log (
    xid      xid8   NOT NULL DEFAULT pg_current_xact_id(),
    position bigint GENERATED ALWAYS AS IDENTITY (CACHE 64),
    notice   json   NOT NULL,
    PRIMARY KEY (xid, position)
);
-- Rows live for seconds: vacuum after every few thousand deleted, rather
-- than after a fifth of a table that is mostly gone by then, and never give
-- the emptied pages back (see V13): every write appends here while anyone
-- watches.
ALTER TABLE batch_change_log SET (autovacuum_vacuum_scale_factor = 0,
                                  autovacuum_vacuum_threshold = 5000,
                                  vacuum_truncate = false);

-- The notices are those V8 sent, logged only while some replica holds a
-- watch lease, and never for a bulk load (the trigger's WHEN, V10).
CREATE FUNCTION batches_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM batch_watch_leases WHERE expires_at > now()) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO batch_change_log (notice) VALUES (json_build_object(
            'op', TG_OP,
            'batch_id', OLD.batch_id,
            'state', OLD.state,
            'provider', OLD.provider,
            'model', OLD.model,
            'topic_filter', OLD.topic_filter,
            'difficulty_filter', OLD.difficulty_filter,
            'labels', OLD.labels,
            'start_time', OLD.start_time));
    ELSE
        INSERT INTO batch_change_log (notice) VALUES (json_build_object(
            'op', TG_OP, 'batch_id', NEW.batch_id, 'version', NEW.version));
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER batches_notify_change ON batches;
DROP FUNCTION batches_notify_change();
CREATE TRIGGER batches_log_change
    AFTER INSERT OR UPDATE OR DELETE ON batches
    FOR EACH ROW
    WHEN (current_setting('batch_history.bulk_load', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION batches_log_change();
