//! Protobuf messages to domain types and back, split by job: parsing
//! requests ([`requests`]), building responses ([`responses`]), and the
//! `Struct`/JSON plumbing both use ([`json`]).

mod json;
mod requests;
mod responses;

pub(crate) use requests::{parse_batch_id, stale_after};
