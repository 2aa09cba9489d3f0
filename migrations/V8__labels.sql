-- Labels: key-value pairs that separate batches by team, dashboard or
-- environment, filtered on by containment (labels @> '{"env": "prod"}'),
-- which the GIN index answers. The default is a constant, so adding the
-- column rewrites no row; building the index locks out writes while it
-- scans the table (about a second per million batches here).
ALTER TABLE batches ADD COLUMN labels jsonb NOT NULL DEFAULT '{}'::jsonb;
CREATE INDEX batches_labels ON batches USING gin (labels jsonb_path_ops);

-- A deletion's notice also carries the labels, for watchers that filter on
-- them. At most 8 labels of at most 63 + 63 unescaped characters add under
-- 1,100 bytes, so the notice stays below NOTIFY's 8,000 (see V3).
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
            'labels', OLD.labels,
            'start_time', OLD.start_time)::text);
    ELSE
        PERFORM pg_notify('batch_changes', json_build_object(
            'op', TG_OP, 'batch_id', NEW.batch_id, 'version', NEW.version)::text);
    END IF;
    RETURN NULL;
END
$$;
