//! Live updates as server-sent events, fed by the same watch streams as the
//! watch RPCs (so a page on any replica sees changes made through any
//! replica). Each event carries the HTML the page would show after a reload.

use std::{collections::HashSet, convert::Infallible, time::Duration};

use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use jiff::Timestamp;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use super::pages;
use super::query::LiveQuery;
use crate::domain::{BatchFilter, BatchId};
use crate::http_endpoint::Body;
use crate::store::{Current, StoreError};
use crate::watch::{self, Event, Hub, Snapshot};

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The event stream `query` asks for. It ends with an `end` event when there
/// is nothing more to follow (the batch finished); otherwise it ends only
/// when the server asks watchers to start over, and the browser reconnects.
pub(crate) async fn events(
    store: &Current,
    hub: &Hub,
    query: LiveQuery,
) -> Result<Body, StoreError> {
    let (mut stream, mut page) = match query {
        LiveQuery::History { filter, shown } => {
            let snapshot = Snapshot::Of(shown.clone());
            let stream = watch::watch_batches(store, hub, filter.clone(), snapshot).await?;
            let shown = shown.into_iter().collect();
            let filter = Box::new(filter);
            (stream, Page::History { filter, shown })
        }
        LiveQuery::Batch(batch_id) => {
            (watch::watch_batch(store, hub, batch_id).await?, Page::Batch)
        }
    };
    let (frames, body) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        // The first comment after a quiet interval, not at once.
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        // Reconnect soon after the server ends a stream to start over.
        let mut next = Some(Bytes::from_static(b"retry: 2000\n\n"));
        loop {
            if let Some(frame) = next.take()
                && frames.send(frame).await.is_err()
            {
                return;
            }
            next = tokio::select! {
                () = frames.closed() => return,
                _ = keepalive.tick() => Some(Bytes::from_static(b": keepalive\n\n")),
                event = stream.next() => match event {
                    Some(Ok(event)) => page.render(event),
                    Some(Err(end)) => {
                        tracing::debug!(reason = %end, "live page stream ends; the browser reconnects");
                        return;
                    }
                    None => {
                        let _ = frames.send(Bytes::from_static(b"event: end\ndata: {}\n\n")).await;
                        return;
                    }
                },
            };
        }
    });
    let body = ReceiverStream::new(body).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
    Ok(BodyExt::boxed(StreamBody::new(body)))
}

/// What the page being kept current shows.
enum Page {
    /// A history page: the rows it shows (with those added since it loaded),
    /// and the filter that decides which new batches it adds.
    History {
        filter: Box<BatchFilter>,
        shown: HashSet<BatchId>,
    },
    Batch,
}

impl Page {
    /// The server-sent event for `event`, if the page shows what it changed:
    /// what to replace (`target`, an element id) with what (`html`), and
    /// whether the page adds it as a new row.
    fn render(&mut self, event: Event) -> Option<Bytes> {
        let now = Timestamp::now();
        let (kind, data) = match (self, event) {
            (Page::History { shown, .. }, Event::Snapshot(batch) | Event::Updated(batch)) => {
                if !shown.contains(&batch.batch_id) {
                    return None;
                }
                let html = pages::row(&batch, now);
                let target = pages::row_id(&batch.batch_id);
                (
                    "batch",
                    json!({ "target": target, "html": html, "add": false }),
                )
            }
            (Page::History { filter, shown }, Event::Created(batch)) => {
                if !filter.matches(batch.facets()) {
                    return None;
                }
                shown.insert(batch.batch_id.clone());
                let html = pages::row(&batch, now);
                let target = pages::row_id(&batch.batch_id);
                (
                    "batch",
                    json!({ "target": target, "html": html, "add": true }),
                )
            }
            (Page::History { shown, .. }, Event::Deleted(batch_id)) => {
                if !shown.remove(&batch_id) {
                    return None;
                }
                ("deleted", json!({ "target": pages::row_id(&batch_id) }))
            }
            (
                Page::Batch,
                Event::Snapshot(batch) | Event::Created(batch) | Event::Updated(batch),
            ) => {
                let html = pages::detail(&batch, now);
                (
                    "batch",
                    json!({ "target": pages::DETAIL_ID, "html": html, "add": false }),
                )
            }
            (Page::Batch, Event::Deleted(_)) => ("deleted", json!({ "target": pages::DETAIL_ID })),
        };
        Some(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")))
    }
}
