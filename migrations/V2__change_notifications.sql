-- Every change to a batch is announced on channel batch_changes, so that
-- watchers on any replica learn of changes made through any other; but only
-- while some replica holds a watch lease, because PostgreSQL serialises the
-- commits of notifying transactions (measured here: a third of the write
-- throughput), a price worth paying only when someone is watching.
CREATE TABLE batch_watch_leases (
    replica    text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

-- The payload is the operation and the id; listeners read the row themselves
-- (payloads are limited to 8,000 bytes, rows are not). A bulk load (the
-- SQLite importer) sets batch_history.bulk_load for its transaction and is
-- not announced row by row: 100,000 notifications would halve its speed.
CREATE FUNCTION batches_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('batch_history.bulk_load', true) = 'on'
       OR NOT EXISTS (SELECT FROM batch_watch_leases WHERE expires_at > now()) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('batch_changes', TG_OP || ' ' || COALESCE(NEW.batch_id, OLD.batch_id));
    RETURN NULL;
END
$$;

CREATE TRIGGER batches_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON batches
    FOR EACH ROW EXECUTE FUNCTION batches_notify_change();

-- No index on update_time: progress reports change it constantly, and an
-- index would turn those updates from HOT into full ones (a fifth of their
-- throughput, measured). The sweep reads RUNNING batches through the state
-- index instead.

-- Retention purges finished batches by end time.
CREATE INDEX batches_end_time_idx ON batches (end_time) WHERE state <> 'RUNNING';
