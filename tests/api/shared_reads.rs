//! GetBatch on connections that concurrent calls share: few connections
//! however many callers, a connection that dies or hangs replaced without
//! failing the calls that follow.

use std::time::{Duration, Instant};

use batch_history::proto::{GetBatchRequest, batch_history_client::BatchHistoryClient};
use batch_history::store::Pooling;
use tonic::{Code, transport::Channel};

use crate::support::{TestApp, TestDb, metric};

/// Backends of the test's database whose last statement was GetBatch's.
const GET_BACKENDS: &str = "FROM pg_stat_activity WHERE datname = current_database() \
     AND query LIKE 'SELECT batch_id, %FROM batches WHERE batch_id = $1 AND start_time = %'";

async fn get_backends(db: &TestDb) -> i64 {
    let admin = db.client().await;
    admin
        .query_one(&format!("SELECT count(*) {GET_BACKENDS}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// `calls` concurrent GetBatch calls of `batch_id`; the statuses of those
/// that failed.
async fn concurrent_gets(
    client: &BatchHistoryClient<Channel>,
    batch_id: &str,
    calls: usize,
) -> Vec<tonic::Status> {
    let calls: Vec<_> = (0..calls)
        .map(|_| {
            let mut client = client.clone();
            let batch_id = batch_id.to_owned();
            tokio::spawn(async move { client.get_batch(GetBatchRequest { batch_id }).await })
        })
        .collect();
    let mut failed = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(batch) => assert_eq!(batch.into_inner().batch_id, batch_id),
            Err(status) => failed.push(status),
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_gets_use_two_connections_and_outlive_their_termination() {
    let app = TestApp::spawn().await;
    if app.db.pooling() == Pooling::Transaction {
        // Behind a transaction pooler nothing can be prepared on a shared
        // connection: GetBatch takes a pool connection like every call.
        return app.stop().await;
    }
    app.create("b", "groq").await;

    let failed = concurrent_gets(&app.client, "b", 200).await;
    assert!(failed.is_empty(), "{failed:?}");
    let backends = get_backends(&app.db).await;
    assert!(
        (1..=2).contains(&backends),
        "{backends} connections served the gets; the pool holds 16"
    );
    let page = app.scrape().await;
    assert_eq!(
        metric(&page, "batch_history_shared_read_connections"),
        Some(backends as f64),
        "{page}"
    );

    // Terminated while calls are on them: a call in flight meets the close
    // (or the 57P01 error sent before it) and is sent again on a new one.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = app.client.clone();
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_millis(600);
                let mut failed = Vec::new();
                while Instant::now() < until {
                    failed.extend(concurrent_gets(&client, "b", 4).await);
                }
                failed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admin = app.db.client().await;
    let terminated: i64 = admin
        .query_one(
            &format!("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) {GET_BACKENDS}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(terminated >= 1, "no GetBatch connection to terminate");
    for call in calls {
        let failed = call.await.unwrap();
        assert!(
            failed.is_empty(),
            "a read meeting a terminated connection is sent again on a new one: {failed:?}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_stuck_behind_a_lock_times_out_and_leaves_no_connection_behind() {
    let app = TestApp::builder()
        .timeout(Duration::from_millis(300))
        .spawn()
        .await;
    app.create("b", "groq").await;
    let failed = concurrent_gets(&app.client, "b", 20).await;
    assert!(failed.is_empty(), "{failed:?}");

    let mut locker = app.db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let failed = concurrent_gets(&app.client, "b", 20).await;
    let waited = started.elapsed();
    assert_eq!(failed.len(), 20, "the table was locked: {failed:?}");
    assert!(
        failed
            .iter()
            .all(|status| status.code() == Code::Unavailable),
        "{failed:?}"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    lock.rollback().await.unwrap();

    let failed = concurrent_gets(&app.client, "b", 20).await;
    assert!(failed.is_empty(), "once the lock is gone: {failed:?}");
    let start = Instant::now();
    // Behind a transaction pooler the gets ran on the pool's connections.
    while app.db.pooling() == Pooling::Session {
        let backends = get_backends(&app.db).await;
        if backends <= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{backends} connections: the ones given up on stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}
