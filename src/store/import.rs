//! Bulk loading of whole batches (the SQLite importer's write side): one
//! binary COPY into a staging table, then set-based statements, all in one
//! transaction.

use std::pin::Pin;

use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Json};

use super::DatabaseConfig;
use super::StoreError;
use super::sql::{COLUMN_TYPES, COPY_TO_STAGE};
use crate::domain::{Batch, BatchId};

/// What to do with a batch whose id is stored with other content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Write nothing at all.
    Fail,
    /// Keep the stored batch, import the rest.
    Skip,
}

/// What a bulk load found and did. Every staged batch is counted once:
/// imported, already present, changed since its import, or a conflict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Batches written (or that would be, had the load been committed).
    pub(crate) imported: u64,
    /// Batches stored with the same content.
    pub(crate) already_present: u64,
    /// Batches an earlier import wrote, with the same content as now, that
    /// the service has changed (or deleted) since: left as they are.
    pub(crate) changed_since_import: u64,
    /// Batches stored with other content that no import of this content
    /// explains: a file row that differs from what was imported from it, or
    /// an id the service created with other content.
    pub(crate) conflicts: Vec<BatchId>,
    /// Conflicts whose stored batch differs only in times, by whole hours:
    /// the mark of a wrong source time zone.
    pub(crate) conflicts_shifted_by_hours: u64,
    /// Whether the transaction was committed.
    pub(crate) committed: bool,
}

const STAGE: &str = "CREATE TEMPORARY TABLE import_batches (LIKE batches) ON COMMIT DROP";

/// A batch's content, as the digest an import compares and remembers, of
/// the row `$t`. Update time and version are not content: they only say when
/// and how often a batch was written. The text of a row depends on the
/// session's time zone and date style, which [`BulkLoad::begin`] fixes.
macro_rules! digest {
    ($t:literal) => {
        concat!(
            "md5((",
            $t,
            ".state, ",
            $t,
            ".provider, ",
            $t,
            ".model, ",
            $t,
            ".current_model, ",
            $t,
            ".topic_filter, ",
            $t,
            ".difficulty_filter, ",
            $t,
            ".reasoning_instruction, ",
            $t,
            ".target_count, ",
            $t,
            ".samples_generated, ",
            $t,
            ".total_tokens, ",
            $t,
            ".errors, ",
            $t,
            ".error_count, ",
            $t,
            ".model_switches, ",
            $t,
            ".metadata, ",
            $t,
            ".start_time, ",
            $t,
            ".end_time)::text)"
        )
    };
}

/// Sorts every staged batch (s) by what is stored under its id (b) and what
/// an earlier import recorded of it (i). A batch whose content is what was
/// imported before is never a conflict, however the service changed it
/// since; `shifted` marks stored batches that differ from the staged one
/// only in their times, by whole hours.
const CLASSIFY: &str = concat!(
    "CREATE TEMPORARY TABLE import_classes ON COMMIT DROP AS
    SELECT batch_id, digest,
        CASE
            WHEN i.batch_id IS NOT NULL AND i.content_digest <> digest THEN 'conflict'
            WHEN b.batch_id IS NULL AND i.batch_id IS NOT NULL THEN 'changed'
            WHEN b.batch_id IS NULL THEN 'new'
            WHEN ",
    digest!("b"),
    " = digest THEN 'present'
            WHEN i.batch_id IS NOT NULL THEN 'changed'
            ELSE 'conflict'
        END AS class,
        b.start_time <> s.start_time
            AND extract(epoch FROM b.start_time - s.start_time) % 3600 = 0
            AND (b.state, b.model, b.current_model, b.topic_filter, b.difficulty_filter,
                 b.reasoning_instruction, b.target_count, b.samples_generated, b.total_tokens,
                 b.error_count)
              = (s.state, s.model, s.current_model, s.topic_filter, s.difficulty_filter,
                 s.reasoning_instruction, s.target_count, s.samples_generated, s.total_tokens,
                 s.error_count) AS shifted
    FROM (SELECT *, ",
    digest!("import_batches"),
    " AS digest FROM import_batches) s
    LEFT JOIN batches b USING (batch_id)
    LEFT JOIN batch_imports i USING (batch_id)"
);

/// How many staged batches fell in each class, and how many conflicts
/// differ by whole hours.
const COUNT_CLASSES: &str = "SELECT
        count(*) FILTER (WHERE class = 'present'),
        count(*) FILTER (WHERE class = 'changed'),
        count(*) FILTER (WHERE class = 'conflict' AND shifted),
        coalesce(array_agg(batch_id ORDER BY batch_id) FILTER (WHERE class = 'conflict'), '{}')
    FROM import_classes";

/// Months the history lacks are loaded whole (migration V14): into months
/// of this table, which has no indexes, then moved into the batches, whose
/// indexes ATTACH then builds in one sorted pass each. The lock, held to the
/// end, keeps any other session from adding one of those months meanwhile
/// (and a second import waits here for the first).
const LOAD_WHOLE_MONTHS: &str = "LOCK TABLE batches IN SHARE UPDATE EXCLUSIVE MODE;
    CREATE TABLE import_months (LIKE batches INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
        PARTITION BY RANGE (start_time);
    -- Counted in the daily totals as the batches' writes are.
    CREATE TRIGGER import_months_totals AFTER INSERT ON import_months
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION batch_totals_record()";

/// Adds the months the new batches start in that the history lacks, to
/// `import_months`, and remembers which they are.
const ADD_MONTHS: &str = "CREATE TEMPORARY TABLE import_new_months ON COMMIT DROP AS
    SELECT month FROM (
        SELECT DISTINCT date_trunc('month', s.start_time, 'UTC') AS month
        FROM import_batches s JOIN import_classes c USING (batch_id)
        WHERE c.class = 'new'
    ) months
    WHERE batches_add_month(month, 'import_months')";

/// Moves the loaded months into the batches.
const MOVE_MONTHS: &str = "SELECT batches_move_months('import_months'); DROP TABLE import_months";

/// Clears the ids of the new batches that are registered to no batch (their
/// month was dropped whole, and the upkeep has yet to clear them).
const FORGET_STALE_IDS: &str = "DELETE FROM batch_ids i USING import_classes c
    WHERE c.class = 'new' AND i.batch_id = c.batch_id
      AND NOT EXISTS (
          SELECT FROM batches b WHERE b.start_time = i.start_time AND b.batch_id = i.batch_id)";

/// Writes the new batches and records what this import holds true of every
/// batch it wrote or found as it is in the file; returns how many it wrote.
const INSERT: &str = "WITH registered AS (
        INSERT INTO batch_ids (batch_id, start_time)
        SELECT s.batch_id, s.start_time FROM import_batches s JOIN import_classes c USING (batch_id)
        WHERE c.class = 'new'
        -- In key order, which grows the index at its right edge.
        ORDER BY s.batch_id
        -- Registered since the batches were sorted: another call created it.
        ON CONFLICT (batch_id) DO NOTHING
        RETURNING batch_id
    ), into_history AS (
        INSERT INTO batches
        SELECT s.* FROM import_batches s JOIN registered USING (batch_id)
        WHERE date_trunc('month', s.start_time, 'UTC') NOT IN (SELECT month FROM import_new_months)
        -- In the order of the start time indexes, which then grow at their
        -- right edge: half the time of inserting in the file's order.
        ORDER BY s.start_time, s.batch_id
        RETURNING batch_id
    ), into_new_months AS (
        INSERT INTO import_months
        SELECT s.* FROM import_batches s JOIN registered USING (batch_id)
        WHERE date_trunc('month', s.start_time, 'UTC') IN (SELECT month FROM import_new_months)
        -- Stored as listings read them.
        ORDER BY s.start_time, s.batch_id
        RETURNING batch_id
    ), inserted AS (
        SELECT batch_id FROM into_history UNION ALL SELECT batch_id FROM into_new_months
    ), recorded AS (
        INSERT INTO batch_imports (batch_id, content_digest)
        SELECT batch_id, digest FROM import_classes WHERE class = 'present'
        UNION ALL
        SELECT batch_id, digest FROM inserted JOIN import_classes USING (batch_id)
        -- In key order, for the same reason: a third of this insert's time.
        ORDER BY batch_id
        ON CONFLICT (batch_id) DO NOTHING
    )
    SELECT count(*) FROM inserted";

/// A bulk load in progress: a transaction on a dedicated connection with a
/// binary COPY into the staging table open. Batches stream in with
/// [`BulkLoad::write`]; [`BulkLoad::finish`] writes those not stored yet, and
/// dropping the load without finishing it writes nothing.
pub struct BulkLoad {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    writer: Pin<Box<BinaryCopyInWriter>>,
    /// Batches written to the staging table so far.
    staged: u64,
}

impl BulkLoad {
    /// Connects, opens the transaction and starts the COPY.
    pub(crate) async fn begin(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let (client, connection) = tokio::time::timeout(
            config.timeout,
            config.session().connect(super::connector()?),
        )
        .await
        .map_err(|_| StoreError::TimedOut(config.timeout))??;
        let connection = tokio::spawn(connection);
        // The transaction is driven by hand so that the load can own its
        // connection; if the load is dropped midway, closing the connection
        // rolls it back.
        client.batch_execute("BEGIN").await?;
        // Watchers are not told of each imported row (see migration V2).
        // Sorts, joins and index builds over millions of rows stay in
        // memory longer: 10M legacy rows took 479 s against 602 s with the
        // defaults (docs/PERFORMANCE.md).
        client
            .batch_execute(
                "SET LOCAL batch_history.bulk_load = 'on'; \
                 SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; \
                 SET LOCAL work_mem = '256MB'; SET LOCAL maintenance_work_mem = '1GB'",
            )
            .await?;
        client.batch_execute(STAGE).await?;
        let sink = client.copy_in(COPY_TO_STAGE).await?;
        Ok(Self {
            client,
            connection,
            writer: Box::pin(BinaryCopyInWriter::new(sink, COLUMN_TYPES)),
            staged: 0,
        })
    }

    /// Stages one batch.
    pub(crate) async fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.writer
            .as_mut()
            .write(&[
                &batch.batch_id.as_str(),
                &batch.state.as_str(),
                &batch.provider,
                &batch.model,
                &batch.current_model,
                &batch.topic_filter,
                &batch.difficulty_filter,
                &batch.reasoning_instruction,
                &batch.target_count,
                &batch.samples_generated,
                &batch.total_tokens,
                &Json(&batch.errors),
                &batch.error_count,
                &Json(&batch.model_switches),
                &Json(&batch.metadata),
                &batch.start_time,
                &batch.end_time,
                &batch.update_time,
                &batch.version,
                &Json(&batch.labels),
            ])
            .await?;
        self.staged += 1;
        Ok(())
    }

    /// Sorts the staged batches against the stored ones and writes those
    /// not stored yet, then commits if `commit` says so given what was
    /// found, else rolls everything back.
    pub(crate) async fn finish(
        mut self,
        commit: impl FnOnce(&LoadOutcome) -> bool,
    ) -> Result<LoadOutcome, StoreError> {
        self.writer.as_mut().finish().await?;
        tracing::info!(rows = self.staged, "staged");

        // Statistics, so that the statements below join by hashing.
        self.client.batch_execute("ANALYZE import_batches").await?;
        self.client.batch_execute(CLASSIFY).await?;
        self.client.batch_execute("ANALYZE import_classes").await?;
        let counts = self.client.query_one(COUNT_CLASSES, &[]).await?;
        let count = |index| Ok::<_, StoreError>(counts.try_get::<_, i64>(index)?.unsigned_abs());
        let mut outcome = LoadOutcome {
            already_present: count(0)?,
            changed_since_import: count(1)?,
            conflicts_shifted_by_hours: count(2)?,
            conflicts: counts
                .try_get::<_, Vec<String>>(3)?
                .into_iter()
                .map(|id| {
                    BatchId::parse(id).map_err(|e| StoreError::internal("reading a staged id", e))
                })
                .collect::<Result<Vec<_>, _>>()?,
            ..LoadOutcome::default()
        };
        self.client.batch_execute(LOAD_WHOLE_MONTHS).await?;
        self.client.batch_execute(ADD_MONTHS).await?;
        self.client.batch_execute(FORGET_STALE_IDS).await?;
        outcome.imported = self
            .client
            .query_one(INSERT, &[])
            .await?
            .try_get::<_, i64>(0)?
            .unsigned_abs();
        self.client.batch_execute(MOVE_MONTHS).await?;
        tracing::info!(
            imported = outcome.imported,
            already_present = outcome.already_present,
            changed_since_import = outcome.changed_since_import,
            conflicts = outcome.conflicts.len(),
            "compared with stored batches"
        );
        if commit(&outcome) {
            self.client.batch_execute("COMMIT").await?;
            outcome.committed = true;
        } else {
            self.client.batch_execute("ROLLBACK").await?;
        }
        self.close().await;
        Ok(outcome)
    }

    /// Gives up: nothing is written.
    pub(crate) async fn abandon(self) {
        self.close().await;
    }

    async fn close(self) {
        drop(self.writer);
        drop(self.client);
        // The connection task ends once the client is gone; its result adds nothing.
        let _ = self.connection.await;
    }
}
