//! The gRPC face of the service: request parsing, handlers and the mapping of
//! errors to statuses.

mod auth;
mod convert;
mod deadline;
mod limits;
mod service;
mod status;

pub use auth::BearerAuth;
pub use deadline::stamp_arrival;
pub use limits::{MAX_REQUEST_BYTES, remap_decoding_errors};
pub use service::{BatchHistoryService, REQUEST_ID};
