//! Message size limits: requests the service accepts, responses it sends,
//! and the codes callers get for requests that cannot even be decoded.

use http::{HeaderValue, Response};
use prost::Message;

use std::collections::HashMap;

use tonic::Status;

use super::status::{Reason, failed};
use crate::domain::{Batch, BatchId, Cursor};
use crate::proto;

/// Largest request message accepted: room for a progress report with
/// hundreds of large errors, far from what would strain the server.
pub(crate) const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Largest response the service sends: the 4 MiB a gRPC client accepts by
/// default, less room for framing.
pub(crate) const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// Converts `batches`, in order, while they fit in one response of
/// [`MAX_RESPONSE_BYTES`] (the first one always fits: a stored batch is far
/// smaller). Returns them, and the cursor after the last one if some had to
/// be left out.
pub(crate) fn fit_batches(batches: Vec<Batch>) -> (Vec<proto::Batch>, Option<Cursor>) {
    let mut fitted = Vec::with_capacity(batches.len());
    let mut bytes = 0;
    let mut last: Option<Cursor> = None;
    for batch in batches {
        let cursor = Cursor::after(&batch);
        let batch = proto::Batch::from(batch);
        // The field's tag and length prefix take at most 6 more bytes.
        let size = batch.encoded_len() + 6;
        if last.is_some() && bytes + size > MAX_RESPONSE_BYTES {
            return (fitted, last);
        }
        bytes += size;
        fitted.push(batch);
        last = Some(cursor);
    }
    (fitted, None)
}

/// The answer to a lookup of `asked` ids that found `found`: the batches in
/// the order asked (repeats included), and the ids not found; or
/// RESPONSE_TOO_LARGE if they do not fit in one response.
pub(crate) fn fit_lookup(
    asked: Vec<BatchId>,
    found: Vec<Batch>,
) -> Result<proto::BatchGetBatchesResponse, Status> {
    let mut found: HashMap<String, (proto::Batch, usize)> = found
        .into_iter()
        .map(|batch| (batch.batch_id.as_str().to_owned(), (batch.into(), 0)))
        .collect();
    // How often each batch is still to be answered: its last answer takes it.
    for batch_id in &asked {
        if let Some((_, wanted)) = found.get_mut(batch_id.as_str()) {
            *wanted += 1;
        }
    }
    let mut answer = proto::BatchGetBatchesResponse::default();
    let mut bytes = 0;
    for (place, batch_id) in asked.into_iter().enumerate() {
        let Some((batch, wanted)) = found.get_mut(batch_id.as_str()) else {
            answer.missing_batch_ids.push(batch_id.into_string());
            continue;
        };
        bytes += batch.encoded_len() + 6;
        if bytes > MAX_RESPONSE_BYTES {
            return Err(failed(
                Reason::ResponseTooLarge,
                format!(
                    "the batches asked for do not fit in one {MAX_RESPONSE_BYTES}-byte response \
                     (the first {place} do); ask for fewer, or for BATCH_VIEW_BASIC"
                ),
                &[("fitting", place.to_string())],
            ));
        }
        *wanted -= 1;
        answer.batches.push(if *wanted == 0 {
            found.remove(batch_id.as_str()).expect("looked up above").0
        } else {
            batch.clone()
        });
    }
    Ok(answer)
}

/// tonic answers a request it cannot decode with codes that blame the
/// server: OUT_OF_RANGE for a message over the size limit, INTERNAL for
/// bytes that are not the expected protobuf (invalid UTF-8, nesting past
/// prost's recursion limit). Both are the caller's doing, so this reports
/// them as RESOURCE_EXHAUSTED (gRPC's code for size limits) and
/// INVALID_ARGUMENT. Meant for a `tower::util::MapResponseLayer` around the
/// server; only trailers-only responses (where a decoding failure lands)
/// carry the status in their headers.
pub(crate) fn remap_decoding_errors(
    mut response: Response<tonic::body::Body>,
) -> Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let message = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        // grpc-message is percent-encoded; spaces are all that matter here.
        .map(|message| message.replace("%20", " "))
        .unwrap_or_default();
    let remapped = match headers.get("grpc-status").map(HeaderValue::as_bytes) {
        Some(b"11") if message.contains("message length too large") => {
            failed(Reason::RequestTooLarge, message, &[])
        }
        Some(b"13") if message.starts_with("failed to decode Protobuf message") => {
            failed(Reason::RequestMalformed, message, &[])
        }
        _ => return response,
    };
    // Replaces grpc-status and grpc-message, and adds the ErrorInfo.
    if remapped.add_header(headers).is_err() {
        headers.insert(
            "grpc-status",
            HeaderValue::from_static(match remapped.code() {
                tonic::Code::ResourceExhausted => "8",
                _ => "3",
            }),
        );
    }
    response
}
