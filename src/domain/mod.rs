//! Validated types. Each is built from untrusted input once, at the edge, and
//! is valid for as long as it lives: code that holds one never re-checks it.

mod batch;
mod batch_id;
mod json;
mod labels;
mod list;
mod request_id;
mod stats;
mod text;
mod upkeep;

pub use batch::{
    Batch, BatchError, Finish, MAX_ENTRIES_PER_REPORT, MAX_KEPT_ERROR_BYTES, MAX_KEPT_ERRORS,
    MAX_KEPT_SWITCH_BYTES, MAX_KEPT_SWITCHES, ModelSwitch, NewBatch, NonNegative, Progress, Save,
    State, TerminalState, keep_newest,
};
pub(crate) use batch::{Correction, Etag};
pub(crate) use batch_id::BatchId;
pub(crate) use json::JsonObject;
pub use labels::BatchLabels;
pub use list::{
    BatchFilter, Cursor, Detail, Facets, ListQuery, Order, Page, PageSize, TextFilters, Texts,
};
pub(crate) use list::{BatchGet, texts_of, with_text_filters};
pub(crate) use request_id::{Idempotency, RequestId};
pub(crate) use stats::{BatchStats, StatsGroup};
pub(crate) use text::{Label, Prose};
pub use upkeep::{Purge, StaleThreshold};

/// Why a value was rejected, before it is known which request field held it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl InvalidValue {
    /// Names the request field that held the value.
    pub(crate) fn at(self, field: impl Into<String>) -> FieldViolation {
        FieldViolation {
            field: field.into(),
            description: self.0,
        }
    }
}

/// A request field that breaks the contract, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `batch.metadata` or `errors[2].message`.
    pub(crate) field: String,
    /// What is wrong with it, in words a caller can act on.
    pub(crate) description: String,
}
