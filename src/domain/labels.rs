//! Labels: short `key: value` pairs that separate batches by team, dashboard
//! or environment, and that listings, watches and stats filter on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{FieldViolation, InvalidValue};

/// A batch's labels, or the labels a filter asks for. At most
/// [`BatchLabels::MAX`] of them; each key 1 to 63 characters of lowercase
/// letters, digits, `_` and `-`, starting with a letter; each value 0 to 63
/// of the same characters. The bounds keep a deleted batch's change notice,
/// which carries them, within NOTIFY's 8,000 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchLabels(BTreeMap<String, String>);

impl BatchLabels {
    /// The most labels a batch has, or a filter asks for.
    pub(crate) const MAX: usize = 8;
    const MAX_CHARS: usize = 63;

    /// `labels`, checked; violations name `field` and the key.
    pub fn parse(
        labels: impl IntoIterator<Item = (String, String)>,
        field: &str,
    ) -> Result<Self, FieldViolation> {
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        if labels.len() > Self::MAX {
            return Err(InvalidValue(format!(
                "holds {} labels; at most {} are allowed",
                labels.len(),
                Self::MAX
            ))
            .at(field));
        }
        for (key, value) in &labels {
            let allowed = |text: &str| {
                text.len() <= Self::MAX_CHARS
                    && text.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            };
            if !allowed(key) || !key.starts_with(|c: char| c.is_ascii_lowercase()) {
                return Err(InvalidValue(format!(
                    "key {key:?} must be 1 to 63 lowercase letters, digits, _ or -, \
                     starting with a letter"
                ))
                .at(field));
            }
            if !allowed(value) {
                return Err(InvalidValue(format!(
                    "value {value:?} of {key:?} must be at most 63 lowercase letters, \
                     digits, _ or -"
                ))
                .at(field));
            }
        }
        Ok(Self(labels))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_map<M: FromIterator<(String, String)>>(self) -> M {
        self.0.into_iter().collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Whether `batch` has every label of these, with the same value.
    pub(crate) fn within(&self, batch: &BatchLabels) -> bool {
        self.0
            .iter()
            .all(|(key, value)| batch.0.get(key) == Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Result<BatchLabels, FieldViolation> {
        BatchLabels::parse(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            "labels",
        )
    }

    #[test]
    fn keys_and_values_follow_the_rules() {
        assert!(labels(&[("env", "prod"), ("team", ""), ("a-1_b", "x-2_y")]).is_ok());
        for bad in [
            [("", "x")],
            [("Env", "x")],
            [("1env", "x")],
            [("env", "Prod")],
            [("env", "a b")],
            [("env", &*"x".repeat(64))],
        ] {
            assert!(labels(&bad).is_err(), "{bad:?}");
        }
        let nine: Vec<(String, &str)> = (0..9).map(|i| (format!("k{i}"), "v")).collect();
        let nine: Vec<(&str, &str)> = nine.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert!(labels(&nine).is_err());
    }

    #[test]
    fn a_filter_keeps_batches_with_all_its_labels() {
        let batch = labels(&[("env", "prod"), ("team", "a")]).unwrap();
        assert!(labels(&[]).unwrap().within(&batch));
        assert!(labels(&[("env", "prod")]).unwrap().within(&batch));
        assert!(!labels(&[("env", "dev")]).unwrap().within(&batch));
        assert!(
            !labels(&[("env", "prod"), ("dash", "1")])
                .unwrap()
                .within(&batch)
        );
    }
}
