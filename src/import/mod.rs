//! `import-sqlite`: copies the legacy dashboard's history into the
//! service's PostgreSQL, from its SQLite file or from the `batch_history`
//! table in the PostgreSQL database the dashboard's `DATABASE_URL` named. Every row is read, checked and staged in one transaction,
//! committed only if every row is valid (and no conflict stands in the way),
//! so a file either imports completely or not at all. The service remembers
//! a digest of each batch it imported (`batch_imports`), so importing the
//! same file again adds nothing and reports batches the service has changed
//! since as such, not as conflicts.
//!
//! SQLite stays inside this module: the service has no SQLite code path.

mod legacy;

use std::{path::PathBuf, time::Instant};

use futures_util::TryStreamExt;

use jiff::{Timestamp, tz::TimeZone};
use serde::Serialize;

use crate::store::DatabaseConfig;
use crate::store::{self, BulkLoad, LoadOutcome, MigrateError, OnConflict, StagedRows, StoreError};

pub use legacy::{ReadError, parse_legacy_time};

/// Where the legacy history is.
#[derive(Debug, Clone)]
pub enum Source {
    /// The dashboard's SQLite file, e.g. `backend/data/batches.db`.
    Sqlite(PathBuf),
    /// The PostgreSQL database the dashboard's `DATABASE_URL` named.
    Postgres {
        config: Box<tokio_postgres::Config>,
        /// The URL without its password, for the report.
        shown: String,
    },
}

impl Source {
    /// How the report names the source; never with a password.
    pub(crate) fn shown(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres { shown, .. } => shown.clone(),
        }
    }
}

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub source: Source,
    /// Zone of legacy times that carry no offset.
    pub source_timezone: TimeZone,
    pub on_conflict: OnConflict,
    /// Check and stage everything, then roll back.
    pub dry_run: bool,
}

/// A row that cannot be imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The legacy `id` of the row.
    pub row_id: i64,
    pub column: &'static str,
    pub(crate) message: String,
}

/// What an import found and did. Every row read is counted once: `rows_read`
/// = `imported` + `already_present` + `changed_since_import` + conflicts +
/// `invalid`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub(crate) path: String,
    pub dry_run: bool,
    /// What conflicts do to the import (`fail` or `skip` in JSON).
    pub on_conflict: OnConflict,
    pub rows_read: u64,
    /// Written, or where nothing was committed, that would have been.
    pub imported: u64,
    /// Stored with the same content.
    pub already_present: u64,
    /// Imported before and changed (progressed, finished, stopped by the
    /// stale sweep, deleted) by the service since: left as they are.
    pub changed_since_import: u64,
    /// Stored with content no import of this file explains.
    pub conflicts: Vec<String>,
    /// Rows that cannot be imported (each may have several problems).
    pub invalid: u64,
    pub problems: Vec<Problem>,
    /// JSON columns holding text that is not JSON, kept verbatim.
    pub raw_json_kept: u64,
    /// Local times the clocks going back made ambiguous, resolved by the
    /// batch's start (see `docs/IMPORT.md`).
    pub ambiguous_times: u64,
    /// Local times in the hour the clocks skipped, moved forward by an hour.
    pub skipped_times: u64,
    /// What most likely caused the conflicts, when something does.
    pub hint: Option<String>,
    pub committed: bool,
    pub(crate) elapsed_seconds: f64,
    pub(crate) rows_per_second: f64,
}

impl Report {
    /// Whether the file's history is now (or, on a dry run, would be) in
    /// PostgreSQL: a dry run succeeds exactly when the same run would.
    pub fn succeeded(&self) -> bool {
        self.invalid == 0 && (self.conflicts.is_empty() || self.on_conflict == OnConflict::Skip)
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{}{}: {} rows read in {:.2} s ({:.0} rows/s)\n",
            if self.dry_run {
                "dry run, nothing written: "
            } else {
                ""
            },
            self.path,
            self.rows_read,
            self.elapsed_seconds,
            self.rows_per_second,
        );
        for (label, value) in [
            (
                if self.committed {
                    "imported"
                } else {
                    "would import"
                },
                self.imported,
            ),
            ("already present", self.already_present),
            ("changed since import", self.changed_since_import),
            ("conflicts", self.conflicts.len() as u64),
            ("invalid rows", self.invalid),
            ("raw JSON kept", self.raw_json_kept),
            ("ambiguous times", self.ambiguous_times),
            ("skipped times", self.skipped_times),
        ] {
            text.push_str(&format!("  {label:<20} {value}\n"));
        }
        for problem in &self.problems {
            text.push_str(&format!(
                "  invalid: row id {} column {}: {}\n",
                problem.row_id, problem.column, problem.message
            ));
        }
        for batch_id in &self.conflicts {
            text.push_str(&format!(
                "  conflict: {batch_id} is stored with other content\n"
            ));
        }
        if let Some(hint) = &self.hint {
            text.push_str(&format!("  hint: {hint}\n"));
        }
        if !self.succeeded() {
            text.push_str("nothing was imported");
            if !self.conflicts.is_empty() && self.on_conflict == OnConflict::Fail {
                text.push_str("; rerun with --on-conflict skip to keep the stored batches");
            }
            text.push('\n');
        }
        text
    }
}

/// Why an import could not run.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("could not write to the database")]
    Write(#[from] StoreError),
    #[error("the SQLite reader stopped unexpectedly")]
    Reader(#[from] tokio::task::JoinError),
}

/// Chunks of encoded batches read ahead of the database (of about 1 MiB
/// each): enough to keep both busy.
const READ_AHEAD: usize = 8;

/// Migrates, reads the months the history's batches start in, then reads
/// and checks the whole history while streaming it into the load, and
/// writes it in one transaction unless a row is invalid.
pub async fn import_history(
    options: &ImportOptions,
    database: &DatabaseConfig,
) -> Result<Report, ImportError> {
    let started = Instant::now();
    store::set_up(database).await?;
    let zone = &options.source_timezone;
    let (history, months) = History::open(&options.source, zone, database).await?;
    tracing::info!(
        months = months.len(),
        seconds = started.elapsed().as_secs_f64(),
        "read the months the batches start in"
    );
    let mut load = BulkLoad::begin(database, &months).await?;
    let mapped = match history.read(zone, &mut load).await {
        Ok(mapped) => mapped,
        Err(error) => {
            load.abandon().await;
            return Err(error);
        }
    };
    let invalid = mapped
        .problems
        .iter()
        .map(|problem| problem.row_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    tracing::info!(
        rows = mapped.rows_read,
        seconds = started.elapsed().as_secs_f64(),
        "read and checked the legacy history"
    );

    let outcome = load
        .finish(|outcome| {
            !options.dry_run
                && invalid == 0
                && (options.on_conflict == OnConflict::Skip || outcome.conflicts.is_empty())
        })
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Report {
        path: options.source.shown(),
        dry_run: options.dry_run,
        on_conflict: options.on_conflict,
        rows_read: mapped.rows_read,
        imported: outcome.imported,
        already_present: outcome.already_present,
        changed_since_import: outcome.changed_since_import,
        hint: zone_hint(&outcome, zone),
        conflicts: outcome.conflicts.iter().map(ToString::to_string).collect(),
        invalid,
        problems: mapped.problems,
        raw_json_kept: mapped.raw_json_kept,
        ambiguous_times: mapped.ambiguous_times,
        skipped_times: mapped.skipped_times,
        committed: outcome.committed,
        elapsed_seconds: elapsed,
        rows_per_second: if elapsed > 0.0 {
            mapped.rows_read as f64 / elapsed
        } else {
            0.0
        },
    })
}

/// A legacy history open for reading, in one snapshot: read twice, first
/// for the months its batches start in, then for the batches.
enum History {
    Sqlite(legacy::File),
    Postgres {
        client: tokio_postgres::Client,
        shown: String,
    },
}

impl History {
    /// Opens the history and reads the months its batches start in.
    async fn open(
        source: &Source,
        zone: &TimeZone,
        database: &DatabaseConfig,
    ) -> Result<(Self, Vec<Timestamp>), ImportError> {
        match source {
            Source::Sqlite(path) => {
                let (path, zone) = (path.to_owned(), zone.clone());
                tokio::task::spawn_blocking(move || {
                    let file = legacy::File::open(&path)?;
                    let months = file.start_months(&zone)?;
                    Ok((Self::Sqlite(file), months.into_vec()))
                })
                .await?
            }
            Source::Postgres { config, shown } => {
                let client = connect_postgres(config, shown, database).await?;
                let months = postgres_start_months(&client, shown, zone).await?;
                let history = Self::Postgres {
                    client,
                    shown: shown.clone(),
                };
                Ok((history, months))
            }
        }
    }

    /// Reads and checks every batch into the load.
    async fn read(
        self,
        zone: &TimeZone,
        load: &mut BulkLoad,
    ) -> Result<legacy::Mapped, ImportError> {
        match self {
            Self::Sqlite(file) => read_sqlite(file, zone, load).await,
            Self::Postgres { client, shown } => read_postgres(&client, &shown, zone, load).await,
        }
    }
}

/// A failure reading the dashboard's PostgreSQL, named without its password.
fn source_failed(shown: &str) -> impl Fn(tokio_postgres::Error) -> ReadError + Copy + '_ {
    move |source| ReadError::Postgres {
        path: shown.to_owned(),
        source,
    }
}

/// Connects to the dashboard's PostgreSQL and opens the read-only snapshot
/// both passes read, if the history is there.
async fn connect_postgres(
    config: &tokio_postgres::Config,
    shown: &str,
    database: &DatabaseConfig,
) -> Result<tokio_postgres::Client, ImportError> {
    let failed = source_failed(shown);
    let timeout = database.startup_timeout.max(database.timeout);
    let (client, connection) = tokio::time::timeout(timeout, config.connect(store::connector()?))
        .await
        .map_err(|_| ReadError::Unreachable {
            path: shown.to_owned(),
            timeout,
        })?
        .map_err(failed)?;
    tokio::spawn(connection);
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(failed)?;
    let has_table: bool = client
        .query_one(legacy::HAS_TABLE_POSTGRES, &[])
        .await
        .map_err(failed)?
        .get(0);
    if !has_table {
        return Err(ReadError::NoHistoryTable {
            path: shown.to_owned(),
        }
        .into());
    }
    Ok(client)
}

/// The months the batches of the dashboard's PostgreSQL start in.
async fn postgres_start_months(
    client: &tokio_postgres::Client,
    shown: &str,
    zone: &TimeZone,
) -> Result<Vec<Timestamp>, ImportError> {
    let failed = source_failed(shown);
    let starts = client
        .query_raw(legacy::SELECT_STARTS_POSTGRES, std::iter::empty::<i64>())
        .await
        .map_err(failed)?;
    futures_util::pin_mut!(starts);
    let mut months = legacy::StartMonths::default();
    while let Some(row) = starts.try_next().await.map_err(failed)? {
        months.add(row.get::<_, Option<&str>>(0).into(), zone);
    }
    Ok(months.into_vec())
}

/// Reads the file and encodes its batches on a thread of its own, the load
/// staging what has been read meanwhile.
async fn read_sqlite(
    file: legacy::File,
    zone: &TimeZone,
    load: &mut BulkLoad,
) -> Result<legacy::Mapped, ImportError> {
    let (sender, mut chunks) = tokio::sync::mpsc::channel(READ_AHEAD);
    let reader = {
        let zone = zone.clone();
        tokio::task::spawn_blocking(move || {
            let mut rows = StagedRows::default();
            let mut encoded = Ok(());
            let mapped = file.read(&zone, |batch| {
                encoded = rows.push(&batch);
                encoded.is_ok()
                    && rows
                        .full_chunk()
                        .is_none_or(|chunk| sender.blocking_send(chunk).is_ok())
            })?;
            encoded?;
            // Unsent only if the load has stopped listening, which it reports.
            let _ = sender.blocking_send(rows.take());
            Ok::<_, ImportError>(mapped)
        })
    };
    while let Some(chunk) = chunks.recv().await {
        if let Err(error) = load.stage(chunk).await {
            // Stops the reader at its next chunk.
            drop(chunks);
            return Err(error.into());
        }
    }
    reader.await?
}

/// Streams the table from the dashboard's PostgreSQL into the load, in the
/// read-only snapshot the months were read in.
async fn read_postgres(
    client: &tokio_postgres::Client,
    shown: &str,
    zone: &TimeZone,
    load: &mut BulkLoad,
) -> Result<legacy::Mapped, ImportError> {
    let failed = source_failed(shown);
    // Asked first: a second query while the rows stream in would wait
    // behind rows nobody reads.
    let ids_unique = client
        .query_one(legacy::IDS_UNIQUE_POSTGRES, &[])
        .await
        .map_err(failed)?
        .get(0);
    let rows = client
        .query_raw(legacy::SELECT_POSTGRES, std::iter::empty::<i64>())
        .await
        .map_err(failed)?;
    futures_util::pin_mut!(rows);
    let mut reader = legacy::Reader::new(zone, ids_unique);
    let mut staged = StagedRows::default();
    while let Some(row) = rows.try_next().await.map_err(failed)? {
        let texts: Vec<Option<&str>> = (1..legacy::COLUMNS).map(|i| row.get(i)).collect();
        let mut cells = [legacy::Cell::Null; legacy::COLUMNS];
        cells[0] = legacy::Cell::Integer(row.get(0));
        for (cell, text) in cells[1..].iter_mut().zip(&texts) {
            *cell = (*text).into();
        }
        if let Some(batch) = reader.row(&cells) {
            staged.push(&batch)?;
            if let Some(chunk) = staged.full_chunk() {
                load.stage(chunk).await?;
            }
        }
    }
    load.stage(staged.take()).await?;
    Ok(reader.mapped)
}

/// Says that `--source-timezone` is probably wrong when most conflicts differ
/// from the stored batches only by whole hours in their times.
fn zone_hint(outcome: &LoadOutcome, zone: &TimeZone) -> Option<String> {
    let conflicts = outcome.conflicts.len() as u64;
    (conflicts > 0 && outcome.conflicts_shifted_by_hours * 2 > conflicts).then(|| {
        format!(
            "{} of {conflicts} conflicts differ from the stored batches only by whole hours in \
             their times: --source-timezone ({}) is probably not the zone the stored batches \
             were imported with, or the file was written in another zone",
            outcome.conflicts_shifted_by_hours,
            zone.iana_name().unwrap_or("a fixed offset"),
        )
    })
}
