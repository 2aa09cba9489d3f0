//! Faults from outside the service: a row locked by someone else, callers
//! that retry, batches filled to their limits.

use std::time::Duration;

use batch_history::proto::{RecordProgressRequest, batch_history_client::BatchHistoryClient};
use tonic::{Code, transport::Channel};
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{TestApp, TestDb, health_client};

fn progress(batch_id: &str, samples: i64) -> RecordProgressRequest {
    RecordProgressRequest {
        batch_id: batch_id.into(),
        samples_delta: samples,
        ..Default::default()
    }
}

async fn samples_of(app: &TestApp, batch_id: &str) -> i64 {
    app.db
        .client()
        .await
        .query_one(
            "SELECT samples_generated FROM batches WHERE batch_id = $1",
            &[&batch_id],
        )
        .await
        .unwrap()
        .get(0)
}

/// Fires `calls` concurrent one-sample reports at `batch_id`; returns how
/// many were acknowledged, and the codes of the others.
fn hammer(
    client: &BatchHistoryClient<Channel>,
    batch_id: &str,
    calls: usize,
) -> tokio::task::JoinHandle<(i64, Vec<Code>)> {
    let (client, batch_id) = (client.clone(), batch_id.to_owned());
    tokio::spawn(async move {
        let calls = (0..calls).map(|_| {
            let (mut client, batch_id) = (client.clone(), batch_id.clone());
            tokio::spawn(async move { client.record_progress(progress(&batch_id, 1)).await })
        });
        let mut acknowledged = 0;
        let mut failed = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            match call.await.unwrap() {
                Ok(_) => acknowledged += 1,
                Err(status) => failed.push(status.code()),
            }
        }
        (acknowledged, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_locked_elsewhere_starves_no_other_batch_and_timed_out_calls_never_apply() {
    let app = TestApp::spawn_on(TestDb::create().await, Duration::from_secs(1)).await;
    app.create("hot", "groq").await;
    for n in 0..20 {
        app.create(&format!("cold-{n}"), "groq").await;
    }
    let mut locker = app.db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute("SELECT FROM batches WHERE batch_id = 'hot' FOR UPDATE", &[])
        .await
        .unwrap();

    let hot = hammer(&app.client, "hot", 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cold: Vec<_> = (0..20)
        .map(|n| hammer(&app.client, &format!("cold-{n}"), 1))
        .collect();
    for (n, calls) in cold.into_iter().enumerate() {
        let (acknowledged, failed) = calls.await.unwrap();
        assert_eq!((acknowledged, &failed[..]), (1, &[][..]), "cold-{n}");
    }
    let health = health_client(format!("http://{}", app.addr))
        .await
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(
        health.into_inner().status,
        1,
        "one hot row is not an outage"
    );
    let (acknowledged, failed) = hot.await.unwrap();
    assert!(
        failed.iter().all(|code| *code == Code::Unavailable),
        "{failed:?}"
    );
    assert!(!failed.is_empty(), "the lock outlasted the calls' budget");

    lock.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        samples_of(&app, "hot").await,
        acknowledged,
        "exactly the acknowledged reports were applied"
    );
    app.stop().await;
}
