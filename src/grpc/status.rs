//! The one place where errors become gRPC statuses.
//!
//! Callers get a code they can act on and a message without SQL, connection
//! details or secrets; anything unexpected is logged here, once, with its
//! cause chain.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::FieldViolation;
use crate::store::StoreError;
use crate::telemetry::cause_chain;

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
            StoreError::Invalid(violation) => violation.into(),
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
