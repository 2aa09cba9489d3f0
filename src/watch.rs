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

/// The in-memory fan-out of changes.
#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<Change>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(FAN_OUT_CAPACITY).0,
        }
    }
}

impl Hub {
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
        match listen(&database, &store, &hub, &mut stopped).await {
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
    tracing::debug!("change feed listening");
    loop {
        let first = tokio::select! {
            _ = stopped.wait_for(|stopped| *stopped) => return Ok(()),
            payload = payloads.recv() => payload,
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
