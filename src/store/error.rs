//! What can go wrong in the store, sorted by who can act on it.

use std::{error::Error as StdError, time::Duration};

use deadpool_postgres::PoolError;

use crate::domain::{BatchId, RequestId, State};

/// Constraint that rejects an end time before the start time.
const END_AFTER_START: &str = "batches_end_after_start";

/// A batch's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    SamplesGenerated,
    TotalTokens,
}

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SamplesGenerated => "samples_generated",
            Self::TotalTokens => "total_tokens",
        })
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("batch {0} does not exist")]
    NotFound(BatchId),
    #[error("a different batch with id {0} already exists")]
    AlreadyExists(BatchId),
    #[error("request_id {0} was already used for a different request")]
    RequestIdReused(RequestId),
    #[error("batch {batch_id} is {state}, not RUNNING")]
    NotRunning { batch_id: BatchId, state: State },
    /// The end time given is before the batch's start time.
    #[error("the end time is before the batch's start_time")]
    EndBeforeStart,
    /// Adding to a counter would take it past its 64-bit maximum.
    #[error("the batch's {0} would pass its 64-bit maximum")]
    CounterOverflow(Counter),
    /// Too many concurrent writers kept winning the race for the same row.
    #[error("the batch was changed concurrently too often; retry")]
    Contended,
    /// Nothing was applied.
    #[error("the database did not answer within {0:?}")]
    TimedOut(Duration),
    /// A statement ran past the deadline and neither its result nor its
    /// cancellation could be confirmed: it may or may not have been applied.
    #[error("the database did not answer within {0:?}; the outcome is unknown")]
    OutcomeUnknown(Duration),
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// A defect: a query or a stored row that should not be possible.
    #[error("{context}")]
    Internal {
        context: &'static str,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl StoreError {
    pub(crate) fn internal(
        context: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            context,
            source: source.into(),
        }
    }
}

impl StoreError {
    /// The PostgreSQL error behind this one, when a statement failed.
    pub(super) fn statement_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Self::Unavailable(source) | Self::Internal { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        if let Some(db) = error.as_db_error()
            && db.constraint() == Some(END_AFTER_START)
        {
            return Self::EndBeforeStart;
        }
        if is_unavailable(&error) {
            Self::Unavailable(Box::new(error))
        } else {
            Self::internal("running a statement", error)
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) if !is_unavailable(&error) => {
                Self::internal("opening a database connection", error)
            }
            PoolError::Backend(_) | PoolError::Timeout(_) | PoolError::Closed => {
                Self::Unavailable(Box::new(error))
            }
            other => Self::internal("taking a connection from the pool", other),
        }
    }
}

/// Whether `error` means the database cannot serve us right now (down,
/// restarting, overloaded, unreachable, refusing our credentials) rather
/// than that the statement itself is wrong.
fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            let class = &code.code()[..2];
            // 08 connection exception, 28 invalid authorization, 3D invalid
            // catalog (database dropped), 53 insufficient resources,
            // 57 operator intervention (shutdown, cancel), 40 serialization
            // failures and deadlocks, which are retryable too.
            matches!(class, "08" | "28" | "3D" | "53" | "57" | "40")
        }
        // No SQLSTATE: the failure is below SQL, in the socket or TLS.
        None => error
            .source()
            .is_some_and(|source| source.is::<std::io::Error>()),
    }
}
