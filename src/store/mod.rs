//! PostgreSQL access: every SQL statement the service runs, behind a pool.
//!
//! Each operation is one round trip where SQL allows it, uses statements
//! prepared once per connection, and gives up after the configured timeout
//! with [`StoreError::TimedOut`] instead of hanging its caller, having
//! cancelled its statement on the server (see `lanes`). GetBatch, a read on
//! connections that concurrent calls share, is left to finish instead (see
//! `shared_reads`).
//!
//! # Layout
//!
//! A call goes through each of these once: this front ([`Store`] and
//! [`Current`]) picks the lane and the operation; `lanes` lends a connection
//! within the deadline and cancels what overruns it (`lease`, `cancel`,
//! `hot_rows`); `retry` runs the conditional writes until they decide;
//! `connection` sends a statement as the pooling allows; `sql` holds the
//! statements with their parameters (`params`); `rows` reads the answer back.

mod cancel;
mod changes;
mod connection;
mod error;
mod hot_rows;
mod import;
mod lanes;
mod lease;
mod migrate;
mod params;
mod probe;
mod replica;
mod retry;
mod rows;
mod settings;
mod shared_reads;
mod sql;
mod tls;
mod upkeep_lock;

use std::{sync::Arc, time::Duration};

use crate::domain::{
    Batch, BatchFilter, BatchId, BatchStats, Correction, Detail, Finish, ListQuery,
    MAX_KEPT_ERROR_BYTES, MAX_KEPT_ERRORS, NewBatch, Page, Progress, Save, StaleThreshold, State,
};

pub use changes::{CHANGES_KEPT, ChangeLog, ChangeLogMarks, DeletedBatch, Notice};
use connection::Connection;
pub use connection::{Pooling, connect_dedicated, detect_pooling};
pub(crate) use error::{Counter, StoreError, database_errors};
pub use import::{BulkLoad, LoadOutcome, OnConflict, StagedRows};
use lanes::{Lane, Primary, ReplicaFirst};
pub use migrate::{MIGRATION_LOCK_KEY, MigrateError, migrate, set_up};
use params::Bind;
pub(crate) use probe::Probe;
use replica::Replica;
pub(crate) use replica::{ReplicaStatus, monitor as monitor_replica};
pub use settings::{DatabaseConfig, InvalidUrl, connection};
use shared_reads::SharedReads;
pub(crate) use tls::connector;
pub(crate) use upkeep_lock::UpkeepLock;

/// Key of the transaction-level advisory lock that lets one replica sweep
/// at a time.
const SWEEP_LOCK_KEY: i64 = 0x6268_7377_6565_7000; // "bhsweep"

/// How often [`Current::wait_for_writes_in_progress`] looks again.
const WRITERS_POLL: Duration = Duration::from_millis(5);

/// Rows a purge, or the forgetting of request ids, deletes per statement.
const DELETE_CHUNK_ROWS: i64 = 1_000;

/// Months of batches kept ready past this one, so that no write waits for
/// one to be added.
const MONTHS_AHEAD: i32 = 2;

/// The batch history in PostgreSQL.
#[derive(Clone)]
pub struct Store {
    primary: Primary,
    /// Listings and stats: `DATABASE_READ_URL`'s replica while it keeps up.
    reads: ReplicaFirst,
    /// Where GetBatch runs, unless statements cannot be prepared (behind a
    /// transaction pooler).
    shared_reads: Option<Arc<SharedReads>>,
}

/// The reads a watch makes, all on the primary as it is now: a watch's
/// snapshot must hold every change announced before it was taken, which a
/// replica may not have replayed yet. Watches are given this instead of the
/// [`Store`], so that they cannot read a replica.
#[derive(Clone)]
pub(crate) struct Current(Store);

impl Store {
    /// A pool for `config`, whose connections are `pooling`. Connections
    /// are opened on first use.
    pub fn new(config: &DatabaseConfig, pooling: Pooling) -> Result<Self, StoreError> {
        let tls = connector()?;
        let replica = match &config.read {
            // Sent unnamed, as through any pooler: listings and stats are
            // planned in a fraction of their run time (docs/PERFORMANCE.md).
            Some(read) => Some(Replica::new(
                Lane::new(read, Pooling::Transaction, config, &tls)?,
                config.read_max_lag,
            )),
            None => None,
        };
        let primary = Primary::new(
            Lane::new(&config.pg, pooling, config, &tls)?,
            config.timeout,
        );
        let shared_reads = (pooling == Pooling::Session)
            .then(|| Arc::new(SharedReads::new(config.pg.clone(), config.timeout)));
        Ok(Self {
            reads: ReplicaFirst::new(primary.clone(), replica),
            primary,
            shared_reads,
        })
    }

    /// Reads of the primary as it is now, for watches.
    pub(crate) fn current(&self) -> Current {
        Current(self.clone())
    }

    /// The bound on every operation.
    pub(crate) fn timeout(&self) -> Duration {
        self.primary.timeout()
    }

    /// Checks that the database answers.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.primary
            .run(None, async |client| client.simple("SELECT 1").await)
            .await
    }

    /// How the pool is doing: open connections, idle ones, callers waiting.
    pub(crate) fn pool_status(&self) -> deadpool_postgres::Status {
        self.primary.pool_status()
    }

    /// How many connections beside the pool concurrent GetBatch calls share
    /// now (none behind a transaction pooler).
    pub(crate) fn shared_read_connections(&self) -> usize {
        self.shared_reads
            .as_ref()
            .map_or(0, |shared_reads| shared_reads.open_connections())
    }

    /// Whether reads go to the replica and how far behind it is, if there
    /// is one.
    pub(crate) fn replica_status(&self) -> Option<ReplicaStatus> {
        self.reads.replica().map(|replica| replica.status())
    }

    /// How many batches are stored in each state.
    pub(crate) async fn count_by_state(&self) -> Result<Vec<(State, i64)>, StoreError> {
        self.primary
            .run(None, async |client| {
                rows::counts(&client.query(&sql::CountByState {}).await?)
            })
            .await
    }

    /// Makes every operation still running give up now, as at its deadline:
    /// its statement is cancelled until it has ended, and it fails
    /// [`StoreError::TimedOut`] (or [`StoreError::OutcomeUnknown`]).
    pub(crate) fn cut_in_flight(&self) {
        self.primary.cut_in_flight();
    }

    /// Waits until every connection lent to an operation is back, and every
    /// statement given up on has ended, for at most `timeout`; false if
    /// some have not.
    pub(crate) async fn all_settled(&self, timeout: Duration) -> bool {
        self.primary.all_settled(timeout).await
    }

    /// Closes the pools: idle connections are dropped, and waiting calls fail.
    pub(crate) fn close(&self) {
        self.primary.close();
        self.reads.close();
        if let Some(shared_reads) = &self.shared_reads {
            shared_reads.close();
        }
    }

    /// Creates `batch` in RUNNING, or returns the stored batch if the same
    /// create already happened.
    pub(crate) async fn create(&self, batch: &NewBatch) -> Result<Batch, StoreError> {
        self.primary
            .run(batch.batch_id.as_ref(), async |client| {
                retry::create(client, batch).await
            })
            .await
    }

    /// The batch with this id.
    pub(crate) async fn get(&self, batch_id: &BatchId) -> Result<Batch, StoreError> {
        let row = match &self.shared_reads {
            Some(shared_reads) => shared_reads.get(batch_id).await?,
            None => {
                let get = sql::Get {
                    batch_id: batch_id.as_str(),
                };
                self.primary
                    .run(None, async |client| client.query_opt(&get).await)
                    .await?
            }
        };
        match row {
            Some(row) => rows::batch(&row),
            None => Err(StoreError::NotFound(batch_id.clone())),
        }
    }

    /// The batches with these ids that exist, in no particular order, as
    /// the primary has them.
    pub(crate) async fn get_many(
        &self,
        batch_ids: &[&str],
        detail: Detail,
    ) -> Result<Vec<Batch>, StoreError> {
        self.primary
            .run(None, async |client| {
                let rows = match detail {
                    Detail::Full => client.query(&sql::GetMany { batch_ids }).await?,
                    Detail::Basic => client.query(&sql::GetManyBasic { batch_ids }).await?,
                };
                rows.iter().map(rows::batch).collect()
            })
            .await
    }

    /// One page of batches.
    pub(crate) async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.reads
            .run(async |client| page(client, query).await)
            .await
    }

    /// Applies a progress report to a running batch, once per request id.
    pub(crate) async fn record_progress(&self, progress: &Progress) -> Result<Batch, StoreError> {
        self.primary
            .run(Some(&progress.batch_id), async |client| {
                retry::record_progress(client, progress).await
            })
            .await
    }

    /// Creates a batch from its whole state, or brings the stored one up to
    /// date unless the stored one is ahead; returns the batch as stored.
    pub(crate) async fn save(&self, save: &Save) -> Result<Batch, StoreError> {
        self.primary
            .run(Some(&save.batch_id), async |client| {
                retry::save(client, save).await
            })
            .await
    }

    /// Moves a running batch to its final state; repeating the same finish
    /// returns the batch unchanged.
    pub(crate) async fn finish(&self, finish: &Finish) -> Result<Batch, StoreError> {
        self.primary
            .run(Some(&finish.batch_id), async |client| {
                retry::finish(client, finish).await
            })
            .await
    }

    /// Corrects a batch's descriptive fields; returns it as stored.
    pub(crate) async fn update(&self, correction: &Correction) -> Result<Batch, StoreError> {
        self.primary
            .run(Some(&correction.batch_id), async |client| {
                retry::update(client, correction).await
            })
            .await
    }

    /// Deletes a batch; a RUNNING one only with `force`.
    pub(crate) async fn delete(&self, batch_id: &BatchId, force: bool) -> Result<(), StoreError> {
        let delete = sql::Delete {
            batch_id: batch_id.as_str(),
            force,
        };
        self.primary
            .run(Some(batch_id), async |client| {
                let row = client.query_one(&delete).await?;
                // The state is read from the statement's snapshot, before the
                // delete; a batch another call deleted meanwhile is gone.
                match (row.try_get(0)?, row.try_get(1)?) {
                    (true, _) => Ok(()),
                    (false, Some("RUNNING")) => Err(StoreError::Running(batch_id.clone())),
                    (false, _) => Err(StoreError::NotFound(batch_id.clone())),
                }
            })
            .await
    }

    /// Totals over the batches `filter` keeps, in one query.
    pub(crate) async fn stats(&self, filter: &BatchFilter) -> Result<BatchStats, StoreError> {
        self.reads
            .run(async |client| {
                let groups = rows::stats(&client.query(&sql::Listing::stats(filter)).await?)?;
                Ok(groups.into_iter().collect())
            })
            .await
    }

    /// Stops running batches not updated for `stale_after`, unless another
    /// replica is sweeping right now; returns those it stopped.
    pub(crate) async fn sweep_stale(
        &self,
        stale_after: StaleThreshold,
    ) -> Result<Vec<Batch>, StoreError> {
        let sweep = sql::SweepStale {
            stale_after: stale_after.get().as_secs_f64(),
            lock_key: SWEEP_LOCK_KEY,
            keep_errors: MAX_KEPT_ERRORS as i32,
            keep_error_bytes: MAX_KEPT_ERROR_BYTES as i32,
        };
        self.primary
            .run(None, async |client| {
                client
                    .query(&sweep)
                    .await?
                    .iter()
                    .map(rows::batch)
                    .collect()
            })
            .await
    }

    /// Deletes (or on a dry run counts) finished batches that ended before
    /// `older_than` in `states`, in bounded chunks; returns how many.
    pub(crate) async fn purge(
        &self,
        older_than: jiff::Timestamp,
        states: &[State],
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let states: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
        if dry_run {
            let count = sql::CountPurgeable {
                ended_before: older_than,
                states: &states,
            };
            return self
                .primary
                .run(None, async |client| {
                    let count: i64 = client.query_one(&count).await?.try_get(0)?;
                    Ok(count.unsigned_abs())
                })
                .await;
        }
        self.delete_in_chunks(&sql::PurgeChunk {
            ended_before: older_than,
            states: &states,
            limit: DELETE_CHUNK_ROWS,
        })
        .await
    }

    /// Adds this month and the next [`MONTHS_AHEAD`] to the batches where
    /// missing; returns how many it added.
    pub(crate) async fn add_months_ahead(&self) -> Result<i64, StoreError> {
        let add = sql::AddMonthsAhead {
            ahead: MONTHS_AHEAD,
        };
        self.primary
            .run(None, async |client| {
                Ok(client.query_one(&add).await?.try_get(0)?)
            })
            .await
    }

    /// Drops every month whose batches all finished and ended before
    /// `ended_before`, with their totals, one statement each; returns the
    /// months' starts. The row-by-row purge deletes what is left.
    pub(crate) async fn drop_months(
        &self,
        ended_before: jiff::Timestamp,
    ) -> Result<Vec<jiff::Timestamp>, StoreError> {
        let drop = sql::DropMonth { ended_before };
        let mut dropped = Vec::new();
        loop {
            let month = self
                .primary
                .run(None, async |client| {
                    Ok(client.query_one(&drop).await?.try_get(0)?)
                })
                .await?;
            match month {
                Some(month) => dropped.push(month),
                None => break,
            }
        }
        // Also after an earlier call that failed midway.
        self.primary
            .run(None, async |client| {
                client.execute(&sql::DropDetachedMonths {}).await
            })
            .await?;
        Ok(dropped)
    }

    /// Clears the ids of the oldest dropped month's batches from the ids'
    /// registry (one month a call); returns how many.
    pub(crate) async fn forget_dropped_ids(&self) -> Result<u64, StoreError> {
        let month = self
            .primary
            .run(None, async |client| {
                client.query_opt(&sql::OldestDroppedMonth {}).await
            })
            .await?;
        let Some(month) = month else {
            return Ok(0);
        };
        self.delete_in_chunks(&sql::ForgetDroppedIds {
            first: month.try_get(0)?,
            next: month.try_get(1)?,
            limit: DELETE_CHUNK_ROWS,
        })
        .await
    }

    /// Forgets request ids older than `age`; returns how many.
    pub async fn forget_requests(&self, age: Duration) -> Result<u64, StoreError> {
        self.delete_in_chunks(&sql::ForgetRequests {
            age: age.as_secs_f64(),
            limit: DELETE_CHUNK_ROWS,
        })
        .await
    }

    /// Deletes the change log's rows that every feed has read, going by
    /// `marks`, and marks the oldest transaction running now; returns how
    /// many rows it deleted.
    pub(crate) async fn trim_change_log(
        &self,
        marks: &mut ChangeLogMarks,
    ) -> Result<u64, StoreError> {
        let oldest_running = self
            .primary
            .run(None, async |client| {
                Ok(client.query_one(&sql::OldestRunning {}).await?.try_get(0)?)
            })
            .await?;
        let now = tokio::time::Instant::now();
        marks.record(now, oldest_running);
        let Some(below) = marks.read_below(now) else {
            return Ok(0);
        };
        self.delete_in_chunks(&sql::TrimChangeLog {
            below: &below,
            limit: DELETE_CHUNK_ROWS,
        })
        .await
    }

    /// Folds the changes to the daily totals recorded since the last fold
    /// into them, so that readers add up few; returns how many it folded.
    pub(crate) async fn fold_totals(&self) -> Result<i64, StoreError> {
        let folded = self
            .primary
            .run(None, async |client| {
                Ok(client.query_one(&sql::FoldTotals {}).await?.try_get(0)?)
            })
            .await?;
        if folded > 0 {
            self.primary
                .run(None, async |client| {
                    client.execute(&sql::VacuumTotalChanges {}).await
                })
                .await?;
        }
        Ok(folded)
    }

    /// Runs `chunk`, a DELETE of at most [`DELETE_CHUNK_ROWS`] rows, until
    /// it deletes fewer; returns how many in all. Each chunk is its own
    /// bounded operation, so that a long deletion never holds one connection
    /// past the timeout or many row locks at once.
    async fn delete_in_chunks(&self, chunk: &(impl Bind + Sync)) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let chunk = self
                .primary
                .run(None, async |client| client.execute(chunk).await)
                .await?;
            deleted += chunk;
            if chunk < DELETE_CHUNK_ROWS.unsigned_abs() {
                return Ok(deleted);
            }
        }
    }
}

impl Current {
    /// The bound on every operation.
    pub(crate) fn timeout(&self) -> Duration {
        self.0.timeout()
    }

    /// The batch with this id.
    pub(crate) async fn get(&self, batch_id: &BatchId) -> Result<Batch, StoreError> {
        self.0.get(batch_id).await
    }

    /// The batches with these ids that exist, in no particular order.
    pub(crate) async fn get_many(&self, batch_ids: &[&str]) -> Result<Vec<Batch>, StoreError> {
        self.0.get_many(batch_ids, Detail::Full).await
    }

    /// One page of batches as the primary has them.
    pub(crate) async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.0
            .primary
            .run(None, async |client| page(client, query).await)
            .await
    }

    /// Takes or extends this replica's watch lease: while any lease is
    /// live, every change to a batch is announced (see migration V2).
    pub(crate) async fn renew_watch_lease(
        &self,
        replica: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let renew = sql::RenewWatchLease {
            replica,
            ttl: ttl.as_secs_f64(),
        };
        self.0
            .primary
            .run(None, async |client| client.execute(&renew).await.map(drop))
            .await
    }

    /// Returns once every write that was in progress when called has ended,
    /// so that writes not announced before a lease was taken are visible to
    /// a snapshot taken afterwards. It watches the writers rather than
    /// queueing for a lock that conflicts with theirs: such a lock would stall
    /// every new write behind a long one, such as an import.
    pub(crate) async fn wait_for_writes_in_progress(&self) -> Result<(), StoreError> {
        self.0
            .primary
            .run(None, async |client| {
                let mut among = None;
                loop {
                    let writers = sql::WritersInProgress {
                        among: among.as_deref(),
                    };
                    let writers: Vec<String> = client.query_one(&writers).await?.try_get(0)?;
                    if writers.is_empty() {
                        break;
                    }
                    among = Some(writers);
                    tokio::time::sleep(WRITERS_POLL).await;
                }
                Ok(())
            })
            .await
    }
}

/// One page of batches, read on `client`.
async fn page(client: &Connection<'_>, query: &ListQuery) -> Result<Page, StoreError> {
    let rows = client.query(&sql::Listing::new(query)).await?;
    rows::page(&rows, usize::from(query.page_size.get()))
}
