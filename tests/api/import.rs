//! import-sqlite: legacy files in, batches out through the gRPC API.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use batch_history::import::{ImportOptions, Report, Source, import_history, parse_legacy_time};
use batch_history::proto::{
    CreateBatchRequest, DeleteBatchRequest, GetBatchRequest, GetBatchStatsRequest,
    ListBatchesRequest, WatchBatchesRequest, batch::State, batch_event::Kind as EventKind,
};
use batch_history::store::OnConflict;
use jiff::tz::TimeZone;
use prost_types::value::Kind;
use serde_json::Value;

use crate::support::{TestApp, TestDb, column, rand_u64, timestamp};

/// The legacy schema, as flask-sqlalchemy created it (without the unique
/// index, so that files with duplicate ids can be built).
const SCHEMA: &str = "CREATE TABLE batch_history (
    id INTEGER NOT NULL PRIMARY KEY, batch_id VARCHAR(100) NOT NULL, started_at VARCHAR(50) NOT NULL,
    completed_at VARCHAR(50), model VARCHAR(100), topic_filter VARCHAR(200),
    difficulty_filter VARCHAR(50), reasoning_instruction TEXT, target_count INTEGER,
    samples_generated INTEGER, total_tokens INTEGER, status VARCHAR(20), errors TEXT,
    model_switches TEXT)";

/// (id, batch_id, started_at, completed_at, status, errors, model_switches).
type LegacyRow<'a> = (
    i64,
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
);

pub(crate) struct TempFile(pub(crate) PathBuf);

impl TempFile {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("bh-legacy-{:016x}.db", rand_u64())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A legacy file with these rows: (id, batch_id, started_at, completed_at,
/// status, errors, model_switches); the other columns are fixed or NULL.
fn legacy_file(rows: &[LegacyRow]) -> TempFile {
    let file = TempFile::new();
    let db = rusqlite::Connection::open(&file.0).unwrap();
    db.execute_batch(SCHEMA).unwrap();
    for (id, batch_id, started, completed, status, errors, switches) in rows {
        db.execute(
            "INSERT INTO batch_history VALUES (?1, ?2, ?3, ?4, 'llama-3.3-70b', 'Évidence — hearsay', NULL,
                                               NULL, NULL, 12, NULL, ?5, ?6, ?7)",
            rusqlite::params![id, batch_id, started, completed, status, errors, switches],
        )
        .unwrap();
    }
    file
}

/// A generated file and the generator's summary.
pub(crate) fn generated_file(rows: u32, seed: u32) -> (TempFile, Value) {
    run_generator("make_legacy_db.py", rows, seed)
}

/// A file made by `script` in tests/legacy, and the JSON it prints.
fn run_generator(script: &str, rows: u32, seed: u32) -> (TempFile, Value) {
    let file = TempFile::new();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/legacy")
        .join(script);
    let output = Command::new("python3")
        .arg(script)
        .arg(&file.0)
        .args(["--rows", &rows.to_string(), "--seed", &seed.to_string()])
        .output()
        .expect("python3 runs the legacy generator");
    assert!(output.status.success(), "{output:?}");
    (file, serde_json::from_slice(&output.stdout).unwrap())
}

async fn import(app: &TestApp, file: &TempFile, on_conflict: OnConflict, dry_run: bool) -> Report {
    import_with(app, file, TimeZone::UTC, on_conflict, dry_run).await
}

async fn import_with(
    app: &TestApp,
    file: &TempFile,
    zone: TimeZone,
    on_conflict: OnConflict,
    dry_run: bool,
) -> Report {
    let options = ImportOptions {
        source: Source::Sqlite(file.0.clone()),
        source_timezone: zone,
        on_conflict,
        dry_run,
    };
    import_history(&options, &app.db.database_config(Duration::from_secs(10)))
        .await
        .expect("the import ran")
}

async fn stored_count(app: &TestApp) -> i64 {
    app.db.count_rows("batches").await
}

async fn get(app: &TestApp, batch_id: &str) -> batch_history::proto::Batch {
    app.client
        .clone()
        .get_batch(GetBatchRequest {
            batch_id: batch_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn micros(time: &Option<prost_types::Timestamp>) -> Option<i64> {
    time.as_ref()
        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1_000))
}

#[tokio::test]
async fn generated_files_round_trip_field_by_field() {
    let app = TestApp::spawn().await;
    for (rows, seed) in [(300, 1), (700, 2)] {
        let (file, summary) = generated_file(rows, seed);
        let report = import(&app, &file, OnConflict::Fail, false).await;
        assert!(report.succeeded(), "{}", report.to_text());
        assert_eq!(report.rows_read, u64::from(rows));
        assert_eq!(report.imported, u64::from(rows));

        let legacy = rusqlite::Connection::open(&file.0).unwrap();
        let mut statement = legacy
            .prepare(
                "SELECT batch_id, started_at, completed_at, model, topic_filter, difficulty_filter,
                        reasoning_instruction, target_count, samples_generated, total_tokens, status,
                        errors, model_switches FROM batch_history",
            )
            .unwrap();
        let mut rows_seen = 0;
        let (mut samples, mut tokens) = (0_i64, 0_i64);
        let mut by_status = std::collections::BTreeMap::<String, u64>::new();
        let mut raw_columns = 0;
        let mut legacy_rows = statement.query([]).unwrap();
        while let Some(row) = legacy_rows.next().unwrap() {
            let batch_id: String = row.get(0).unwrap();
            let batch = get(&app, &batch_id).await;
            let time = |text: Option<String>| {
                text.map(|t| {
                    parse_legacy_time(&t, &TimeZone::UTC)
                        .unwrap()
                        .nearest_to(None)
                        .as_microsecond()
                })
            };
            assert_eq!(micros(&batch.start_time), time(row.get(1).unwrap()));
            assert_eq!(micros(&batch.end_time), time(row.get(2).unwrap()));
            let model = row.get::<_, Option<String>>(3).unwrap().unwrap_or_default();
            assert_eq!(batch.current_model, model);
            assert_eq!(
                batch.topic_filter,
                row.get::<_, Option<String>>(4).unwrap().unwrap_or_default()
            );
            assert_eq!(
                batch.difficulty_filter,
                row.get::<_, Option<String>>(5).unwrap().unwrap_or_default()
            );
            assert_eq!(
                batch.reasoning_instruction,
                row.get::<_, Option<String>>(6).unwrap().unwrap_or_default()
            );
            assert_eq!(
                i64::from(batch.target_count),
                row.get::<_, Option<i64>>(7).unwrap().unwrap_or(0)
            );
            assert_eq!(batch.samples_generated, row.get::<_, i64>(8).unwrap());
            assert_eq!(batch.total_tokens, row.get::<_, i64>(9).unwrap());
            let status: String = row.get(10).unwrap();
            assert_eq!(batch.state().as_str_name(), status.to_uppercase());

            let errors: Option<String> = row.get(11).unwrap();
            match errors.as_deref().map(serde_json::from_str::<Value>) {
                None | Some(Ok(Value::Null)) => assert!(batch.errors.is_empty()),
                Some(Ok(Value::Array(items))) => {
                    assert_eq!(batch.errors.len(), items.len());
                    assert_eq!(batch.error_count, items.len() as i64);
                    for (stored, item) in batch.errors.iter().zip(&items) {
                        assert_eq!(stored.message, item["error"].as_str().unwrap());
                        let details = &stored.details.as_ref().unwrap().fields;
                        for (key, value) in item.as_object().unwrap() {
                            match key.as_str() {
                                "error" => {}
                                "timestamp" => assert_eq!(
                                    micros(&stored.time),
                                    time(value.as_str().map(String::from))
                                ),
                                _ => assert!(details.contains_key(key), "{key} kept in details"),
                            }
                        }
                    }
                }
                Some(Ok(other)) => panic!("unexpected legacy errors {other}"),
                Some(Err(_)) => {
                    raw_columns += 1;
                    assert_eq!(batch.errors.len(), 1);
                    assert_eq!(&batch.errors[0].message, errors.as_ref().unwrap());
                }
            }
            let switches: Option<String> = row.get(12).unwrap();
            let switches: Vec<Value> = switches
                .map(|s| serde_json::from_str(&s).unwrap())
                .unwrap_or_default();
            assert_eq!(batch.model_switches.len(), switches.len());
            // The batch started with the first switch's from model.
            let first_from = switches.first().map(|item| item["from"].as_str().unwrap());
            assert_eq!(batch.model, first_from.unwrap_or(&model));
            for (stored, item) in batch.model_switches.iter().zip(&switches) {
                assert_eq!(stored.from_model, item["from"].as_str().unwrap());
                assert_eq!(stored.to_model, item["to"].as_str().unwrap());
                assert_eq!(stored.provider, item["provider"].as_str().unwrap());
                assert_eq!(stored.reason, item["reason"].as_str().unwrap());
                assert_eq!(stored.at_sample, item["at_sample"].as_i64().unwrap());
            }

            rows_seen += 1;
            samples += batch.samples_generated;
            tokens += batch.total_tokens;
            *by_status.entry(status).or_default() += 1;
        }
        assert_eq!(rows_seen, summary["rows"].as_u64().unwrap());
        assert_eq!(samples, summary["samples_generated"].as_i64().unwrap());
        assert_eq!(tokens, summary["total_tokens"].as_i64().unwrap());
        for (status, count) in by_status {
            assert_eq!(
                summary["by_status"][&status].as_u64(),
                Some(count),
                "{status}"
            );
        }
        assert_eq!(report.raw_json_kept, raw_columns);
    }
}

#[tokio::test]
async fn legacy_shapes_map_as_documented() {
    let app = TestApp::spawn().await;
    let file = legacy_file(&[
        (
            1,
            "batch_1_aaaaaaaa",
            "2025-06-01T09:00:00.250000",
            Some("2025-06-01 10:00:00"),
            " Completed ",
            None,
            Some("[]"),
        ),
        (
            2,
            "batch_2_bbbbbbbb",
            "2025-06-01 09:00:00",
            None,
            "RUNNING",
            Some("null"),
            Some("null"),
        ),
        (
            3,
            "batch_3_cccccccc",
            "2025-06-01T09:00:00Z",
            Some("2025-06-01T11:00:00+01:00"),
            "stopped",
            Some(""),
            None,
        ),
        (
            4,
            "batch_4_dddddddd",
            "2025-06-01T09:00:00",
            Some("2025-06-01T09:30:00"),
            "completed",
            Some("Traceback (most recent call last): not json"),
            Some("not json either"),
        ),
        (
            5,
            "batch_5_eeeeeeee",
            "2025-06-01T09:00:00",
            Some("2025-06-01T09:30:00"),
            "completed",
            Some(
                r#"[{"error": "All providers exhausted", "provider_failures": {"groq": 2}, "timestamp": "2025-06-01T09:10:00"}, {"sample": 12, "error": "429"}, "bare string"]"#,
            ),
            Some(
                r#"[{"from": "a", "to": "b", "provider": "groq", "reason": "gone", "at_sample": 7, "extra": 1}]"#,
            ),
        ),
    ]);
    let mut other = rusqlite::Connection::open(&file.0).unwrap();
    other
        .execute_batch(
            "CREATE TABLE samples (id INTEGER, body TEXT); INSERT INTO samples VALUES (1, 'x');",
        )
        .unwrap();
    drop(other.transaction().unwrap());

    let report = import(&app, &file, OnConflict::Fail, false).await;
    assert!(report.succeeded(), "{}", report.to_text());
    assert_eq!(
        (report.rows_read, report.imported, report.raw_json_kept),
        (5, 5, 2)
    );

    let first = get(&app, "batch_1_aaaaaaaa").await;
    assert_eq!(first.state(), State::Completed);
    assert_eq!(micros(&first.start_time), Some(1_748_768_400_250_000));
    assert_eq!(micros(&first.end_time), Some(1_748_772_000_000_000));
    assert_eq!(first.model, "llama-3.3-70b");
    assert_eq!(first.topic_filter, "Évidence — hearsay");
    assert_eq!(
        (
            first.target_count,
            first.samples_generated,
            first.total_tokens
        ),
        (0, 12, 0)
    );
    assert!(first.errors.is_empty() && first.model_switches.is_empty());
    assert_eq!(first.provider, "");

    let running = get(&app, "batch_2_bbbbbbbb").await;
    assert_eq!(running.state(), State::Running);
    assert!(running.end_time.is_none() && running.errors.is_empty());

    let stopped = get(&app, "batch_3_cccccccc").await;
    assert_eq!(stopped.state(), State::Stopped);
    assert_eq!(
        micros(&stopped.end_time),
        Some(1_748_768_400_000_000 + 3_600_000_000)
    );

    let raw = get(&app, "batch_4_dddddddd").await;
    assert_eq!(raw.errors.len(), 1);
    assert_eq!(
        raw.errors[0].message,
        "Traceback (most recent call last): not json"
    );
    assert_eq!(raw.model_switches[0].reason, "not json either");

    let typed = get(&app, "batch_5_eeeeeeee").await;
    assert_eq!(typed.error_count, 3);
    assert_eq!(typed.errors[0].message, "All providers exhausted");
    assert_eq!(micros(&typed.errors[0].time), Some(1_748_769_000_000_000));
    let details = &typed.errors[0].details.as_ref().unwrap().fields;
    assert!(matches!(
        details["provider_failures"].kind,
        Some(Kind::StructValue(_))
    ));
    assert!(!details.contains_key("timestamp"));
    assert_eq!(
        typed.errors[1].details.as_ref().unwrap().fields["sample"].kind,
        Some(Kind::NumberValue(12.0))
    );
    // A bare string entry becomes the message; an entry without a time has none.
    assert_eq!(typed.errors[2].message, "bare string");
    assert_eq!(typed.errors[1].time, None);
    assert_eq!(typed.errors[2].time, None);
    let switch = &typed.model_switches[0];
    assert_eq!(
        (
            switch.from_model.as_str(),
            switch.to_model.as_str(),
            switch.at_sample
        ),
        ("a", "b", 7)
    );
    assert_eq!(
        switch.details.as_ref().unwrap().fields["extra"].kind,
        Some(Kind::NumberValue(1.0))
    );
}

#[tokio::test]
async fn naive_times_are_read_in_the_source_time_zone() {
    let app = TestApp::spawn().await;
    let file = legacy_file(&[(1, "b1", "2025-06-01T09:00:00", None, "running", None, None)]);
    let zone = TimeZone::get("Europe/Paris").unwrap();
    let report = import_with(&app, &file, zone, OnConflict::Fail, false).await;
    assert!(report.succeeded());
    // 09:00 in Paris in June is 07:00 UTC.
    assert_eq!(
        micros(&get(&app, "b1").await.start_time),
        Some(1_748_761_200_000_000)
    );
}

#[tokio::test]
async fn a_file_with_any_bad_row_imports_nothing_and_names_every_problem() {
    let app = TestApp::spawn().await;
    let file = legacy_file(&[
        (
            1,
            "fine",
            "2025-06-01T09:00:00",
            None,
            "running",
            None,
            None,
        ),
        (
            2,
            "bad id!",
            "2025-06-01T09:00:00",
            None,
            "running",
            None,
            None,
        ),
        (3, "b3", "yesterday", None, "completed", None, None),
        (4, "b4", "2025-06-01T09:00:00", None, "paused", None, None),
        (
            5,
            "fine",
            "2025-06-01T09:00:00",
            None,
            "running",
            None,
            None,
        ),
        (
            6,
            "b6",
            "2025-06-01T09:00:00",
            Some("2025-05-01T09:00:00"),
            "completed",
            None,
            None,
        ),
    ]);
    let report = import(&app, &file, OnConflict::Fail, false).await;
    assert!(!report.succeeded() && !report.committed);
    // The one valid row would import; every row is counted once.
    assert_eq!(
        (report.rows_read, report.imported, report.invalid),
        (6, 1, 5)
    );
    let problems: Vec<(i64, &str)> = report
        .problems
        .iter()
        .map(|p| (p.row_id, p.column))
        .collect();
    assert_eq!(
        problems,
        [
            (2, "batch_id"),
            (3, "started_at"),
            (4, "status"),
            (5, "batch_id"),
            (6, "completed_at")
        ]
    );
    let text = report.to_text();
    assert!(text.contains("row id 4 column status"), "{text}");
    assert!(text.contains("nothing was imported"), "{text}");
    assert_eq!(stored_count(&app).await, 0);
}

#[tokio::test]
async fn an_id_given_twice_is_found_where_the_files_own_index_lets_it_through() {
    let app = TestApp::spawn().await;
    // A unique index on more than the id; an untyped id column, where 5 and
    // '5' are different values that are one id.
    for (schema, index, second_id) in [
        (
            SCHEMA.to_owned(),
            "CREATE UNIQUE INDEX ix ON batch_history (batch_id, started_at)",
            "'twice'",
        ),
        (
            SCHEMA.replace("batch_id VARCHAR(100)", "batch_id"),
            "CREATE UNIQUE INDEX ix ON batch_history (batch_id)",
            "5",
        ),
    ] {
        let file = TempFile::new();
        let first_id = if second_id == "5" { "'5'" } else { second_id };
        rusqlite::Connection::open(&file.0)
            .unwrap()
            .execute_batch(&format!(
                "{schema}; {index};
                 INSERT INTO batch_history (id, batch_id, started_at, status) VALUES
                     (1, {first_id}, '2025-06-01T09:00:00', 'running'),
                     (2, {second_id}, '2025-06-02T09:00:00', 'running')"
            ))
            .unwrap();
        let report = import(&app, &file, OnConflict::Fail, false).await;
        let text = report.to_text();
        let expected = format!(
            "row id 2 column batch_id: {} appears more than once",
            second_id.trim_matches('\'')
        );
        assert!(text.contains(&expected), "{schema}\n{text}");
        assert_eq!((report.invalid, report.committed), (1, false), "{text}");
    }
    assert_eq!(stored_count(&app).await, 0);
}

/// The same for a dashboard's PostgreSQL table: only a unique index on the
/// id alone, over every row, keeps ids distinct for the import.
#[tokio::test]
async fn an_id_given_twice_is_found_in_a_postgresql_source_whose_index_lets_it_through() {
    let app = TestApp::spawn().await;
    for index in [
        "",
        "CREATE UNIQUE INDEX ix ON batch_history (batch_id, started_at)",
        "CREATE UNIQUE INDEX ix ON batch_history (batch_id) WHERE status = 'completed'",
    ] {
        let source = TestDb::create().await;
        source
            .client()
            .await
            .batch_execute(&format!(
                "{SCHEMA}; {index};
                 INSERT INTO batch_history (id, batch_id, started_at, status) VALUES
                     (1, 'twice', '2025-06-01T09:00:00', 'running'),
                     (2, 'twice', '2025-06-02T09:00:00', 'running')"
            ))
            .await
            .unwrap();
        let options = ImportOptions {
            source: Source::Postgres {
                config: Box::new(source.config.clone()),
                shown: source.name.clone(),
            },
            source_timezone: TimeZone::UTC,
            on_conflict: OnConflict::Fail,
            dry_run: false,
        };
        let report = import_history(&options, &app.db.database_config(Duration::from_secs(10)))
            .await
            .expect("the import ran");
        let text = report.to_text();
        assert!(
            text.contains("row id 2 column batch_id: twice appears more than once"),
            "{index}\n{text}"
        );
        assert_eq!((report.invalid, report.committed), (1, false), "{text}");
    }
    assert_eq!(stored_count(&app).await, 0);
}

#[tokio::test]
async fn a_file_without_history_is_a_clear_error() {
    let app = TestApp::spawn().await;
    let file = TempFile::new();
    rusqlite::Connection::open(&file.0)
        .unwrap()
        .execute_batch("CREATE TABLE samples (id INTEGER)")
        .unwrap();
    let options = ImportOptions {
        source: Source::Sqlite(file.0.clone()),
        source_timezone: TimeZone::UTC,
        on_conflict: OnConflict::Fail,
        dry_run: false,
    };
    let error = import_history(&options, &app.db.database_config(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("no batch_history table"),
        "{error}"
    );
}

/// Every row read is counted exactly once.
fn assert_adds_up(report: &Report) {
    assert_eq!(
        report.rows_read,
        report.imported
            + report.already_present
            + report.changed_since_import
            + report.conflicts.len() as u64
            + report.invalid,
        "{}",
        report.to_text()
    );
}

#[tokio::test]
async fn the_first_import_leaves_its_records_keyed_by_id() {
    // The first import builds the records' key after writing them.
    let app = TestApp::spawn().await;
    let (file, _) = generated_file(150, 5);
    let sql = app.db.client().await;
    let key = async || {
        sql.query_one(
            "SELECT count(*) FROM pg_index
             WHERE indrelid = 'batch_imports'::regclass AND indisprimary AND indisvalid
               AND indkey::text = (SELECT attnum::text FROM pg_attribute
                   WHERE attrelid = 'batch_imports'::regclass AND attname = 'batch_id')",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    import(&app, &file, OnConflict::Fail, true).await;
    assert_eq!(key().await, 1, "a dry run leaves the key");
    assert_eq!(
        import(&app, &file, OnConflict::Fail, false).await.imported,
        150
    );
    assert_eq!(key().await, 1, "the first import leaves the key");
    let again = sql
        .execute(
            "INSERT INTO batch_imports SELECT * FROM batch_imports LIMIT 1",
            &[],
        )
        .await;
    assert!(again.is_err(), "an id is recorded once");
}

#[tokio::test]
async fn importing_again_adds_nothing_and_conflicts_fail_cleanly() {
    let app = TestApp::spawn().await;
    let (file, _) = generated_file(150, 5);
    assert_eq!(
        import(&app, &file, OnConflict::Fail, false).await.imported,
        150
    );

    let again = import(&app, &file, OnConflict::Fail, false).await;
    assert!(again.succeeded());
    assert_eq!((again.imported, again.already_present), (0, 150));
    assert_adds_up(&again);
    assert_eq!(stored_count(&app).await, 150);

    // A file row that differs from what was imported from it; one new row.
    let edited: String = rusqlite::Connection::open(&file.0)
        .unwrap()
        .query_row(
            "UPDATE batch_history SET total_tokens = total_tokens + 1 WHERE id = 7 RETURNING batch_id",
            [],
            |row| row.get(0),
        )
        .unwrap();
    rusqlite::Connection::open(&file.0)
        .unwrap()
        .execute(
            "INSERT INTO batch_history (id, batch_id, started_at, status) VALUES (100000, 'late', '2025-07-01T00:00:00', 'running')",
            [],
        )
        .unwrap();

    let conflicted = import(&app, &file, OnConflict::Fail, false).await;
    assert!(!conflicted.succeeded());
    assert_eq!(conflicted.conflicts, vec![edited.clone()]);
    assert_eq!(conflicted.imported, 1, "would import the new row");
    assert_adds_up(&conflicted);
    assert!(!conflicted.committed);
    assert!(conflicted.to_text().contains("--on-conflict skip"));
    assert!(conflicted.hint.is_none(), "not a time zone shift");
    assert_eq!(stored_count(&app).await, 150, "a conflict writes nothing");

    let skipped = import(&app, &file, OnConflict::Skip, false).await;
    assert!(skipped.succeeded(), "{}", skipped.to_text());
    assert_eq!((skipped.imported, skipped.already_present), (1, 149));
    assert_adds_up(&skipped);
    assert_eq!(stored_count(&app).await, 151);
}

/// A call that registers one of the file's ids after the import sorted
/// the file, and before the import registers it, makes that batch a
/// conflict: the rest imports, and nothing is written twice.
/// Returns once a statement whose text is `LIKE query` waits for a lock.
async fn waits_for_a_lock(db: &tokio_postgres::Client, query: &str) {
    loop {
        let waiting: bool = db
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE $1)",
                &[&query],
            )
            .await
            .unwrap()
            .get(0);
        if waiting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_id_taken_while_importing_is_a_conflict() {
    let app = TestApp::spawn().await;
    let (file, _) = generated_file(40, 11);
    let taken: String = rusqlite::Connection::open(&file.0)
        .unwrap()
        .query_row(
            "SELECT batch_id FROM batch_history WHERE id = 9",
            [],
            |row| row.get(0),
        )
        .unwrap();
    // Uncommitted, so the import's sorting does not see it, and its
    // registering waits for this session to end.
    let rival = app.db.client().await;
    rival
        .batch_execute(&format!(
            "BEGIN; INSERT INTO batch_ids VALUES ('{taken}', '2025-01-01T00:00:00Z')"
        ))
        .await
        .unwrap();
    let watcher = app.db.client().await;
    let commit_once_waited_on = async {
        waits_for_a_lock(&watcher, "INSERT INTO batch_ids%").await;
        rival.batch_execute("COMMIT").await.unwrap();
    };
    let (report, ()) = tokio::join!(
        import(&app, &file, OnConflict::Skip, false),
        commit_once_waited_on
    );

    assert!(report.succeeded(), "{}", report.to_text());
    assert_eq!(report.conflicts, vec![taken.clone()]);
    assert_eq!(report.imported, 39);
    assert_adds_up(&report);
    assert_eq!(stored_count(&app).await, 39);
    assert_eq!(app.db.count_rows("batch_imports").await, 39);
    let client = app.db.client().await;
    let rival_kept: i64 = client
        .query_one(
            "SELECT count(*) FROM batch_ids WHERE batch_id = $1 AND start_time = '2025-01-01T00:00:00Z'",
            &[&taken],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rival_kept, 1, "the rival's registration stands");
}

/// Months the history lacks are loaded apart, without indexes, and moved
/// in whole (migration V14); once in, they must serve as any other month.
#[tokio::test]
async fn months_loaded_whole_serve_as_any_other() {
    let app = TestApp::spawn().await;
    let march_a = (
        1,
        "march-a",
        "2019-03-05T10:00:00",
        Some("2019-03-05T10:30:00"),
        "completed",
        None,
        None,
    );
    let first = legacy_file(&[march_a]);
    assert_eq!(
        import(&app, &first, OnConflict::Fail, false).await.imported,
        1
    );
    // Into the month now there, and into one more the history lacks.
    let second = legacy_file(&[
        march_a,
        (
            2,
            "march-b",
            "2019-03-20T08:00:00",
            Some("2019-03-20T09:00:00"),
            "completed",
            None,
            None,
        ),
        (
            3,
            "may-a",
            "2019-05-01T00:00:00",
            Some("2019-05-01T00:10:00"),
            "stopped",
            None,
            None,
        ),
    ]);
    let report = import(&app, &second, OnConflict::Fail, false).await;
    assert_eq!(
        (report.imported, report.already_present),
        (2, 1),
        "{}",
        report.to_text()
    );

    let db = app.db.client().await;
    let indexes: Vec<i64> = column(
        &db,
        "SELECT count(*) FROM pg_indexes
             WHERE tablename IN ('batches', 'batches_y2019m03', 'batches_y2019m05')
             GROUP BY tablename ORDER BY tablename",
    )
    .await;
    assert!(indexes[0] >= 4, "{indexes:?}");
    assert_eq!(
        indexes, [indexes[0]; 3],
        "every index of the batches, on each month"
    );
    let loading_left: bool = db
        .query_one("SELECT to_regclass('import_months') IS NOT NULL OR to_regclass('import_batches') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!loading_left);
    let bounds_left: Vec<String> = column(
        &db,
        "SELECT conrelid::regclass::text FROM pg_constraint WHERE conname = 'loaded_bounds'",
    )
    .await;
    assert!(
        bounds_left.is_empty(),
        "once attached, a month's bound is its partition bound alone: {bounds_left:?}"
    );

    let mut client = app.client.clone();
    let listed: Vec<String> = client
        .list_batches(ListBatchesRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batches
        .into_iter()
        .map(|batch| batch.batch_id)
        .collect();
    assert_eq!(listed, ["may-a", "march-b"]);
    let stats = client
        .get_batch_stats(GetBatchStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.batch_count, stats.samples_generated), (3, 36));

    // Watchers hear of a write into a month loaded whole: its row triggers
    // came with it. (Nothing there is running: no snapshot comes first.)
    let mut stream = client
        .watch_batches(WatchBatchesRequest {
            started_before: Some(timestamp(1_554_076_800)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    client
        .delete_batch(DeleteBatchRequest {
            batch_id: "march-b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let deleted = tokio::time::timeout(Duration::from_secs(1), stream.message())
        .await
        .expect("an event within a second")
        .unwrap()
        .unwrap();
    assert_eq!(
        (deleted.kind(), deleted.batch.unwrap().batch_id.as_str()),
        (EventKind::Deleted, "march-b")
    );
    let stats = client
        .get_batch_stats(GetBatchStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.batch_count, stats.samples_generated), (2, 24));
}

/// A file row in a month the history lacks is loaded with that month only
/// if it is new: one whose id is stored in another month stays out.
/// What an import's staging connection commits for a month the history
/// lacks (migration V17), before the import's transaction moves it in.
fn staged_month(first: &str) -> String {
    format!(
        "CREATE TABLE import_months (LIKE batches INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
             PARTITION BY RANGE (start_time);
         SELECT batches_add_month('{first}', 'import_months');
         SELECT batches_index_months('import_months')"
    )
}

/// Months an import loads whole are committed, staged, before its
/// transaction moves them in (migration V17). A write into such a month
/// waits for the import and lands in the month it moved in; a month left
/// staged by an import that died goes at the first write that needs it.
#[tokio::test]
async fn a_write_into_a_month_an_import_stages_waits_for_it() {
    let app = TestApp::spawn().await;
    let db = app.db.client().await;
    let importing = app.db.client().await;
    importing
        .batch_execute("BEGIN; LOCK TABLE batches IN SHARE UPDATE EXCLUSIVE MODE")
        .await
        .unwrap();
    db.batch_execute(&staged_month("2019-03-01T00:00:00Z"))
        .await
        .unwrap();
    let create_in = |batch_id: &'static str, start: &str| {
        let mut client = app.client.clone();
        let start = start.parse::<jiff::Timestamp>().unwrap().as_second();
        async move {
            client
                .create_batch(CreateBatchRequest {
                    batch_id: batch_id.into(),
                    batch: Some(batch_history::proto::Batch {
                        start_time: Some(timestamp(start)),
                        ..Default::default()
                    }),
                })
                .await
        }
    };
    let moved_in_once_waited_on = async {
        waits_for_a_lock(&db, "%batches_add_month%").await;
        importing
            .batch_execute(
                "SELECT batches_key_months('import_months');
                 SELECT batches_move_months('import_months');
                 DROP TABLE import_months; COMMIT",
            )
            .await
            .unwrap();
    };
    let (created, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(
            create_in("into-staged", "2019-03-15T00:00:00Z"),
            moved_in_once_waited_on
        )
    })
    .await
    .expect("the write waits for the import to move the month in");
    created.unwrap();
    let in_month: Vec<String> = column(&db, "SELECT batch_id FROM batches_y2019m03").await;
    assert_eq!(in_month, ["into-staged"]);
    let keyed: Vec<String> = column(
        &db,
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'batches_y2019m03'::regclass
             AND contype = 'p'",
    )
    .await;
    assert_eq!(
        keyed,
        ["batches_y2019m03_pkey"],
        "keyed by the index built for it"
    );
    let indexes: Vec<i64> = column(
        &db,
        "SELECT count(*) FROM pg_indexes WHERE tablename IN ('batches', 'batches_y2019m03')
             GROUP BY tablename",
    )
    .await;
    assert_eq!(indexes.len(), 2);
    assert_eq!(indexes[0], indexes[1], "the indexes built, and no others");

    db.batch_execute(&staged_month("2019-04-01T00:00:00Z"))
        .await
        .unwrap();
    create_in("into-left", "2019-04-15T00:00:00Z")
        .await
        .unwrap();
    let in_month: Vec<String> = column(&db, "SELECT batch_id FROM batches_y2019m04").await;
    assert_eq!(in_month, ["into-left"]);
    let staging_left: bool = db
        .query_one("SELECT to_regclass('import_months') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!staging_left);
}

#[tokio::test]
async fn a_conflict_in_a_month_loaded_whole_stays_out_of_it() {
    let app = TestApp::spawn().await;
    let stored = (
        1,
        "moved",
        "2019-03-05T10:00:00",
        Some("2019-03-05T10:30:00"),
        "completed",
        None,
        None,
    );
    assert!(
        import(&app, &legacy_file(&[stored]), OnConflict::Fail, false)
            .await
            .committed
    );
    let file = legacy_file(&[
        (
            1,
            "moved",
            "2019-06-10T10:00:00",
            Some("2019-06-10T10:30:00"),
            "completed",
            None,
            None,
        ),
        (
            2,
            "june-b",
            "2019-06-11T08:00:00",
            None,
            "running",
            None,
            None,
        ),
    ]);
    let report = import(&app, &file, OnConflict::Skip, false).await;
    assert_eq!(
        (report.imported, report.conflicts.as_slice()),
        (1, ["moved".to_owned()].as_slice()),
        "{}",
        report.to_text()
    );
    assert!(report.committed);

    let db = app.db.client().await;
    let june: Vec<String> = column(
        &db,
        "SELECT batch_id FROM batches_y2019m06 ORDER BY batch_id",
    )
    .await;
    assert_eq!(june, ["june-b"]);
    assert_eq!(
        micros(&get(&app, "moved").await.start_time),
        Some(1_551_780_000_000_000),
        "the stored batch stands"
    );
    let stats = app
        .client
        .clone()
        .get_batch_stats(GetBatchStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.batch_count, 2);
}

/// A start time SQLite holds as a number (a hand-made table without column
/// types) is read as the text it stands for, in the months pass as in the
/// rows: its month is made ready like any other.
#[tokio::test]
async fn a_start_time_held_as_a_number_is_imported_into_its_month() {
    let app = TestApp::spawn().await;
    let file = TempFile::new();
    let db = rusqlite::Connection::open(&file.0).unwrap();
    db.execute_batch(
        "CREATE TABLE batch_history (id INTEGER PRIMARY KEY, batch_id, started_at, completed_at,
             model, topic_filter, difficulty_filter, reasoning_instruction, target_count,
             samples_generated, total_tokens, status, errors, model_switches);
         INSERT INTO batch_history (id, batch_id, started_at, status)
             VALUES (1, 'numeric-start', 20190315, 'running');",
    )
    .unwrap();
    let report = import(&app, &file, OnConflict::Fail, false).await;
    assert_eq!(
        (report.imported, report.committed),
        (1, true),
        "{}",
        report.to_text()
    );
    assert_eq!(
        micros(&get(&app, "numeric-start").await.start_time),
        Some(1_552_608_000_000_000)
    );
}

#[tokio::test]
async fn reimporting_after_the_service_changed_imported_batches_is_harmless() {
    let app = TestApp::spawn().await;
    let (file, summary) = generated_file(200, 6);
    let first = import(&app, &file, OnConflict::Fail, false).await;
    assert_eq!(first.imported, 200);
    let running = summary["by_status"]["running"].as_u64().unwrap();
    assert!(running >= 2, "{summary}");

    // Progress on one legacy running batch, a finish of another, then the
    // stale sweep stops the rest (imported running rows were last updated
    // when they started, months ago).
    let mut client = app.client.clone();
    let running_batches = client
        .list_batches(ListBatchesRequest {
            states: vec![State::Running as i32],
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batches;
    assert_eq!(running_batches.len() as u64, running);
    client
        .record_progress(batch_history::proto::RecordProgressRequest {
            batch_id: running_batches[0].batch_id.clone(),
            samples_delta: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .finish_batch(batch_history::proto::FinishBatchRequest {
            batch_id: running_batches[1].batch_id.clone(),
            state: State::Completed as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let swept = client
        .sweep_stale_batches(batch_history::proto::SweepStaleBatchesRequest {
            stale_after: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(swept.stopped_count as u64, running - 2);
    // The sweep says how long the batch was really idle, not only the threshold.
    let reason = &swept.stopped[0].errors.last().unwrap().message;
    assert!(
        reason.contains("no update for") && reason.contains("days"),
        "{reason}"
    );
    assert!(reason.contains("threshold of 01:00:00"), "{reason}");
    let deleted = &running_batches[0].batch_id;
    client
        .delete_batch(batch_history::proto::DeleteBatchRequest {
            batch_id: deleted.clone(),
            force: true,
        })
        .await
        .unwrap();

    let again = import(&app, &file, OnConflict::Fail, false).await;
    assert!(again.succeeded(), "{}", again.to_text());
    assert_eq!(
        (
            again.imported,
            again.conflicts.len(),
            again.changed_since_import
        ),
        (0, 0, running)
    );
    assert_adds_up(&again);
    assert!(
        client
            .get_batch(GetBatchRequest {
                batch_id: deleted.clone()
            })
            .await
            .is_err(),
        "a batch deleted since its import stays deleted"
    );
}

#[tokio::test]
async fn records_of_earlier_imports_still_tell_present_changed_and_conflicting_batches_apart() {
    let app = TestApp::spawn().await;
    let (file, _) = generated_file(50, 13);
    assert!(import(&app, &file, OnConflict::Fail, false).await.committed);
    let db = app.db.client().await;
    let lengths: Vec<i32> = column(
        &db,
        "SELECT DISTINCT length(content_digest) FROM batch_imports",
    )
    .await;
    assert_eq!(lengths, [16]);
    // The records as imports before migration V15 wrote them.
    db.batch_execute(
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO';
         UPDATE batch_imports i SET content_digest = md5((b.state, b.provider, b.model,
             b.current_model, b.topic_filter, b.difficulty_filter, b.reasoning_instruction,
             b.target_count, b.samples_generated, b.total_tokens, b.errors, b.error_count,
             b.model_switches, b.metadata, b.start_time, b.end_time)::text)
         FROM batches b WHERE b.batch_id = i.batch_id",
    )
    .await
    .unwrap();

    let legacy = rusqlite::Connection::open(&file.0).unwrap();
    let edited: String = legacy
        .query_row(
            "UPDATE batch_history SET total_tokens = total_tokens + 1 WHERE id = 3 RETURNING batch_id",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let deleted: String = legacy
        .query_row(
            "SELECT batch_id FROM batch_history WHERE id = 5",
            [],
            |row| row.get(0),
        )
        .unwrap();
    app.client
        .clone()
        .delete_batch(DeleteBatchRequest {
            batch_id: deleted,
            force: true,
        })
        .await
        .unwrap();

    let again = import(&app, &file, OnConflict::Fail, false).await;
    assert_eq!(
        (
            again.already_present,
            again.changed_since_import,
            again.conflicts.clone()
        ),
        (48, 1, vec![edited]),
        "{}",
        again.to_text()
    );
    assert_adds_up(&again);
}

#[tokio::test]
async fn conflicts_shifted_by_whole_hours_point_at_the_source_time_zone() {
    let app = TestApp::spawn().await;
    let (file, _) = generated_file(60, 8);
    assert!(import(&app, &file, OnConflict::Fail, false).await.committed);
    let london = TimeZone::get("Europe/London").unwrap();
    let report = import_with(&app, &file, london, OnConflict::Fail, false).await;
    assert!(!report.succeeded());
    assert_adds_up(&report);
    // The generated rows all fall in British summer time: an hour off each.
    assert_eq!(report.conflicts.len(), 60);
    let hint = report.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("--source-timezone"), "{}", report.to_text());
    assert!(report.to_text().contains("hint: "));
}

#[tokio::test]
async fn a_dry_run_reports_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let (file, _) = generated_file(120, 9);
    let report = import(&app, &file, OnConflict::Fail, true).await;
    assert!(report.succeeded() && report.dry_run && !report.committed);
    assert_eq!(report.imported, 120);
    assert!(report.to_text().contains("would import"));
    assert_eq!(stored_count(&app).await, 0);
    let staging_left: bool = app
        .db
        .client()
        .await
        .query_one("SELECT to_regclass('import_months') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!staging_left, "what the import staged, committed, goes too");
}

#[tokio::test]
async fn a_dry_run_exits_as_the_same_run_would() {
    let app = TestApp::spawn().await;
    let (file, _) = generated_file(40, 12);
    assert!(import(&app, &file, OnConflict::Fail, false).await.committed);
    rusqlite::Connection::open(&file.0)
        .unwrap()
        .execute(
            "UPDATE batch_history SET total_tokens = total_tokens + 1 WHERE id = 3",
            [],
        )
        .unwrap();
    for policy in ["fail", "skip"] {
        let run = |dry_run: bool| {
            let mut command = import_command(&app, &file);
            command.args(["--on-conflict", policy]);
            if dry_run {
                command.arg("--dry-run");
            }
            command.output().unwrap().status.code()
        };
        let dry = run(true);
        assert_eq!(
            dry,
            if policy == "skip" { Some(0) } else { Some(1) },
            "{policy}"
        );
        assert_eq!(dry, run(false), "--on-conflict {policy}");
    }
}

#[tokio::test]
async fn the_command_prints_one_json_report() {
    let app = TestApp::spawn().await;
    let (file, _) = generated_file(50, 11);
    let mut command = import_command(&app, &file);
    command.arg("--json");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["rows_read"], 50);
    assert_eq!(report["imported"], 50);
    assert_eq!(report["committed"], true);
    assert_eq!(stored_count(&app).await, 50);
}

/// `batch-history import-sqlite FILE` against the test's database.
fn import_command(app: &TestApp, file: &TempFile) -> Command {
    let url = app.db.url(None);
    let mut command = Command::new(env!("CARGO_BIN_EXE_batch-history"));
    command
        .arg("import-sqlite")
        .arg(&file.0)
        .env("DATABASE_URL", url);
    command
}

/// A file written by the legacy dashboard's own code (tests/legacy), and
/// what the generator says about it: the legacy history and true instants.
fn real_history(rows: u32, seed: u32) -> (TempFile, Value) {
    run_generator("make_real_history.py", rows, seed)
}

/// `instant` as `datetime.isoformat()` wrote it: naive local time in `zone`,
/// with microseconds only when there are some.
fn python_isoformat(instant: &prost_types::Timestamp, zone: &TimeZone) -> String {
    let time = jiff::Timestamp::new(instant.seconds, instant.nanos).unwrap();
    let civil = time.to_zoned(zone.clone()).datetime();
    let text = civil.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    match civil.subsec_nanosecond() / 1_000 {
        0 => text,
        micros => format!("{text}.{micros:06}"),
    }
}

/// Details as JSON, to compare with the legacy entry's other keys.
fn details_json(details: &Option<prost_types::Struct>) -> serde_json::Map<String, Value> {
    fn value(proto: &prost_types::Value) -> Value {
        match &proto.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::BoolValue(b)) => Value::Bool(*b),
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::StringValue(s)) => Value::String(s.clone()),
            Some(Kind::StructValue(s)) => Value::Object(
                s.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), value(v)))
                    .collect(),
            ),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
        }
    }
    details
        .iter()
        .flat_map(|s| &s.fields)
        .map(|(k, v)| (k.clone(), value(v)))
        .collect()
}

/// Numbers compared as the doubles a Struct carries.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_json(v, w))
        }
        _ => a == b,
    }
}

#[tokio::test]
async fn the_real_dashboards_history_round_trips_field_by_field_across_the_clock_change() {
    let app = TestApp::spawn().await;
    let london = TimeZone::get("Europe/London").unwrap();
    let (file, legacy) = real_history(400, 3);
    let report = import_with(&app, &file, london.clone(), OnConflict::Fail, false).await;
    assert!(report.succeeded(), "{}", report.to_text());
    assert_eq!(report.imported, 400);
    assert!(report.ambiguous_times > 0, "{}", report.to_text());
    assert_eq!(report.skipped_times, 0);

    let micros_of = |value: &Value| value.as_i64();
    let (mut old_format, mut untimed, mut null_models) = (0, 0, 0);
    for row in legacy["history"].as_array().unwrap() {
        let id = row["id"].as_str().unwrap();
        let instants = &legacy["instants"][id];
        let batch = get(&app, id).await;
        // Times: the true instants, and the same local text back.
        assert_eq!(
            micros(&batch.start_time),
            micros_of(&instants["started_at"]),
            "{id}"
        );
        assert_eq!(
            micros(&batch.end_time),
            micros_of(&instants["completed_at"]),
            "{id}"
        );
        let start = batch.start_time.as_ref().unwrap();
        assert_eq!(
            python_isoformat(start, &london),
            row["started_at"].as_str().unwrap()
        );
        assert_eq!(
            batch
                .end_time
                .as_ref()
                .map(|end| python_isoformat(end, &london)),
            row["completed_at"].as_str().map(String::from)
        );
        // Columns.
        assert_eq!(
            batch.current_model,
            row["model"].as_str().unwrap_or_default()
        );
        null_models += usize::from(row["model"].is_null());
        for (value, key) in [
            (&batch.topic_filter, "topic_filter"),
            (&batch.difficulty_filter, "difficulty_filter"),
            (&batch.reasoning_instruction, "reasoning_instruction"),
        ] {
            assert_eq!(value, row[key].as_str().unwrap_or_default(), "{key}");
        }
        assert_eq!(
            i64::from(batch.target_count),
            row["target"].as_i64().unwrap()
        );
        assert_eq!(
            batch.samples_generated,
            row["samples_generated"].as_i64().unwrap()
        );
        assert_eq!(batch.total_tokens, row["tokens_used"].as_i64().unwrap());
        assert_eq!(
            batch.state().as_str_name(),
            row["status"].as_str().unwrap().to_uppercase()
        );
        // Errors: message, time only where the entry had one, the rest in details.
        let errors = row["errors"].as_array().unwrap();
        assert_eq!(batch.errors.len(), errors.len());
        for ((stored, entry), instant) in batch
            .errors
            .iter()
            .zip(errors)
            .zip(instants["errors"].as_array().unwrap())
        {
            let mut entry = entry.as_object().unwrap().clone();
            assert_eq!(
                Value::String(stored.message.clone()),
                entry.remove("error").unwrap()
            );
            assert_eq!(micros(&stored.time), instant.as_i64());
            untimed += usize::from(stored.time.is_none());
            entry.remove("timestamp");
            assert!(
                same_json(
                    &Value::Object(details_json(&stored.details)),
                    &Value::Object(entry)
                ),
                "{id}: {stored:?}"
            );
        }
        // Model switches, in either format.
        let switches = row["model_switches"].as_array().unwrap();
        assert_eq!(batch.model_switches.len(), switches.len());
        for ((stored, entry), instant) in batch
            .model_switches
            .iter()
            .zip(switches)
            .zip(instants["model_switches"].as_array().unwrap())
        {
            let older = entry.get("from_model").is_some();
            old_format += usize::from(older);
            let key = |current: &'static str, old: &'static str| if older { old } else { current };
            assert_eq!(
                stored.from_model,
                entry[key("from", "from_model")].as_str().unwrap()
            );
            assert_eq!(
                stored.to_model,
                entry[key("to", "to_model")].as_str().unwrap()
            );
            assert_eq!(stored.provider, entry["provider"].as_str().unwrap());
            assert_eq!(stored.reason, entry["reason"].as_str().unwrap());
            assert_eq!(
                stored.at_sample,
                entry[key("at_sample", "samples_generated")]
                    .as_i64()
                    .unwrap()
            );
            assert_eq!(micros(&stored.time), instant.as_i64());
            assert!(details_json(&stored.details).is_empty());
        }
        if let Some(first) = switches.first() {
            let from = first.get("from").or(first.get("from_model")).unwrap();
            assert_eq!(
                batch.model,
                from.as_str().unwrap(),
                "the model it started with"
            );
        }
    }
    assert!(old_format > 0 && untimed > 0 && null_models > 0);
}

#[tokio::test]
async fn a_time_the_clocks_skipped_is_moved_forward_and_counted() {
    let app = TestApp::spawn().await;
    let file = legacy_file(&[(
        1,
        "batch_1743298200_00000001",
        "2025-03-30T01:30:00",
        Some("2025-03-30T02:45:00"),
        "completed",
        None,
        None,
    )]);
    let london = TimeZone::get("Europe/London").unwrap();
    let report = import_with(&app, &file, london, OnConflict::Fail, false).await;
    assert!(report.succeeded(), "{}", report.to_text());
    assert_eq!((report.skipped_times, report.ambiguous_times), (1, 0));
    assert!(report.to_text().contains("skipped times"));
    // 01:30 never happened that night; read as 02:30 BST, 01:30 UTC.
    let batch = get(&app, "batch_1743298200_00000001").await;
    assert_eq!(micros(&batch.start_time), Some(1_743_298_200_000_000));
}

/// The files in `dir`, by name.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A legacy database in WAL mode at `path`, with `rows` rows, its writer
/// still open (so rows may sit only in the `-wal` log).
fn wal_database(path: &std::path::Path, rows: i64) -> rusqlite::Connection {
    let writer = rusqlite::Connection::open(path).unwrap();
    writer
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;")
        .unwrap();
    writer.execute_batch(SCHEMA).unwrap();
    for id in 1..=rows {
        writer
            .execute(
                "INSERT INTO batch_history (id, batch_id, started_at, status)
                 VALUES (?1, ?2, '2025-03-01T10:00:00', 'completed')",
                rusqlite::params![id, format!("wal-{id}")],
            )
            .unwrap();
    }
    writer
}

/// A WAL-mode file is read whole (rows still in its `-wal` log included)
/// without a file written beside it, so that a read-only mount of its
/// directory works (a `-shm` would otherwise be created there).
#[tokio::test]
async fn wal_mode_files_are_read_whole_without_writing_beside_them() {
    let app = TestApp::spawn().await;
    let dir = std::env::temp_dir().join(format!("bh-wal-{:016x}", rand_u64()));
    let mount = dir.join("mount");
    std::fs::create_dir_all(&mount).unwrap();

    // Copied while the dashboard runs (or after it crashed): the last rows
    // are only in the log.
    let writer = wal_database(&dir.join("live.db"), 3);
    std::fs::copy(dir.join("live.db"), mount.join("batches.db")).unwrap();
    std::fs::copy(dir.join("live.db-wal"), mount.join("batches.db-wal")).unwrap();
    drop(writer);
    let before = files_in(&mount);
    let file = TempFile(mount.join("batches.db"));
    let report = import(&app, &file, OnConflict::Fail, false).await;
    assert_eq!(
        (report.rows_read, report.imported),
        (3, 3),
        "{}",
        report.to_text()
    );
    assert_eq!(files_in(&mount), before, "nothing written beside the file");
    std::fs::remove_file(mount.join("batches.db-wal")).unwrap();

    // Closed cleanly: no log, every row in the file.
    drop(wal_database(&mount.join("clean.db"), 2));
    assert_eq!(files_in(&mount), ["batches.db", "clean.db"]);
    let clean = TempFile(mount.join("clean.db"));
    let report = import(&app, &clean, OnConflict::Skip, false).await;
    assert_eq!(report.rows_read, 2, "{}", report.to_text());
    assert_eq!(files_in(&mount), ["batches.db", "clean.db"]);
    drop((file, clean));
    std::fs::remove_dir_all(&dir).unwrap();
}
