//! Handlers of the `batchhistory.v1.BatchHistory` service: parse the request,
//! call the store, convert the answer. Every call also gets a request id,
//! a span, and a place in the metrics.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::time::Instant;
use tonic::{
    Code, Request, Response, Status,
    metadata::{MetadataMap, MetadataValue},
};
use tracing::{Instrument, Span, field};

use super::convert::{parse_batch_id, stale_after};
use super::deadline::deadline;
use super::limits::{fit_batches, fit_lookup};
use super::status::{Reason, Retry, ending_at, failed, write};
use crate::domain::{
    BatchFilter, BatchGet, BatchId, Correction, Finish, ListQuery, NewBatch, Progress, Purge, Save,
    StaleThreshold,
};
use crate::metrics::Metrics;
use crate::proto::{
    self, BatchGetBatchesRequest, BatchGetBatchesResponse, CreateBatchRequest, DeleteBatchRequest,
    FinishBatchRequest, GetBatchRequest, GetBatchStatsRequest, ListBatchesRequest,
    ListBatchesResponse, PurgeBatchesRequest, PurgeBatchesResponse, RecordProgressRequest,
    SaveBatchRequest, SweepStaleBatchesRequest, SweepStaleBatchesResponse, UpdateBatchRequest,
    WatchBatchRequest, WatchBatchesRequest, batch_history_server::BatchHistory,
};
use crate::store::Store;
use crate::watch::{self, Hub};
use tonic::codegen::tokio_stream::{Stream, StreamExt};

/// A watch RPC's stream of events, as sent.
pub(crate) type BatchEventStream =
    Pin<Box<dyn Stream<Item = Result<proto::BatchEvent, Status>> + Send>>;

/// Metadata key of the request id, read from requests and set on responses.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// The service, backed by a [`Store`].
#[derive(Clone)]
pub(crate) struct BatchHistoryService {
    store: Store,
    metrics: Arc<Metrics>,
    hub: Hub,
    /// The server's stale threshold, for sweeps that name none.
    stale_after: Option<StaleThreshold>,
}

impl BatchHistoryService {
    pub(crate) fn new(
        store: Store,
        metrics: Arc<Metrics>,
        hub: Hub,
        stale_after: Option<StaleThreshold>,
    ) -> Self {
        Self {
            store,
            metrics,
            hub,
            stale_after,
        }
    }

    /// Runs `handler` on the request's message inside a span that carries the
    /// method and request id, records the outcome in the metrics, and echoes
    /// the request id on the response, error or not.
    async fn call<Req, Res, Fut>(
        &self,
        method: &'static str,
        request: Request<Req>,
        handler: impl FnOnce(Req) -> Fut,
    ) -> Result<Response<Res>, Status>
    where
        Fut: Future<Output = Result<Res, Status>>,
    {
        let started = Instant::now();
        let request_id = request_id(request.metadata());
        let deadline = deadline(request.extensions().get(), request.metadata());
        let header = |name| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
        };
        // Named telemetry::otlp::SERVER_SPAN: exported over OTLP when that is on.
        let span = tracing::info_span!(
            "rpc",
            method,
            request_id = %request_id,
            batch_id = field::Empty,
            traceparent = header("traceparent"),
            tracestate = header("tracestate"),
            code = field::Empty,
        );
        let handled = handler(request.into_inner()).instrument(span.clone());
        let result = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, handled)
                .await
                .unwrap_or_else(|_| {
                    Err(failed(
                        Reason::DeadlineExceeded,
                        "the caller's deadline passed".into(),
                        &[],
                    ))
                }),
            None => handled.await,
        };
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        span.record("code", code as i64);
        let elapsed = started.elapsed();
        self.metrics.observe(method, code, elapsed);
        span.in_scope(|| tracing::debug!(?code, elapsed_ms = elapsed.as_secs_f64() * 1e3, "done"));

        let request_id = MetadataValue::try_from(request_id.as_str())
            .ok()
            .map(|mut id| {
                // Never indexed by HPACK: each id is new, and indexing it would
                // walk and churn the connection's header table on every call,
                // evicting the headers that do repeat.
                id.set_sensitive(true);
                id
            });
        match result {
            Ok(message) => {
                let mut response = Response::new(message);
                if let Some(id) = request_id {
                    response.metadata_mut().insert(REQUEST_ID, id);
                }
                Ok(response)
            }
            Err(mut status) => {
                if let Some(id) = request_id {
                    status.metadata_mut().insert(REQUEST_ID, id);
                }
                Err(status)
            }
        }
    }
}

/// The caller's request id if it is a sensible one (1 to 128 visible ASCII
/// characters), else a fresh one.
fn request_id(metadata: &MetadataMap) -> String {
    metadata
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(fresh_request_id, str::to_owned)
}

/// 32 hex digits: this process's random half, then a count of the ids it
/// has made. Unique within the process by the count and across processes
/// by the random half, without asking the OS for randomness on every call
/// (a system call that was 1% of a GetBatch's CPU).
fn fresh_request_id() -> String {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| {
        let mut bytes = [0_u8; 8];
        // Without randomness the ids are still unique within the process.
        let _ = getrandom::fill(&mut bytes);
        u64::from_le_bytes(bytes)
    });
    format!(
        "{process:016x}{:016x}",
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

fn record_batch_id(batch_id: &str) {
    Span::current().record("batch_id", batch_id);
}

#[tonic::async_trait]
impl BatchHistory for BatchHistoryService {
    async fn create_batch(
        &self,
        request: Request<CreateBatchRequest>,
    ) -> Result<Response<proto::Batch>, Status> {
        self.call("CreateBatch", request, |request| async {
            let batch = NewBatch::try_from(request)?;
            let created = self
                .store
                .create(&batch)
                .await
                .map_err(write(Retry::SameBatchId))?;
            record_batch_id(created.batch_id.as_str());
            Ok(created.into())
        })
        .await
    }

    async fn get_batch(
        &self,
        request: Request<GetBatchRequest>,
    ) -> Result<Response<proto::Batch>, Status> {
        self.call("GetBatch", request, |request| async {
            record_batch_id(&request.batch_id);
            let batch_id = parse_batch_id(request.batch_id, "batch_id")?;
            Ok(self.store.get(&batch_id).await?.into())
        })
        .await
    }

    async fn list_batches(
        &self,
        request: Request<ListBatchesRequest>,
    ) -> Result<Response<ListBatchesResponse>, Status> {
        self.call("ListBatches", request, |request| async {
            let query = ListQuery::try_from(request)?;
            let page = self.store.list(&query).await?;
            let (batches, cut) = fit_batches(page.batches);
            Ok(ListBatchesResponse {
                next_page_token: cut
                    .or(page.next)
                    .map(|cursor| cursor.to_token(&query.filter, query.order))
                    .unwrap_or_default(),
                batches,
            })
        })
        .await
    }

    async fn record_progress(
        &self,
        request: Request<RecordProgressRequest>,
    ) -> Result<Response<proto::Batch>, Status> {
        self.call("RecordProgress", request, |request| async {
            record_batch_id(&request.batch_id);
            let progress = Progress::try_from(request)?;
            let retry = match progress.idempotency {
                Some(_) => Retry::SameRequestId,
                None => Retry::NoRequestId,
            };
            let recorded = self.store.record_progress(&progress).await;
            Ok(recorded.map_err(write(retry))?.into())
        })
        .await
    }

    async fn save_batch(
        &self,
        request: Request<SaveBatchRequest>,
    ) -> Result<Response<proto::Batch>, Status> {
        self.call("SaveBatch", request, |request| async {
            if let Some(batch) = &request.batch {
                record_batch_id(&batch.batch_id);
            }
            let save = Save::try_from(request)?;
            let saved = self.store.save(&save).await;
            Ok(saved.map_err(ending_at("batch.end_time"))?.into())
        })
        .await
    }

    async fn finish_batch(
        &self,
        request: Request<FinishBatchRequest>,
    ) -> Result<Response<proto::Batch>, Status> {
        self.call("FinishBatch", request, |request| async {
            record_batch_id(&request.batch_id);
            let finish = Finish::try_from(request)?;
            let finished = self.store.finish(&finish).await;
            Ok(finished.map_err(ending_at("end_time"))?.into())
        })
        .await
    }

    async fn delete_batch(
        &self,
        request: Request<DeleteBatchRequest>,
    ) -> Result<Response<()>, Status> {
        self.call("DeleteBatch", request, |request| async move {
            record_batch_id(&request.batch_id);
            let batch_id = parse_batch_id(request.batch_id, "batch_id")?;
            self.store
                .delete(&batch_id, request.force)
                .await
                .map_err(write(Retry::Harmless))?;
            Ok(())
        })
        .await
    }

    type WatchBatchStream = BatchEventStream;

    async fn watch_batch(
        &self,
        request: Request<WatchBatchRequest>,
    ) -> Result<Response<BatchEventStream>, Status> {
        self.call("WatchBatch", request, |request| async {
            record_batch_id(&request.batch_id);
            let batch_id = parse_batch_id(request.batch_id, "batch_id")?;
            let events = watch::watch_batch(&self.store.current(), &self.hub, batch_id).await?;
            Ok(
                Box::pin(events.map(|event| event.map(Into::into).map_err(Into::into)))
                    as BatchEventStream,
            )
        })
        .await
    }

    type WatchBatchesStream = BatchEventStream;

    async fn watch_batches(
        &self,
        request: Request<WatchBatchesRequest>,
    ) -> Result<Response<BatchEventStream>, Status> {
        self.call("WatchBatches", request, |request| async {
            let filter = BatchFilter::try_from(request)?;
            let events = watch::watch_batches(
                &self.store.current(),
                &self.hub,
                filter,
                watch::Snapshot::Running,
            )
            .await?;
            Ok(
                Box::pin(events.map(|event| event.map(Into::into).map_err(Into::into)))
                    as BatchEventStream,
            )
        })
        .await
    }

    async fn update_batch(
        &self,
        request: Request<UpdateBatchRequest>,
    ) -> Result<Response<proto::Batch>, Status> {
        self.call("UpdateBatch", request, |request| async {
            if let Some(batch) = &request.batch {
                record_batch_id(&batch.batch_id);
            }
            let correction = Correction::try_from(request)?;
            let updated = self.store.update(&correction).await;
            Ok(updated.map_err(write(Retry::Harmless))?.into())
        })
        .await
    }

    async fn batch_get_batches(
        &self,
        request: Request<BatchGetBatchesRequest>,
    ) -> Result<Response<BatchGetBatchesResponse>, Status> {
        self.call("BatchGetBatches", request, |request| async {
            let lookup = BatchGet::try_from(request)?;
            let batch_ids: Vec<&str> = lookup.batch_ids.iter().map(BatchId::as_str).collect();
            let found = self.store.get_many(&batch_ids, lookup.detail).await?;
            fit_lookup(lookup.batch_ids, found)
        })
        .await
    }

    async fn get_batch_stats(
        &self,
        request: Request<GetBatchStatsRequest>,
    ) -> Result<Response<proto::BatchStats>, Status> {
        self.call("GetBatchStats", request, |request| async {
            let filter = BatchFilter::try_from(request)?;
            Ok(self.store.stats(&filter).await?.into())
        })
        .await
    }

    async fn sweep_stale_batches(
        &self,
        request: Request<SweepStaleBatchesRequest>,
    ) -> Result<Response<SweepStaleBatchesResponse>, Status> {
        self.call("SweepStaleBatches", request, |request| async move {
            let threshold = stale_after(&request, self.stale_after)?;
            let stopped = self
                .store
                .sweep_stale(threshold)
                .await
                .map_err(write(Retry::Harmless))?;
            let stopped_count = i64::try_from(stopped.len()).unwrap_or(i64::MAX);
            let (stopped, _) = fit_batches(stopped);
            Ok(SweepStaleBatchesResponse {
                stopped,
                stopped_count,
            })
        })
        .await
    }

    async fn purge_batches(
        &self,
        request: Request<PurgeBatchesRequest>,
    ) -> Result<Response<PurgeBatchesResponse>, Status> {
        self.call("PurgeBatches", request, |request| async {
            let purge = Purge::try_from(request)?;
            let purged = self
                .store
                .purge(purge.older_than, &purge.states, purge.dry_run)
                .await
                .map_err(write(Retry::Harmless))?;
            Ok(PurgeBatchesResponse {
                purged_count: i64::try_from(purged).unwrap_or(i64::MAX),
            })
        })
        .await
    }
}
