//! Live changes: one reader of the database's change log per process (the
//! store's [`crate::store::ChangeLog`]) feeds an in-memory fan-out to every
//! watcher, so a change made through any replica reaches watchers on all of
//! them. This module keeps the fan-out, the lease's
//! bookkeeping and the filtering; `docs/ARCHITECTURE.md` has the protocol.
//!
//! - [`feed`]: the reader, which turns logged notices into [`Change`]s.
//! - [`streams`]: the watch RPCs' streams, each a snapshot then changes.

mod feed;
mod streams;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;

use crate::domain::{Batch, Facets, texts_of};
use crate::store::{Current, DeletedBatch, StoreError};

pub(crate) use feed::feed;
pub(crate) use streams::{Event, Snapshot, StreamEnd, watch_batch, watch_batches};

/// Changes buffered for all watchers of a process; a watcher further behind
/// than this is cut off.
const FAN_OUT_CAPACITY: usize = 1_024;

/// How long a watch lease lasts; renewed every [`LEASE_RENEWAL`] while the
/// process has watchers.
const LEASE_TTL: Duration = Duration::from_secs(30);
const LEASE_RENEWAL: Duration = Duration::from_secs(10);

/// While anyone watches, the feed reads the log this often: a change
/// reaches watchers within about this long of its commit. With no watchers
/// it reads only every [`IDLE_READ_INTERVAL`], to stay ready.
const READ_INTERVAL: Duration = Duration::from_millis(50);
const IDLE_READ_INTERVAL: Duration = Duration::from_secs(1);

/// Every read must answer within this: a database that hangs would answer
/// no changes forever, which a watcher cannot tell from none, so a late
/// answer ends every stream (ABORTED) and watchers come back for a fresh
/// snapshot.
const READ_DEADLINE: Duration = Duration::from_secs(2);

/// One change to one batch, as the feed saw it.
#[derive(Debug)]
pub(crate) enum Change {
    Created(Batch),
    Updated(Batch),
    Deleted(DeletedBatch),
    /// The feed lost its connection: changes may have been missed.
    Interrupted,
    /// The server is shutting down: watchers should go to another replica.
    ShuttingDown,
}

impl DeletedBatch {
    /// What filters look at.
    pub(crate) fn facets(&self) -> Facets<'_> {
        Facets {
            state: self.state,
            texts: texts_of!(self),
            labels: &self.labels,
            start_time: self.start_time,
        }
    }
}

/// The in-memory fan-out of changes, and this process's watch lease.
#[derive(Clone)]
pub(crate) struct Hub {
    sender: broadcast::Sender<Arc<Change>>,
    /// This process's name in `batch_watch_leases`.
    replica: Arc<str>,
    /// Until when this process's lease is surely live, as far as it knows.
    lease: Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// Whether the feed is reading the log right now.
    reading: Arc<watch::Sender<bool>>,
    /// Asks the feed to read now rather than at its next tick.
    read_now: Arc<Notify>,
    /// The feed's reads: how many began, and the number of the last that
    /// ended (a read's snapshot is taken after it begins).
    reads_begun: Arc<AtomicU64>,
    reads_ended: Arc<watch::Sender<u64>>,
}

impl Default for Hub {
    fn default() -> Self {
        let mut id = [0_u8; 8];
        // Without randomness, a clash only shares a lease between replicas.
        let _ = getrandom::fill(&mut id);
        Self {
            sender: broadcast::channel(FAN_OUT_CAPACITY).0,
            replica: id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into(),
            lease: Arc::default(),
            reading: Arc::new(watch::channel(false).0),
            read_now: Arc::default(),
            reads_begun: Arc::default(),
            reads_ended: Arc::new(watch::channel(0).0),
        }
    }
}

impl Hub {
    /// Makes sure every change from now on is logged and read, before a
    /// watcher subscribes and reads its snapshot: the feed is reading, this
    /// process holds a live lease, and, if the lease is new, writes that
    /// began before it (and so were not logged) have ended and will be in
    /// the snapshot. Last, the feed reads once more, so that a subscriber
    /// is sent no change that committed before this call: those are in its
    /// snapshot, and one of a batch the snapshot does not show (a page of
    /// the web page's) would look new. Read every second while nobody
    /// watches, the log may hold a second of them.
    async fn prepare_watch(&self, store: &Current) -> Result<(), StoreError> {
        self.ensure_lease(store).await?;
        let begun = self.reads_begun.load(Ordering::Acquire);
        self.read_now.notify_one();
        let mut ended = self.reads_ended.subscribe();
        tokio::time::timeout(store.timeout(), ended.wait_for(|&ended| ended > begun))
            .await
            .map_err(|_| StoreError::TimedOut(store.timeout()))?
            .map_err(|e| StoreError::internal("waiting for the change feed", e))?;
        Ok(())
    }

    /// The first part of [`Hub::prepare_watch`]: the feed is reading, the
    /// lease is live, and writes not logged for want of one have ended.
    async fn ensure_lease(&self, store: &Current) -> Result<(), StoreError> {
        let mut reading = self.reading.subscribe();
        tokio::time::timeout(store.timeout(), reading.wait_for(|reading| *reading))
            .await
            .map_err(|_| StoreError::TimedOut(store.timeout()))?
            .map_err(|e| StoreError::internal("waiting for the change feed", e))?;
        let mut lease = self.lease.lock().await;
        let now = Instant::now();
        if lease.is_some_and(|until| until > now + LEASE_RENEWAL) {
            return Ok(());
        }
        let lapsed = lease.is_none_or(|until| until <= now);
        store.renew_watch_lease(&self.replica, LEASE_TTL).await?;
        *lease = Some(now + LEASE_TTL - Duration::from_secs(1));
        if lapsed {
            store.wait_for_writes_in_progress().await?;
        }
        Ok(())
    }

    /// Extends the lease while the process has watchers.
    async fn renew_lease(&self, store: &Current) -> Result<(), StoreError> {
        if !self.has_watchers() {
            return Ok(());
        }
        let mut lease = self.lease.lock().await;
        let now = Instant::now();
        store.renew_watch_lease(&self.replica, LEASE_TTL).await?;
        *lease = Some(now + LEASE_TTL - Duration::from_secs(1));
        Ok(())
    }

    /// Numbers a read of the feed as it begins.
    fn begin_read(&self) -> u64 {
        self.reads_begun.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Says that read `number` has ended, and its changes were published.
    fn end_read(&self, number: u64) {
        self.reads_ended.send_replace(number);
    }

    fn publish(&self, change: Change) {
        // No watchers is fine: nobody misses anything.
        let _ = self.sender.send(Arc::new(change));
    }

    fn has_watchers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.sender.subscribe()
    }
}
