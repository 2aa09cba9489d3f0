//! The conditional writes, each one statement that either decides (a batch,
//! or an error) or finds it lost a race with a concurrent writer, and is
//! then run again ([`until_decided`]).

use tokio_postgres::{error::SqlState, types::Json};

use super::{Counter, StoreError, connection::Connection, rows, rows::Outcome, sql};
use crate::domain::{
    Batch, BatchError, BatchId, Correction, Finish, Label, MAX_KEPT_ERROR_BYTES, MAX_KEPT_ERRORS,
    MAX_KEPT_SWITCH_BYTES, MAX_KEPT_SWITCHES, NewBatch, NonNegative, Progress, Prose, Save, State,
};

/// How often a write that lost a race with a concurrent writer is retried
/// before it is reported as unavailable. One retry settles every race the
/// statements below can meet; the rest is margin.
const MAX_ATTEMPTS: usize = 5;

/// The primary key of recorded request ids.
const REQUEST_ID_KEY: &str = "batch_requests_pkey";

/// Runs one attempt of a conditional write after another until one decides,
/// at most [`MAX_ATTEMPTS`] times. An attempt that lost a race answers
/// `Ok(None)`.
async fn until_decided<F>(mut attempt: impl FnMut() -> F) -> Result<Batch, StoreError>
where
    F: Future<Output = Result<Option<Batch>, StoreError>>,
{
    for _ in 0..MAX_ATTEMPTS {
        if let Some(batch) = attempt().await? {
            return Ok(batch);
        }
    }
    Err(StoreError::Contended)
}

/// Creates `batch` in RUNNING, or returns the stored batch if the same
/// create already happened.
pub(super) async fn create(client: &Connection<'_>, batch: &NewBatch) -> Result<Batch, StoreError> {
    until_decided(|| create_once(client, batch)).await
}

async fn create_once(
    client: &Connection<'_>,
    batch: &NewBatch,
) -> Result<Option<Batch>, StoreError> {
    let batch_id = match &batch.batch_id {
        Some(id) => id.clone(),
        None => BatchId::generate(jiff::Timestamp::now()),
    };
    let created = client
        .query_opt(&sql::Create {
            batch_id: batch_id.as_str(),
            provider: batch.provider.as_str(),
            model: batch.model.as_str(),
            topic_filter: batch.topic_filter.as_str(),
            difficulty_filter: batch.difficulty_filter.as_str(),
            reasoning_instruction: batch.reasoning_instruction.as_str(),
            target_count: batch.target_count.get(),
            metadata: Json(batch.metadata.as_map()),
            labels: Json(&batch.labels),
            start_time: batch.start_time,
        })
        .await;
    let Some(row) = registering(client, created, &batch_id, batch.start_time).await? else {
        return Ok(None);
    };
    let stored = rows::batch(&row)?;
    if row.try_get::<_, bool>("created")? {
        return Ok(Some(stored));
    }
    match &batch.batch_id {
        Some(_) if batch.matches(&stored) => Ok(Some(stored)),
        Some(id) => Err(StoreError::AlreadyExists(id.clone())),
        // A generated id collided: draw another.
        None => Ok(None),
    }
}

/// Applies a progress report to a running batch, once per request id.
pub(super) async fn record_progress(
    client: &Connection<'_>,
    progress: &Progress,
) -> Result<Batch, StoreError> {
    until_decided(|| record_progress_once(client, progress)).await
}

async fn record_progress_once(
    client: &Connection<'_>,
    progress: &Progress,
) -> Result<Option<Batch>, StoreError> {
    let idempotency = progress.idempotency.as_ref();
    let row = client
        .query_opt(&sql::RecordProgress {
            batch_id: progress.batch_id.as_str(),
            samples_delta: progress.samples_delta.get(),
            tokens_delta: progress.tokens_delta.get(),
            errors: Json(&progress.errors),
            model_switches: Json(&progress.model_switches),
            keep_errors: MAX_KEPT_ERRORS as i32,
            keep_error_bytes: MAX_KEPT_ERROR_BYTES as i32,
            keep_switches: MAX_KEPT_SWITCHES as i32,
            keep_switch_bytes: MAX_KEPT_SWITCH_BYTES as i32,
            request_id: idempotency.map(|i| i.request_id.as_str()),
            fingerprint: idempotency.map(|i| &i.fingerprint[..]),
            switched_to: progress
                .model_switches
                .iter()
                .rev()
                .map(|switch| switch.to_model.as_str())
                .find(|model| !model.is_empty()),
        })
        .await;
    let row = match row {
        // A retry of this report committed first; look again.
        Err(error) if violates(&error, REQUEST_ID_KEY) => return Ok(None),
        Err(error) if is_out_of_range(&error) => {
            return Err(overflowed_counter(client, progress).await);
        }
        row => row?,
    };
    // Set only when this report's request id was already recorded.
    if let (Some(row), Some(idempotency)) = (&row, idempotency)
        && let Some(same_report) = row.try_get::<_, Option<bool>>("replay_matches")?
    {
        return if same_report {
            rows::batch(row).map(Some)
        } else {
            Err(StoreError::RequestIdReused(idempotency.request_id.clone()))
        };
    }
    match Outcome::of(row)? {
        Outcome::Applied(batch) => Ok(Some(batch)),
        Outcome::Missing => Err(StoreError::NotFound(progress.batch_id.clone())),
        Outcome::Unchanged(batch) if batch.state == State::Running => Ok(None),
        Outcome::Unchanged(batch) => Err(StoreError::NotRunning {
            batch_id: batch.batch_id,
            state: batch.state,
        }),
    }
}

/// Creates a batch from its whole state, or brings the stored one up to
/// date unless the stored one is ahead; returns the batch as stored.
pub(super) async fn save(client: &Connection<'_>, save: &Save) -> Result<Batch, StoreError> {
    until_decided(|| save_once(client, save)).await
}

async fn save_once(client: &Connection<'_>, save: &Save) -> Result<Option<Batch>, StoreError> {
    let created = &save.created;
    let saved = client
        .query_opt(&sql::Save {
            batch_id: save.batch_id.as_str(),
            state: save.state.as_str(),
            provider: created.provider.as_str(),
            model: created.model.as_str(),
            current_model: save.current_model.as_str(),
            topic_filter: created.topic_filter.as_str(),
            difficulty_filter: created.difficulty_filter.as_str(),
            reasoning_instruction: created.reasoning_instruction.as_str(),
            target_count: created.target_count.get(),
            samples_generated: save.samples_generated.get(),
            total_tokens: save.total_tokens.get(),
            errors: Json(&save.errors),
            error_count: save.error_count,
            model_switches: Json(&save.model_switches),
            switch_count: save.switch_count,
            metadata: Json(created.metadata.as_map()),
            labels: Json(&created.labels),
            start_time: created.start_time,
            end_time: save.end_time,
        })
        .await;
    let row = registering(client, saved, &save.batch_id, created.start_time).await?;
    match Outcome::of(row)? {
        Outcome::Applied(batch) | Outcome::Unchanged(batch) => Ok(Some(batch)),
        // See `registering`: look again.
        Outcome::Missing => Ok(None),
    }
}

/// The row of a statement that registers a new batch's id and inserts it
/// ([`sql::Create`], [`sql::Save`]), or `None` after readying what it
/// lacked for the next attempt: the month of the batch's `start_time` (no
/// time: now), or an id left registered to no batch.
async fn registering(
    client: &Connection<'_>,
    row: Result<Option<tokio_postgres::Row>, StoreError>,
    batch_id: &BatchId,
    start_time: Option<jiff::Timestamp>,
) -> Result<Option<tokio_postgres::Row>, StoreError> {
    match row {
        Err(error) if lacks_month(&error) => {
            client.execute(&sql::AddMonth { at: start_time }).await?;
            Ok(None)
        }
        // Either another call registered the id and committed after this
        // statement's snapshot was taken, so that its batch is invisible
        // here, or the id outlived its batch: a month dropped whole keeps
        // its ids registered until the upkeep clears them.
        Ok(None) => {
            client
                .execute(&sql::ForgetStaleId {
                    batch_id: batch_id.as_str(),
                })
                .await?;
            Ok(None)
        }
        row => row,
    }
}

/// Whether a statement failed because no month of the batches holds a
/// row's start time.
fn lacks_month(error: &StoreError) -> bool {
    error
        .statement_error()
        .and_then(tokio_postgres::Error::as_db_error)
        .is_some_and(|db| {
            *db.code() == SqlState::CHECK_VIOLATION
                && db.constraint().is_none()
                && db.table() == Some("batches")
        })
}

/// Moves a running batch to its final state; repeating the same finish
/// returns the batch unchanged.
pub(super) async fn finish(client: &Connection<'_>, finish: &Finish) -> Result<Batch, StoreError> {
    until_decided(|| finish_once(client, finish)).await
}

async fn finish_once(
    client: &Connection<'_>,
    finish: &Finish,
) -> Result<Option<Batch>, StoreError> {
    let target = finish.state.state();
    let errors: Vec<&BatchError> = finish.error.iter().collect();
    let row = client
        .query_opt(&sql::Finish {
            batch_id: finish.batch_id.as_str(),
            state: target.as_str(),
            end_time: finish.end_time,
            errors: Json(&errors),
            keep_errors: MAX_KEPT_ERRORS as i32,
            keep_error_bytes: MAX_KEPT_ERROR_BYTES as i32,
        })
        .await?;
    match Outcome::of(row)? {
        Outcome::Applied(batch) => Ok(Some(batch)),
        Outcome::Missing => Err(StoreError::NotFound(finish.batch_id.clone())),
        Outcome::Unchanged(batch) if batch.state == target => Ok(Some(batch)),
        Outcome::Unchanged(batch) if batch.state == State::Running => Ok(None),
        Outcome::Unchanged(batch) => Err(StoreError::NotRunning {
            batch_id: batch.batch_id,
            state: batch.state,
        }),
    }
}

/// Applies `correction` to a batch, unless it changed since the etag the
/// correction names.
pub(super) async fn update(
    client: &Connection<'_>,
    correction: &Correction,
) -> Result<Batch, StoreError> {
    fn text(value: &Option<Label>) -> &str {
        value.as_ref().map_or("", Label::as_str)
    }
    let row = client
        .query_opt(&sql::Update {
            batch_id: correction.batch_id.as_str(),
            set_topic_filter: correction.topic_filter.is_some(),
            topic_filter: text(&correction.topic_filter),
            set_difficulty_filter: correction.difficulty_filter.is_some(),
            difficulty_filter: text(&correction.difficulty_filter),
            set_reasoning_instruction: correction.reasoning_instruction.is_some(),
            reasoning_instruction: correction
                .reasoning_instruction
                .as_ref()
                .map_or("", Prose::as_str),
            set_target_count: correction.target_count.is_some(),
            target_count: correction.target_count.map_or(0, NonNegative::get),
            set_metadata: correction.metadata.is_some(),
            metadata: correction.metadata.as_ref().map(|m| Json(m.as_map())),
            set_labels: correction.labels.is_some(),
            labels: correction.labels.as_ref().map(Json),
            expected_version: correction.expected.map(|etag| etag.version),
            expected_update_time: correction.expected.map(|etag| etag.update_time),
        })
        .await?;
    match Outcome::of(row)? {
        Outcome::Applied(batch) => Ok(batch),
        Outcome::Unchanged(batch) => Err(StoreError::EtagMismatch {
            batch_id: batch.batch_id.clone(),
            current: batch.etag(),
        }),
        Outcome::Missing => Err(StoreError::NotFound(correction.batch_id.clone())),
    }
}

/// Whether `error` is a unique violation of `constraint`.
fn violates(error: &StoreError, constraint: &str) -> bool {
    error
        .statement_error()
        .and_then(tokio_postgres::Error::as_db_error)
        .is_some_and(|db| {
            *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
        })
}

/// Whether a statement failed because a number left its type's range.
fn is_out_of_range(error: &StoreError) -> bool {
    error
        .statement_error()
        .and_then(tokio_postgres::Error::code)
        == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE)
}

/// Which counter of `progress`'s batch its delta would take past the 64-bit
/// maximum (PostgreSQL's error does not say).
async fn overflowed_counter(client: &Connection<'_>, progress: &Progress) -> StoreError {
    let counters = async {
        let row = client
            .query_one(&sql::Get {
                batch_id: progress.batch_id.as_str(),
            })
            .await?;
        rows::batch(&row)
    };
    match counters.await {
        Ok(batch)
            if batch
                .samples_generated
                .checked_add(progress.samples_delta.get())
                .is_none() =>
        {
            StoreError::CounterOverflow(Counter::SamplesGenerated)
        }
        Ok(_) => StoreError::CounterOverflow(Counter::TotalTokens),
        Err(error) => error,
    }
}
