//! The watch RPCs' streams: a snapshot read after subscribing to the hub,
//! then the changes a watcher follows, each sent at most once and never
//! older than what the watcher already has.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::codegen::tokio_stream::Stream;

use super::{Change, Hub};
use crate::domain::{
    Batch, BatchFilter, BatchId, Detail, Facets, ListQuery, Order, Page, PageSize, State,
};
use crate::store::{Current, StoreError};

/// Events buffered for one watcher's client.
const WATCHER_BUFFER: usize = 256;

/// What a watcher sends its client.
#[derive(Debug)]
pub(crate) enum Event {
    Snapshot(Batch),
    Created(Batch),
    Updated(Batch),
    Deleted(BatchId),
}

/// Why the server ended a watch stream early: the client should watch again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamEnd {
    #[error("this watcher fell behind the changes; watch again for a fresh snapshot")]
    FellBehind,
    #[error("the change feed was interrupted; watch again for a fresh snapshot")]
    FeedInterrupted,
    #[error("the server is shutting down; watch again")]
    ShuttingDown,
    /// A page of the snapshot could not be read.
    #[error("reading the snapshot failed")]
    Snapshot(#[source] StoreError),
}

/// The stream a watch RPC returns: events, then possibly why the server
/// ended it.
pub(crate) struct EventStream {
    events: mpsc::Receiver<Event>,
    /// Why the stream ended, when it did not end with its last event.
    end: Option<oneshot::Receiver<StreamEnd>>,
}

impl Stream for EventStream {
    type Item = Result<Event, StreamEnd>;

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
    end: oneshot::Sender<StreamEnd>,
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

    /// Ends the stream, after the events already sent, saying why.
    fn end(self, why: StreamEnd) {
        // The client may be gone already: then nobody needs to know.
        let _ = self.end.send(why);
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

/// What a watcher makes of one change.
enum Step {
    Skip,
    Send(Event),
    /// Send, then end the stream.
    SendLast(Event),
}

/// Feeds the watcher `sink` with what `step` makes of each change, until the
/// client goes away, `step` sends its last event, or the watcher must start
/// over (it fell behind, the feed was interrupted, or the server is stopping).
async fn forward(
    sink: Sink,
    mut changes: broadcast::Receiver<Arc<Change>>,
    mut step: impl FnMut(&Change) -> Step,
) {
    loop {
        let change = tokio::select! {
            () = sink.events.closed() => return,
            change = changes.recv() => change,
        };
        let change = match change {
            Ok(change) => change,
            Err(broadcast::error::RecvError::Lagged(_)) => return sink.end(StreamEnd::FellBehind),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match *change {
            Change::Interrupted => return sink.end(StreamEnd::FeedInterrupted),
            Change::ShuttingDown => return sink.end(StreamEnd::ShuttingDown),
            _ => {}
        }
        let (event, last) = match step(&change) {
            Step::Skip => continue,
            Step::Send(event) => (event, false),
            Step::SendLast(event) => (event, true),
        };
        if matches!(sink.send(event), Sent::Over) {
            return sink.end(StreamEnd::FellBehind);
        }
        if last {
            return;
        }
    }
}

/// Watches one batch: its snapshot, then its changes until it leaves RUNNING
/// or is deleted.
pub(crate) async fn watch_batch(
    store: &Current,
    hub: &Hub,
    batch_id: BatchId,
) -> Result<EventStream, StoreError> {
    hub.prepare_watch(store).await?;
    // Subscribed before the snapshot is read, so no change falls between,
    // and after the feed read what committed before the call (see
    // `Hub::prepare_watch`).
    let changes = hub.subscribe();
    let batch = store.get(&batch_id).await?;
    let (sink, stream) = stream();
    let running = batch.state == State::Running;
    // The feed may still hold changes it read before the snapshot.
    let mut sent_version = batch.version;
    if matches!(sink.send(Event::Snapshot(batch)), Sent::Over) || !running {
        return Ok(stream);
    }
    tokio::spawn(forward(sink, changes, move |change| match change {
        Change::Created(batch) | Change::Updated(batch)
            if batch.batch_id == batch_id && batch.version > sent_version =>
        {
            sent_version = batch.version;
            let event = Event::Updated(batch.clone());
            if batch.state == State::Running {
                Step::Send(event)
            } else {
                Step::SendLast(event)
            }
        }
        Change::Deleted(deleted) if deleted.batch_id == batch_id => {
            Step::SendLast(Event::Deleted(batch_id.clone()))
        }
        _ => Step::Skip,
    }));
    Ok(stream)
}

/// What a batch watcher starts from.
#[derive(Debug, Clone)]
pub(crate) enum Snapshot {
    /// Every running batch the filter keeps: a watcher that tracks them all.
    Running,
    /// These batches as they are now (those that exist), whatever their
    /// state: a page that shows them and follows only them and new ones.
    Of(Vec<BatchId>),
}

/// Watches the batches `filter` keeps: `snapshot`, then every change that
/// [`follows`] them, until the client goes away.
pub(crate) async fn watch_batches(
    store: &Current,
    hub: &Hub,
    filter: BatchFilter,
    snapshot: Snapshot,
) -> Result<EventStream, StoreError> {
    hub.prepare_watch(store).await?;
    let changes = hub.subscribe();
    let mut running = match snapshot {
        Snapshot::Running => filter.matches_state(State::Running).then(|| ListQuery {
            filter: BatchFilter {
                states: [State::Running].into(),
                ..filter.clone()
            },
            order: Order::OldestFirst,
            page_size: PageSize::largest(),
            after: None,
            detail: Detail::Full,
        }),
        Snapshot::Of(_) => None,
    };
    // The first page is read before answering, so that an unreachable
    // database fails the call itself.
    let mut page = match (&running, snapshot) {
        (Some(query), _) => Some(store.list(query).await?),
        (None, Snapshot::Of(batch_ids)) => {
            let batch_ids: Vec<&str> = batch_ids.iter().map(BatchId::as_str).collect();
            Some(Page {
                batches: store.get_many(&batch_ids).await?,
                next: None,
            })
        }
        (None, Snapshot::Running) => None,
    };
    let (sink, stream) = stream();
    let store = store.clone();
    tokio::spawn(async move {
        // The version each snapshot batch was sent at, until a newer one is:
        // the feed may still hold changes it read before the snapshot.
        let mut snapshot_versions = HashMap::new();
        while let Some(current) = page.take() {
            for batch in current.batches {
                snapshot_versions.insert(batch.batch_id.clone(), batch.version);
                // The snapshot waits for the client; changes meanwhile queue
                // up in the hub, and overflowing it is falling behind.
                if sink.events.send(Event::Snapshot(batch)).await.is_err() {
                    return;
                }
            }
            if let (Some(next), Some(query)) = (current.next, running.as_mut()) {
                query.after = Some(next);
                match store.list(query).await {
                    Ok(next_page) => page = Some(next_page),
                    Err(error) => return sink.end(StreamEnd::Snapshot(error)),
                }
            }
        }
        forward(sink, changes, |change| match change {
            Change::Created(batch) | Change::Updated(batch) => {
                let seen = snapshot_versions.get(&batch.batch_id).copied();
                if !follows(&filter, batch.facets())
                    || seen.is_some_and(|seen| batch.version <= seen)
                {
                    return Step::Skip;
                }
                if seen.is_some() {
                    snapshot_versions.remove(&batch.batch_id);
                }
                Step::Send(match change {
                    Change::Created(_) => Event::Created(batch.clone()),
                    _ => Event::Updated(batch.clone()),
                })
            }
            Change::Deleted(deleted) => {
                snapshot_versions.remove(&deleted.batch_id);
                if filter.matches(deleted.facets()) {
                    Step::Send(Event::Deleted(deleted.batch_id.clone()))
                } else {
                    Step::Skip
                }
            }
            // `forward` has ended the stream before asking.
            Change::Interrupted | Change::ShuttingDown => Step::Skip,
        })
        .await;
    });
    Ok(stream)
}

/// Whether a watcher of `filter` hears of a change that left a batch so: the
/// filter keeps it, or the filter keeps RUNNING batches and this one has just
/// finished (finished batches never change again, so a change that leaves
/// one finished is the one that finished it). A deletion is heard only if
/// the filter keeps the batch as it was.
fn follows(filter: &BatchFilter, batch: Facets<'_>) -> bool {
    filter.matches_all_but_state(batch)
        && (filter.matches_state(batch.state) || filter.matches_state(State::Running))
}
