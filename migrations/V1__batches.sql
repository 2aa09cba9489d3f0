-- One row per generation batch. The checks mirror the domain rules so that no
-- writer, the service or a hand-run psql session, can store an invalid batch.
CREATE TABLE batches (
    -- "C" collation: ids are ASCII, and byte order keeps keyset comparisons cheap.
    -- The length is checked apart from the regex: a bounded repeat such as
    -- {1,100} makes the regex five times slower to evaluate on bulk loads.
    batch_id              text COLLATE "C" PRIMARY KEY
                          CONSTRAINT batches_batch_id_format
                          CHECK (batch_id ~ '^[A-Za-z0-9._-]+$' AND octet_length(batch_id) <= 100),
    state                 text        NOT NULL
                          CONSTRAINT batches_state_known CHECK (state IN ('RUNNING', 'COMPLETED', 'STOPPED', 'FAILED')),
    provider              text        NOT NULL DEFAULT '' CHECK (char_length(provider) <= 256),
    model                 text        NOT NULL DEFAULT '' CHECK (char_length(model) <= 256),
    topic_filter          text        NOT NULL DEFAULT '' CHECK (char_length(topic_filter) <= 256),
    difficulty_filter     text        NOT NULL DEFAULT '' CHECK (char_length(difficulty_filter) <= 256),
    reasoning_instruction text        NOT NULL DEFAULT '' CHECK (octet_length(reasoning_instruction) <= 65536),
    target_count          integer     NOT NULL DEFAULT 0 CHECK (target_count >= 0),
    samples_generated     bigint      NOT NULL DEFAULT 0 CHECK (samples_generated >= 0),
    total_tokens          bigint      NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    -- Newest errors only (the service trims to 1,000); error_count counts all.
    errors                jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    error_count           bigint      NOT NULL DEFAULT 0 CHECK (error_count >= jsonb_array_length(errors)),
    model_switches        jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(model_switches) = 'array'),
    metadata              jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    start_time            timestamptz NOT NULL,
    end_time              timestamptz,
    update_time           timestamptz NOT NULL,
    -- Bumped on every modification; the etag is derived from it.
    version               bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    -- Imported history may lack an end time, but a running batch never has one.
    CONSTRAINT batches_running_has_no_end CHECK (state <> 'RUNNING' OR end_time IS NULL),
    CONSTRAINT batches_end_after_start CHECK (end_time >= start_time)
);

-- Keyset pagination walks (start_time, batch_id) in either direction.
CREATE INDEX batches_start_time_idx ON batches (start_time, batch_id);
-- The dashboard's most common filtered listing: batches in a given state.
CREATE INDEX batches_state_start_time_idx ON batches (state, start_time, batch_id);

-- Appends to a JSON array and keeps only its newest max_items elements.
CREATE FUNCTION jsonb_append_keep_newest(items jsonb, additions jsonb, max_items integer)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_array_length(items || additions) <= max_items THEN items || additions
        ELSE (
            SELECT jsonb_agg(item ORDER BY position)
            FROM jsonb_array_elements(items || additions) WITH ORDINALITY AS kept(item, position)
            WHERE position > jsonb_array_length(items || additions) - max_items
        )
    END
$$;
