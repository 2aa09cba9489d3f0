//! `import-sqlite`: copies the legacy dashboard's SQLite history into
//! PostgreSQL. Every row is read and checked before anything is written;
//! then all of it is written in one transaction, so a file either imports
//! completely or not at all, and importing it again adds nothing.
//!
//! SQLite stays inside this module: the service has no SQLite code path.

mod legacy;

use std::{path::PathBuf, time::Instant};

use jiff::tz::TimeZone;
use serde::Serialize;

use crate::config::DatabaseConfig;
use crate::store::{self, BulkLoad, LoadOutcome, MigrateError, OnConflict, StoreError};

pub use legacy::{ReadError, parse_legacy_time};

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub path: PathBuf,
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
    pub message: String,
}

/// What an import found and did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub path: String,
    pub dry_run: bool,
    pub rows_read: u64,
    /// Written, or on a dry run, that would be.
    pub imported: u64,
    pub already_present: u64,
    pub conflicts: Vec<String>,
    /// Rows that cannot be imported (each may have several problems).
    pub invalid: u64,
    pub problems: Vec<Problem>,
    /// JSON columns holding text that is not JSON, kept verbatim.
    pub raw_json_kept: u64,
    pub committed: bool,
    pub elapsed_seconds: f64,
    pub rows_per_second: f64,
}

impl Report {
    /// Whether the file's history is now (or, on a dry run, would be) in
    /// PostgreSQL.
    pub fn succeeded(&self) -> bool {
        self.invalid == 0 && (self.committed || (self.dry_run && self.conflicts.is_empty()))
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
                if self.dry_run {
                    "would import"
                } else {
                    "imported"
                },
                self.imported,
            ),
            ("already present", self.already_present),
            ("conflicts", self.conflicts.len() as u64),
            ("invalid rows", self.invalid),
            ("raw JSON kept", self.raw_json_kept),
        ] {
            text.push_str(&format!("  {label:<16} {value}\n"));
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
        if !self.succeeded() {
            text.push_str("nothing was imported");
            if !self.conflicts.is_empty() {
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

/// Batches read ahead of the database: enough to keep both busy.
const READ_AHEAD: usize = 1_024;

/// Migrates, then reads and checks the whole file while streaming it into a
/// staging table, and writes it in one transaction unless a row is invalid.
pub async fn import_sqlite(
    options: &ImportOptions,
    database: &DatabaseConfig,
) -> Result<Report, ImportError> {
    let started = Instant::now();
    store::migrate(&database.pg, database.timeout).await?;
    let mut load = BulkLoad::begin(database).await?;

    let (sender, mut batches) = tokio::sync::mpsc::channel(READ_AHEAD);
    let reader = {
        let (path, zone) = (options.path.clone(), options.source_timezone.clone());
        tokio::task::spawn_blocking(move || {
            legacy::read(&path, &zone, |batch| sender.blocking_send(batch).is_ok())
        })
    };
    while let Some(batch) = batches.recv().await {
        if let Err(error) = load.write(&batch).await {
            // Stops the reader at its next batch.
            drop(batches);
            load.abandon().await;
            return Err(error.into());
        }
    }
    let mapped = reader.await??;
    tracing::info!(
        rows = mapped.rows_read,
        seconds = started.elapsed().as_secs_f64(),
        "read and checked the legacy file"
    );

    let invalid = mapped
        .problems
        .iter()
        .map(|problem| problem.row_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let outcome = if invalid == 0 {
        load.finish(options.on_conflict, options.dry_run).await?
    } else {
        load.abandon().await;
        LoadOutcome::default()
    };
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Report {
        path: options.path.display().to_string(),
        dry_run: options.dry_run,
        rows_read: mapped.rows_read,
        imported: outcome.imported,
        already_present: outcome.already_present,
        conflicts: outcome.conflicts.iter().map(ToString::to_string).collect(),
        invalid,
        problems: mapped.problems,
        raw_json_kept: mapped.raw_json_kept,
        committed: outcome.committed,
        elapsed_seconds: elapsed,
        rows_per_second: if elapsed > 0.0 {
            mapped.rows_read as f64 / elapsed
        } else {
            0.0
        },
    })
}
