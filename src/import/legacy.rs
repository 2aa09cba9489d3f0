//! The legacy dashboard's `batch_history` table, read from SQLite and mapped
//! onto the Batch resource.

use std::collections::HashSet;
use std::path::Path;

use jiff::{Timestamp, civil::DateTime, tz::TimeZone};
use rusqlite::{OpenFlags, types::ValueRef};
use serde_json::{Map, Value};

use super::Problem;
use crate::domain::{
    Batch, BatchError, BatchId, JsonObject, Label, MAX_KEPT_ERROR_BYTES, MAX_KEPT_ERRORS,
    MAX_KEPT_SWITCH_BYTES, MAX_KEPT_SWITCHES, ModelSwitch, NonNegative, Prose, State, keep_newest,
};

/// Columns of `batch_history`, in the order the query below selects them.
const SELECT: &str = "SELECT id, batch_id, started_at, completed_at, model, topic_filter, \
     difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, \
     status, errors, model_switches FROM batch_history ORDER BY id";

/// Why the file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open {path} as a SQLite database")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path} has no batch_history table; is it the dashboard's batches.db?")]
    NoHistoryTable { path: String },
    #[error("cannot read batch_history")]
    Read(#[from] rusqlite::Error),
}

/// What reading a file found, besides the batches it delivered.
#[derive(Debug, Default)]
pub struct Mapped {
    pub rows_read: u64,
    /// Every problem of every row that cannot be imported.
    pub problems: Vec<Problem>,
    /// JSON columns that held text which is not JSON, kept verbatim.
    pub raw_json_kept: u64,
}

/// Reads and maps every row of `path`'s `batch_history`, interpreting times
/// without an offset in `zone`, and hands each batch to `deliver` while no
/// row has had a problem yet; reading goes on to find every problem. Stops
/// early if `deliver` returns false. The file is opened read-only.
pub fn read(
    path: &Path,
    zone: &TimeZone,
    mut deliver: impl FnMut(Batch) -> bool,
) -> Result<Mapped, ReadError> {
    let shown = path.display().to_string();
    let connection = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| ReadError::Open {
        path: shown.clone(),
        source,
    })?;
    let has_table = connection
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'batch_history'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(|source| ReadError::Open {
            path: shown.clone(),
            source,
        })?;
    if has_table == 0 {
        return Err(ReadError::NoHistoryTable { path: shown });
    }

    let mut mapped = Mapped::default();
    let mut seen = HashSet::new();
    let mut statement = connection.prepare(SELECT)?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        mapped.rows_read += 1;
        let mut mapper = RowMapper {
            row_id: row.get_ref(0)?.as_i64().unwrap_or_default(),
            zone,
            problems: Vec::new(),
            raw_json_kept: 0,
        };
        let batch = mapper.map(row)?;
        if let Some(batch) = &batch
            && !seen.insert(batch.batch_id.clone())
        {
            mapper.problem(
                "batch_id",
                format!("{} appears more than once", batch.batch_id),
            );
        }
        mapped.raw_json_kept += mapper.raw_json_kept;
        match batch {
            Some(batch) if mapper.problems.is_empty() => {
                if mapped.problems.is_empty() && !deliver(batch) {
                    break;
                }
            }
            _ => mapped.problems.append(&mut mapper.problems),
        }
    }
    Ok(mapped)
}

/// Maps one row, collecting every problem rather than stopping at the first.
struct RowMapper<'z> {
    row_id: i64,
    zone: &'z TimeZone,
    problems: Vec<Problem>,
    raw_json_kept: u64,
}

impl RowMapper<'_> {
    fn problem(&mut self, column: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            row_id: self.row_id,
            column,
            message: message.into(),
        });
    }

    /// The batch, or `None` if a column needed to build it is unusable.
    fn map(&mut self, row: &rusqlite::Row<'_>) -> Result<Option<Batch>, rusqlite::Error> {
        let batch_id = self.text(row, 1, "batch_id")?.and_then(|id| {
            BatchId::parse(id)
                .map_err(|e| self.problem("batch_id", e.0))
                .ok()
        });
        if batch_id.is_none() && self.problems.is_empty() {
            self.problem("batch_id", "is missing");
        }
        let start_time = match self.text(row, 2, "started_at")? {
            Some(text) => self.time(&text, "started_at"),
            None => {
                self.problem("started_at", "is missing");
                None
            }
        };
        let end_time = match self.text(row, 3, "completed_at")? {
            Some(text) if !text.trim().is_empty() => self.time(&text, "completed_at"),
            _ => None,
        };
        let model = self.label(row, 4, "model")?;
        let topic_filter = self.label(row, 5, "topic_filter")?;
        let difficulty_filter = self.label(row, 6, "difficulty_filter")?;
        let reasoning_instruction = self
            .text(row, 7, "reasoning_instruction")?
            .unwrap_or_default();
        if let Err(e) = Prose::parse(reasoning_instruction.clone()) {
            self.problem("reasoning_instruction", e.0);
        }
        let target_count = self.count(row, 8, "target_count")?;
        let target_count = i32::try_from(target_count).unwrap_or_else(|_| {
            self.problem(
                "target_count",
                format!("{target_count} does not fit in 32 bits"),
            );
            0
        });
        let samples_generated = self.count(row, 9, "samples_generated")?;
        let total_tokens = self.count(row, 10, "total_tokens")?;
        let state = match self.text(row, 11, "status")? {
            Some(status) => match status.trim().to_ascii_lowercase().as_str() {
                "running" => Some(State::Running),
                "completed" => Some(State::Completed),
                "stopped" => Some(State::Stopped),
                _ => {
                    self.problem(
                        "status",
                        format!("{status:?} is not running, completed or stopped"),
                    );
                    None
                }
            },
            None => {
                self.problem("status", "is missing");
                None
            }
        };

        let (Some(batch_id), Some(start_time), Some(state)) = (batch_id, start_time, state) else {
            return Ok(None);
        };
        if state == State::Running && end_time.is_some() {
            self.problem("completed_at", "is set on a batch whose status is running");
        }
        if end_time.is_some_and(|end| end < start_time) {
            self.problem("completed_at", "is before started_at");
        }
        let errors_text = self.text(row, 12, "errors")?;
        let mut errors = self.errors(errors_text, start_time);
        let error_count = errors.len() as i64;
        keep_newest(&mut errors, MAX_KEPT_ERRORS, MAX_KEPT_ERROR_BYTES);
        let switches_text = self.text(row, 13, "model_switches")?;
        let mut model_switches = self.model_switches(switches_text, start_time);
        keep_newest(
            &mut model_switches,
            MAX_KEPT_SWITCHES,
            MAX_KEPT_SWITCH_BYTES,
        );

        Ok(Some(Batch {
            batch_id,
            state,
            provider: String::new(),
            model,
            topic_filter,
            difficulty_filter,
            reasoning_instruction,
            target_count,
            samples_generated,
            total_tokens,
            errors,
            error_count,
            model_switches,
            metadata: Map::new(),
            start_time,
            end_time,
            update_time: end_time.unwrap_or(start_time),
            version: 1,
        }))
    }

    /// A text column; SQLite's dynamic typing lets numbers in, so they are
    /// accepted in their decimal form.
    fn text(
        &mut self,
        row: &rusqlite::Row<'_>,
        index: usize,
        column: &'static str,
    ) -> Result<Option<String>, rusqlite::Error> {
        Ok(match row.get_ref(index)? {
            ValueRef::Null => None,
            ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Some(text.to_owned()),
                Err(_) => {
                    self.problem(column, "is not valid UTF-8");
                    None
                }
            },
            ValueRef::Integer(n) => Some(n.to_string()),
            ValueRef::Real(x) => Some(x.to_string()),
            ValueRef::Blob(_) => {
                self.problem(column, "holds binary data, not text");
                None
            }
        })
    }

    fn label(
        &mut self,
        row: &rusqlite::Row<'_>,
        index: usize,
        column: &'static str,
    ) -> Result<String, rusqlite::Error> {
        let text = self.text(row, index, column)?.unwrap_or_default();
        if let Err(e) = Label::parse(text.clone()) {
            self.problem(column, e.0);
        }
        Ok(text)
    }

    /// A count that is zero or more; NULL is 0, the model's default.
    fn count(
        &mut self,
        row: &rusqlite::Row<'_>,
        index: usize,
        column: &'static str,
    ) -> Result<i64, rusqlite::Error> {
        let value = match row.get_ref(index)? {
            ValueRef::Null => Some(0),
            ValueRef::Integer(n) => Some(n),
            ValueRef::Real(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(x as i64),
            ValueRef::Text(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.trim().parse().ok()),
            _ => None,
        };
        Ok(match value {
            Some(n) if n >= 0 => n,
            Some(n) => {
                self.problem(column, format!("{n} is negative"));
                0
            }
            None => {
                self.problem(column, "is not an integer");
                0
            }
        })
    }

    fn time(&mut self, text: &str, column: &'static str) -> Option<Timestamp> {
        parse_legacy_time(text, self.zone)
            .map_err(|message| self.problem(column, message))
            .ok()
    }

    fn errors(&mut self, text: Option<String>, start_time: Timestamp) -> Vec<BatchError> {
        let items = match self.json_items(text) {
            Items::Entries(items) => items,
            Items::Raw(raw) => {
                return vec![BatchError {
                    message: self.prose(raw, "errors"),
                    time: start_time,
                    details: raw_marker(),
                }];
            }
        };
        items
            .into_iter()
            .map(|item| {
                let mut fields = object_fields(item, "error");
                let message = take_string(&mut fields, &["error", "message"]).unwrap_or_default();
                let time = self.take_time(&mut fields).unwrap_or(start_time);
                BatchError {
                    message: self.prose(message, "errors"),
                    time,
                    details: self.details(fields, "errors"),
                }
            })
            .collect()
    }

    fn model_switches(&mut self, text: Option<String>, start_time: Timestamp) -> Vec<ModelSwitch> {
        let items = match self.json_items(text) {
            Items::Entries(items) => items,
            Items::Raw(raw) => {
                return vec![ModelSwitch {
                    from_model: Label::default(),
                    to_model: Label::default(),
                    provider: Label::default(),
                    reason: self.prose(raw, "model_switches"),
                    at_sample: NonNegative::default(),
                    time: start_time,
                    details: raw_marker(),
                }];
            }
        };
        items
            .into_iter()
            .map(|item| {
                let mut fields = object_fields(item, "value");
                let from_model =
                    take_string(&mut fields, &["from", "from_model"]).unwrap_or_default();
                let to_model = take_string(&mut fields, &["to", "to_model"]).unwrap_or_default();
                let provider = take_string(&mut fields, &["provider"]).unwrap_or_default();
                let reason = take_string(&mut fields, &["reason"]).unwrap_or_default();
                let at_sample = match fields.get("at_sample").and_then(Value::as_i64) {
                    Some(n) if n >= 0 => {
                        fields.remove("at_sample");
                        NonNegative::parse(n).unwrap_or_default()
                    }
                    // Anything else stays, as it was, in details.
                    _ => NonNegative::default(),
                };
                let time = self.take_time(&mut fields).unwrap_or(start_time);
                ModelSwitch {
                    from_model: self.json_label(from_model),
                    to_model: self.json_label(to_model),
                    provider: self.json_label(provider),
                    reason: self.prose(reason, "model_switches"),
                    at_sample,
                    time,
                    details: self.details(fields, "model_switches"),
                }
            })
            .collect()
    }

    /// The entries of a JSON array column. NULL, blank, `null` and `[]`
    /// have none; a lone value is one entry; text that is not JSON is kept.
    fn json_items(&mut self, text: Option<String>) -> Items {
        let Some(text) = text.filter(|text| !text.trim().is_empty()) else {
            return Items::Entries(Vec::new());
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Null) => Items::Entries(Vec::new()),
            Ok(Value::Array(items)) => Items::Entries(items),
            Ok(other) => Items::Entries(vec![other]),
            Err(_) => {
                self.raw_json_kept += 1;
                Items::Raw(text)
            }
        }
    }

    /// Removes a parseable `timestamp` or `time` key and returns its instant.
    fn take_time(&mut self, fields: &mut Map<String, Value>) -> Option<Timestamp> {
        for key in ["timestamp", "time"] {
            if let Some(Value::String(text)) = fields.get(key)
                && let Ok(time) = parse_legacy_time(text, self.zone)
            {
                fields.remove(key);
                return Some(time);
            }
        }
        None
    }

    fn prose(&mut self, text: String, column: &'static str) -> Prose {
        Prose::parse(text)
            .map_err(|e| self.problem(column, e.0))
            .unwrap_or_default()
    }

    fn json_label(&mut self, text: String) -> Label {
        Label::parse(text)
            .map_err(|e| self.problem("model_switches", e.0))
            .unwrap_or_default()
    }

    fn details(&mut self, fields: Map<String, Value>, column: &'static str) -> JsonObject {
        JsonObject::parse(fields)
            .map_err(|e| self.problem(column, format!("an entry's other keys {e}")))
            .unwrap_or_default()
    }
}

enum Items {
    Entries(Vec<Value>),
    /// Text that is not JSON, verbatim.
    Raw(String),
}

/// Marks an entry that holds a column's raw text because it was not JSON.
fn raw_marker() -> JsonObject {
    let mut marker = Map::new();
    marker.insert("legacy_raw_text".into(), Value::Bool(true));
    JsonObject::parse(marker).unwrap_or_default()
}

/// An entry's keys; a value that is not an object is kept under `key`.
fn object_fields(item: Value, key: &str) -> Map<String, Value> {
    match item {
        Value::Object(fields) => fields,
        other => Map::from_iter([(key.to_owned(), other)]),
    }
}

/// Removes and returns the first of `keys` that holds a string.
fn take_string(fields: &mut Map<String, Value>, keys: &[&str]) -> Option<String> {
    let key = keys
        .iter()
        .find(|key| matches!(fields.get(**key), Some(Value::String(_))))?;
    match fields.remove(*key) {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

/// `datetime.isoformat()` text: with or without a fraction, `T` or a space
/// between date and time, and an offset or `Z` honoured when present.
/// Without one, the time is civil time in `zone`; a time that a DST change
/// made ambiguous takes the earlier instant, one it skipped the later.
pub fn parse_legacy_time(text: &str, zone: &TimeZone) -> Result<Timestamp, String> {
    let text = text.trim();
    let exact = text.parse::<Timestamp>();
    let time = match exact {
        Ok(time) => time,
        Err(_) => {
            let civil: DateTime = text
                .parse()
                .map_err(|_| format!("{text:?} is not an ISO-8601 date and time"))?;
            zone.to_ambiguous_zoned(civil)
                .compatible()
                .map_err(|e| format!("{text:?} cannot be placed in the source time zone: {e}"))?
                .timestamp()
        }
    };
    // PostgreSQL keeps microseconds; so does the comparison on re-import.
    Timestamp::from_microsecond(time.as_microsecond())
        .map_err(|e| format!("{text:?} is out of range: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Result<i64, String> {
        parse_legacy_time(text, &TimeZone::UTC).map(|t| t.as_microsecond())
    }

    #[test]
    fn legacy_times_in_every_shape() {
        let expected = 1_760_796_202_123_456;
        assert_eq!(utc("2025-10-18T14:03:22.123456"), Ok(expected));
        assert_eq!(utc("2025-10-18 14:03:22.123456"), Ok(expected));
        assert_eq!(utc(" 2025-10-18T14:03:22.123456Z "), Ok(expected));
        assert_eq!(utc("2025-10-18T16:03:22.123456+02:00"), Ok(expected));
        assert_eq!(utc("2025-10-18T14:03:22"), Ok(expected - 123_456));
        assert!(utc("18/10/2025 14:03").is_err());
        assert!(utc("").is_err());
    }

    #[test]
    fn naive_times_use_the_source_zone() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let time = parse_legacy_time("2025-10-18T14:03:22", &paris).unwrap();
        assert_eq!(time.as_second(), 1_760_796_202 - 2 * 3600);
        // An explicit offset wins over the zone.
        let time = parse_legacy_time("2025-10-18T14:03:22Z", &paris).unwrap();
        assert_eq!(time.as_second(), 1_760_796_202);
    }
}
