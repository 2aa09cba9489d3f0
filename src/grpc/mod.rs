//! The gRPC face of the service: request parsing, handlers and the mapping of
//! errors to statuses.

mod auth;
mod convert;
mod deadline;
mod limits;
mod service;
mod status;

pub(crate) use auth::BearerAuth;
pub(crate) use deadline::stamp_arrival;
pub(crate) use limits::{MAX_REQUEST_BYTES, remap_decoding_errors};
pub(crate) use service::BatchHistoryService;
pub(crate) use status::{Reason, Retry};
