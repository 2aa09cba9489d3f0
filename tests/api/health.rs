//! Health, the healthcheck command, migrations at boot and shutdown.

use std::{process::Command, time::Duration};

use batch_history::startup::{App, SERVICE_NAME};
use batch_history::store::MIGRATION_LOCK_KEY;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{TestApp, TestDb, serve_config};

async fn health_of(app: &TestApp, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

fn healthcheck(addr: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_batch-history"))
        .args(["healthcheck", "--addr", addr, "--timeout-ms", "2000"])
        .output()
        .expect("cannot run batch-history")
}

#[tokio::test]
async fn a_started_app_is_serving_both_names() {
    let app = TestApp::spawn().await;
    assert_eq!(health_of(&app, "").await, ServingStatus::Serving);
    assert_eq!(health_of(&app, SERVICE_NAME).await, ServingStatus::Serving);
}

#[tokio::test]
async fn healthcheck_command_exits_zero_only_for_a_serving_server() {
    let app = TestApp::spawn().await;
    let addr = app.addr.to_string();
    let live = tokio::task::spawn_blocking(move || healthcheck(&addr))
        .await
        .unwrap();
    assert!(live.status.success(), "{live:?}");

    let url = format!("http://{}", app.addr);
    let live = tokio::task::spawn_blocking(move || healthcheck(&url))
        .await
        .unwrap();
    assert!(live.status.success(), "{live:?}");

    // A port nothing listens on: bind one, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = tokio::task::spawn_blocking(move || healthcheck(&closed.to_string()))
        .await
        .unwrap();
    assert!(!dead.status.success(), "{dead:?}");
    assert!(
        String::from_utf8_lossy(&dead.stderr).contains("cannot reach"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn the_app_waits_for_migrations_held_by_another_replica() {
    let db = TestDb::create().await;
    let holder = db.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .unwrap();

    let config = serve_config(db.database_config(Duration::from_secs(5)));
    let mut build = tokio::spawn(App::build(config));
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut build)
            .await
            .is_err(),
        "the app must not start while another replica migrates"
    );
    let schema: Option<String> = holder
        .query_one("SELECT to_regclass('batches')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, None, "nothing migrated while the lock was held");

    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .unwrap();
    let app = tokio::time::timeout(Duration::from_secs(10), build)
        .await
        .expect("the app starts once the lock is free")
        .unwrap()
        .expect("build failed");
    assert!(app.local_addr().is_ok());
}

#[tokio::test]
async fn replicas_migrating_at_once_apply_each_migration_once() {
    let db = TestDb::create().await;
    let builds =
        (0..3).map(|_| App::build(serve_config(db.database_config(Duration::from_secs(10)))));
    for built in futures::future::join_all(builds).await {
        built.expect("every replica starts");
    }
    let rows = db
        .client()
        .await
        .query(
            "SELECT version, count(*) FROM refinery_schema_history GROUP BY version",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        assert_eq!(
            row.get::<_, i64>(1),
            1,
            "migration {} applied more than once",
            row.get::<_, i32>(0)
        );
    }
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_before_the_server_stops() {
    let app = TestApp::spawn().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let addr = app.addr;
    let stopping = tokio::spawn(app.stop());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("health must change on shutdown");
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    // The watch stream is an in-flight call: the server waits for it, so end it.
    drop(watch);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops once calls have drained")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
