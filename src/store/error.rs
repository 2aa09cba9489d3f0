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
    /// The batch changed since the etag a correction named was read.
    #[error("batch {batch_id} changed since that etag was read; its etag is now {current}")]
    EtagMismatch { batch_id: BatchId, current: String },
    /// The call needs the batch finished, and it is RUNNING.
    #[error("batch {0} is RUNNING; finish it first, or delete it with force")]
    Running(BatchId),
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
    /// The database server ran out of something (SQLSTATE class 53): disk
    /// space, memory, connection slots. Nothing was applied; it lasts until
    /// an operator acts.
    #[error("the database server is out of {resource} (SQLSTATE {sqlstate})")]
    Exhausted {
        resource: &'static str,
        sqlstate: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
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
            Self::Unavailable(source)
            | Self::Internal { source, .. }
            | Self::Exhausted { source, .. } => source.downcast_ref(),
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
        if let Some((resource, sqlstate)) = exhausted(&error) {
            database_errors::count("53");
            return Self::Exhausted {
                resource,
                sqlstate,
                source: Box::new(error),
            };
        }
        if is_unavailable(&error) {
            Self::Unavailable(Box::new(error))
        } else {
            Self::internal("running a statement", error)
        }
    }
}

/// What the server ran out of, and the SQLSTATE saying so, if it did.
fn exhausted(error: &tokio_postgres::Error) -> Option<(&'static str, String)> {
    let sqlstate = error.code()?.code();
    let resource = match sqlstate {
        "53100" => "disk space",
        "53200" => "memory",
        "53300" => "connection slots",
        code if code.starts_with("53") => "resources",
        _ => return None,
    };
    Some((resource, sqlstate.to_owned()))
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) if exhausted(&error).is_some() => error.into(),
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
/// than that the statement itself is wrong. Each such failure is counted by
/// SQLSTATE class (`io` where it has none).
fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    let unavailable = is_unavailable_class(error);
    if unavailable {
        database_errors::count(error.code().map_or("io", |code| &code.code()[..2]));
    }
    unavailable
}

fn is_unavailable_class(error: &tokio_postgres::Error) -> bool {
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

/// Failures of the database's making, by SQLSTATE class, since the process
/// started: the metrics show them (`batch_history_database_errors_total`).
pub(crate) mod database_errors {
    use std::{collections::BTreeMap, sync::Mutex};

    static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

    pub(super) fn count(class: &str) {
        let mut counts = COUNTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(class.to_owned()).or_default() += 1;
    }

    /// Every class seen, with its count.
    pub(crate) fn by_class() -> Vec<(String, u64)> {
        let counts = COUNTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts
            .iter()
            .map(|(class, n)| (class.clone(), *n))
            .collect()
    }
}
