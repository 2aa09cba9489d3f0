//! Bulk loading of whole batches (the SQLite importer's write side): one
//! binary COPY into a staging table, then set-based statements, all in one
//! transaction.

use std::pin::Pin;

use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Json, types::Type};

use super::StoreError;
use crate::config::DatabaseConfig;
use crate::domain::{Batch, BatchId};

/// What to do with a batch whose id is stored with other content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Write nothing at all.
    Fail,
    /// Keep the stored batch, import the rest.
    Skip,
}

/// What a bulk load found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Batches written (or that would be, on a dry run).
    pub imported: u64,
    /// Batches already stored with the same content.
    pub already_present: u64,
    /// Batches stored under the same id with other content.
    pub conflicts: Vec<BatchId>,
    /// Whether the transaction was committed.
    pub committed: bool,
}

const STAGE: &str = "CREATE TEMPORARY TABLE import_batches (LIKE batches) ON COMMIT DROP";

const COPY: &str = "COPY import_batches (batch_id, state, provider, model, topic_filter, \
     difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, \
     errors, error_count, model_switches, metadata, start_time, end_time, update_time, version) \
     FROM STDIN (FORMAT binary)";

const COPY_TYPES: [Type; 18] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::INT8,
    Type::JSONB,
    Type::INT8,
    Type::JSONB,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT8,
];

/// Staged batches whose id is stored: how many are identical, and which
/// differ. Update time and version are not content: they only say when and
/// how often a batch was written.
const COMPARE: &str = "SELECT
        count(*) FILTER (WHERE same),
        coalesce(array_agg(batch_id ORDER BY batch_id) FILTER (WHERE NOT same), '{}')
    FROM (
        SELECT s.batch_id,
               (s.state, s.provider, s.model, s.topic_filter, s.difficulty_filter,
                s.reasoning_instruction, s.target_count, s.samples_generated, s.total_tokens,
                s.errors, s.error_count, s.model_switches, s.metadata, s.start_time, s.end_time)
               IS NOT DISTINCT FROM
               (b.state, b.provider, b.model, b.topic_filter, b.difficulty_filter,
                b.reasoning_instruction, b.target_count, b.samples_generated, b.total_tokens,
                b.errors, b.error_count, b.model_switches, b.metadata, b.start_time, b.end_time)
               AS same
        FROM import_batches s JOIN batches b USING (batch_id)
    ) AS stored";

const INSERT: &str =
    "INSERT INTO batches SELECT * FROM import_batches ON CONFLICT (batch_id) DO NOTHING";

/// A bulk load in progress: a transaction on a dedicated connection with a
/// binary COPY into the staging table open. Batches stream in with
/// [`BulkLoad::write`]; [`BulkLoad::finish`] writes those not stored yet, and
/// dropping the load without finishing it writes nothing.
pub struct BulkLoad {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    writer: Pin<Box<BinaryCopyInWriter>>,
    staged: u64,
}

impl BulkLoad {
    /// Connects, opens the transaction and starts the COPY.
    pub async fn begin(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let (client, connection) =
            tokio::time::timeout(config.timeout, config.pg.connect(super::connector()?))
                .await
                .map_err(|_| StoreError::TimedOut(config.timeout))??;
        let connection = tokio::spawn(connection);
        // The transaction is driven by hand so that the load can own its
        // connection; if the load is dropped midway, closing the connection
        // rolls it back.
        client.batch_execute("BEGIN").await?;
        // Watchers are not told of each imported row (see migration V2).
        client
            .batch_execute("SET LOCAL batch_history.bulk_load = 'on'")
            .await?;
        client.batch_execute(STAGE).await?;
        let sink = client.copy_in(COPY).await?;
        Ok(Self {
            client,
            connection,
            writer: Box::pin(BinaryCopyInWriter::new(sink, &COPY_TYPES)),
            staged: 0,
        })
    }

    /// Stages one batch.
    pub async fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.writer
            .as_mut()
            .write(&[
                &batch.batch_id.as_str(),
                &batch.state.as_str(),
                &batch.provider,
                &batch.model,
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
            ])
            .await?;
        self.staged += 1;
        Ok(())
    }

    /// Compares the staged batches with the stored ones and writes those not
    /// stored yet. Stored batches with the same content are counted and left
    /// alone; stored batches with other content are conflicts, handled as
    /// `on_conflict` says. A dry run does all of it, then rolls back.
    pub async fn finish(
        mut self,
        on_conflict: OnConflict,
        dry_run: bool,
    ) -> Result<LoadOutcome, StoreError> {
        self.writer.as_mut().finish().await?;
        tracing::info!(rows = self.staged, "staged");

        let comparison = self.client.query_one(COMPARE, &[]).await?;
        let already_present = comparison.try_get::<_, i64>(0)?.unsigned_abs();
        let conflicts = comparison
            .try_get::<_, Vec<String>>(1)?
            .into_iter()
            .map(|id| {
                BatchId::parse(id).map_err(|e| StoreError::internal("reading a staged id", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(
            already_present,
            conflicts = conflicts.len(),
            "compared with stored batches"
        );

        let mut outcome = LoadOutcome {
            already_present,
            conflicts,
            ..LoadOutcome::default()
        };
        if !outcome.conflicts.is_empty() && on_conflict == OnConflict::Fail {
            self.client.batch_execute("ROLLBACK").await?;
        } else {
            outcome.imported = self.client.execute(INSERT, &[]).await?;
            if dry_run {
                self.client.batch_execute("ROLLBACK").await?;
            } else {
                self.client.batch_execute("COMMIT").await?;
                outcome.committed = true;
            }
        }
        self.close().await;
        Ok(outcome)
    }

    /// Gives up: nothing is written.
    pub async fn abandon(self) {
        self.close().await;
    }

    async fn close(self) {
        drop(self.writer);
        drop(self.client);
        // The connection task ends once the client is gone; its result adds nothing.
        let _ = self.connection.await;
    }
}
