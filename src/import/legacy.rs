//! The legacy dashboard's `batch_history` table, read from its SQLite file
//! or from the PostgreSQL database its `DATABASE_URL` named, and mapped onto
//! the Batch resource.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use jiff::{
    Timestamp,
    civil::DateTime,
    tz::{AmbiguousOffset, TimeZone},
};
use rusqlite::{OpenFlags, types::ValueRef};
use serde_json::{Map, Value};

use super::Problem;
use crate::domain::{
    Batch, BatchError, BatchId, BatchLabels, JsonObject, Label, MAX_KEPT_ERROR_BYTES,
    MAX_KEPT_ERRORS, MAX_KEPT_SWITCH_BYTES, MAX_KEPT_SWITCHES, ModelSwitch, NonNegative, Prose,
    State, keep_newest,
};

/// Every row's start time, for the months pass.
const SELECT_STARTS: &str = "SELECT started_at FROM batch_history";

/// The same from PostgreSQL.
pub(super) const SELECT_STARTS_POSTGRES: &str = "SELECT started_at::text FROM batch_history";

/// Columns of `batch_history`, in the order the queries below select them.
const SELECT: &str = "SELECT id, batch_id, started_at, completed_at, model, topic_filter, \
     difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, \
     status, errors, model_switches FROM batch_history ORDER BY id";

/// The same columns from PostgreSQL, as text whatever their declared types
/// (flask-sqlalchemy made the times VARCHAR, a hand-made table may not), so
/// that both sources go through one mapping.
pub(super) const SELECT_POSTGRES: &str = "SELECT id::bigint, batch_id::text, started_at::text, \
     completed_at::text, model::text, topic_filter::text, difficulty_filter::text, \
     reasoning_instruction::text, target_count::text, samples_generated::text, \
     total_tokens::text, status::text, errors::text, model_switches::text \
     FROM batch_history ORDER BY id";

/// Whether the file keeps its batch ids distinct itself, as the dashboard's
/// does (`unique=True` on `batch_id` in `backend/models/batch.py`): a unique
/// index on that column alone, over every row, which holds text only (text
/// affinity: a number stored there becomes text, so `5` and `'5'` cannot
/// both be there to map to one id).
const IDS_UNIQUE: &str = "SELECT EXISTS (
        SELECT 1 FROM pragma_index_list('batch_history') l
        WHERE l.\"unique\" AND NOT l.partial
          AND (SELECT group_concat(coalesce(name, '')) FROM pragma_index_info(l.name)) = 'batch_id')
    AND EXISTS (
        SELECT 1 FROM pragma_table_info('batch_history')
        WHERE name = 'batch_id' AND upper(type) NOT LIKE '%INT%'
          AND (upper(type) LIKE '%CHAR%' OR upper(type) LIKE '%CLOB%' OR upper(type) LIKE '%TEXT%'))";

/// The same of the PostgreSQL source: a unique index on `batch_id` alone,
/// over every row (its text is the id).
pub(super) const IDS_UNIQUE_POSTGRES: &str = "SELECT EXISTS (
        SELECT FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = 'batch_history'::regclass AND i.indisunique AND i.indnkeyatts = 1
          AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = 'batch_id')";

/// Whether the PostgreSQL source has the table, on its search path.
pub(super) const HAS_TABLE_POSTGRES: &str = "SELECT to_regclass('batch_history') IS NOT NULL";

/// One value of a legacy row, in SQLite's dynamic types (PostgreSQL's
/// arrive as text, or NULL).
#[derive(Debug, Clone, Copy)]
pub(super) enum Cell<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob,
}

impl<'a> From<ValueRef<'a>> for Cell<'a> {
    fn from(value: ValueRef<'a>) -> Self {
        match value {
            ValueRef::Null => Self::Null,
            ValueRef::Integer(n) => Self::Integer(n),
            ValueRef::Real(x) => Self::Real(x),
            ValueRef::Text(bytes) => Self::Text(bytes),
            ValueRef::Blob(_) => Self::Blob,
        }
    }
}

/// A column of the PostgreSQL source, all of which are read as text.
impl<'a> From<Option<&'a str>> for Cell<'a> {
    fn from(text: Option<&'a str>) -> Self {
        text.map_or(Self::Null, |text| Self::Text(text.as_bytes()))
    }
}

impl<'a> Cell<'a> {
    /// The text a column is read as: numbers as written, NULL as none. The
    /// error says why the cell holds no text.
    fn text(self) -> Result<Option<Cow<'a, str>>, &'static str> {
        match self {
            Self::Null => Ok(None),
            Self::Text(bytes) => std::str::from_utf8(bytes)
                .map(|text| Some(Cow::Borrowed(text)))
                .map_err(|_| "is not valid UTF-8"),
            Self::Integer(n) => Ok(Some(Cow::Owned(n.to_string()))),
            Self::Real(x) => Ok(Some(Cow::Owned(x.to_string()))),
            Self::Blob => Err("holds binary data, not text"),
        }
    }
}

/// Columns in a legacy row.
pub(super) const COLUMNS: usize = 14;

/// Why the file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open {path} as a SQLite database")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path} has no batch_history table; is it the dashboard's history?")]
    NoHistoryTable { path: String },
    #[error("cannot read batch_history")]
    Read(#[from] rusqlite::Error),
    #[error("{path} did not answer within {timeout:?}")]
    Unreachable {
        path: String,
        timeout: std::time::Duration,
    },
    #[error("cannot read batch_history from {path}")]
    Postgres {
        path: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot copy {path} and its -wal log to read them")]
    Copy {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An open legacy file, and the private copy it was opened from, if any
/// (removed once the connection is closed: fields drop in order).
struct Opened {
    connection: rusqlite::Connection,
    _copy: Option<PrivateCopy>,
}

/// Opens `path` without writing beside it, so that it may sit in a
/// read-only directory (a compose mount). A file in WAL mode would have
/// SQLite create its `-shm` there: one without a `-wal` log (closed
/// cleanly, so every row is in the file) is opened as immutable; one with a
/// log (the dashboard still running, or stopped uncleanly) is copied with
/// its log to a private directory, where SQLite replays the log.
fn open(path: &Path) -> Result<Opened, ReadError> {
    let shown = path.display().to_string();
    let open_error = |source| ReadError::Open {
        path: shown.clone(),
        source,
    };
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if !in_wal_mode(path) {
        let connection =
            rusqlite::Connection::open_with_flags(path, read_only).map_err(open_error)?;
        return Ok(Opened {
            connection,
            _copy: None,
        });
    }
    let log = wal_log(path);
    if !log.exists() {
        let uri = format!("file:{}?immutable=1", uri_path(path));
        let connection =
            rusqlite::Connection::open_with_flags(uri, read_only | OpenFlags::SQLITE_OPEN_URI)
                .map_err(open_error)?;
        return Ok(Opened {
            connection,
            _copy: None,
        });
    }
    let copy = PrivateCopy::of(path, &log).map_err(|source| ReadError::Copy {
        path: shown.clone(),
        source,
    })?;
    let connection = rusqlite::Connection::open_with_flags(
        &copy.database,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    Ok(Opened {
        connection,
        _copy: Some(copy),
    })
}

/// Reads `path` once through on a thread of its own, so that the months'
/// pass finds the file's pages in memory instead of faulting them in from
/// disk a few at a time through the map: at 10M rows, with the file out of
/// the page cache, that pass took 4.9 to 5.0 s with this, 6.7 to 7.0 s
/// without (docs/PERFORMANCE.md). Only a hint to the page cache: a file
/// this cannot read fails where SQLite reads it. Not for a file that would
/// fill half the memory free: read ahead, its first pages would be evicted
/// before the pass reached them, and the disk read it twice.
fn read_ahead(path: &Path) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return;
    };
    let fits = file
        .metadata()
        .is_ok_and(|meta| memory_available().is_some_and(|free| meta.len() <= free / 2));
    if !fits {
        return;
    }
    std::thread::spawn(move || {
        let mut buffer = vec![0; 4 << 20];
        while matches!(std::io::Read::read(&mut file, &mut buffer), Ok(read) if read > 0) {}
    });
}

/// The memory Linux can hand out without swapping (`MemAvailable`), if
/// this system says.
fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Whether the file's header says WAL mode (format versions 2 and 2).
fn in_wal_mode(path: &Path) -> bool {
    let mut header = [0; 20];
    std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header))
        .is_ok_and(|()| header[18] == 2 && header[19] == 2)
}

fn wal_log(path: &Path) -> std::path::PathBuf {
    let mut log = path.as_os_str().to_owned();
    log.push("-wal");
    log.into()
}

/// `path` as the path of a SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23")
}

/// A legacy file and its `-wal` log copied to a private directory, removed
/// on drop.
struct PrivateCopy {
    dir: std::path::PathBuf,
    database: std::path::PathBuf,
}

impl PrivateCopy {
    fn of(path: &Path, log: &Path) -> std::io::Result<Self> {
        let mut suffix = [0; 8];
        getrandom::fill(&mut suffix).map_err(std::io::Error::other)?;
        let dir = std::env::temp_dir().join(format!(
            "batch-history-import-{:016x}",
            u64::from_le_bytes(suffix)
        ));
        std::fs::create_dir(&dir)?;
        let copy = Self {
            database: dir.join("batches.db"),
            dir,
        };
        std::fs::copy(path, &copy.database)?;
        std::fs::copy(log, wal_log(&copy.database))?;
        Ok(copy)
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What reading a file found, besides the batches it delivered.
#[derive(Debug, Default)]
pub(crate) struct Mapped {
    pub(crate) rows_read: u64,
    /// Every problem of every row that cannot be imported.
    pub(crate) problems: Vec<Problem>,
    /// JSON columns that held text which is not JSON, kept verbatim.
    pub(crate) raw_json_kept: u64,
    /// Times without an offset that the clocks going back made ambiguous,
    /// resolved as [`LegacyTime`] explains.
    pub(crate) ambiguous_times: u64,
    /// Times without an offset that fell in the hour the clocks skipped,
    /// moved forward by it.
    pub(crate) skipped_times: u64,
}

/// The legacy dashboard's SQLite file, open for reading in one read
/// transaction, so that its two passes (the months, then the batches) see
/// the same rows.
pub(crate) struct File {
    opened: Opened,
}

impl File {
    /// Opens `path` read-only, if it holds the dashboard's history.
    pub(crate) fn open(path: &Path) -> Result<Self, ReadError> {
        let shown = path.display().to_string();
        read_ahead(path);
        let opened = open(path)?;
        let failed = |source| ReadError::Open {
            path: shown.clone(),
            source,
        };
        let has_table = opened
            .connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'batch_history'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(failed)?;
        if has_table == 0 {
            return Err(ReadError::NoHistoryTable { path: shown });
        }
        // Pages read through a memory map, not a system call each. Safe
        // against the file shrinking under the map: in rollback-journal
        // mode the read transaction keeps writers out; a file in WAL mode
        // is read as immutable only when no log says anyone writes to it,
        // else from a private copy.
        opened
            .connection
            .pragma_update(None, "mmap_size", i64::MAX)
            .map_err(failed)?;
        opened.connection.execute_batch("BEGIN").map_err(failed)?;
        Ok(Self { opened })
    }

    /// The months the batches start in, times without an offset read in
    /// `zone`.
    pub(crate) fn start_months(&self, zone: &TimeZone) -> Result<StartMonths, ReadError> {
        let mut months = StartMonths::default();
        let mut statement = self.opened.connection.prepare(SELECT_STARTS)?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            months.add(row.get_ref(0)?.into(), zone);
        }
        Ok(months)
    }

    /// Reads and maps every row, and hands each batch that has no problem
    /// to `deliver`. Stops early if `deliver` returns false.
    pub(crate) fn read(
        &self,
        zone: &TimeZone,
        mut deliver: impl FnMut(Batch) -> bool,
    ) -> Result<Mapped, ReadError> {
        let ids_unique = self
            .opened
            .connection
            .query_row(IDS_UNIQUE, [], |row| row.get(0))?;
        let mut reader = Reader::new(zone, ids_unique);
        let mut statement = self.opened.connection.prepare(SELECT)?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let mut cells = [Cell::Null; COLUMNS];
            for (index, cell) in cells.iter_mut().enumerate() {
                *cell = row.get_ref(index)?.into();
            }
            if let Some(batch) = reader.row(&cells)
                && !deliver(batch)
            {
                break;
            }
        }
        Ok(reader.mapped)
    }
}

/// The months (first instants, UTC) that the batches of a history start
/// in, by every reading of each start time: found in a pass of their own,
/// so that the load makes room for the months it loads whole before the
/// batches arrive (see `BulkLoad::begin`). A start time that cannot be read
/// names no month: its row is invalid.
#[derive(Debug, Default)]
pub(crate) struct StartMonths {
    months: BTreeSet<Timestamp>,
}

impl StartMonths {
    /// Adds the months of every reading of `started_at`, read as the rows
    /// read it.
    pub(crate) fn add(&mut self, started_at: Cell<'_>, zone: &TimeZone) {
        let Ok(Some(text)) = started_at.text() else {
            return;
        };
        let Ok(time) = parse_legacy_time(&text, zone) else {
            return;
        };
        let (first, second) = match time {
            LegacyTime::Exact(time) | LegacyTime::Skipped(time) => (time, None),
            LegacyTime::Ambiguous { earlier, later } => (earlier, Some(later)),
        };
        for time in std::iter::once(first).chain(second) {
            if let Ok(month) = time
                .to_zoned(TimeZone::UTC)
                .date()
                .first_of_month()
                .to_zoned(TimeZone::UTC)
            {
                self.months.insert(month.timestamp());
            }
        }
    }

    /// The months, in order.
    pub(crate) fn into_vec(self) -> Vec<Timestamp> {
        self.months.into_iter().collect()
    }
}

/// Maps rows one at a time, keeping the tallies of the whole table.
pub(super) struct Reader<'z> {
    zone: &'z TimeZone,
    /// Every id so far, unless the source keeps them distinct itself: a
    /// hundred bytes a row, 10 GB at 100M rows.
    seen: Option<HashSet<BatchId>>,
    pub(crate) mapped: Mapped,
}

impl<'z> Reader<'z> {
    /// A reader of times without an offset in `zone`, that looks for ids
    /// given twice unless the source keeps them distinct (`ids_unique`).
    pub(crate) fn new(zone: &'z TimeZone, ids_unique: bool) -> Self {
        Self {
            zone,
            seen: (!ids_unique).then(HashSet::new),
            mapped: Mapped::default(),
        }
    }

    /// The batch of one row, or `None` if the row cannot be imported (its
    /// problems are recorded).
    pub(crate) fn row(&mut self, cells: &[Cell<'_>; COLUMNS]) -> Option<Batch> {
        self.mapped.rows_read += 1;
        let mut mapper = RowMapper {
            row_id: match cells[0] {
                Cell::Integer(n) => n,
                _ => 0,
            },
            zone: self.zone,
            problems: Vec::new(),
            raw_json_kept: 0,
            ambiguous_times: 0,
            skipped_times: 0,
        };
        let batch = mapper.map(cells);
        if let (Some(batch), Some(seen)) = (&batch, &mut self.seen)
            && !seen.insert(batch.batch_id.clone())
        {
            mapper.problem(
                "batch_id",
                format!("{} appears more than once", batch.batch_id),
            );
        }
        self.mapped.raw_json_kept += mapper.raw_json_kept;
        self.mapped.ambiguous_times += mapper.ambiguous_times;
        self.mapped.skipped_times += mapper.skipped_times;
        match batch {
            Some(batch) if mapper.problems.is_empty() => Some(batch),
            _ => {
                self.mapped.problems.append(&mut mapper.problems);
                None
            }
        }
    }
}

/// Maps one row, collecting every problem rather than stopping at the first.
struct RowMapper<'z> {
    row_id: i64,
    zone: &'z TimeZone,
    problems: Vec<Problem>,
    raw_json_kept: u64,
    ambiguous_times: u64,
    skipped_times: u64,
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
    fn map(&mut self, row: &[Cell<'_>; COLUMNS]) -> Option<Batch> {
        let batch_id = self.text(row[1], "batch_id").and_then(|id| {
            BatchId::parse(id)
                .map_err(|e| self.problem("batch_id", e.0))
                .ok()
        });
        if batch_id.is_none() && self.problems.is_empty() {
            self.problem("batch_id", "is missing");
        }
        // The id the dashboard made holds the true start, to the second.
        let started = batch_id.as_ref().and_then(instant_in_id);
        let start_time = match self.text(row[2], "started_at") {
            Some(text) => self
                .time(&text, "started_at")
                .map(|time| time.nearest_to(started)),
            None => {
                self.problem("started_at", "is missing");
                None
            }
        };
        let end_time = match self.text(row[3], "completed_at") {
            Some(text) if !text.trim().is_empty() => self
                .time(&text, "completed_at")
                .map(|time| time.earliest_from(start_time)),
            _ => None,
        };
        let current_model = self.label(row[4], "model");
        let topic_filter = self.label(row[5], "topic_filter");
        let difficulty_filter = self.label(row[6], "difficulty_filter");
        let reasoning_instruction = self
            .text(row[7], "reasoning_instruction")
            .unwrap_or_default();
        if let Err(e) = Prose::parse(reasoning_instruction.clone()) {
            self.problem("reasoning_instruction", e.0);
        }
        let target_count = self.count(row[8], "target_count");
        let target_count = i32::try_from(target_count).unwrap_or_else(|_| {
            self.problem(
                "target_count",
                format!("{target_count} does not fit in 32 bits"),
            );
            0
        });
        let samples_generated = self.count(row[9], "samples_generated");
        let total_tokens = self.count(row[10], "total_tokens");
        let state = match self.text(row[11], "status") {
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
            return None;
        };
        if state == State::Running && end_time.is_some() {
            self.problem("completed_at", "is set on a batch whose status is running");
        }
        if end_time.is_some_and(|end| end < start_time) {
            self.problem("completed_at", "is before started_at");
        }
        let errors_text = self.text(row[12], "errors");
        let mut errors = self.errors(errors_text, start_time);
        let error_count = errors.len() as i64;
        keep_newest(&mut errors, MAX_KEPT_ERRORS, MAX_KEPT_ERROR_BYTES);
        let switches_text = self.text(row[13], "model_switches");
        let mut model_switches = self.model_switches(switches_text, start_time);
        // The legacy row kept only the model in use at the end; the first
        // switch says which one the batch started with.
        let model = model_switches
            .first()
            .map(|switch| switch.from_model.as_str())
            .filter(|from| !from.is_empty())
            .unwrap_or(&current_model)
            .to_owned();
        keep_newest(
            &mut model_switches,
            MAX_KEPT_SWITCHES,
            MAX_KEPT_SWITCH_BYTES,
        );

        Some(Batch {
            batch_id,
            state,
            provider: String::new(),
            model,
            current_model,
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
            labels: BatchLabels::default(),
            start_time,
            end_time,
            update_time: end_time.unwrap_or(start_time),
            version: 1,
        })
    }

    /// A text column; SQLite's dynamic typing lets numbers in, so they are
    /// accepted in their decimal form.
    fn text(&mut self, cell: Cell<'_>, column: &'static str) -> Option<String> {
        cell.text()
            .map_err(|message| self.problem(column, message))
            .ok()
            .flatten()
            .map(Cow::into_owned)
    }

    fn label(&mut self, cell: Cell<'_>, column: &'static str) -> String {
        let text = self.text(cell, column).unwrap_or_default();
        if let Err(e) = Label::parse(text.clone()) {
            self.problem(column, e.0);
        }
        text
    }

    /// A count that is zero or more; NULL is 0, the model's default.
    fn count(&mut self, cell: Cell<'_>, column: &'static str) -> i64 {
        let value = match cell {
            Cell::Null => Some(0),
            Cell::Integer(n) => Some(n),
            Cell::Real(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(x as i64),
            Cell::Text(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.trim().parse().ok()),
            _ => None,
        };
        match value {
            Some(n) if n >= 0 => n,
            Some(n) => {
                self.problem(column, format!("{n} is negative"));
                0
            }
            None => {
                self.problem(column, "is not an integer");
                0
            }
        }
    }

    fn time(&mut self, text: &str, column: &'static str) -> Option<LegacyTime> {
        let time = parse_legacy_time(text, self.zone)
            .map_err(|message| self.problem(column, message))
            .ok()?;
        self.tally(&time);
        Some(time)
    }

    fn tally(&mut self, time: &LegacyTime) {
        match time {
            LegacyTime::Exact(_) => {}
            LegacyTime::Ambiguous { .. } => self.ambiguous_times += 1,
            LegacyTime::Skipped(_) => self.skipped_times += 1,
        }
    }

    /// The entries of the `errors` column. Each entry's `error` is the
    /// message; its other keys are details, but for a `timestamp` that reads
    /// as a time.
    fn errors(&mut self, text: Option<String>, start_time: Timestamp) -> Vec<BatchError> {
        let items = match self.json_items(text) {
            Items::Entries(items) => items,
            Items::Raw(raw) => {
                return vec![BatchError {
                    message: self.prose(raw, "errors"),
                    time: None,
                    details: raw_marker(),
                }];
            }
        };
        items
            .into_iter()
            .map(|item| {
                let mut fields = object_fields(item, "error");
                // An "error" that is not a non-empty string stays in details.
                let message = match fields.get("error") {
                    Some(Value::String(text)) if !text.is_empty() => {
                        take_string(&mut fields, &["error"]).unwrap_or_default()
                    }
                    _ => String::new(),
                };
                let time = self.take_time(&mut fields, start_time);
                BatchError {
                    message: self.prose(message, "errors"),
                    time,
                    details: self.details(fields, "errors"),
                }
            })
            .collect()
    }

    /// The entries of the `model_switches` column, in either of the
    /// dashboard's formats: `{from, to, provider, reason, at_sample}` (the
    /// current one) or `{from_model, to_model, provider, reason, timestamp,
    /// samples_generated}` (an older one). Other keys are details.
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
                    time: None,
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
                let at_sample = take_count(&mut fields, &["at_sample", "samples_generated"]);
                let time = self.take_time(&mut fields, start_time);
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

    /// Removes a `timestamp` key that reads as a time and returns its
    /// instant, the earliest not before the batch started where the clocks
    /// going back made it ambiguous. One that does not read stays in details.
    fn take_time(
        &mut self,
        fields: &mut Map<String, Value>,
        start_time: Timestamp,
    ) -> Option<Timestamp> {
        let Some(Value::String(text)) = fields.get("timestamp") else {
            return None;
        };
        let time = parse_legacy_time(text, self.zone).ok()?;
        fields.remove("timestamp");
        self.tally(&time);
        Some(time.earliest_from(Some(start_time)))
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

/// Removes and returns the first of `keys` that holds an integer that is
/// zero or more; anything else stays, as it was, in details.
fn take_count(fields: &mut Map<String, Value>, keys: &[&str]) -> NonNegative<i64> {
    for key in keys {
        if let Some(count) = fields
            .get(*key)
            .and_then(Value::as_i64)
            .and_then(|n| NonNegative::parse(n).ok())
        {
            fields.remove(*key);
            return count;
        }
    }
    NonNegative::default()
}

/// The start instant in an id the dashboard made, `batch_<unix seconds>_<hex>`.
fn instant_in_id(batch_id: &BatchId) -> Option<Timestamp> {
    let mut parts = batch_id.as_str().split('_');
    let (Some("batch"), Some(seconds), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Timestamp::from_second(seconds.parse().ok()?).ok()
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

/// A legacy time: the instant it names, or the instants it may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyTime {
    /// With an offset, or a civil time that happened exactly once.
    Exact(Timestamp),
    /// A civil time in the hour the clocks went back: it happened twice.
    Ambiguous {
        earlier: Timestamp,
        later: Timestamp,
    },
    /// A civil time in the hour the clocks skipped, moved forward by the
    /// gap (as Python's zoneinfo reads it).
    Skipped(Timestamp),
}

impl LegacyTime {
    /// The candidate closest to `reference`; the earlier one without it.
    pub fn nearest_to(self, reference: Option<Timestamp>) -> Timestamp {
        match (self, reference) {
            (Self::Ambiguous { earlier, later }, Some(reference))
                if later.duration_since(reference).abs()
                    < earlier.duration_since(reference).abs() =>
            {
                later
            }
            (Self::Ambiguous { earlier, .. }, _) => earlier,
            (Self::Exact(time) | Self::Skipped(time), _) => time,
        }
    }

    /// The earliest candidate not before `start`; the later one if both are.
    pub(crate) fn earliest_from(self, start: Option<Timestamp>) -> Timestamp {
        match (self, start) {
            (Self::Ambiguous { earlier, later }, Some(start)) if earlier < start => later,
            (Self::Ambiguous { earlier, .. }, _) => earlier,
            (Self::Exact(time) | Self::Skipped(time), _) => time,
        }
    }
}

/// `datetime.isoformat()` text: with or without a fraction, `T` or a space
/// between date and time, and an offset or `Z` honoured when present.
/// Without one, the time is civil time in `zone`. Kept to the microsecond,
/// as PostgreSQL keeps it.
pub fn parse_legacy_time(text: &str, zone: &TimeZone) -> Result<LegacyTime, String> {
    let text = text.trim();
    let micros = |time: Timestamp| {
        Timestamp::from_microsecond(time.as_microsecond())
            .map_err(|e| format!("{text:?} is out of range: {e}"))
    };
    if let Ok(time) = text.parse::<Timestamp>() {
        return Ok(LegacyTime::Exact(micros(time)?));
    }
    let civil: DateTime = text
        .parse()
        .map_err(|_| format!("{text:?} is not an ISO-8601 date and time"))?;
    let ambiguous = zone.to_ambiguous_timestamp(civil);
    let placed = |time: Result<Timestamp, jiff::Error>| {
        time.map_err(|e| format!("{text:?} cannot be placed in the source time zone: {e}"))
            .and_then(micros)
    };
    Ok(match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { .. } => LegacyTime::Exact(placed(ambiguous.compatible())?),
        AmbiguousOffset::Fold { .. } => LegacyTime::Ambiguous {
            earlier: placed(ambiguous.earlier())?,
            later: placed(ambiguous.later())?,
        },
        AmbiguousOffset::Gap { .. } => LegacyTime::Skipped(placed(ambiguous.compatible())?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Result<i64, String> {
        parse_legacy_time(text, &TimeZone::UTC).map(|t| t.nearest_to(None).as_microsecond())
    }

    fn london(text: &str) -> LegacyTime {
        parse_legacy_time(text, &TimeZone::get("Europe/London").unwrap()).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_hour_the_clocks_go_back_is_resolved_by_the_batch_start() {
        // 2025-10-26 01:30 happened at 00:30 UTC (BST) and again at 01:30 UTC.
        let time = london("2025-10-26T01:30:00");
        assert_eq!(
            time,
            LegacyTime::Ambiguous {
                earlier: at("2025-10-26T00:30:00Z"),
                later: at("2025-10-26T01:30:00Z"),
            }
        );
        assert_eq!(
            time.nearest_to(Some(at("2025-10-26T01:29:59Z"))),
            at("2025-10-26T01:30:00Z")
        );
        assert_eq!(time.nearest_to(None), at("2025-10-26T00:30:00Z"));
        // A batch that started at 01:40 the first time ended at 01:30 the second.
        assert_eq!(
            time.earliest_from(Some(at("2025-10-26T00:40:00Z"))),
            at("2025-10-26T01:30:00Z")
        );
        assert_eq!(
            time.earliest_from(Some(at("2025-10-26T00:10:00Z"))),
            at("2025-10-26T00:30:00Z")
        );
    }

    #[test]
    fn a_time_the_clocks_skipped_moves_forward() {
        // 2025-03-30 01:30 never happened in London: it reads as 02:30 BST.
        assert_eq!(
            london("2025-03-30T01:30:00"),
            LegacyTime::Skipped(at("2025-03-30T01:30:00Z"))
        );
    }

    #[test]
    fn dashboard_ids_carry_their_start() {
        let id = |text: &str| instant_in_id(&BatchId::parse(text.into()).unwrap());
        assert_eq!(
            id("batch_1761442200_0a1b2c3d"),
            Some(at("2025-10-26T01:30:00Z"))
        );
        assert_eq!(id("batch_x_0a1b2c3d"), None);
        assert_eq!(id("my-batch"), None);
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
    fn start_months_are_the_utc_months_of_the_times() {
        let london = TimeZone::get("Europe/London").unwrap();
        let mut months = StartMonths::default();
        for text in [
            "2025-04-01T00:30:00",
            "2025-04-01 01:30:00+02:00",
            "2025-05-31T23:59:59Z",
            "2025-05-15T12:00:00",
            "not a time",
        ] {
            months.add(Cell::Text(text.as_bytes()), &london);
        }
        assert_eq!(
            months.into_vec(),
            [at("2025-03-01T00:00:00Z"), at("2025-05-01T00:00:00Z")],
            "London's first half hour of April is March in UTC"
        );
    }

    #[test]
    fn naive_times_use_the_source_zone() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let time = parse_legacy_time("2025-10-18T14:03:22", &paris).unwrap();
        assert_eq!(
            time,
            LegacyTime::Exact(Timestamp::from_second(1_760_796_202 - 2 * 3600).unwrap())
        );
        // An explicit offset wins over the zone.
        let time = parse_legacy_time("2025-10-18T14:03:22Z", &paris).unwrap();
        assert_eq!(
            time,
            LegacyTime::Exact(Timestamp::from_second(1_760_796_202).unwrap())
        );
    }
}
