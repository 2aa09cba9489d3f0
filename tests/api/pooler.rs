//! Behind PgBouncer: what the service finds out about the path to
//! PostgreSQL, what it refuses, and cancellation through the pooler. (The
//! whole suite also runs through one in CI: see `TEST_PGBOUNCER`.)

use std::time::Duration;

use batch_history::proto::{GetBatchRequest, RecordProgressRequest};
use batch_history::startup::App;
use batch_history::store::{Pooling, detect_pooling};
use batch_history::telemetry::cause_chain;
use tonic::Code;

use crate::support::pgbouncer::PgBouncer;
use crate::support::{TestApp, TestDb, database_config, database_config_via, serve_config};

#[tokio::test]
async fn the_kind_of_pooler_in_between_is_detected() {
    let db = TestDb::create().await;
    let transaction = PgBouncer::start("transaction");
    let session = PgBouncer::start("session");
    let detect = async |url: String| {
        detect_pooling(&url.parse().unwrap(), Duration::from_secs(5))
            .await
            .unwrap()
    };
    assert_eq!(detect(db.url(None)).await, Pooling::Session, "PostgreSQL");
    assert_eq!(detect(session.url(&db.name)).await, Pooling::Session);
    assert_eq!(
        detect(transaction.url(&db.name)).await,
        Pooling::Transaction
    );
}

#[tokio::test]
async fn a_transaction_pooler_without_a_direct_url_is_refused_before_migrating() {
    let db = TestDb::create().await;
    let pgbouncer = PgBouncer::start("transaction");
    let database = database_config(&pgbouncer.url(&db.name), Duration::from_secs(5));
    let error = match App::build(serve_config(database)).await {
        Ok(_) => panic!("served through a transaction pooler with no direct URL"),
        Err(error) => cause_chain(&error),
    };
    assert!(error.contains("DATABASE_DIRECT_URL"), "{error}");
    let migrated: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'refinery_schema_history'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(migrated, 0, "nothing was migrated through the pooler");
}

/// tokio-postgres closes a cancel connection as soon as it has written the
/// request; PgBouncer before 1.20 (Debian's is 1.18) exits when that
/// happens before it has forwarded it. Timed-out statements are cancelled
/// through the pooler many times here, and it must keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_cancelled_through_the_pooler_never_apply_and_it_keeps_serving() {
    let db = TestDb::create().await;
    let pgbouncer = PgBouncer::start("transaction");
    let database = database_config_via(
        &pgbouncer.url(&db.name),
        Some(&db.url(None)),
        Duration::from_millis(300),
    );
    let app = TestApp::builder().db(db).database(database).spawn().await;
    app.create("hot", "groq").await;
    let lock = app.db.lock_row("hot").await;
    for _ in 0..10 {
        let status = app
            .client
            .clone()
            .record_progress(RecordProgressRequest {
                batch_id: "hot".into(),
                samples_delta: 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let waiting: i64 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND query LIKE '%samples_generated +%' AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 0, "every timed-out statement was cancelled");
    lock.release().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let batch = app
        .client
        .clone()
        .get_batch(GetBatchRequest {
            batch_id: "hot".into(),
        })
        .await
        .expect("the pooler still serves")
        .into_inner();
    assert_eq!(batch.samples_generated, 0, "no timed-out call applied");
    app.stop().await;
}
