//! The batch resource and the changes a caller can ask for.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    BatchId, BatchLabels, Idempotency, InvalidValue, JsonObject, Label, Prose, json::json_len,
};

/// Errors kept per batch; older ones are dropped but still counted.
pub const MAX_KEPT_ERRORS: usize = 1_000;
/// Bytes of errors kept per batch, as stored. With the other bounds this
/// keeps every batch well within a 4 MiB response (about 2 MiB at most).
pub const MAX_KEPT_ERROR_BYTES: usize = 1024 * 1024;
/// Model switches kept per batch, newest first, and their bytes as stored.
pub const MAX_KEPT_SWITCHES: usize = 1_000;
pub const MAX_KEPT_SWITCH_BYTES: usize = 512 * 1024;
/// Errors, or model switches, one request may append.
pub const MAX_ENTRIES_PER_REPORT: usize = 1_000;

/// Drops the oldest of `entries` until at most `max_items` remain, within
/// `max_bytes` of JSON: what the database keeps of a stored batch's lists.
pub fn keep_newest<T: Serialize>(entries: &mut Vec<T>, max_items: usize, max_bytes: usize) {
    let mut bytes = 0_usize;
    let kept = entries
        .iter()
        .rev()
        .take(max_items)
        .take_while(|entry| {
            let size = json_len(entry).unwrap_or(usize::MAX);
            bytes = bytes.saturating_add(size);
            bytes <= max_bytes
        })
        .count();
    entries.drain(..entries.len() - kept);
}

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Running,
    Completed,
    Stopped,
    Failed,
}

impl State {
    /// Every state, in the order above.
    pub(crate) const ALL: [State; 4] =
        [Self::Running, Self::Completed, Self::Stopped, Self::Failed];

    /// The name stored in the database and used in messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Stopped => "STOPPED",
            Self::Failed => "FAILED",
        }
    }

    /// The inverse of [`State::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "RUNNING" => Some(Self::Running),
            "COMPLETED" => Some(Self::Completed),
            "STOPPED" => Some(Self::Stopped),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state a batch can finish in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalState {
    Completed,
    Stopped,
    Failed,
}

impl TerminalState {
    pub(crate) fn state(self) -> State {
        match self {
            Self::Completed => State::Completed,
            Self::Stopped => State::Stopped,
            Self::Failed => State::Failed,
        }
    }
}

impl TryFrom<State> for TerminalState {
    type Error = InvalidValue;

    fn try_from(state: State) -> Result<Self, Self::Error> {
        match state {
            State::Completed => Ok(Self::Completed),
            State::Stopped => Ok(Self::Stopped),
            State::Failed => Ok(Self::Failed),
            State::Running => Err(InvalidValue("must be COMPLETED, STOPPED or FAILED".into())),
        }
    }
}

/// An integer that is zero or more: counts, deltas, sample positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NonNegative<T>(T);

impl<T: Copy + Default + PartialOrd> NonNegative<T> {
    pub(crate) fn parse(value: T) -> Result<Self, InvalidValue> {
        if value < T::default() {
            Err(InvalidValue("must be zero or more".into()))
        } else {
            Ok(Self(value))
        }
    }

    pub(crate) fn get(self) -> T {
        self.0
    }
}

/// A failure reported while a batch ran, as stored in the batch's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchError {
    pub(crate) message: Prose,
    /// `None` where the reporter knew no time (legacy history, saves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) time: Option<Timestamp>,
    #[serde(default)]
    pub(crate) details: JsonObject,
}

/// A change of model in the middle of a batch, as stored in its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSwitch {
    #[serde(default)]
    pub(crate) from_model: Label,
    #[serde(default)]
    pub(crate) to_model: Label,
    #[serde(default)]
    pub(crate) provider: Label,
    #[serde(default)]
    pub(crate) reason: Prose,
    #[serde(default)]
    /// The batch's samples_generated when the switch happened.
    pub(crate) at_sample: NonNegative<i64>,
    /// `None` where the reporter knew no time (legacy history, saves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub(crate) details: JsonObject,
}

/// A stored batch, exactly as the database holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub(crate) batch_id: BatchId,
    pub(crate) state: State,
    pub(crate) provider: String,
    /// The model the batch started with.
    pub(crate) model: String,
    /// The model it uses now.
    pub(crate) current_model: String,
    pub(crate) topic_filter: String,
    pub(crate) difficulty_filter: String,
    pub(crate) reasoning_instruction: String,
    /// Samples the batch set out to generate.
    pub(crate) target_count: i32,
    pub(crate) samples_generated: i64,
    pub(crate) total_tokens: i64,
    pub(crate) errors: Vec<BatchError>,
    /// Errors ever reported: `errors` keeps only the newest.
    pub(crate) error_count: i64,
    pub(crate) model_switches: Vec<ModelSwitch>,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) labels: BatchLabels,
    pub(crate) start_time: Timestamp,
    /// Set when the batch leaves RUNNING.
    pub(crate) end_time: Option<Timestamp>,
    /// When the batch last changed; the stale-batch sweep reads it.
    pub(crate) update_time: Timestamp,
    /// Bumped by every modification.
    pub(crate) version: i64,
}

impl Batch {
    /// An opaque tag that changes on every modification. The update time is
    /// part of it so that a batch deleted and created again under the same id
    /// (which restarts `version`) does not repeat an old tag.
    pub(crate) fn etag(&self) -> String {
        format!("v{}-{:x}", self.version, self.update_time.as_microsecond())
    }
}

/// A batch to create, as the caller described it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    /// `None` asks the server to generate one.
    pub(crate) batch_id: Option<BatchId>,
    pub(crate) provider: Label,
    pub(crate) model: Label,
    pub(crate) topic_filter: Label,
    pub(crate) difficulty_filter: Label,
    pub(crate) reasoning_instruction: Prose,
    pub(crate) target_count: NonNegative<i32>,
    pub(crate) metadata: JsonObject,
    pub(crate) labels: BatchLabels,
    /// `None` means now, by the database's clock.
    pub(crate) start_time: Option<Timestamp>,
}

impl NewBatch {
    /// Whether `stored` is what this request would have created, so that a
    /// retried create can return it instead of failing with ALREADY_EXISTS.
    /// The start time only counts when the caller chose it.
    pub(crate) fn matches(&self, stored: &Batch) -> bool {
        self.provider.as_str() == stored.provider
            && self.model.as_str() == stored.model
            && self.topic_filter.as_str() == stored.topic_filter
            && self.difficulty_filter.as_str() == stored.difficulty_filter
            && self.reasoning_instruction.as_str() == stored.reasoning_instruction
            && self.target_count.get() == stored.target_count
            && self.metadata.same_as(&stored.metadata)
            && self.labels == stored.labels
            && self
                .start_time
                .is_none_or(|start| start == stored.start_time)
    }
}

/// A progress report for a running batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub(crate) batch_id: BatchId,
    /// Added to the batch's samples_generated.
    pub(crate) samples_delta: NonNegative<i64>,
    /// Added to the batch's total_tokens.
    pub(crate) tokens_delta: NonNegative<i64>,
    pub(crate) errors: Vec<BatchError>,
    pub(crate) model_switches: Vec<ModelSwitch>,
    /// Set when the caller may retry this report: a repeat is then
    /// answered without being applied again.
    pub(crate) idempotency: Option<Idempotency>,
}

/// A batch's whole state as its owner holds it (the legacy dashboard's
/// absolute save): created if absent, else brought up to date unless the
/// stored batch is ahead of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Save {
    pub(crate) batch_id: BatchId,
    /// What a create of this batch would hold; used only if it is absent.
    pub(crate) created: NewBatch,
    /// RUNNING, or the state to finish in.
    pub(crate) state: State,
    /// The model generating now (after any switches).
    pub(crate) current_model: Label,
    pub(crate) samples_generated: NonNegative<i64>,
    pub(crate) total_tokens: NonNegative<i64>,
    /// The newest errors, as storage keeps them.
    pub(crate) errors: Vec<BatchError>,
    /// Every error so far, including any no longer in `errors`.
    pub(crate) error_count: i64,
    /// The newest model switches, as storage keeps them.
    pub(crate) model_switches: Vec<ModelSwitch>,
    /// Every model switch so far.
    pub(crate) switch_count: i64,
    /// With a final state; `None` means now, by the database's clock.
    pub(crate) end_time: Option<Timestamp>,
}

/// Corrections to a batch's descriptive fields; `None` leaves a field as
/// it is. Counters, state and times are not among them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Correction {
    pub(crate) batch_id: BatchId,
    pub(crate) topic_filter: Option<Label>,
    pub(crate) difficulty_filter: Option<Label>,
    pub(crate) reasoning_instruction: Option<Prose>,
    pub(crate) target_count: Option<NonNegative<i32>>,
    pub(crate) metadata: Option<JsonObject>,
    pub(crate) labels: Option<BatchLabels>,
    /// Apply only to the batch as this etag saw it.
    pub(crate) expected: Option<Etag>,
}

impl Correction {
    /// The fields a correction may change, by their names in the proto.
    pub(crate) const FIELDS: [&'static str; 6] = [
        "topic_filter",
        "difficulty_filter",
        "reasoning_instruction",
        "target_count",
        "metadata",
        "labels",
    ];
}

/// A batch's [`Batch::etag`], read back: the version and update time it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Etag {
    pub(crate) version: i64,
    pub(crate) update_time: Timestamp,
}

impl Etag {
    pub(crate) fn parse(text: &str) -> Result<Self, InvalidValue> {
        let invalid = || InvalidValue(format!("{text:?} is not an etag this service issued"));
        let (version, micros) = text
            .strip_prefix('v')
            .and_then(|rest| rest.split_once('-'))
            .ok_or_else(invalid)?;
        let version = version.parse().map_err(|_| invalid())?;
        let micros = i64::from_str_radix(micros, 16).map_err(|_| invalid())?;
        let update_time = Timestamp::from_microsecond(micros).map_err(|_| invalid())?;
        Ok(Self {
            version,
            update_time,
        })
    }
}

/// The end of a running batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub(crate) batch_id: BatchId,
    pub(crate) state: TerminalState,
    /// `None` means now, by the database's clock.
    pub(crate) end_time: Option<Timestamp>,
    /// Appended to the batch's errors, if given.
    pub(crate) error: Option<BatchError>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keep_newest_bounds_count_and_bytes() {
        let mut entries: Vec<String> = (0..10).map(|n| format!("{n}{}", "x".repeat(98))).collect();
        keep_newest(&mut entries, 5, usize::MAX);
        assert_eq!(entries.len(), 5);
        assert!(entries[0].starts_with('5'));
        // Each entry is 102 bytes of JSON (quotes included).
        keep_newest(&mut entries, 5, 350);
        assert_eq!(entries.len(), 3);
        assert!(entries[0].starts_with('7'));
    }

    fn stored() -> Batch {
        let start = Timestamp::from_second(1_760_000_000).unwrap();
        Batch {
            batch_id: BatchId::parse("b1".into()).unwrap(),
            state: State::Running,
            provider: "groq".into(),
            model: "llama".into(),
            current_model: "llama".into(),
            topic_filter: String::new(),
            difficulty_filter: String::new(),
            reasoning_instruction: String::new(),
            target_count: 10,
            samples_generated: 3,
            total_tokens: 99,
            errors: vec![],
            error_count: 0,
            model_switches: vec![],
            metadata: json!({"n": 1}).as_object().unwrap().clone(),
            labels: BatchLabels::default(),
            start_time: start,
            end_time: None,
            update_time: start,
            version: 4,
        }
    }

    fn request() -> NewBatch {
        NewBatch {
            batch_id: Some(BatchId::parse("b1".into()).unwrap()),
            provider: Label::parse("groq".into()).unwrap(),
            model: Label::parse("llama".into()).unwrap(),
            topic_filter: Label::default(),
            difficulty_filter: Label::default(),
            reasoning_instruction: Prose::default(),
            target_count: NonNegative::parse(10).unwrap(),
            metadata: JsonObject::parse(json!({"n": 1.0}).as_object().unwrap().clone()).unwrap(),
            labels: BatchLabels::default(),
            start_time: None,
        }
    }

    #[test]
    fn a_retried_create_matches_whatever_progress_happened_since() {
        assert!(request().matches(&stored()));
    }

    #[test]
    fn a_different_body_does_not_match() {
        let mut other = request();
        other.target_count = NonNegative::parse(11).unwrap();
        assert!(!other.matches(&stored()));

        let mut other = request();
        other.start_time = Some(Timestamp::from_second(1).unwrap());
        assert!(!other.matches(&stored()));
    }

    #[test]
    fn only_finished_states_are_terminal() {
        assert!(TerminalState::try_from(State::Running).is_err());
        assert_eq!(
            TerminalState::try_from(State::Stopped).unwrap().state(),
            State::Stopped
        );
    }

    #[test]
    fn state_names_round_trip() {
        for state in [
            State::Running,
            State::Completed,
            State::Stopped,
            State::Failed,
        ] {
            assert_eq!(State::from_name(state.as_str()), Some(state));
        }
        assert_eq!(State::from_name("running"), None);
    }

    #[test]
    fn an_etag_reads_back_as_what_it_names() {
        let batch = stored();
        let etag = Etag::parse(&batch.etag()).unwrap();
        assert_eq!(
            (etag.version, etag.update_time),
            (batch.version, batch.update_time)
        );
        for wrong in ["", "v", "v1", "1-2", "vx-1", "v1-xyz", "v1-"] {
            assert!(Etag::parse(wrong).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn etag_changes_with_version() {
        let mut batch = stored();
        let before = batch.etag();
        batch.version += 1;
        assert_ne!(before, batch.etag());
    }

    #[test]
    fn negative_counts_are_rejected() {
        assert!(NonNegative::parse(-1_i64).is_err());
        assert_eq!(NonNegative::parse(0_i32).unwrap().get(), 0);
    }
}
