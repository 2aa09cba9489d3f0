-- The model a batch is using now. `model` stays the one it started with;
-- the legacy dashboard only kept this one, overwriting it at every switch.
ALTER TABLE batches
    ADD COLUMN current_model text NOT NULL DEFAULT ''
    CONSTRAINT batches_current_model_length CHECK (char_length(current_model) <= 256);

-- Not a change watchers need to hear of, row by row (see V2).
SET LOCAL batch_history.bulk_load = 'on';
UPDATE batches
SET current_model = coalesce(nullif(model_switches -> -1 ->> 'to_model', ''), model);

-- What each run of import-sqlite wrote, so that importing the same file
-- again tells a batch the service has changed since (left alone) from a
-- file row that differs from what was imported from it (a conflict). No
-- foreign key: a batch deleted or purged after its import stays recorded,
-- so that re-running the import does not bring it back.
CREATE TABLE batch_imports (
    batch_id       text COLLATE "C" PRIMARY KEY,
    -- md5 of the batch's content columns as imported (see store::import).
    content_digest text        NOT NULL,
    imported_at    timestamptz NOT NULL DEFAULT now()
);
