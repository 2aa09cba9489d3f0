//! Bulk loading of whole batches (the SQLite importer's write side): one
//! binary COPY into the months the history lacks and a staging table for
//! the others, committed on a connection of its own, then set-based
//! statements in one transaction, while that connection indexes the months.

use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use jiff::Timestamp;
use tokio_postgres::{
    CopyInSink,
    error::SqlState,
    types::{IsNull, Json, ToSql},
};

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

/// Imports run one at a time: each sees what the one before committed, so
/// `batch_imports` has one writer, and the load's table names are free. The
/// lock, held by the import's transaction from before it stages anything
/// until it ends, also keeps any other session from adding a month the
/// import loads whole (migration V17: such a session waits). Writes go on.
const LOCK: &str = "LOCK TABLE batches IN SHARE UPDATE EXCLUSIVE MODE; SAVEPOINT locked";

/// The batches arrive in one COPY into `import_months`, which routes each
/// to its month: the months the history lacks are loaded whole (migration
/// V14), straight into tables of their own without indexes, which then
/// move into the batches, so their rows are written once; the batches of
/// the months the history has are staged in `import_batches`, unlogged,
/// and inserted from there.
///
/// These tables are created, filled and committed on a second connection
/// beside the import's transaction, which then reads them: classifying
/// their batches runs in parallel (half the time on two cores), and that
/// connection builds the months' indexes while the transaction registers
/// the ids and records the batches on one core (migration V17). Tables an
/// import leaves when it dies, before its transaction moved them in or
/// dropped them, the next import drops first, or the first write into one
/// of their months (batches_add_month, V17).
const STAGE: &str = "BEGIN;
    DROP TABLE IF EXISTS import_months;
    CREATE TABLE import_months (LIKE batches INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
        PARTITION BY RANGE (start_time);
    CREATE UNLOGGED TABLE import_batches PARTITION OF import_months DEFAULT";

/// Ends the staging: statistics, so that the statements that read the
/// staged batches join by hashing, then the commit that shows them to the
/// import's transaction. They need only how many rows there are and that
/// the ids are distinct, which a tenth of the default sample tells as
/// well: ANALYZE samples every month apart, 30,000 rows each by default,
/// 1.4 s at 1M rows.
const STAGED: &str = "SET LOCAL default_statistics_target = 10;
    ANALYZE import_months (batch_id);
    COMMIT";

/// Builds the indexes of the months loaded whole, once staged, on the
/// staging connection: one build at a time, on one core, beside the
/// import's transaction.
const INDEX_MONTHS: &str = "SET maintenance_work_mem = '1GB';
    SET max_parallel_maintenance_workers = 0;
    SELECT batches_index_months('import_months')";

/// Undoes all the import's transaction did, in the rollback of a load
/// that is not to be committed, and drops what it staged.
const UNSTAGE: &str = "ROLLBACK TO SAVEPOINT locked; DROP TABLE import_months; COMMIT";

/// Adds to `import_months` the months of `$1` that the history lacks,
/// before any batch is staged: a month added later would have to be
/// checked against every batch staged by then.
const ADD_MONTHS: &str = "SELECT batches_add_month(month, 'import_months')
    FROM unnest($1::timestamptz[]) month";

/// Gives the months just added their bounds as a CHECK, so that moving
/// them into the batches does not scan each to prove them (migration V16;
/// [`MOVE_MONTHS`] drops it once they are in).
const BOUND_MONTHS: &str = "SELECT batches_bound_months('import_months')";

/// A batch's content: the row `$t`'s columns that an import compares, as
/// one row value. Update time and version are not content: they only say
/// when and how often a batch was written.
macro_rules! content {
    ($t:literal) => {
        concat!(
            "(",
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
            ".end_time)"
        )
    };
}

/// The digest an import compares and remembers of the row `$t`: PostgreSQL's
/// 64-bit hash of its content, as 16 hex digits. It hashes the values, not
/// their text, so it needs no fixed time zone or date style, and costs a
/// quarter of the md5 of the text: 1.3 against 5.7 s of one core a million
/// legacy rows (docs/PERFORMANCE.md).
macro_rules! digest {
    ($t:literal) => {
        concat!(
            "lpad(to_hex(hash_record_extended(",
            content!($t),
            ", 0)), 16, '0')"
        )
    };
}

/// The digest earlier versions of the import recorded, still found in
/// `batch_imports` (migration V15): the md5 of the content's text, 32 hex
/// digits. That text depends on the session's time zone and date style,
/// which [`BulkLoad::begin`] fixes.
macro_rules! legacy_digest {
    ($t:literal) => {
        concat!("md5(", content!($t), "::text)")
    };
}

/// Sorts every batch the load holds (s) by what is stored under its id (b,
/// found through the id's registration r) and what an earlier import
/// recorded of it (i). A batch whose content is what was imported before is
/// never a conflict, however the service changed it since; `shifted` marks
/// stored batches that differ from the staged one only in their times, by
/// whole hours; `whole_month` those in a month loaded whole.
const CLASSIFY: &str = concat!(
    "CREATE TEMPORARY TABLE import_classes ON COMMIT DROP AS
    SELECT s.batch_id, s.start_time, digest, i.batch_id IS NOT NULL AS recorded,
        whole_month,
        CASE
            WHEN i.batch_id IS NOT NULL
                AND i.content_digest <> CASE length(i.content_digest)
                    WHEN 32 THEN ",
    legacy_digest!("s"),
    " ELSE digest END THEN 'conflict'
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
    digest!("import_months"),
    " AS digest, tableoid <> 'import_batches'::regclass AS whole_month
          FROM import_months) s
    LEFT JOIN batch_ids r ON r.batch_id = s.batch_id
    LEFT JOIN batches b ON b.start_time = r.start_time AND b.batch_id = r.batch_id
    LEFT JOIN batch_imports i ON i.batch_id = s.batch_id
    -- Written in key order, once, by parallel workers: the ids and the
    -- import records are inserted in that order (see REGISTER).
    ORDER BY s.batch_id"
);

/// How many batches fell in each class, how many conflicts differ by whole
/// hours, and how many batches of the months loaded whole are not new. A
/// batch a call created with one of the file's ids while it was being
/// imported is a conflict too: the import did not compare it.
const COUNT_CLASSES: &str = "SELECT
        count(*) FILTER (WHERE class = 'new'),
        count(*) FILTER (WHERE class = 'present'),
        count(*) FILTER (WHERE class = 'changed'),
        count(*) FILTER (WHERE class = 'conflict' AND shifted),
        coalesce(array_agg(batch_id ORDER BY batch_id)
            FILTER (WHERE class IN ('conflict', 'taken')), '{}'),
        count(*) FILTER (WHERE whole_month AND class <> 'new')
    FROM import_classes";

/// Clears the ids of the new batches that are registered to no batch (their
/// month was dropped whole, and the upkeep has yet to clear them).
const FORGET_STALE_IDS: &str = "DELETE FROM batch_ids i USING import_classes c
    WHERE c.class = 'new' AND i.batch_id = c.batch_id
      AND NOT EXISTS (
          SELECT FROM batches b WHERE b.start_time = i.start_time AND b.batch_id = i.batch_id)";

/// Registers the ids of the new batches, in key order, which grows the
/// index at its right edge: the order [`CLASSIFY`] wrote them in, which a
/// scan of a temporary table keeps (it never starts midway, as a
/// synchronized scan of a shared table may). Sorting here again took 13 s
/// of the 37 at 10M rows. Fails if a call created one of the ids since
/// they were sorted: twice as fast as checking each id (ON CONFLICT) for a
/// race that is rare.
const REGISTER: &str = "INSERT INTO batch_ids (batch_id, start_time)
    SELECT batch_id, start_time FROM import_classes WHERE class = 'new'";

/// [`REGISTER`] when it lost that race: registers the ids no call took
/// meanwhile and marks the others taken.
const REGISTER_UNTAKEN: &str = "WITH registered AS (
        INSERT INTO batch_ids (batch_id, start_time)
        SELECT batch_id, start_time FROM import_classes WHERE class = 'new'
        ORDER BY batch_id
        ON CONFLICT (batch_id) DO NOTHING
        RETURNING batch_id
    )
    UPDATE import_classes SET class = 'taken'
    WHERE class = 'new' AND batch_id NOT IN (SELECT batch_id FROM registered)";

/// Writes the registered batches staged for months the history has (every
/// such month is one: the load added the others to `import_months`).
const WRITE: &str = "INSERT INTO batches
    SELECT s.* FROM import_batches s
    WHERE s.batch_id IN (
        SELECT batch_id FROM import_classes WHERE class = 'new' AND NOT whole_month)
    -- In the order of the start time indexes, which then grow at their
    -- right edge: half the time of inserting in the file's order.
    ORDER BY s.start_time, s.batch_id";

/// Records what this import holds true of every batch it wrote or found as
/// it is in the file, in key order, as the ids are (see [`REGISTER`]).
const RECORD: &str = "INSERT INTO batch_imports (batch_id, content_digest)
    SELECT batch_id, digest FROM import_classes
    WHERE class = 'new' OR (class = 'present' AND NOT recorded)";

/// Whether no import has recorded anything yet.
const NONE_RECORDED: &str = "SELECT NOT EXISTS (SELECT FROM batch_imports)";

/// Before the first import's [`RECORD`]: its records' index is built
/// after them in one sorted pass ([`KEY_RECORDS`]) instead of growing a
/// record at a time, 15.6 against 18.3 s for 10M records
/// (docs/PERFORMANCE.md). The lock this takes stops no one: only imports
/// read the records, one at a time.
const UNKEY_RECORDS: &str = "ALTER TABLE batch_imports DROP CONSTRAINT batch_imports_pkey";

/// Builds the index [`UNKEY_RECORDS`] dropped.
const KEY_RECORDS: &str =
    "ALTER TABLE batch_imports ADD CONSTRAINT batch_imports_pkey PRIMARY KEY (batch_id)";

/// Takes out of the months loaded whole the batches that are not new there:
/// ids stored (or taken meanwhile) in another month.
const UNLOAD_NOT_NEW: &str = "DELETE FROM import_months m USING import_classes c
    WHERE c.whole_month AND c.class <> 'new' AND m.batch_id = c.batch_id";

/// Counts the months loaded whole in the daily totals, as
/// batch_totals_record (migration V9) counts the batches' inserts, keys
/// them by the indexes built beside the import (V17), moves them into the
/// batches, and drops what only the import needed: the
/// staging tables and the months' [`BOUND_MONTHS`] checks. The totals are
/// summed into a table of their own first, because PostgreSQL reads in
/// parallel for CREATE TABLE AS but not for INSERT: a third less time.
const MOVE_MONTHS: &str = "DROP TABLE import_batches;
    CREATE TEMPORARY TABLE import_totals ON COMMIT DROP AS
    SELECT (start_time AT TIME ZONE 'UTC')::date AS day, state, provider, model,
           count(*) AS batches, sum(samples_generated) AS samples,
           sum(total_tokens) AS tokens
    FROM import_months
    GROUP BY 1, 2, 3, 4;
    INSERT INTO batch_total_changes (day, state, provider, model, batches, samples, tokens)
    SELECT day, state, provider, model, batches, samples, tokens FROM import_totals;
    SELECT batches_key_months('import_months');
    SELECT batches_move_months('import_months');
    SELECT batches_unbound_months();
    DROP TABLE import_months";

/// A bulk load in progress: a transaction on a dedicated connection that
/// holds the batches' import lock, and a second connection with a binary
/// COPY into `import_months` open in its own transaction (see [`STAGE`]).
/// Rows encoded by [`StagedRows`] stream in with [`BulkLoad::stage`];
/// [`BulkLoad::finish`] writes the batches not stored yet, and dropping
/// the load without finishing it writes nothing to the history.
pub struct BulkLoad {
    /// The import's transaction.
    main: Session,
    /// Stages the batches and indexes the months loaded whole.
    staging: Session,
    sink: Pin<Box<CopyInSink<Bytes>>>,
    /// Batches copied so far.
    staged: u64,
}

/// A dedicated connection. Transactions on it are driven by hand so that
/// the load can own it; closing it rolls back any still open.
struct Session {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Session {
    async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let (client, connection) = tokio::time::timeout(
            config.timeout,
            config.session().connect(super::connector()?),
        )
        .await
        .map_err(|_| StoreError::TimedOut(config.timeout))??;
        Ok(Self {
            client,
            connection: tokio::spawn(connection),
        })
    }

    async fn close(self) {
        drop(self.client);
        // The connection task ends once the client is gone; its result adds nothing.
        let _ = self.connection.await;
    }
}

/// Starts PostgreSQL's binary COPY format: signature, flags, no extension.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Ends the binary COPY: a field count of -1.
const COPY_TRAILER: &[u8] = &[0xff, 0xff];

/// Batches encoded as rows of the load's binary COPY, a chunk at a
/// time, so that encoding can run on the thread that reads them and the
/// connection is woken once per chunk, not once per row. tokio-postgres's
/// `BinaryCopyInWriter` encodes the same format, but only inside the async
/// COPY, flushing every 4 kB.
#[derive(Default)]
pub struct StagedRows {
    encoded: BytesMut,
    rows: u64,
}

/// A chunk of [`StagedRows`], ready to send.
pub struct StagedChunk {
    encoded: Bytes,
    rows: u64,
}

impl StagedRows {
    /// Size at which a chunk is worth sending.
    const CHUNK_BYTES: usize = 1 << 20;

    /// Encodes one batch.
    pub(crate) fn push(&mut self, batch: &Batch) -> Result<(), StoreError> {
        // One value per column: a column added to the COPY without its value
        // here does not compile.
        let values: [&(dyn ToSql + Sync); COLUMN_TYPES.len()] = [
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
        ];
        self.encoded.put_i16(COLUMN_TYPES.len() as i16);
        for (value, column_type) in values.into_iter().zip(COLUMN_TYPES) {
            let at = self.encoded.len();
            self.encoded.put_i32(0);
            let length = match value
                .to_sql_checked(column_type, &mut self.encoded)
                .map_err(|e| StoreError::internal("encoding a batch to stage", e))?
            {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(self.encoded.len() - at - 4)
                    .map_err(|e| StoreError::internal("encoding a batch to stage", e))?,
            };
            self.encoded[at..at + 4].copy_from_slice(&length.to_be_bytes());
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows encoded so far, once they are worth sending.
    pub(crate) fn full_chunk(&mut self) -> Option<StagedChunk> {
        (self.encoded.len() >= Self::CHUNK_BYTES).then(|| self.take())
    }

    /// The rows encoded so far.
    pub(crate) fn take(&mut self) -> StagedChunk {
        StagedChunk {
            encoded: self.encoded.split().freeze(),
            rows: std::mem::take(&mut self.rows),
        }
    }
}

impl BulkLoad {
    /// Connects, opens the transaction, makes room for the batches that
    /// start in `months` (every month they may start in; see [`STAGE`]),
    /// and starts the COPY.
    pub(crate) async fn begin(
        config: &DatabaseConfig,
        months: &[Timestamp],
    ) -> Result<Self, StoreError> {
        let main = Session::open(config).await?;
        // Watchers are not told of each imported row (see migration V2).
        // Sorts, joins and index builds over millions of rows stay in
        // memory longer: 10M legacy rows took 479 s against 602 s with the
        // defaults (docs/PERFORMANCE.md). The planner prices a digest like
        // a comparison, so it would sort the batches on one core only to
        // save handing a million rows over from the workers. The classes'
        // ANALYZE takes the smaller sample that [`STAGED`] explains.
        main.client
            .batch_execute(
                "BEGIN; \
                 SET LOCAL batch_history.bulk_load = 'on'; \
                 SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; \
                 SET LOCAL work_mem = '256MB'; SET LOCAL maintenance_work_mem = '1GB'; \
                 SET LOCAL parallel_tuple_cost = 0.01; \
                 SET LOCAL default_statistics_target = 10",
            )
            .await?;
        main.client.batch_execute(LOCK).await?;
        let staging = Session::open(config).await?;
        staging.client.batch_execute(STAGE).await?;
        staging.client.execute(ADD_MONTHS, &[&months]).await?;
        staging.client.batch_execute(BOUND_MONTHS).await?;
        let mut sink = Box::pin(staging.client.copy_in(COPY_TO_STAGE).await?);
        sink.send(Bytes::from_static(COPY_HEADER)).await?;
        Ok(Self {
            main,
            staging,
            sink,
            staged: 0,
        })
    }

    /// Stages a chunk of batches.
    pub(crate) async fn stage(&mut self, chunk: StagedChunk) -> Result<(), StoreError> {
        if !chunk.encoded.is_empty() {
            self.sink.send(chunk.encoded).await?;
        }
        self.staged += chunk.rows;
        Ok(())
    }

    /// Sorts the staged batches against the stored ones and writes those
    /// not stored yet, then commits if `commit` says so given what was
    /// found, else rolls everything back and drops what it staged.
    pub(crate) async fn finish(
        mut self,
        commit: impl FnOnce(&LoadOutcome) -> bool,
    ) -> Result<LoadOutcome, StoreError> {
        self.sink.send(Bytes::from_static(COPY_TRAILER)).await?;
        self.sink.as_mut().finish().await?;
        self.staging.client.batch_execute(STAGED).await?;
        tracing::info!(rows = self.staged, "staged");

        let (counts, ()) = tokio::try_join!(self.compare_and_write(), self.index_months())?;
        let count = |index| Ok::<_, StoreError>(counts.try_get::<_, i64>(index)?.unsigned_abs());
        let mut outcome = LoadOutcome {
            imported: count(0)?,
            already_present: count(1)?,
            changed_since_import: count(2)?,
            conflicts_shifted_by_hours: count(3)?,
            conflicts: counts
                .try_get::<_, Vec<String>>(4)?
                .into_iter()
                .map(|id| {
                    BatchId::parse(id).map_err(|e| StoreError::internal("reading a staged id", e))
                })
                .collect::<Result<Vec<_>, _>>()?,
            committed: false,
        };
        if count(5)? > 0 {
            self.main.client.batch_execute(UNLOAD_NOT_NEW).await?;
        }
        self.main.client.batch_execute(MOVE_MONTHS).await?;
        tracing::info!(
            imported = outcome.imported,
            already_present = outcome.already_present,
            changed_since_import = outcome.changed_since_import,
            conflicts = outcome.conflicts.len(),
            "compared with stored batches"
        );
        if commit(&outcome) {
            self.main.client.batch_execute("COMMIT").await?;
            outcome.committed = true;
        } else {
            self.main.client.batch_execute(UNSTAGE).await?;
        }
        self.close().await;
        Ok(outcome)
    }

    /// Sorts the staged batches into classes, writes the new ones and
    /// records what was found; returns the classes' counts
    /// ([`COUNT_CLASSES`]).
    async fn compare_and_write(&self) -> Result<tokio_postgres::Row, StoreError> {
        let main = &self.main.client;
        main.batch_execute(CLASSIFY).await?;
        main.batch_execute("ANALYZE import_classes").await?;
        main.batch_execute(FORGET_STALE_IDS).await?;
        self.register().await?;
        main.batch_execute(WRITE).await?;
        self.record().await?;
        Ok(main.query_one(COUNT_CLASSES, &[]).await?)
    }

    /// Builds the indexes of the months loaded whole (see [`INDEX_MONTHS`]).
    async fn index_months(&self) -> Result<(), StoreError> {
        Ok(self.staging.client.batch_execute(INDEX_MONTHS).await?)
    }

    /// Registers the new batches' ids, leaving out any a call took since
    /// they were sorted.
    async fn register(&self) -> Result<(), StoreError> {
        self.main.client.batch_execute("SAVEPOINT register").await?;
        match self.main.client.batch_execute(REGISTER).await {
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                self.main
                    .client
                    .batch_execute("ROLLBACK TO SAVEPOINT register")
                    .await?;
                self.main.client.batch_execute(REGISTER_UNTAKEN).await?;
                Ok(())
            }
            registered => Ok(registered?),
        }
    }

    /// Records what the import found of each batch it wrote or found.
    async fn record(&self) -> Result<(), StoreError> {
        let first: bool = self
            .main
            .client
            .query_one(NONE_RECORDED, &[])
            .await?
            .try_get(0)?;
        if first {
            self.main.client.batch_execute(UNKEY_RECORDS).await?;
        }
        self.main.client.batch_execute(RECORD).await?;
        if first {
            self.main.client.batch_execute(KEY_RECORDS).await?;
        }
        Ok(())
    }

    /// Gives up: nothing is written.
    pub(crate) async fn abandon(self) {
        self.close().await;
    }

    async fn close(self) {
        drop(self.sink);
        self.staging.close().await;
        self.main.close().await;
    }
}
