//! The caller's deadline, answered with DEADLINE_EXCEEDED.
//!
//! tonic's server enforces the `grpc-timeout` header itself, but answers a
//! call that runs out of time with CANCELLED "Timeout expired". The service
//! enforces the same deadline a moment earlier: the arrival time is stamped
//! before tonic starts its own timer, and the handler's future is polled
//! before that timer, so the caller gets the code the gRPC spec names.

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// When a request reached the service, before any of it was read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival(Instant);

/// Stamps each request with its arrival time; meant for a
/// `tower::util::MapRequestLayer` around the server.
pub(crate) fn stamp_arrival<B>(mut request: http::Request<B>) -> http::Request<B> {
    request.extensions_mut().insert(Arrival(Instant::now()));
    request
}

/// The instant by which the caller wants an answer, if it set one.
pub(crate) fn deadline(arrival: Option<&Arrival>, metadata: &MetadataMap) -> Option<Instant> {
    let timeout = metadata.get("grpc-timeout")?.to_str().ok()?;
    Some(arrival?.0 + parse_timeout(timeout)?)
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit.
fn parse_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3_600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_the_rest() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(
            parse_timeout("99999999m"),
            Some(Duration::from_millis(99_999_999))
        );
        assert_eq!(parse_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_timeout("6n"), Some(Duration::from_nanos(6)));
        for bad in ["", "S", "100", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
