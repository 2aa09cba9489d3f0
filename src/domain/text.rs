//! Free text fields, in the two shapes the contract uses.

use serde::{Deserialize, Serialize};

use super::InvalidValue;

/// A short single-line name such as a provider, model or filter: at most 256
/// characters and no control characters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    /// Longest label, in characters.
    pub(crate) const MAX_CHARS: usize = 256;

    /// Accepts `value` if it is short and free of control characters.
    pub(crate) fn parse(value: String) -> Result<Self, InvalidValue> {
        if value.chars().count() > Self::MAX_CHARS {
            return Err(InvalidValue(format!(
                "must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(InvalidValue("must not contain control characters".into()));
        }
        Ok(Self(value))
    }

    /// The label, or `None` when it is empty (an unset proto3 string).
    pub(crate) fn parse_optional(value: String) -> Result<Option<Self>, InvalidValue> {
        if value.is_empty() {
            Ok(None)
        } else {
            Self::parse(value).map(Some)
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

/// Longer text such as an instruction or an error message: at most 64 KiB of
/// UTF-8, line breaks allowed, no NUL (PostgreSQL cannot store it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Prose(String);

impl Prose {
    /// Longest text, in bytes of UTF-8.
    pub(crate) const MAX_BYTES: usize = 64 * 1024;

    /// Accepts `value` if it fits and holds no NUL.
    pub(crate) fn parse(value: String) -> Result<Self, InvalidValue> {
        if value.len() > Self::MAX_BYTES {
            return Err(InvalidValue(format!(
                "must be at most {} bytes",
                Self::MAX_BYTES
            )));
        }
        if value.contains('\0') {
            return Err(InvalidValue("must not contain NUL characters".into()));
        }
        Ok(Self(value))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_limits() {
        assert!(Label::parse("groq".into()).is_ok());
        assert!(Label::parse("Évidence — hearsay".into()).is_ok());
        assert!(Label::parse("é".repeat(256)).is_ok());
        assert!(Label::parse("é".repeat(257)).is_err());
        assert!(Label::parse("a\nb".into()).is_err());
        assert!(Label::parse("a\0b".into()).is_err());
        assert_eq!(Label::parse_optional(String::new()), Ok(None));
    }

    #[test]
    fn prose_limits() {
        assert!(Prose::parse("line one\nline two\ttab".into()).is_ok());
        assert!(Prose::parse("x".repeat(Prose::MAX_BYTES)).is_ok());
        assert!(Prose::parse("x".repeat(Prose::MAX_BYTES + 1)).is_err());
        assert!(Prose::parse("nul\0".into()).is_err());
    }
}
