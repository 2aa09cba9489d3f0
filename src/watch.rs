//! Live changes: one PostgreSQL `LISTEN batch_changes` connection per
//! process feeds an in-memory fan-out to every watcher, so a change made
//! through any replica reaches watchers on all of them.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;
use tonic::{Status, codegen::tokio_stream::Stream};

use crate::config::DatabaseConfig;
use crate::domain::{Batch, BatchFilter, BatchId, ListQuery, Order, PageSize, State};
use crate::store::{Store, StoreError, connector};
use crate::telemetry::cause_chain;

/// Changes buffered for all watchers of a process; a watcher further behind
/// than this is cut off.
const FAN_OUT_CAPACITY: usize = 1_024;
/// Events buffered for one watcher's client.
const WATCHER_BUFFER: usize = 256;
/// Pause before reconnecting a lost listener connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// One change to one batch, as the feed saw it.
#[derive(Debug)]
pub enum Change {
    Created(Batch),
    Updated(Batch),
    Deleted(BatchId),
    /// The feed lost its connection: changes may have been missed.
    Interrupted,
}

/// How long a watch lease lasts; renewed every [`LEASE_RENEWAL`] while the
/// process has watchers.
const LEASE_TTL: Duration = Duration::from_secs(30);
const LEASE_RENEWAL: Duration = Duration::from_secs(10);

/// The in-memory fan-out of changes, and this process's watch lease.
#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<Change>>,
    /// This process's name in `batch_watch_leases`.
    replica: Arc<str>,
    /// Until when this process's lease is surely live, as far as it knows.
    lease: Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// Whether the feed is listening right now.
    listening: Arc<watch::Sender<bool>>,
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
            listening: Arc::new(watch::channel(false).0),
        }
    }
}

impl Hub {
    /// Makes sure every change from now on is announced and heard, before a
    /// watcher reads its snapshot: the feed is listening, this process holds
    /// a live lease, and, if the lease is new, writes that began before it
    /// (and so were not announced) have ended and will be in the snapshot.
    async fn prepare_watch(&self, store: &Store) -> Result<(), StoreError> {
        let mut listening = self.listening.subscribe();
        tokio::time::timeout(store.timeout(), listening.wait_for(|listening| *listening))
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
    async fn renew_lease(&self, store: &Store) -> Result<(), StoreError> {
        if !self.has_watchers() {
            return Ok(());
        }
        let mut lease = self.lease.lock().await;
        let now = Instant::now();
        store.renew_watch_lease(&self.replica, LEASE_TTL).await?;
        *lease = Some(now + LEASE_TTL - Duration::from_secs(1));
        Ok(())
    }

    fn publish(&self, change: Change) {
        // No watchers is fine: nobody misses anything.
        let _ = self.sender.send(Arc::new(change));
    }

    fn has_watchers(&self) -> bool {
        self.sender.receiver_count() > 0
    }
}

/// Listens for changes until `stopped`, reconnecting after failures.
pub async fn feed(
    database: DatabaseConfig,
    store: Store,
    hub: Hub,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let listened = listen(&database, &store, &hub, &mut stopped).await;
        hub.listening.send_replace(false);
        match listened {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(error = %cause_chain(&error), "change feed interrupted; reconnecting");
                hub.publish(Change::Interrupted);
            }
        }
        tokio::select! {
            _ = stopped.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

async fn listen(
    database: &DatabaseConfig,
    store: &Store,
    hub: &Hub,
    stopped: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let connect = database.pg.connect(connector()?);
    let (client, mut connection) = tokio::time::timeout(database.timeout, connect)
        .await
        .map_err(|_| StoreError::TimedOut(database.timeout))??;
    let (notifications, mut payloads) = mpsc::channel::<String>(FAN_OUT_CAPACITY);
    tokio::spawn(async move {
        // Polling for messages also drives the connection's I/O.
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(notification) = message
                && notifications
                    .send(notification.payload().to_owned())
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    client.batch_execute("LISTEN batch_changes").await?;
    hub.listening.send_replace(true);
    tracing::debug!("change feed listening");
    let mut renewals = tokio::time::interval(LEASE_RENEWAL);
    renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            _ = stopped.wait_for(|stopped| *stopped) => Wake::Stop,
            _ = renewals.tick() => Wake::Renew,
            payload = payloads.recv() => Wake::Payload(payload),
        };
        let first = match first {
            Wake::Stop => return Ok(()),
            Wake::Renew => {
                hub.renew_lease(store).await?;
                continue;
            }
            Wake::Payload(payload) => payload,
        };
        let Some(first) = first else {
            return Err(StoreError::internal(
                "listening for changes",
                "the connection closed",
            ));
        };
        // Everything already queued is handled together: one query for all
        // the changed rows, and a burst of changes to one batch becomes one
        // event with its latest state.
        let mut burst = vec![first];
        while burst.len() < MAX_BURST
            && let Ok(payload) = payloads.try_recv()
        {
            burst.push(payload);
        }
        if hub.has_watchers() {
            publish_burst(store, hub, &burst).await?;
        }
    }
}

/// Why the feed woke up.
enum Wake {
    Stop,
    Renew,
    Payload(Option<String>),
}

/// Notifications handled in one go, at most.
const MAX_BURST: usize = 1_000;

async fn publish_burst(store: &Store, hub: &Hub, payloads: &[String]) -> Result<(), StoreError> {
    // Per id, in order of first notice: whether it was created in this
    // burst, and whether its last change was a delete.
    let mut order: Vec<&str> = Vec::new();
    let mut seen: std::collections::HashMap<&str, (bool, bool)> = Default::default();
    for payload in payloads {
        let Some((operation, id)) = payload.split_once(' ') else {
            continue;
        };
        let entry = seen.entry(id).or_insert_with(|| {
            order.push(id);
            (false, false)
        });
        entry.0 |= operation == "INSERT";
        entry.1 = operation == "DELETE";
    }
    let live: Vec<&str> = order.iter().copied().filter(|id| !seen[id].1).collect();
    let mut rows: std::collections::HashMap<String, Batch> = store
        .get_many(&live)
        .await?
        .into_iter()
        .map(|batch| (batch.batch_id.as_str().to_owned(), batch))
        .collect();
    for id in order {
        let (created, deleted) = seen[id];
        let change = if deleted {
            match BatchId::parse(id.to_owned()) {
                Ok(batch_id) => Change::Deleted(batch_id),
                Err(_) => continue,
            }
        } else {
            // Gone already: its DELETE is on its way.
            let Some(batch) = rows.remove(id) else {
                continue;
            };
            if created {
                Change::Created(batch)
            } else {
                Change::Updated(batch)
            }
        };
        hub.publish(change);
    }
    Ok(())
}

/// What a watcher sends its client.
#[derive(Debug)]
pub enum Event {
    Snapshot(Batch),
    Created(Batch),
    Updated(Batch),
    Deleted(BatchId),
}

/// The stream a watch RPC returns: events, then possibly a final status
/// saying why the server ended it.
pub struct EventStream {
    events: mpsc::Receiver<Event>,
    end: Option<oneshot::Receiver<Status>>,
}

impl Stream for EventStream {
    type Item = Result<Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(event) = std::task::ready!(self.events.poll_recv(cx)) {
            return Poll::Ready(Some(Ok(event)));
        }
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(None);
        };
        let status = std::task::ready!(Pin::new(end).poll(cx));
        self.end = None;
        Poll::Ready(status.ok().map(Err))
    }
}

/// A watcher's side of its stream.
struct Sink {
    events: mpsc::Sender<Event>,
    end: oneshot::Sender<Status>,
}

enum Sent {
    Ok,
    /// The client went away or fell behind; the stream is over.
    Over,
}

impl Sink {
    fn send(&self, event: Event) -> Sent {
        match self.events.try_send(event) {
            Ok(()) => Sent::Ok,
            Err(_) => Sent::Over,
        }
    }

    fn fell_behind(self) {
        let _ = self.end.send(Status::aborted(
            "this watcher fell behind the changes; watch again for a fresh snapshot",
        ));
    }

    fn interrupted(self) {
        let _ = self.end.send(Status::aborted(
            "the change feed was interrupted; watch again for a fresh snapshot",
        ));
    }
}

fn stream() -> (Sink, EventStream) {
    let (events_tx, events_rx) = mpsc::channel(WATCHER_BUFFER);
    let (end_tx, end_rx) = oneshot::channel();
    (
        Sink {
            events: events_tx,
            end: end_tx,
        },
        EventStream {
            events: events_rx,
            end: Some(end_rx),
        },
    )
}

/// Watches one batch: its snapshot, then its changes until it leaves RUNNING
/// or is deleted.
pub async fn watch_batch(
    store: &Store,
    hub: &Hub,
    batch_id: BatchId,
) -> Result<EventStream, StoreError> {
    // Subscribed before the snapshot is read, so no change falls between.
    let mut changes = hub.sender.subscribe();
    hub.prepare_watch(store).await?;
    let batch = store.get(&batch_id).await?;
    let (sink, stream) = stream();
    let running = batch.state == State::Running;
    if matches!(sink.send(Event::Snapshot(batch)), Sent::Over) || !running {
        return Ok(stream);
    }
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                () = sink.events.closed() => return,
                change = changes.recv() => change,
            };
            let change = match change {
                Ok(change) => change,
                Err(broadcast::error::RecvError::Lagged(_)) => return sink.fell_behind(),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let (event, last) = match &*change {
                Change::Created(batch) | Change::Updated(batch) if batch.batch_id == batch_id => {
                    (Event::Updated(batch.clone()), batch.state != State::Running)
                }
                Change::Deleted(id) if *id == batch_id => (Event::Deleted(id.clone()), true),
                Change::Interrupted => return sink.interrupted(),
                _ => continue,
            };
            if matches!(sink.send(event), Sent::Over) {
                return sink.fell_behind();
            }
            if last {
                return;
            }
        }
    });
    Ok(stream)
}

/// Watches the batches `filter` keeps: a snapshot of the running ones, then
/// every change to them (including the one that finishes a batch, even if
/// the filter's states then no longer keep it), until the client goes away.
pub async fn watch_batches(
    store: &Store,
    hub: &Hub,
    filter: BatchFilter,
) -> Result<EventStream, StoreError> {
    let mut changes = hub.sender.subscribe();
    hub.prepare_watch(store).await?;
    let (sink, stream) = stream();
    let mut known = HashSet::new();
    if filter.states.is_empty() || filter.states.contains(&State::Running) {
        let mut query = ListQuery {
            filter: BatchFilter {
                states: [State::Running].into(),
                ..filter.clone()
            },
            order: Order::OldestFirst,
            page_size: PageSize::largest(),
            after: None,
        };
        loop {
            let page = store.list(&query).await?;
            for batch in page.batches {
                known.insert(batch.batch_id.clone());
                if matches!(sink.send(Event::Snapshot(batch)), Sent::Over) {
                    sink.fell_behind();
                    return Ok(stream);
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
    }
    let unfiltered_states = BatchFilter {
        states: Default::default(),
        ..filter.clone()
    };
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                () = sink.events.closed() => return,
                change = changes.recv() => change,
            };
            let change = match change {
                Ok(change) => change,
                Err(broadcast::error::RecvError::Lagged(_)) => return sink.fell_behind(),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let event = match &*change {
                Change::Created(batch) if filter.matches(batch) => {
                    known.insert(batch.batch_id.clone());
                    Event::Created(batch.clone())
                }
                Change::Updated(batch)
                    if filter.matches(batch)
                        || (known.contains(&batch.batch_id)
                            && unfiltered_states.matches(batch)) =>
                {
                    known.insert(batch.batch_id.clone());
                    Event::Updated(batch.clone())
                }
                Change::Deleted(id) if known.remove(id) => Event::Deleted(id.clone()),
                Change::Interrupted => return sink.interrupted(),
                _ => continue,
            };
            if matches!(sink.send(event), Sent::Over) {
                return sink.fell_behind();
            }
        }
    });
    Ok(stream)
}
