//! PostgreSQL access: every SQL statement the service runs, behind a pool.
//!
//! Each operation is one round trip where SQL allows it, uses statements
//! prepared once per connection, and gives up after the configured timeout
//! with [`StoreError::TimedOut`] instead of hanging its caller, having
//! cancelled its statement on the server (see `Store::with_connection`).
//! GetBatch, a read on connections that concurrent calls share, is left to
//! finish instead (see `shared_reads`).

mod cancel;
mod changes;
mod connection;
mod error;
mod hot_rows;
mod import;
mod lease;
mod migrate;
mod probe;
mod replica;
mod settings;
mod shared_reads;
mod sql;
mod tls;

use std::{sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::time::Instant;
use tokio_postgres::{
    Row,
    error::SqlState,
    types::{Json, ToSql},
};
use tracing::Instrument;

use crate::domain::{
    Batch, BatchError, BatchFilter, BatchId, BatchStats, Cursor, Finish, ListQuery,
    MAX_KEPT_ERROR_BYTES, MAX_KEPT_ERRORS, MAX_KEPT_SWITCH_BYTES, MAX_KEPT_SWITCHES, NewBatch,
    Page, Progress, Save, StaleThreshold, State, StatsGroup,
};

use cancel::Canceller;
pub use changes::{ChangeListener, DeletedBatch, Notice};
use connection::Connection;
pub use connection::{Pooling, connect_dedicated, detect_pooling};
pub use error::{Counter, StoreError, database_errors};
use hot_rows::HotRows;
pub use import::{BulkLoad, LoadOutcome, OnConflict};
use lease::{CANCEL_GRACE, Lease, Lent};
pub use migrate::{MIGRATION_LOCK_KEY, MigrateError, migrate, set_up};
pub use probe::Probe;
use replica::Replica;
pub use replica::{ReplicaStatus, monitor as monitor_replica};
pub use settings::{DatabaseConfig, InvalidUrl, connection};
use shared_reads::SharedReads;
pub use tls::connector;

/// Key of the transaction-level advisory lock that lets one replica sweep
/// at a time.
const SWEEP_LOCK_KEY: i64 = 0x6268_7377_6565_7000; // "bhsweep"

/// How often [`Store::wait_for_writes_in_progress`] looks again.
const WRITERS_POLL: Duration = Duration::from_millis(5);

/// Rows a purge, or the forgetting of request ids, deletes per statement.
const DELETE_CHUNK_ROWS: i64 = 1_000;

/// How often a write that lost a race with a concurrent writer is retried
/// before it is reported as unavailable. One retry settles every race the
/// statements below can meet; the rest is margin.
const MAX_ATTEMPTS: usize = 5;

/// The batch history in PostgreSQL.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    timeout: Duration,
    pooling: Pooling,
    hot_rows: HotRows,
    canceller: Canceller,
    /// Connections lent out, or closing once their abandoned statement ends.
    lent: Lent,
    /// Set at shutdown, after the drain: operations still running give up,
    /// as at their deadline.
    cut: Arc<tokio::sync::watch::Sender<bool>>,
    /// `DATABASE_READ_URL`'s replica, for listings and stats.
    replica: Option<Arc<Replica>>,
    /// Where GetBatch runs, unless statements cannot be prepared (behind a
    /// transaction pooler).
    shared_reads: Option<Arc<SharedReads>>,
}

/// Where an operation runs: the primary's pool, or the replica's.
#[derive(Clone, Copy)]
struct Target<'s> {
    pool: &'s Pool,
    pooling: Pooling,
    canceller: &'s Canceller,
}

impl Store {
    /// A pool for `config`, whose connections are `pooling`. Connections
    /// are opened on first use.
    pub fn new(config: &DatabaseConfig, pooling: Pooling) -> Result<Self, StoreError> {
        let tls = connector()?;
        let replica = match &config.read {
            // Sent unnamed, as through any pooler: listings and stats are
            // planned in a fraction of their run time (docs/PERFORMANCE.md).
            Some(read) => Some(Arc::new(Replica::new(
                pool(read, config, &tls)?,
                Canceller::new(tls.clone(), read, Pooling::Session),
                config.read_max_lag,
            ))),
            None => None,
        };
        let shared_reads = (pooling == Pooling::Session)
            .then(|| Arc::new(SharedReads::new(config.pg.clone(), config.timeout)));
        Ok(Self {
            pool: pool(&config.pg, config, &tls)?,
            timeout: config.timeout,
            pooling,
            hot_rows: HotRows::default(),
            canceller: Canceller::new(tls, &config.pg, pooling),
            lent: Lent::default(),
            cut: Arc::new(tokio::sync::watch::Sender::new(false)),
            replica,
            shared_reads,
        })
    }

    /// The bound on every operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with_connection(None, async |client| client.simple("SELECT 1").await)
            .await
    }

    /// How the pool is doing: open connections, idle ones, callers waiting.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    /// How many connections beside the pool concurrent GetBatch calls share
    /// now (none behind a transaction pooler).
    pub fn shared_read_connections(&self) -> usize {
        self.shared_reads
            .as_ref()
            .map_or(0, |shared_reads| shared_reads.open_connections())
    }

    /// How many batches are stored in each state.
    pub async fn count_by_state(&self) -> Result<Vec<(State, i64)>, StoreError> {
        self.with_connection(None, async |client| {
            let statement = sql::COUNT_BY_STATE;
            client
                .query(statement, &[])
                .await?
                .iter()
                .map(|row| {
                    let name: &str = row.try_get(0)?;
                    let state = State::from_name(name).ok_or_else(|| {
                        StoreError::internal("counting batches", format!("unknown state {name:?}"))
                    })?;
                    Ok((state, row.try_get(1)?))
                })
                .collect()
        })
        .await
    }

    /// Makes every operation still running give up now, as at its deadline:
    /// its statement is cancelled until it has ended, and it fails
    /// [`StoreError::TimedOut`] (or [`StoreError::OutcomeUnknown`]).
    pub fn cut_in_flight(&self) {
        self.cut.send_replace(true);
    }

    /// Waits until every connection lent to an operation is back, and every
    /// statement given up on has ended, for at most `timeout`; false if
    /// some have not.
    pub async fn all_settled(&self, timeout: Duration) -> bool {
        self.lent.all_returned(timeout).await
    }

    /// Closes the pool: idle connections are dropped, and waiting calls fail.
    pub fn close(&self) {
        self.pool.close();
        if let Some(shared_reads) = &self.shared_reads {
            shared_reads.close();
        }
    }

    /// Creates `batch` in RUNNING, or returns the stored batch if the same
    /// create already happened.
    pub async fn create(&self, batch: &NewBatch) -> Result<Batch, StoreError> {
        self.with_connection(batch.batch_id.as_ref(), async |client| {
            until_decided(move || create_once(client, batch)).await
        })
        .await
    }

    /// The batch with this id.
    pub async fn get(&self, batch_id: &BatchId) -> Result<Batch, StoreError> {
        let row = match &self.shared_reads {
            Some(shared_reads) => shared_reads.get(batch_id).await?,
            None => {
                self.with_connection(None, async |client| {
                    client.query_opt(sql::GET, &[&batch_id.as_str()]).await
                })
                .await?
            }
        };
        match row {
            Some(row) => batch_from_row(&row),
            None => Err(StoreError::NotFound(batch_id.clone())),
        }
    }

    /// Takes or extends this replica's watch lease: while any lease is
    /// live, every change to a batch is announced (see migration V2).
    pub async fn renew_watch_lease(&self, replica: &str, ttl: Duration) -> Result<(), StoreError> {
        self.with_connection(None, async |client| {
            let statement = sql::RENEW_WATCH_LEASE;
            client
                .execute(statement, &[&replica, &ttl.as_secs_f64()])
                .await?;
            Ok(())
        })
        .await
    }

    /// Returns once every write that was in progress when called has ended,
    /// so that writes not announced before a lease was taken are visible to
    /// a snapshot taken afterwards. It watches the writers rather than
    /// queueing for a lock that conflicts with theirs: such a lock would stall
    /// every new write behind a long one, such as an import.
    pub async fn wait_for_writes_in_progress(&self) -> Result<(), StoreError> {
        self.with_connection(None, async |client| {
            let statement = sql::WRITERS_IN_PROGRESS;
            let mut writers: Vec<String> = client
                .query_one(statement, &[&None::<Vec<String>>])
                .await?
                .try_get(0)?;
            while !writers.is_empty() {
                tokio::time::sleep(WRITERS_POLL).await;
                writers = client.query_one(statement, &[&writers]).await?.try_get(0)?;
            }
            Ok(())
        })
        .await
    }

    /// The batches with these ids that exist, in no particular order.
    pub async fn get_many(&self, batch_ids: &[&str]) -> Result<Vec<Batch>, StoreError> {
        self.with_connection(None, async |client| {
            let statement = sql::GET_MANY;
            client
                .query(statement, &[&batch_ids])
                .await?
                .iter()
                .map(batch_from_row)
                .collect()
        })
        .await
    }

    /// One page of batches.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.read(async |client| page(client, query).await).await
    }

    /// One page of batches as the primary has them: for a watch's snapshot,
    /// which must hold every change announced before it was taken.
    pub async fn list_current(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.with_connection(None, async |client| page(client, query).await)
            .await
    }

    /// Applies a progress report to a running batch, once per request id.
    pub async fn record_progress(&self, progress: &Progress) -> Result<Batch, StoreError> {
        self.with_connection(Some(&progress.batch_id), async |client| {
            until_decided(move || record_progress_once(client, progress)).await
        })
        .await
    }

    /// Creates a batch from its whole state, or brings the stored one up to
    /// date unless the stored one is ahead; returns the batch as stored.
    pub async fn save(&self, save: &Save) -> Result<Batch, StoreError> {
        self.with_connection(Some(&save.batch_id), async |client| {
            until_decided(move || save_once(client, save)).await
        })
        .await
    }

    /// Forgets request ids older than `age`; returns how many.
    pub async fn forget_requests(&self, age: Duration) -> Result<u64, StoreError> {
        self.delete_in_chunks(sql::FORGET_REQUESTS, &[&age.as_secs_f64()])
            .await
    }

    /// Moves a running batch to its final state; repeating the same finish
    /// returns the batch unchanged.
    pub async fn finish(&self, finish: &Finish) -> Result<Batch, StoreError> {
        self.with_connection(Some(&finish.batch_id), async |client| {
            until_decided(move || finish_once(client, finish)).await
        })
        .await
    }

    /// Totals over the batches `filter` keeps, in one query.
    pub async fn stats(&self, filter: &BatchFilter) -> Result<BatchStats, StoreError> {
        self.read(async |client| {
            let listing = sql::Listing::stats(filter);
            let statement = listing.statement();
            client
                .query(statement, &listing.params())
                .await?
                .iter()
                .map(|row| {
                    let state: &str = row.try_get(0)?;
                    Ok(StatsGroup {
                        state: State::from_name(state).ok_or_else(|| {
                            StoreError::internal(
                                "reading stats",
                                format!("unknown state {state:?}"),
                            )
                        })?,
                        provider: row.try_get(1)?,
                        model: row.try_get(2)?,
                        batch_count: row.try_get(3)?,
                        samples_generated: row.try_get(4)?,
                        total_tokens: row.try_get(5)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Stops running batches not updated for `stale_after`, unless another
    /// replica is sweeping right now; returns those it stopped.
    pub async fn sweep_stale(&self, stale_after: StaleThreshold) -> Result<Vec<Batch>, StoreError> {
        let stale_after = stale_after.get();
        self.with_connection(None, async |client| {
            let statement = sql::SWEEP_STALE;
            client
                .query(
                    statement,
                    &[
                        &stale_after.as_secs_f64(),
                        &SWEEP_LOCK_KEY,
                        &(MAX_KEPT_ERRORS as i32),
                        &(MAX_KEPT_ERROR_BYTES as i32),
                    ],
                )
                .await?
                .iter()
                .map(batch_from_row)
                .collect()
        })
        .await
    }

    /// Deletes (or on a dry run counts) finished batches that ended before
    /// `older_than` in `states`, in bounded chunks; returns how many.
    pub async fn purge(
        &self,
        older_than: jiff::Timestamp,
        states: &[State],
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let states: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
        if dry_run {
            return self
                .with_connection(None, async |client| {
                    let statement = sql::COUNT_PURGEABLE;
                    let count: i64 = client
                        .query_one(statement, &[&older_than, &states])
                        .await?
                        .try_get(0)?;
                    Ok(count.unsigned_abs())
                })
                .await;
        }
        self.delete_in_chunks(sql::PURGE_CHUNK, &[&older_than, &states])
            .await
    }

    /// Runs `statement`, a DELETE of at most as many rows as its last
    /// parameter says, until it deletes fewer; returns how many in all.
    /// Each chunk is its own bounded operation, so that a long deletion never
    /// holds one connection past the timeout or many row locks at once.
    async fn delete_in_chunks(
        &self,
        statement: sql::Statement<'static>,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .copied()
            .chain([&DELETE_CHUNK_ROWS as _])
            .collect();
        let mut deleted = 0;
        loop {
            let chunk = self
                .with_connection(None, async |client| {
                    client.execute(statement, &params).await
                })
                .await?;
            deleted += chunk;
            if chunk < DELETE_CHUNK_ROWS.unsigned_abs() {
                return Ok(deleted);
            }
        }
    }

    /// Deletes a batch in any state.
    pub async fn delete(&self, batch_id: &BatchId) -> Result<(), StoreError> {
        self.with_connection(Some(batch_id), async |client| {
            let statement = sql::DELETE;
            match client.execute(statement, &[&batch_id.as_str()]).await? {
                0 => Err(StoreError::NotFound(batch_id.clone())),
                _ => Ok(()),
            }
        })
        .await
    }

    /// Runs `operation` on a pooled connection, within the configured
    /// timeout from the moment of the call. Writes to one batch (`batch_id`)
    /// hold at most [`hot_rows::CONNECTIONS_PER_BATCH`] connections; the rest
    /// wait without one.
    ///
    /// A statement still running at the deadline (or when shutdown cuts
    /// in-flight work) is cancelled on the server, again and again until it
    /// ends (dropping the future would leave it running, to take effect
    /// later), and its outcome awaited for [`CANCEL_GRACE`]: a call that
    /// answers [`StoreError::TimedOut`] was not applied. Past the grace, or
    /// when the caller goes away mid-statement, the cancelling goes on in
    /// the background until the statement has ended (see `lease`). A
    /// connection that saw a cancel is not reused, as a cancel request may
    /// land on whatever statement runs next.
    async fn with_connection<T>(
        &self,
        batch_id: Option<&BatchId>,
        operation: impl AsyncFnOnce(&Connection<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let primary = Target {
            pool: &self.pool,
            pooling: self.pooling,
            canceller: &self.canceller,
        };
        self.run_on(primary, batch_id, operation).await
    }

    /// Runs `operation` on the replica.
    async fn on_replica<T>(
        &self,
        replica: &Replica,
        operation: impl AsyncFnOnce(&Connection<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let target = Target {
            pool: &replica.pool,
            pooling: Pooling::Transaction,
            canceller: &replica.canceller,
        };
        self.run_on(target, None, operation).await
    }

    /// Runs a read on the replica while it keeps up, else on the primary.
    /// Any failure on the replica (a read has nothing a caller did wrong to
    /// report) sends the read to the primary, and takes the replica out of
    /// use until the monitor hears from it again.
    async fn read<T>(
        &self,
        operation: impl AsyncFnOnce(&Connection<'_>) -> Result<T, StoreError> + Clone,
    ) -> Result<T, StoreError> {
        if let Some(replica) = self.replica.as_ref().filter(|r| r.status().in_use) {
            match self.on_replica(replica, operation.clone()).await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    tracing::warn!(
                        error = %crate::telemetry::cause_chain(&error),
                        "a read on the replica failed; reading from the primary"
                    );
                    replica.unreachable();
                }
            }
        }
        self.with_connection(None, operation).await
    }

    /// Whether reads go to the replica and how far behind it is, if there
    /// is one.
    pub fn replica_status(&self) -> Option<ReplicaStatus> {
        self.replica.as_ref().map(|replica| replica.status())
    }

    /// [`Self::with_connection`] on `target`.
    async fn run_on<T>(
        &self,
        target: Target<'_>,
        batch_id: Option<&BatchId>,
        operation: impl AsyncFnOnce(&Connection<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let timed_out = |_| StoreError::TimedOut(self.timeout);
        // Spans for OTLP export (telemetry::otlp); disabled, so free, otherwise.
        let checkout = async {
            let permit = match batch_id {
                Some(batch_id) => Some(
                    tokio::time::timeout_at(deadline, self.hot_rows.acquire(batch_id.as_str()))
                        .await
                        .map_err(timed_out)?,
                ),
                None => None,
            };
            let client = tokio::time::timeout_at(deadline, target.pool.get())
                .await
                .map_err(timed_out)??;
            Ok::<_, StoreError>((client, permit))
        };
        let (client, permit) = checkout
            .instrument(tracing::debug_span!("db.pool_wait"))
            .await?;
        let lease = Lease::new(client, permit, target.canceller, &self.lent);
        let mut cut = self.cut.subscribe();
        // Counted as lent before this look: shutdown, which cuts first and
        // then waits for the lent connections, sees this one or stops it here.
        if *cut.borrow_and_update() {
            lease.keep();
            return Err(StoreError::TimedOut(self.timeout));
        }
        let given_up = async move {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        };
        let finished = {
            let connection = Connection::new(lease.client(), target.pooling);
            let mut running = std::pin::pin!(
                operation(&connection).instrument(tracing::debug_span!("db.statement"))
            );
            tokio::select! {
                outcome = &mut running => Ok(outcome),
                () = given_up => Err(tokio::time::timeout(
                    CANCEL_GRACE,
                    lease.cancel_until_ended(running.as_mut()),
                )
                .await),
            }
        };
        let outcome = match finished {
            Ok(outcome) => {
                lease.keep();
                return outcome;
            }
            Err(Ok(ended)) => {
                lease.discard();
                Ok(ended)
            }
            Err(Err(still_running)) => {
                lease.abandon();
                Err(still_running)
            }
        };
        match outcome {
            // It finished before the cancel arrived: the call succeeded, late.
            Ok(Ok(value)) => Ok(value),
            Ok(Err(StoreError::Unavailable(error))) if is_cancelled(&*error) => {
                Err(StoreError::TimedOut(self.timeout))
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StoreError::OutcomeUnknown(self.timeout)),
        }
    }
}

/// A pool of connections to `pg`, opened on first use, bounded as `config` says.
fn pool(
    pg: &tokio_postgres::Config,
    config: &DatabaseConfig,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        pg.clone(),
        tls.clone(),
        ManagerConfig {
            // Fast drops connections the server closed (restarts,
            // terminated backends) without a round trip. Verified adds
            // one round trip to every checkout: 14.4k vs 18.4k GetBatch/s
            // at 32 clients in bench/run.sh on the 2-core dev machine. A
            // connection that breaks without closing fails its statement
            // (UNAVAILABLE), closes, and is dropped at its next checkout.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_max_size)
        .wait_timeout(Some(config.timeout))
        .create_timeout(Some(config.timeout))
        .recycle_timeout(Some(config.timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::internal("building the connection pool", e))
}

/// One page of batches, read on `client`.
async fn page(client: &Connection<'_>, query: &ListQuery) -> Result<Page, StoreError> {
    let listing = sql::Listing::new(query);
    let rows = client.query(listing.statement(), &listing.params()).await?;
    let page_size = usize::from(query.page_size.get());
    let mut batches = rows
        .iter()
        .map(batch_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    // The statement fetches one row more than a page to learn whether
    // another page follows.
    let next = if batches.len() > page_size {
        batches.truncate(page_size);
        batches.last().map(Cursor::after)
    } else {
        None
    };
    Ok(Page { batches, next })
}

/// The primary key of recorded request ids.
const REQUEST_ID_KEY: &str = "batch_requests_pkey";

/// Whether `error` is a unique violation of `constraint`.
fn violates(error: &StoreError, constraint: &str) -> bool {
    error
        .statement_error()
        .and_then(tokio_postgres::Error::as_db_error)
        .is_some_and(|db| {
            *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
        })
}

/// Whether a statement failed because a number left its type's range.
fn is_out_of_range(error: &StoreError) -> bool {
    error
        .statement_error()
        .and_then(tokio_postgres::Error::code)
        == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE)
}

/// Which counter of `progress`'s batch its delta would take past the 64-bit
/// maximum (PostgreSQL's error does not say).
async fn overflowed_counter(client: &Connection<'_>, progress: &Progress) -> StoreError {
    let counters = async {
        let statement = sql::GET;
        let row = client
            .query_one(statement, &[&progress.batch_id.as_str()])
            .await?;
        batch_from_row(&row)
    };
    match counters.await {
        Ok(batch)
            if batch
                .samples_generated
                .checked_add(progress.samples_delta.get())
                .is_none() =>
        {
            StoreError::CounterOverflow(Counter::SamplesGenerated)
        }
        Ok(_) => StoreError::CounterOverflow(Counter::TotalTokens),
        Err(error) => error,
    }
}

/// Whether a statement failed because it was cancelled.
fn is_cancelled(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        == Some(&SqlState::QUERY_CANCELED)
}

/// Runs one attempt of a conditional write after another until one decides
/// (a batch, or an error), at most [`MAX_ATTEMPTS`] times. An attempt that
/// lost a race with a concurrent writer answers `Ok(None)`.
async fn until_decided<F>(mut attempt: impl FnMut() -> F) -> Result<Batch, StoreError>
where
    F: Future<Output = Result<Option<Batch>, StoreError>>,
{
    for _ in 0..MAX_ATTEMPTS {
        if let Some(batch) = attempt().await? {
            return Ok(batch);
        }
    }
    Err(StoreError::Contended)
}

/// One attempt of [`Store::create`].
async fn create_once(
    client: &Connection<'_>,
    batch: &NewBatch,
) -> Result<Option<Batch>, StoreError> {
    let batch_id = match &batch.batch_id {
        Some(id) => id.clone(),
        None => BatchId::generate(jiff::Timestamp::now()),
    };
    let row = client
        .query_opt(
            sql::CREATE,
            &[
                &batch_id.as_str(),
                &batch.provider.as_str(),
                &batch.model.as_str(),
                &batch.topic_filter.as_str(),
                &batch.difficulty_filter.as_str(),
                &batch.reasoning_instruction.as_str(),
                &batch.target_count.get(),
                &Json(batch.metadata.as_map()),
                &batch.start_time,
            ],
        )
        .await?;
    // No row: another create of this id committed after this statement's
    // snapshot was taken, so it is invisible here. Retry.
    let Some(row) = row else { return Ok(None) };
    let stored = batch_from_row(&row)?;
    if row.try_get::<_, bool>("created")? {
        return Ok(Some(stored));
    }
    match &batch.batch_id {
        Some(_) if batch.matches(&stored) => Ok(Some(stored)),
        Some(id) => Err(StoreError::AlreadyExists(id.clone())),
        // A generated id collided: draw another.
        None => Ok(None),
    }
}

/// One attempt of [`Store::record_progress`].
async fn record_progress_once(
    client: &Connection<'_>,
    progress: &Progress,
) -> Result<Option<Batch>, StoreError> {
    let request_id = progress.idempotency.as_ref().map(|i| i.request_id.as_str());
    let fingerprint = progress.idempotency.as_ref().map(|i| &i.fingerprint[..]);
    let switched_to = progress
        .model_switches
        .iter()
        .rev()
        .map(|switch| switch.to_model.as_str())
        .find(|model| !model.is_empty());
    let row = client
        .query_opt(
            sql::RECORD_PROGRESS,
            &[
                &progress.batch_id.as_str(),
                &progress.samples_delta.get(),
                &progress.tokens_delta.get(),
                &Json(&progress.errors),
                &Json(&progress.model_switches),
                &(MAX_KEPT_ERRORS as i32),
                &request_id,
                &fingerprint,
                &(MAX_KEPT_ERROR_BYTES as i32),
                &(MAX_KEPT_SWITCHES as i32),
                &(MAX_KEPT_SWITCH_BYTES as i32),
                &switched_to,
            ],
        )
        .await;
    let row = match row {
        // A retry of this report committed first; look again.
        Err(error) if violates(&error, REQUEST_ID_KEY) => return Ok(None),
        Err(error) if is_out_of_range(&error) => {
            return Err(overflowed_counter(client, progress).await);
        }
        row => row?,
    };
    // Set only when this report's request id was already recorded.
    if let (Some(row), Some(idempotency)) = (&row, &progress.idempotency)
        && let Some(same_report) = row.try_get::<_, Option<bool>>("replay_matches")?
    {
        return if same_report {
            batch_from_row(row).map(Some)
        } else {
            Err(StoreError::RequestIdReused(idempotency.request_id.clone()))
        };
    }
    match Outcome::of(row)? {
        Outcome::Applied(batch) => Ok(Some(batch)),
        Outcome::Missing => Err(StoreError::NotFound(progress.batch_id.clone())),
        Outcome::Unchanged(batch) if batch.state == State::Running => Ok(None),
        Outcome::Unchanged(batch) => Err(StoreError::NotRunning {
            batch_id: batch.batch_id,
            state: batch.state,
        }),
    }
}

/// One attempt of [`Store::save`].
async fn save_once(client: &Connection<'_>, save: &Save) -> Result<Option<Batch>, StoreError> {
    let created = &save.created;
    let row = client
        .query_opt(
            sql::SAVE,
            &[
                &save.batch_id.as_str(),
                &save.state.as_str(),
                &created.provider.as_str(),
                &created.model.as_str(),
                &save.current_model.as_str(),
                &created.topic_filter.as_str(),
                &created.difficulty_filter.as_str(),
                &created.reasoning_instruction.as_str(),
                &created.target_count.get(),
                &save.samples_generated.get(),
                &save.total_tokens.get(),
                &Json(&save.errors),
                &save.error_count,
                &Json(&save.model_switches),
                &save.switch_count,
                &Json(created.metadata.as_map()),
                &created.start_time,
                &save.end_time,
            ],
        )
        .await?;
    match Outcome::of(row)? {
        Outcome::Applied(batch) | Outcome::Unchanged(batch) => Ok(Some(batch)),
        // Created by another call after this statement's snapshot was taken,
        // and ahead of this save: look again.
        Outcome::Missing => Ok(None),
    }
}

/// One attempt of [`Store::finish`].
async fn finish_once(
    client: &Connection<'_>,
    finish: &Finish,
) -> Result<Option<Batch>, StoreError> {
    let target = finish.state.state();
    let errors: Vec<&BatchError> = finish.error.iter().collect();
    let row = client
        .query_opt(
            sql::FINISH,
            &[
                &finish.batch_id.as_str(),
                &target.as_str(),
                &finish.end_time,
                &Json(&errors),
                &(MAX_KEPT_ERRORS as i32),
                &(MAX_KEPT_ERROR_BYTES as i32),
            ],
        )
        .await?;
    match Outcome::of(row)? {
        Outcome::Applied(batch) => Ok(Some(batch)),
        Outcome::Missing => Err(StoreError::NotFound(finish.batch_id.clone())),
        Outcome::Unchanged(batch) if batch.state == target => Ok(Some(batch)),
        Outcome::Unchanged(batch) if batch.state == State::Running => Ok(None),
        Outcome::Unchanged(batch) => Err(StoreError::NotRunning {
            batch_id: batch.batch_id,
            state: batch.state,
        }),
    }
}

/// What a conditional update found.
enum Outcome {
    Applied(Batch),
    /// The row exists but did not qualify; it is returned as it was.
    Unchanged(Batch),
    Missing,
}

impl Outcome {
    fn of(row: Option<Row>) -> Result<Self, StoreError> {
        let Some(row) = row else {
            return Ok(Self::Missing);
        };
        let batch = batch_from_row(&row)?;
        Ok(if row.try_get::<_, bool>("applied")? {
            Self::Applied(batch)
        } else {
            Self::Unchanged(batch)
        })
    }
}

fn batch_from_row(row: &Row) -> Result<Batch, StoreError> {
    use sql::column;
    let state: &str = row.try_get(column::state)?;
    let batch_id: String = row.try_get(column::batch_id)?;
    Ok(Batch {
        batch_id: BatchId::parse(batch_id)
            .map_err(|e| StoreError::internal("reading a stored batch id", e))?,
        state: State::from_name(state).ok_or_else(|| {
            StoreError::internal("reading a stored state", format!("unknown state {state:?}"))
        })?,
        provider: row.try_get(column::provider)?,
        model: row.try_get(column::model)?,
        current_model: row.try_get(column::current_model)?,
        topic_filter: row.try_get(column::topic_filter)?,
        difficulty_filter: row.try_get(column::difficulty_filter)?,
        reasoning_instruction: row.try_get(column::reasoning_instruction)?,
        target_count: row.try_get(column::target_count)?,
        samples_generated: row.try_get(column::samples_generated)?,
        total_tokens: row.try_get(column::total_tokens)?,
        errors: row.try_get::<_, Json<_>>(column::errors)?.0,
        error_count: row.try_get(column::error_count)?,
        model_switches: row.try_get::<_, Json<_>>(column::model_switches)?.0,
        metadata: row.try_get::<_, Json<_>>(column::metadata)?.0,
        start_time: row.try_get(column::start_time)?,
        end_time: row.try_get(column::end_time)?,
        update_time: row.try_get(column::update_time)?,
        version: row.try_get(column::version)?,
    })
}
