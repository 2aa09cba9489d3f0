//! The batch identifier, which the dashboard shows and links to.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::InvalidValue;

/// 1 to 100 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchId(String);

impl BatchId {
    /// Longest id, in characters.
    pub(crate) const MAX_LEN: usize = 100;

    /// Accepts `value` if it has the contract's length and character set.
    pub(crate) fn parse(value: String) -> Result<Self, InvalidValue> {
        if value.is_empty() {
            return Err(InvalidValue("is required".into()));
        }
        if value.len() > Self::MAX_LEN {
            return Err(InvalidValue(format!(
                "must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidValue(format!(
                "may only contain A-Z, a-z, 0-9, '.', '_' and '-', found {bad:?}"
            )));
        }
        Ok(Self(value))
    }

    /// A fresh id in the legacy dashboard's format,
    /// `batch_<unix seconds>_<8 lowercase hex>`.
    pub(crate) fn generate(now: Timestamp) -> Self {
        // The OS random source failing is unrecoverable for the whole process.
        let suffix = getrandom::u32().expect("operating system random source failed");
        Self(format!("batch_{}_{suffix:08x}", now.as_second()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_charset() {
        for ok in [
            "a",
            "batch_1760796202_0a1b2c3d",
            "A.b-C_9",
            &"x".repeat(100),
        ] {
            assert!(BatchId::parse(ok.to_string()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "has space", "slash/", "ünï", "nul\0", &"x".repeat(101)] {
            assert!(BatchId::parse(bad.to_string()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_use_the_legacy_format_and_are_valid() {
        let now = Timestamp::from_second(1_760_796_202).unwrap();
        let id = BatchId::generate(now);
        let suffix = id.as_str().strip_prefix("batch_1760796202_").unwrap();
        assert_eq!(suffix.len(), 8);
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(BatchId::parse(id.as_str().to_string()).is_ok());
        assert_ne!(BatchId::generate(now), BatchId::generate(now));
    }
}
