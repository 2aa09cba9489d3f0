//! Live updates as server-sent events, fed by the same watch streams as the
//! watch RPCs (so a page on any replica sees changes made through any
//! replica). Each event carries the HTML the page would show after a reload.

use std::{convert::Infallible, time::Duration};

use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use jiff::Timestamp;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use super::pages;
use super::query::LiveQuery;
use crate::http_endpoint::Body;
use crate::store::{Store, StoreError};
use crate::watch::{self, Event, Hub};

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The event stream `query` asks for. It ends with an `end` event when there
/// is nothing more to follow (the batch finished); otherwise it ends only
/// when the server asks watchers to start over, and the browser reconnects.
pub async fn events(store: &Store, hub: &Hub, query: LiveQuery) -> Result<Body, StoreError> {
    let mut stream = match &query {
        LiveQuery::History(filter) => watch::watch_batches(store, hub, filter.clone()).await?,
        LiveQuery::Batch(batch_id) => watch::watch_batch(store, hub, batch_id.clone()).await?,
    };
    let (frames, body) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
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
                    Some(Ok(event)) => Some(render(&query, event)),
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

/// One server-sent event: what to replace (`target`, an element id) with
/// what (`html`), and whether a page without that element should add it.
fn render(query: &LiveQuery, event: Event) -> Bytes {
    let now = Timestamp::now();
    let (kind, data) = match (query, event) {
        (LiveQuery::History(_), Event::Snapshot(batch) | Event::Updated(batch)) => (
            "batch",
            json!({ "target": pages::row_id(&batch.batch_id), "html": pages::row(&batch, now), "add": false }),
        ),
        (LiveQuery::History(filter), Event::Created(batch)) => (
            "batch",
            json!({
                "target": pages::row_id(&batch.batch_id),
                "html": pages::row(&batch, now),
                "add": filter.matches(batch.facets()),
            }),
        ),
        (LiveQuery::History(_), Event::Deleted(batch_id)) => {
            ("deleted", json!({ "target": pages::row_id(&batch_id) }))
        }
        (
            LiveQuery::Batch(_),
            Event::Snapshot(batch) | Event::Created(batch) | Event::Updated(batch),
        ) => (
            "batch",
            json!({ "target": pages::DETAIL_ID, "html": pages::detail(&batch, now), "add": false }),
        ),
        (LiveQuery::Batch(_), Event::Deleted(_)) => {
            ("deleted", json!({ "target": pages::DETAIL_ID }))
        }
    };
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}
