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
    fn from(error: StoreError) -> Self {
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
            StoreError::TimedOut(_) | StoreError::Unavailable(_) => {
                tracing::warn!(error = %cause_chain(&error), "database unavailable");
                Status::unavailable("the database is unavailable; retry later")
            }
            StoreError::OutcomeUnknown(_) => {
                tracing::warn!(error = %cause_chain(&error), "outcome unknown");
                Status::unavailable(
                    "the database did not confirm in time whether this call was applied; \
                     retry with the same request_id",
                )
            }
            StoreError::Internal { .. } => {
                tracing::error!(error = %cause_chain(&error), "internal error");
                Status::internal("internal error; it has been logged")
            }
        }
    }
}

/// The status of a store error of a call whose request gives the end time in
/// `end_time_field`.
pub fn ending_at(end_time_field: &'static str) -> impl Fn(StoreError) -> Status {
    move |error| match error {
        StoreError::EndBeforeStart => FieldViolation {
            field: end_time_field.into(),
            description: "must not be before the batch's start_time".into(),
        }
        .into(),
        other => other.into(),
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
