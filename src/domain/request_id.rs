//! Request ids (AIP-155): what lets a caller retry a write that is not
//! naturally idempotent without it being applied twice.

use std::fmt;

use super::InvalidValue;

/// A UUID in its hyphenated form, kept in lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Accepts the 36-character hyphenated form of a UUID, in either case.
    pub(crate) fn parse(value: &str) -> Result<Self, InvalidValue> {
        let well_formed = value.len() == 36
            && value.char_indices().all(|(at, c)| match at {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            });
        if !well_formed {
            return Err(InvalidValue(
                "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000".into(),
            ));
        }
        Ok(Self(value.to_ascii_lowercase()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request id and a digest of the request it came with, so that a retry
/// is told from a different request that reuses the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Idempotency {
    pub(crate) request_id: RequestId,
    /// SHA-256 of the request as sent, request id left out.
    pub(crate) fingerprint: [u8; 32],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuids_in_any_case_and_keeps_them_lowercase() {
        let id = RequestId::parse("123E4567-e89b-12d3-A456-426614174000").unwrap();
        assert_eq!(id.as_str(), "123e4567-e89b-12d3-a456-426614174000");
    }

    #[test]
    fn refuses_what_is_not_a_hyphenated_uuid() {
        for bad in [
            "",
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400g",
            "123e4567-e89b-12d3-a456-4266141740000",
            "{123e4567-e89b-12d3-a456-426614174000}",
        ] {
            assert!(RequestId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
