//! The gRPC face of the service: request parsing, handlers and the mapping of
//! errors to statuses.

mod convert;
mod service;
mod status;

pub use service::{BatchHistoryService, REQUEST_ID};
