//! Rows read back into domain values.

use tokio_postgres::{Row, types::Json};

use super::{StoreError, sql::column};
use crate::domain::{Batch, BatchId, Cursor, Page, State, StatsGroup};

/// A whole batch, from a row that starts with every column (`columns!`).
pub(super) fn batch(row: &Row) -> Result<Batch, StoreError> {
    let batch_id: String = row.try_get(column::batch_id)?;
    Ok(Batch {
        batch_id: BatchId::parse(batch_id)
            .map_err(|e| StoreError::internal("reading a stored batch id", e))?,
        state: state(row.try_get(column::state)?)?,
        provider: row.try_get(column::provider)?,
        model: row.try_get(column::model)?,
        current_model: row.try_get(column::current_model)?,
        topic_filter: row.try_get(column::topic_filter)?,
        difficulty_filter: row.try_get(column::difficulty_filter)?,
        reasoning_instruction: row.try_get(column::reasoning_instruction)?,
        target_count: row.try_get(column::target_count)?,
        samples_generated: row.try_get(column::samples_generated)?,
        total_tokens: row.try_get(column::total_tokens)?,
        errors: row.try_get::<_, Json<_>>(column::errors)?.0,
        error_count: row.try_get(column::error_count)?,
        model_switches: row.try_get::<_, Json<_>>(column::model_switches)?.0,
        metadata: row.try_get::<_, Json<_>>(column::metadata)?.0,
        labels: row.try_get::<_, Json<_>>(column::labels)?.0,
        start_time: row.try_get(column::start_time)?,
        end_time: row.try_get(column::end_time)?,
        update_time: row.try_get(column::update_time)?,
        version: row.try_get(column::version)?,
    })
}

/// A page of `page_size` batches from a listing's rows, which hold more
/// than a page when another page follows.
pub(super) fn page(rows: &[Row], page_size: usize) -> Result<Page, StoreError> {
    let mut batches = rows
        .iter()
        .take(page_size + 1)
        .map(batch)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if batches.len() > page_size {
        batches.truncate(page_size);
        batches.last().map(Cursor::after)
    } else {
        None
    };
    Ok(Page { batches, next })
}

/// Counts per state, from `(state, count)` rows.
pub(super) fn counts(rows: &[Row]) -> Result<Vec<(State, i64)>, StoreError> {
    rows.iter()
        .map(|row| Ok((state(row.try_get(0)?)?, row.try_get(1)?)))
        .collect()
}

/// Totals per (state, provider, model), from the rows of `Listing::stats`.
pub(super) fn stats(rows: &[Row]) -> Result<Vec<StatsGroup>, StoreError> {
    rows.iter()
        .map(|row| {
            Ok(StatsGroup {
                state: state(row.try_get(0)?)?,
                provider: row.try_get(1)?,
                model: row.try_get(2)?,
                batch_count: row.try_get(3)?,
                samples_generated: row.try_get(4)?,
                total_tokens: row.try_get(5)?,
            })
        })
        .collect()
}

fn state(name: &str) -> Result<State, StoreError> {
    State::from_name(name).ok_or_else(|| {
        StoreError::internal("reading a stored state", format!("unknown state {name:?}"))
    })
}

/// What a conditional update found.
pub(super) enum Outcome {
    Applied(Batch),
    /// The row exists but did not qualify; it is returned as it was.
    Unchanged(Batch),
    Missing,
}

impl Outcome {
    /// From the row of a statement that returns the batch with `applied`.
    pub(super) fn of(row: Option<Row>) -> Result<Self, StoreError> {
        let Some(row) = row else {
            return Ok(Self::Missing);
        };
        let batch = batch(&row)?;
        Ok(if row.try_get::<_, bool>("applied")? {
            Self::Applied(batch)
        } else {
            Self::Unchanged(batch)
        })
    }
}
