-- Change notifications become JSON. An insert or update names the row's new
-- version, so that listeners can tell a change they have already seen (a
-- read of the row may run ahead of its notifications) from one they have not.
-- A delete carries what filters look at, so that watchers can filter a batch
-- that is gone. Even at its largest the payload stays below NOTIFY's limit
-- of 8,000 bytes: four labels of at most 256 characters (6 bytes each, at
-- worst, escaped) and an id of at most 100.
CREATE OR REPLACE FUNCTION batches_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('batch_history.bulk_load', true) = 'on'
       OR NOT EXISTS (SELECT FROM batch_watch_leases WHERE expires_at > now()) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('batch_changes', json_build_object(
            'op', TG_OP,
            'batch_id', OLD.batch_id,
            'state', OLD.state,
            'provider', OLD.provider,
            'model', OLD.model,
            'topic_filter', OLD.topic_filter,
            'difficulty_filter', OLD.difficulty_filter,
            'start_time', OLD.start_time)::text);
    ELSE
        PERFORM pg_notify('batch_changes', json_build_object(
            'op', TG_OP, 'batch_id', NEW.batch_id, 'version', NEW.version)::text);
    END IF;
    RETURN NULL;
END
$$;
