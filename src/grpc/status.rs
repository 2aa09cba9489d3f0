//! The one place where errors become gRPC statuses.
//!
//! Callers get a code they can act on and a message without SQL, connection
//! details or secrets; anything unexpected is logged here, once, with its
//! cause chain.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::FieldViolation;
use crate::store::{Counter, StoreError};
use crate::telemetry::cause_chain;
use crate::watch::StreamEnd;

impl From<FieldViolation> for Status {
    fn from(violation: FieldViolation) -> Self {
        Status::with_error_details(
            Code::InvalidArgument,
            violation.to_string(),
            ErrorDetails::with_bad_request_violation(violation.field, violation.description),
        )
    }
}

impl From<StoreError> for Status {
    /// The status of a read's error (a write says how to retry: [`write`]).
    fn from(error: StoreError) -> Self {
        status(error, Retry::Read)
    }
}

/// How the caller of a call that may or may not have been applied can try
/// again without harm: each write RPC has its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// A read: nothing to apply.
    Read,
    /// CreateBatch: a create already applied returns the stored batch.
    SameBatchId,
    /// RecordProgress with a request_id: applied once per request id.
    SameRequestId,
    /// RecordProgress without one: a retry of an applied report counts it twice.
    NoRequestId,
    /// SaveBatch, FinishBatch, DeleteBatch, sweeps and purges.
    Harmless,
}

impl Retry {
    /// Advice that completes "retry".
    fn advice(self) -> &'static str {
        match self {
            Self::Read => " later",
            Self::SameBatchId => {
                " with the same batch_id: a create that was applied returns the stored batch"
            }
            Self::SameRequestId => {
                " with the same request_id: a report is applied once per request_id"
            }
            Self::NoRequestId => {
                " only after checking the batch (GetBatch): this report had no request_id, so \
                 if it was applied a retry counts it twice; send a request_id with every report"
            }
            Self::Harmless => ": repeating this call is harmless",
        }
    }
}

/// The status of a write's store error, with advice on retrying it.
pub(crate) fn write(retry: Retry) -> impl Fn(StoreError) -> Status {
    move |error| status(error, retry)
}

fn status(error: StoreError, retry: Retry) -> Status {
    match error {
        StoreError::NotFound(_) => Status::not_found(error.to_string()),
        StoreError::AlreadyExists(_) | StoreError::RequestIdReused(_) => {
            Status::already_exists(error.to_string())
        }
        StoreError::NotRunning { .. } => Status::failed_precondition(error.to_string()),
        // A request field names it where the call knows which: see `ending_at`.
        StoreError::EndBeforeStart => Status::invalid_argument(error.to_string()),
        StoreError::CounterOverflow(counter) => FieldViolation {
            field: match counter {
                Counter::SamplesGenerated => "samples_delta",
                Counter::TotalTokens => "tokens_delta",
            }
            .into(),
            description: "would take the batch's counter past its 64-bit maximum".into(),
        }
        .into(),
        StoreError::Contended => Status::aborted(error.to_string()),
        StoreError::TimedOut(_) => {
            episodes::report("timed out", &error);
            Status::unavailable(match retry {
                // A GetBatch past its budget is left to finish: nothing to undo.
                Retry::Read => format!("{error}; retry later"),
                _ => format!(
                    "{error}; the call was cancelled there, nothing was applied; retry later"
                ),
            })
        }
        StoreError::Unavailable(_) => {
            episodes::report("unavailable", &error);
            Status::unavailable(format!(
                "the database is unavailable; retry{}",
                retry.advice()
            ))
        }
        StoreError::Exhausted { resource, .. } => {
            episodes::report(resource, &error);
            Status::resource_exhausted(format!(
                "{error}: nothing was applied, and writes fail until an operator frees it; \
                 retry later"
            ))
        }
        StoreError::OutcomeUnknown(_) => {
            episodes::report("outcome unknown", &error);
            Status::unavailable(if retry == Retry::Read {
                "the database did not answer in time; retry later".to_owned()
            } else {
                format!(
                    "the database did not confirm in time whether this call was applied; retry{}",
                    retry.advice()
                )
            })
        }
        StoreError::Internal { .. } => {
            tracing::error!(error = %cause_chain(&error), "internal error");
            Status::internal("internal error; it has been logged")
        }
    }
}

/// Logs database trouble once per episode, not once per call: the first
/// failure of a kind, then at most one line per [`episodes::QUIET`] with
/// the number of calls it failed meanwhile.
mod episodes {
    use std::{
        collections::HashMap,
        sync::Mutex,
        time::{Duration, Instant},
    };

    use crate::store::StoreError;
    use crate::telemetry::cause_chain;

    /// How long the same kind of failure stays quiet after it was logged.
    pub(crate) const QUIET: Duration = Duration::from_secs(30);

    /// When a kind was last logged, and the calls it failed since.
    type Seen = HashMap<&'static str, (Option<Instant>, u64)>;

    static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

    pub(crate) fn report(kind: &'static str, error: &StoreError) {
        let now = Instant::now();
        let mut seen = SEEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (logged, since) = seen
            .get_or_insert_with(HashMap::new)
            .entry(kind)
            .or_insert((None, 0));
        *since += 1;
        if logged.is_some_and(|at| now.duration_since(at) < QUIET) {
            return;
        }
        let calls = std::mem::take(since);
        *logged = Some(now);
        drop(seen);
        tracing::warn!(
            error = %cause_chain(error),
            calls,
            quiet_for_seconds = QUIET.as_secs(),
            "database trouble ({kind}): calls failing; logged again at most every {}s with their count",
            QUIET.as_secs()
        );
    }
}

/// The status of a store error of a call whose request gives the end time in
/// `end_time_field`.
pub(crate) fn ending_at(end_time_field: &'static str) -> impl Fn(StoreError) -> Status {
    move |error| match error {
        StoreError::EndBeforeStart => FieldViolation {
            field: end_time_field.into(),
            description: "must not be before the batch's start_time".into(),
        }
        .into(),
        other => status(other, Retry::Harmless),
    }
}

impl From<StreamEnd> for Status {
    fn from(end: StreamEnd) -> Self {
        match end {
            StreamEnd::FellBehind | StreamEnd::FeedInterrupted => Status::aborted(end.to_string()),
            StreamEnd::ShuttingDown => Status::unavailable(end.to_string()),
            StreamEnd::Snapshot(error) => error.into(),
        }
    }
}
