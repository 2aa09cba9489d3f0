//! Handlers of the `batchhistory.v1.BatchHistory` service: parse the request,
//! call the store, convert the answer.

use tonic::{Request, Response, Status};
use tracing::{Span, instrument};

use super::convert::parse_batch_id;
use crate::domain::{Finish, ListQuery, NewBatch, Progress};
use crate::proto::{
    self, CreateBatchRequest, DeleteBatchRequest, FinishBatchRequest, GetBatchRequest,
    ListBatchesRequest, ListBatchesResponse, RecordProgressRequest,
    batch_history_server::BatchHistory,
};
use crate::store::Store;

/// The service, backed by a [`Store`].
#[derive(Clone)]
pub struct BatchHistoryService {
    store: Store,
}

impl BatchHistoryService {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl BatchHistory for BatchHistoryService {
    #[instrument(skip_all, fields(batch_id))]
    async fn create_batch(&self, request: Request<CreateBatchRequest>) -> Reply<proto::Batch> {
        let batch = NewBatch::try_from(request.into_inner())?;
        let created = self.store.create(&batch).await?;
        Span::current().record("batch_id", created.batch_id.as_str());
        Ok(Response::new(created.into()))
    }

    #[instrument(skip_all, fields(batch_id = %request.get_ref().batch_id))]
    async fn get_batch(&self, request: Request<GetBatchRequest>) -> Reply<proto::Batch> {
        let batch_id = parse_batch_id(request.into_inner().batch_id, "batch_id")?;
        Ok(Response::new(self.store.get(&batch_id).await?.into()))
    }

    #[instrument(skip_all)]
    async fn list_batches(
        &self,
        request: Request<ListBatchesRequest>,
    ) -> Reply<ListBatchesResponse> {
        let query = ListQuery::try_from(request.into_inner())?;
        let page = self.store.list(&query).await?;
        Ok(Response::new(ListBatchesResponse {
            next_page_token: page
                .next
                .map(|cursor| cursor.to_token(&query.filter, query.order))
                .unwrap_or_default(),
            batches: page.batches.into_iter().map(Into::into).collect(),
        }))
    }

    #[instrument(skip_all, fields(batch_id = %request.get_ref().batch_id))]
    async fn record_progress(
        &self,
        request: Request<RecordProgressRequest>,
    ) -> Reply<proto::Batch> {
        let progress = Progress::try_from(request.into_inner())?;
        Ok(Response::new(
            self.store.record_progress(&progress).await?.into(),
        ))
    }

    #[instrument(skip_all, fields(batch_id = %request.get_ref().batch_id))]
    async fn finish_batch(&self, request: Request<FinishBatchRequest>) -> Reply<proto::Batch> {
        let finish = Finish::try_from(request.into_inner())?;
        Ok(Response::new(self.store.finish(&finish).await?.into()))
    }

    #[instrument(skip_all, fields(batch_id = %request.get_ref().batch_id))]
    async fn delete_batch(&self, request: Request<DeleteBatchRequest>) -> Reply<()> {
        let batch_id = parse_batch_id(request.into_inner().batch_id, "batch_id")?;
        self.store.delete(&batch_id).await?;
        Ok(Response::new(()))
    }
}
