//! Connections shared by concurrent GetBatch calls.
//!
//! A pooled connection serves one call at a time, so every GetBatch costs a
//! write to PostgreSQL and a read of its answer, and the same again on
//! PostgreSQL's side. tokio-postgres pipelines the statements of callers
//! that share a connection: under load, one write and one read carry
//! several calls. With 32 clients on 2 cores that took 28% off the
//! service's CPU per GetBatch (137 → 98 µs) and a third off PostgreSQL's
//! (83 → 56 µs; docs/PERFORMANCE.md).
//!
//! Every caller on a connection waits for the statements sent before its
//! own, so only the lookup by primary key, whose cost is bounded, runs
//! here. A read has no effect to undo: a caller that goes away or runs out
//! of time leaves its answer to be dropped, where cancelling on the server
//! would hit a neighbour's statement.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tokio_postgres::Row;
use tracing::Instrument;

use super::{StoreError, connect_dedicated, params::Bind, sql};
use crate::domain::BatchId;

/// Two connections keep the lookups on two PostgreSQL backends, so that a
/// lookup waits behind few others, while each write still carries several
/// of them under load.
const CONNECTIONS: usize = 2;

/// Connections to one database, opened on first use, on which concurrent
/// lookups by id are pipelined.
pub(super) struct SharedReads {
    config: tokio_postgres::Config,
    timeout: Duration,
    lanes: [Lane; CONNECTIONS],
    next: AtomicUsize,
    closed: AtomicBool,
}

/// One shared connection, replaced once it closes or stops answering.
#[derive(Default)]
struct Lane {
    open: Mutex<Option<Arc<Session>>>,
    /// Held while opening, so that callers meeting a closed connection open
    /// one replacement between them.
    opening: tokio::sync::Mutex<()>,
}

/// A connection with GetBatch's statement prepared on it.
struct Session {
    client: tokio_postgres::Client,
    /// GetBatch's statement, prepared on this connection.
    get: tokio_postgres::Statement,
}

impl SharedReads {
    /// Connections to `config`, whose calls end within `timeout`. The
    /// connections are prepared statements' home, so `config` must not
    /// reach a transaction-mode pooler.
    pub(super) fn new(config: tokio_postgres::Config, timeout: Duration) -> Self {
        Self {
            config,
            timeout,
            lanes: Default::default(),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// The row of batch `batch_id`, if there is one. A connection found
    /// lost (a restart, a failover, a terminated backend) is replaced and
    /// the lookup sent again once: it is a read, so nothing is done twice.
    pub(super) async fn get(&self, batch_id: &BatchId) -> Result<Option<Row>, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let timed_out = |_| StoreError::TimedOut(self.timeout);
        let lane = &self.lanes[self.next.fetch_add(1, Ordering::Relaxed) % CONNECTIONS];
        let bound = sql::Get {
            batch_id: batch_id.as_str(),
        };
        let params = bound.values();
        let mut resent = false;
        loop {
            let session = tokio::time::timeout_at(deadline, self.session(lane))
                .await
                .map_err(timed_out)??;
            let lookup = session.client.query_opt(&session.get, &params);
            let answer = tokio::time::timeout_at(deadline, lookup)
                .instrument(tracing::debug_span!("db.statement"))
                .await;
            match answer {
                Ok(Err(error)) if connection_lost(&error) && !resent => {
                    lane.forget(&session);
                    resent = true;
                }
                Ok(answer) => return Ok(answer?),
                Err(elapsed) => {
                    // The connection may hang (a host gone without closing
                    // it): later calls get a new one, and calls already
                    // waiting on this one keep it until they end.
                    lane.forget(&session);
                    return Err(timed_out(elapsed));
                }
            }
        }
    }

    /// How many of the connections are open now.
    pub(super) fn open_connections(&self) -> usize {
        self.lanes
            .iter()
            .filter(|lane| lane.current().is_some())
            .count()
    }

    /// Drops the connections once their calls end, and refuses new calls.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for lane in &self.lanes {
            *lane.lock() = None;
        }
    }

    /// The lane's open connection, opening one if it has none.
    async fn session(&self, lane: &Lane) -> Result<Arc<Session>, StoreError> {
        if let Some(session) = lane.current() {
            return Ok(session);
        }
        let _opening = lane.opening.lock().await;
        if let Some(session) = lane.current() {
            return Ok(session);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the service is shutting down".into(),
            ));
        }
        let client = connect_dedicated(&self.config, self.timeout).await?;
        let get = client
            .prepare_typed(sql::Get::STATEMENT.text, sql::Get::STATEMENT.types)
            .await?;
        let session = Arc::new(Session { client, get });
        // A close while connecting leaves this call its connection alone.
        if !self.closed.load(Ordering::Acquire) {
            *lane.lock() = Some(Arc::clone(&session));
        }
        Ok(session)
    }
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Session>>> {
        // Nothing panics while holding it; a poisoned lock holds a valid value.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.lock()
            .as_ref()
            .filter(|session| !session.client.is_closed())
            .cloned()
    }

    /// Stops handing out `session`, unless it was already replaced.
    fn forget(&self, session: &Arc<Session>) {
        let mut open = self.lock();
        if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, session)) {
            *open = None;
        }
    }
}

/// Whether `error` ended the connection rather than the statement: it was
/// closed, its backend was told to stop (SQLSTATE 57Pxx: shutdown, database
/// dropped, idle session timeout; sent just before the close), or the
/// connection failed (class 08).
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    error.is_closed()
        || error
            .code()
            .is_some_and(|code| code.code().starts_with("57P") || code.code().starts_with("08"))
}
