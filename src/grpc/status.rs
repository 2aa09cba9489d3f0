//! The one place where errors become gRPC statuses.
//!
//! Callers get a code they can act on, a `google.rpc.ErrorInfo` whose
//! `reason` a program can branch on ([`Reason`]), and a message without SQL,
//! connection details or secrets; anything unexpected is logged here, once,
//! with its cause chain. Every status the service makes is made by
//! [`failed`] (a test checks that no other code builds one).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{BatchId, FieldViolation, State};
use crate::store::{Counter, StoreError};
use crate::telemetry::cause_chain;
use crate::watch::StreamEnd;

/// The `domain` of every `ErrorInfo` the service attaches.
pub const ERROR_DOMAIN: &str = "batch-history";

/// Why a call failed: `ErrorInfo.reason`, stable across releases, each with
/// the one code it comes with. The proto's comments and the README list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A request field is invalid (`BadRequest` names it; metadata `field`).
    FieldInvalid,
    /// The request is larger than the service accepts.
    RequestTooLarge,
    /// The request's bytes are not the message the method takes.
    RequestMalformed,
    /// The answer would not fit in one response (metadata `fitting`: how
    /// many of the items asked for do).
    ResponseTooLarge,
    /// No batch has this id (metadata `batch_id`).
    BatchNotFound,
    /// A different batch already has this id (metadata `batch_id`).
    BatchIdTaken,
    /// The request id was used for a different request (metadata `request_id`).
    RequestIdReused,
    /// The batch has finished, so it cannot change (metadata `batch_id`, `state`).
    BatchAlreadyFinished,
    /// The batch is RUNNING, and the call needs it finished (metadata
    /// `batch_id`, `state`).
    BatchRunning,
    /// The batch changed since the etag was read (metadata `batch_id`, and
    /// `etag`: the current one).
    EtagMismatch,
    /// Concurrent writers kept winning the race for the batch (metadata `batch_id`).
    BatchContended,
    /// The database did not answer within `DB_TIMEOUT_MS`; nothing was applied.
    DatabaseTimeout,
    /// The database cannot be reached.
    DatabaseUnavailable,
    /// The database did not confirm in time whether the call was applied.
    OutcomeUnknown,
    /// The database server ran out of a resource (metadata `resource`, `sqlstate`).
    DatabaseResourceExhausted,
    /// A watcher fell behind the changes.
    WatcherFellBehind,
    /// The change feed lost its connection: changes may have been missed.
    ChangeFeedLost,
    /// The server is shutting down.
    ShuttingDown,
    /// The bearer token is missing or wrong.
    Unauthenticated,
    /// The caller's deadline passed.
    DeadlineExceeded,
    /// A defect of the service, logged.
    Internal,
}

impl Reason {
    /// The reason as `ErrorInfo.reason` spells it.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::FieldInvalid => "FIELD_INVALID",
            Self::RequestTooLarge => "REQUEST_TOO_LARGE",
            Self::RequestMalformed => "REQUEST_MALFORMED",
            Self::ResponseTooLarge => "RESPONSE_TOO_LARGE",
            Self::BatchNotFound => "BATCH_NOT_FOUND",
            Self::BatchIdTaken => "BATCH_ID_TAKEN",
            Self::RequestIdReused => "REQUEST_ID_REUSED",
            Self::BatchAlreadyFinished => "BATCH_ALREADY_FINISHED",
            Self::BatchRunning => "BATCH_RUNNING",
            Self::EtagMismatch => "ETAG_MISMATCH",
            Self::BatchContended => "BATCH_CONTENDED",
            Self::DatabaseTimeout => "DATABASE_TIMEOUT",
            Self::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            Self::OutcomeUnknown => "OUTCOME_UNKNOWN",
            Self::DatabaseResourceExhausted => "DATABASE_RESOURCE_EXHAUSTED",
            Self::WatcherFellBehind => "WATCHER_FELL_BEHIND",
            Self::ChangeFeedLost => "CHANGE_FEED_LOST",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Internal => "INTERNAL",
        }
    }

    /// The reason a store error of a call retried as `retry` says is
    /// reported with: the one mapping gRPC statuses and the web page share.
    pub(crate) fn of(error: &StoreError, retry: Retry) -> Self {
        match error {
            StoreError::NotFound(_) => Self::BatchNotFound,
            StoreError::AlreadyExists(_) => Self::BatchIdTaken,
            StoreError::RequestIdReused(_) => Self::RequestIdReused,
            StoreError::NotRunning { .. } => Self::BatchAlreadyFinished,
            StoreError::EtagMismatch { .. } => Self::EtagMismatch,
            StoreError::Running(_) => Self::BatchRunning,
            StoreError::EndBeforeStart | StoreError::CounterOverflow(_) => Self::FieldInvalid,
            StoreError::Contended => Self::BatchContended,
            StoreError::TimedOut(_) => Self::DatabaseTimeout,
            // A read has no outcome to be unsure of: it merely timed out.
            StoreError::OutcomeUnknown(_) if retry == Retry::Read => Self::DatabaseTimeout,
            StoreError::OutcomeUnknown(_) => Self::OutcomeUnknown,
            StoreError::Unavailable(_) => Self::DatabaseUnavailable,
            StoreError::Exhausted { .. } => Self::DatabaseResourceExhausted,
            StoreError::Internal { .. } => Self::Internal,
        }
    }

    pub(crate) const fn code(self) -> Code {
        match self {
            Self::FieldInvalid | Self::RequestMalformed => Code::InvalidArgument,
            Self::BatchNotFound => Code::NotFound,
            Self::BatchIdTaken | Self::RequestIdReused => Code::AlreadyExists,
            Self::BatchAlreadyFinished | Self::BatchRunning => Code::FailedPrecondition,
            Self::BatchContended
            | Self::EtagMismatch
            | Self::WatcherFellBehind
            | Self::ChangeFeedLost => Code::Aborted,
            Self::DatabaseTimeout
            | Self::DatabaseUnavailable
            | Self::OutcomeUnknown
            | Self::ShuttingDown => Code::Unavailable,
            Self::DatabaseResourceExhausted | Self::RequestTooLarge | Self::ResponseTooLarge => {
                Code::ResourceExhausted
            }
            Self::Unauthenticated => Code::Unauthenticated,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Internal => Code::Internal,
        }
    }
}

/// A status for `reason`, with `message` for people and `metadata` (the
/// batch id, the state found, …) in its `ErrorInfo`.
pub(crate) fn failed(reason: Reason, message: String, metadata: &[(&str, String)]) -> Status {
    with_details(reason, message, metadata, ErrorDetails::new())
}

fn with_details(
    reason: Reason,
    message: String,
    metadata: &[(&str, String)],
    mut details: ErrorDetails,
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect();
    details.set_error_info(reason.name(), ERROR_DOMAIN, metadata);
    Status::with_error_details(reason.code(), message, details)
}

impl From<FieldViolation> for Status {
    fn from(violation: FieldViolation) -> Self {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
        with_details(
            Reason::FieldInvalid,
            violation.to_string(),
            &[("field", violation.field)],
            details,
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
    let reason = Reason::of(&error, retry);
    let batch = |batch_id: &BatchId| ("batch_id", batch_id.as_str().to_owned());
    let (message, metadata) = match &error {
        StoreError::NotFound(batch_id)
        | StoreError::AlreadyExists(batch_id)
        | StoreError::Running(batch_id) => {
            let mut metadata = vec![batch(batch_id)];
            if reason == Reason::BatchRunning {
                metadata.push(("state", State::Running.as_str().to_owned()));
            }
            (error.to_string(), metadata)
        }
        StoreError::RequestIdReused(request_id) => (
            error.to_string(),
            vec![("request_id", request_id.as_str().to_owned())],
        ),
        StoreError::NotRunning { batch_id, state } => (
            error.to_string(),
            vec![batch(batch_id), ("state", state.as_str().to_owned())],
        ),
        StoreError::EtagMismatch { batch_id, current } => (
            error.to_string(),
            vec![batch(batch_id), ("etag", current.clone())],
        ),
        // A request field names it where the call knows which: see `ending_at`.
        StoreError::EndBeforeStart | StoreError::Contended => (error.to_string(), vec![]),
        StoreError::CounterOverflow(counter) => {
            return FieldViolation {
                field: match *counter {
                    Counter::SamplesGenerated => "samples_delta",
                    Counter::TotalTokens => "tokens_delta",
                }
                .into(),
                description: "would take the batch's counter past its 64-bit maximum".into(),
            }
            .into();
        }
        StoreError::TimedOut(timeout) | StoreError::OutcomeUnknown(timeout)
            if reason == Reason::DatabaseTimeout =>
        {
            episodes::report("timed out", &error);
            let message = match retry {
                // A read past its budget has nothing to undo (GetBatch's is
                // left to finish).
                Retry::Read => {
                    format!("the database did not answer within {timeout:?}; retry later")
                }
                _ => format!(
                    "{error}; the call was cancelled there, nothing was applied; retry later"
                ),
            };
            (
                message,
                vec![("timeout_ms", timeout.as_millis().to_string())],
            )
        }
        StoreError::TimedOut(_) | StoreError::OutcomeUnknown(_) => {
            episodes::report("outcome unknown", &error);
            let message = format!(
                "the database did not confirm in time whether this call was applied; retry{}",
                retry.advice()
            );
            (message, vec![])
        }
        StoreError::Unavailable(_) => {
            episodes::report("unavailable", &error);
            let message = format!("the database is unavailable; retry{}", retry.advice());
            (message, vec![])
        }
        StoreError::Exhausted {
            resource, sqlstate, ..
        } => {
            episodes::report(resource, &error);
            let message = format!(
                "{error}: nothing was applied, and writes fail until an operator frees it; \
                 retry later"
            );
            let metadata = vec![
                ("resource", (*resource).to_owned()),
                ("sqlstate", sqlstate.clone()),
            ];
            (message, metadata)
        }
        StoreError::Internal { .. } => {
            tracing::error!(error = %cause_chain(&error), "internal error");
            ("internal error; it has been logged".to_owned(), vec![])
        }
    };
    failed(reason, message, &metadata)
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
        let message = end.to_string();
        match end {
            StreamEnd::FellBehind => failed(Reason::WatcherFellBehind, message, &[]),
            StreamEnd::FeedInterrupted => failed(Reason::ChangeFeedLost, message, &[]),
            StreamEnd::ShuttingDown => failed(Reason::ShuttingDown, message, &[]),
            StreamEnd::Snapshot(error) => error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every status the service returns carries an `ErrorInfo`: no code
    /// outside [`failed`] builds a status.
    #[test]
    fn no_status_is_built_without_a_reason() {
        let constructors = [
            "Status::new(",
            "Status::with_",
            "Status::invalid_argument(",
            "Status::not_found(",
            "Status::already_exists(",
            "Status::failed_precondition(",
            "Status::aborted(",
            "Status::unavailable(",
            "Status::resource_exhausted(",
            "Status::internal(",
            "Status::unauthenticated(",
            "Status::deadline_exceeded(",
            "Status::permission_denied(",
            "Status::cancelled(",
            "Status::unknown(",
            "Status::out_of_range(",
            "Status::unimplemented(",
            "Status::data_loss(",
            "Status::from_error(",
        ];
        let mut found = Vec::new();
        let mut files = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let whole = std::fs::read_to_string(&path).unwrap();
            // Tests (this one included) may build statuses to check them.
            let text = whole.split("#[cfg(test)]").next().unwrap();
            for constructor in constructors {
                for (line, _) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| l.contains(constructor))
                {
                    found.push(format!("{}:{}", path.display(), line + 1));
                }
            }
        }
        assert_eq!(
            found.len(),
            1,
            "statuses built outside `failed`: {found:#?}"
        );
        assert!(found[0].contains("grpc/status.rs"), "{found:?}");
    }

    /// The reasons are the contract: the proto's comments, the README and
    /// docs/CONTRACT.md list every one of them.
    #[test]
    fn every_reason_is_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let code = std::fs::read_to_string(root.join("src/grpc/status.rs")).unwrap();
        let names = code
            .split("pub(crate) const fn name(self)")
            .nth(1)
            .and_then(|rest| rest.split("\n    }\n").next())
            .unwrap();
        let reasons: Vec<&str> = names
            .split("=> \"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert!(reasons.len() > 20, "{reasons:?}");
        for document in [
            "proto/batchhistory/v1/batch_history.proto",
            "README.md",
            "docs/CONTRACT.md",
        ] {
            let text = std::fs::read_to_string(root.join(document)).unwrap();
            let missing: Vec<_> = reasons.iter().filter(|r| !text.contains(*r)).collect();
            assert!(missing.is_empty(), "{document} does not list {missing:?}");
        }
    }

    #[test]
    fn each_reason_comes_with_its_code_and_domain() {
        let status = failed(
            Reason::BatchAlreadyFinished,
            "done".into(),
            &[("batch_id", "b".into()), ("state", "COMPLETED".into())],
        );
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "BATCH_ALREADY_FINISHED");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["state"], "COMPLETED");
    }
}
