-- Progress reports that carried a request id (AIP-155), so that a retry is
-- answered without being applied again. Kept for 24 hours by the upkeep task;
-- deleted with their batch.
CREATE TABLE batch_requests (
    request_id  uuid PRIMARY KEY,
    batch_id    text COLLATE "C" NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
    -- SHA-256 of the request as sent, which tells a retry from a different
    -- request reusing the id.
    fingerprint bytea NOT NULL CHECK (octet_length(fingerprint) = 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The upkeep task deletes by age; deleting a batch looks its requests up.
CREATE INDEX batch_requests_created_at_idx ON batch_requests (created_at);
CREATE INDEX batch_requests_batch_id_idx ON batch_requests (batch_id);
