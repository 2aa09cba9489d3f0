//! The ways into the database, as types: [`Primary`], where every write
//! runs and whose statements are cancelled at their deadline, and
//! [`ReplicaFirst`], for reads that may lag (listings, stats). The third,
//! GetBatch's shared connections, is `shared_reads`.
//!
//! A statement still running at the deadline (or when shutdown cuts
//! in-flight work) is cancelled on the server, again and again until it
//! ends (dropping the future would leave it running, to take effect later),
//! and its outcome awaited for [`CANCEL_GRACE`]: a call that answers
//! [`StoreError::TimedOut`] was not applied. Past the grace, or when the
//! caller goes away mid-statement, the cancelling goes on in the background
//! until the statement has ended (see `lease`). A connection that saw a
//! cancel is not reused, as a cancel request may land on whatever statement
//! runs next.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tracing::Instrument;

use super::{
    DatabaseConfig, Pooling, StoreError,
    cancel::Canceller,
    connection::Connection,
    hot_rows::HotRows,
    lease::{CANCEL_GRACE, Lease, Lent},
    replica::Replica,
};
use crate::domain::BatchId;

/// One pool, and how to reach and cancel its connections' statements.
#[derive(Clone)]
pub(super) struct Lane {
    pool: Pool,
    pooling: Pooling,
    canceller: Canceller,
}

impl Lane {
    /// A lane to `pg`, whose connections are `pooling`, opened on first use
    /// and bounded as `config` says.
    pub(super) fn new(
        pg: &tokio_postgres::Config,
        pooling: Pooling,
        config: &DatabaseConfig,
        tls: &tokio_postgres_rustls::MakeRustlsConnect,
    ) -> Result<Self, StoreError> {
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
        let pool = Pool::builder(manager)
            .max_size(config.pool_max_size)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::internal("building the connection pool", e))?;
        Ok(Self {
            pool,
            pooling,
            canceller: Canceller::new(tls.clone(), pg, pooling),
        })
    }
}

/// What every operation shares, whichever lane it runs on.
#[derive(Clone)]
struct Bounds {
    /// The bound on every operation, from the moment of the call.
    timeout: Duration,
    /// Connections lent out, or closing once their abandoned statement ends.
    lent: Lent,
    /// Set at shutdown, after the drain: operations still running give up,
    /// as at their deadline.
    cut: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The primary: writes, and reads that must see every change announced.
#[derive(Clone)]
pub(super) struct Primary {
    lane: Lane,
    bounds: Bounds,
    hot_rows: HotRows,
}

impl Primary {
    pub(super) fn new(lane: Lane, timeout: Duration) -> Self {
        Self {
            lane,
            bounds: Bounds {
                timeout,
                lent: Lent::default(),
                cut: Arc::new(tokio::sync::watch::Sender::new(false)),
            },
            hot_rows: HotRows::default(),
        }
    }

    /// Runs `operation` on a pooled connection within the timeout from the
    /// moment of the call. Writes to one batch (`batch_id`) hold at most
    /// [`super::hot_rows::CONNECTIONS_PER_BATCH`] connections; the rest wait
    /// without one.
    pub(super) async fn run<T>(
        &self,
        batch_id: Option<&BatchId>,
        operation: impl AsyncFnOnce(&Connection<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.bounds.timeout;
        let permit = match batch_id {
            Some(batch_id) => Some(
                tokio::time::timeout_at(deadline, self.hot_rows.acquire(batch_id.as_str()))
                    .await
                    .map_err(|_| StoreError::TimedOut(self.bounds.timeout))?,
            ),
            None => None,
        };
        run(&self.lane, &self.bounds, deadline, permit, operation).await
    }

    pub(super) fn timeout(&self) -> Duration {
        self.bounds.timeout
    }

    pub(super) fn pool_status(&self) -> deadpool_postgres::Status {
        self.lane.pool.status()
    }

    pub(super) fn cut_in_flight(&self) {
        self.bounds.cut.send_replace(true);
    }

    pub(super) async fn all_settled(&self, timeout: Duration) -> bool {
        self.bounds.lent.all_returned(timeout).await
    }

    pub(super) fn close(&self) {
        self.lane.pool.close();
    }
}

/// Reads that may lag: on the replica while it keeps up, else the primary.
#[derive(Clone)]
pub(super) struct ReplicaFirst {
    primary: Primary,
    replica: Option<Arc<Replica>>,
}

impl ReplicaFirst {
    pub(super) fn new(primary: Primary, replica: Option<Replica>) -> Self {
        Self {
            primary,
            replica: replica.map(Arc::new),
        }
    }

    /// Runs `operation` on the replica while it keeps up, else on the
    /// primary. Any failure on the replica (a read has nothing a caller did
    /// wrong to report) sends the read to the primary, and takes the replica
    /// out of use until the monitor hears from it again.
    pub(super) async fn run<T>(
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
        self.primary.run(None, operation).await
    }

    /// Runs `operation` on the replica, whatever its lag.
    pub(super) async fn on_replica<T>(
        &self,
        replica: &Replica,
        operation: impl AsyncFnOnce(&Connection<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.primary.bounds.timeout;
        run(
            &replica.lane,
            &self.primary.bounds,
            deadline,
            None,
            operation,
        )
        .await
    }

    pub(super) fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.as_ref()
    }

    pub(super) fn close(&self) {
        if let Some(replica) = &self.replica {
            replica.lane.pool.close();
        }
    }
}

/// Runs `operation` on a connection of `lane` by `deadline`, cancelling its
/// statement if it is still running then (see the module's doc).
async fn run<T>(
    lane: &Lane,
    bounds: &Bounds,
    deadline: Instant,
    permit: Option<super::hot_rows::WritePermit>,
    operation: impl AsyncFnOnce(&Connection<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Spans for OTLP export (telemetry::otlp); disabled, so free, otherwise.
    let client = tokio::time::timeout_at(deadline, lane.pool.get())
        .instrument(tracing::debug_span!("db.pool_wait"))
        .await
        .map_err(|_| StoreError::TimedOut(bounds.timeout))??;
    let lease = Lease::new(client, permit, &lane.canceller, &bounds.lent);
    let mut cut = bounds.cut.subscribe();
    // Counted as lent before this look: shutdown, which cuts first and then
    // waits for the lent connections, sees this one or stops it here.
    if *cut.borrow_and_update() {
        lease.keep();
        return Err(StoreError::TimedOut(bounds.timeout));
    }
    let given_up = async move {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            _ = cut.wait_for(|cut| *cut) => {}
        }
    };
    let finished = {
        let connection = Connection::new(lease.client(), lane.pooling);
        let mut running =
            std::pin::pin!(operation(&connection).instrument(tracing::debug_span!("db.statement")));
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
            Err(StoreError::TimedOut(bounds.timeout))
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(StoreError::OutcomeUnknown(bounds.timeout)),
    }
}

/// Whether a statement failed because it was cancelled.
fn is_cancelled(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        == Some(&SqlState::QUERY_CANCELED)
}
