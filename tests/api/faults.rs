//! Faults from outside the service: a row locked by someone else, callers
//! that retry, batches filled to their limits.

use std::time::Duration;

use batch_history::maintenance::REQUEST_ID_RETENTION;
use batch_history::proto::{
    self, BatchView, CreateBatchRequest, GetBatchRequest, ListBatchesRequest,
    RecordProgressRequest, batch_history_client::BatchHistoryClient,
};
use batch_history::store::Store;
use prost::Message;
use tonic::{Code, transport::Channel};
use tonic_health::pb::HealthCheckRequest;

use crate::support::{TestApp, TestDb, assert_invalid, error_info, health_client, rand_u64};

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
/// many were acknowledged, and the statuses of the others.
fn hammer(
    client: &BatchHistoryClient<Channel>,
    batch_id: &str,
    calls: usize,
) -> tokio::task::JoinHandle<(i64, Vec<tonic::Status>)> {
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
                Err(status) => failed.push(status),
            }
        }
        (acknowledged, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_locked_elsewhere_starves_no_other_batch_and_timed_out_calls_never_apply() {
    let app = TestApp::builder()
        .timeout(Duration::from_secs(1))
        .spawn()
        .await;
    app.create("hot", "groq").await;
    for n in 0..20 {
        app.create(&format!("cold-{n}"), "groq").await;
    }
    let lock = app.db.lock_row("hot").await;

    let hot = hammer(&app.client, "hot", 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cold: Vec<_> = (0..20)
        .map(|n| hammer(&app.client, &format!("cold-{n}"), 1))
        .collect();
    for (n, calls) in cold.into_iter().enumerate() {
        let (acknowledged, failed) = calls.await.unwrap();
        assert!(
            acknowledged == 1 && failed.is_empty(),
            "cold-{n}: {failed:?}"
        );
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
        failed
            .iter()
            .all(|status| status.code() == Code::Unavailable),
        "{failed:?}"
    );
    assert!(!failed.is_empty(), "the lock outlasted the calls' budget");
    let unknown = failed
        .iter()
        .filter(|status| status.message().contains("did not confirm"))
        .count();

    // Every statement given up on has ended on the server, even those whose
    // first cancel arrived before the statement did.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alive = statements_waiting_on_locks(&app.db).await;
    lock.release().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = samples_of(&app, "hot").await;
    eprintln!(
        "other rows: 20 of 20 ok; hot row: {acknowledged} ok, {} UNAVAILABLE ({unknown} of \
         them with an unknown outcome); 1 s later {alive} statements alive; {applied} applied",
        failed.len()
    );
    assert_eq!(alive, 0, "statements given up on still wait on the lock");
    assert_eq!(
        applied, acknowledged,
        "only the acknowledged reports are applied, none of those given up on"
    );
    app.stop().await;
}

/// Statements of the service (any backend but the test's) waiting on a lock.
async fn statements_waiting_on_locks(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND state = 'active' AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cut_at_the_shutdown_drain_leave_no_statement_behind_to_apply_later() {
    // A budget longer than the drain: the drain, not the deadline, cuts them.
    let app = TestApp::builder()
        .timeout(Duration::from_secs(30))
        .spawn()
        .await;
    app.create("hot", "groq").await;
    let lock = app.db.lock_row("hot").await;
    let calls = hammer(&app.client, "hot", 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = statements_waiting_on_locks(&app.db).await;
    assert!(waiting > 0, "the calls wait on the lock");

    let stopping = tokio::time::Instant::now();
    let db = app.stop_keeping_db().await;
    let stopped_in = stopping.elapsed();
    let alive = statements_waiting_on_locks(&db).await;
    let (acknowledged, failed) = calls.await.unwrap();
    lock.release().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied: i64 = db
        .client()
        .await
        .query_one(
            "SELECT samples_generated FROM batches WHERE batch_id = 'hot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "stopped in {stopped_in:?}: {waiting} statements were waiting; {alive} alive after the \
         stop; {acknowledged} acknowledged, {} failed; {applied} applied",
        failed.len()
    );
    assert_eq!(
        alive, 0,
        "statements of calls cut at the drain outlived the server"
    );
    assert_eq!(applied, acknowledged);
}

fn with_request_id(batch_id: &str, samples: i64, request_id: &str) -> RecordProgressRequest {
    RecordProgressRequest {
        request_id: request_id.into(),
        ..progress(batch_id, samples)
    }
}

/// A fresh random UUID, in the hyphenated form.
fn uuid() -> String {
    let hex = format!("{:016x}{:016x}", rand_u64(), rand_u64());
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..]
    )
}

/// Sends one unary call over plain HTTP/2 with a `grpc-timeout` header and
/// returns the server's `grpc-status` and `grpc-message`. tonic's own client
/// would time the call out itself (as CANCELLED), hiding what the server says.
async fn raw_call_with_deadline(
    addr: std::net::SocketAddr,
    path: &str,
    message: &impl prost::Message,
    timeout: &str,
) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    let encoded = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    body.send_data(frame.into(), true).unwrap();
    let response = response.await.unwrap();
    let mut headers = response.headers().clone();
    let mut body = response.into_body();
    while body.data().await.is_some() {}
    if let Some(trailers) = body.trailers().await.unwrap() {
        headers.extend(trailers);
    }
    let text = |name: &str| {
        headers
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (text("grpc-status"), text("grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_retried_after_a_deadline_or_unavailable_is_applied_once() {
    let app = TestApp::builder()
        .timeout(Duration::from_secs(1))
        .spawn()
        .await;
    app.create("b", "groq").await;
    let mut client = app.client.clone();

    // Answered, but the answer is lost: the caller retries.
    let lost = uuid();
    for _ in 0..3 {
        let batch = client
            .record_progress(with_request_id("b", 5, &lost))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            batch.samples_generated, 5,
            "a repeat returns the batch as it is"
        );
    }

    // The caller's deadline passes while the row is locked elsewhere.
    let lock = app.db.lock_row("b").await;
    let late = uuid();
    let (code, message) = raw_call_with_deadline(
        app.addr,
        "/batchhistory.v1.BatchHistory/RecordProgress",
        &with_request_id("b", 7, &late),
        "200m",
    )
    .await;
    assert_eq!(
        code, "4",
        "DEADLINE_EXCEEDED, not tonic's CANCELLED: {message}"
    );
    // The server's own budget runs out while the row is still locked.
    let refused = uuid();
    let status = client
        .record_progress(with_request_id("b", 11, &refused))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    lock.release().await;

    for request_id in [&late, &refused, &late, &refused] {
        let samples = if *request_id == late { 7 } else { 11 };
        client
            .record_progress(with_request_id("b", samples, request_id))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(samples_of(&app, "b").await, 5 + 7 + 11);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_workers_sending_every_report_three_times_at_once_count_each_once() {
    const WORKERS: i64 = 32;
    const REPORTS: i64 = 10;
    let app = TestApp::spawn().await;
    app.create("shared", "groq").await;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let client = app.client.clone();
            tokio::spawn(async move {
                let own = format!("w{w}");
                client
                    .clone()
                    .create_batch(CreateBatchRequest {
                        batch_id: own.clone(),
                        batch: Some(Default::default()),
                    })
                    .await
                    .unwrap();
                for n in 0..REPORTS {
                    let request_id = uuid();
                    let batch_id = if n % 2 == 0 { "shared" } else { own.as_str() };
                    let copies = (0..3).map(|_| {
                        let mut client = client.clone();
                        let request = with_request_id(batch_id, w + 1, &request_id);
                        tokio::spawn(async move { client.record_progress(request).await })
                    });
                    for copy in copies.collect::<Vec<_>>() {
                        copy.await.unwrap().unwrap();
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let per_worker_sum: i64 = (1..=WORKERS).sum();
    assert_eq!(
        samples_of(&app, "shared").await,
        per_worker_sum * REPORTS / 2
    );
    for w in 0..WORKERS {
        assert_eq!(
            samples_of(&app, &format!("w{w}")).await,
            (w + 1) * REPORTS / 2
        );
    }
    let recorded: i64 = app.db.count_rows("batch_requests").await;
    assert_eq!(recorded, WORKERS * REPORTS);
    app.stop().await;
}

#[tokio::test]
async fn a_request_id_is_a_uuid_and_names_one_report() {
    let app = TestApp::spawn().await;
    app.create("a", "groq").await;
    app.create("b", "groq").await;
    let mut client = app.client.clone();
    let status = client
        .record_progress(with_request_id("a", 1, "not-a-uuid"))
        .await
        .unwrap_err();
    assert_invalid(status, "request_id");

    let request_id = uuid();
    client
        .record_progress(with_request_id("a", 1, &request_id))
        .await
        .unwrap();
    for other in [
        with_request_id("a", 2, &request_id),
        with_request_id("b", 1, &request_id),
    ] {
        let status = client.record_progress(other).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(status.message().contains("request_id"), "{status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, "REQUEST_ID_REUSED");
        assert_eq!(info.metadata["request_id"], request_id);
    }
    // Case does not make another id.
    client
        .record_progress(with_request_id("a", 1, &request_id.to_uppercase()))
        .await
        .unwrap();
    assert_eq!(samples_of(&app, "a").await, 1);
    assert_eq!(samples_of(&app, "b").await, 0);
    app.stop().await;
}

/// A struct with one string field of `bytes` bytes.
fn bulky(bytes: usize) -> prost_types::Struct {
    prost_types::Struct {
        fields: [(
            "blob".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("d".repeat(bytes))),
            },
        )]
        .into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_filled_to_every_limit_fits_a_default_client_in_get_and_list() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    client
        .create_batch(CreateBatchRequest {
            batch_id: "full".into(),
            batch: Some(proto::Batch {
                reasoning_instruction: "r".repeat(64 * 1024),
                metadata: Some(bulky(60 * 1024)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // Each report stays under the 4 MiB request limit; together they pass
    // every per-batch bound several times over.
    for _ in 0..4 {
        let errors = (0..24)
            .map(|_| proto::BatchError {
                message: "m".repeat(64 * 1024),
                details: Some(bulky(60 * 1024)),
                ..Default::default()
            })
            .collect();
        let model_switches = (0..200)
            .map(|_| proto::ModelSwitch {
                from_model: "a".into(),
                to_model: "b".into(),
                reason: "s".repeat(1024),
                details: Some(bulky(2 * 1024)),
                ..Default::default()
            })
            .collect();
        client
            .record_progress(RecordProgressRequest {
                batch_id: "full".into(),
                errors,
                model_switches,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    let full = client
        .get_batch(GetBatchRequest {
            batch_id: "full".into(),
        })
        .await
        .expect("a default client reads the fullest batch")
        .into_inner();
    eprintln!(
        "fullest batch: {} bytes, {} errors kept of {}, {} model switches kept",
        full.encoded_len(),
        full.errors.len(),
        full.error_count,
        full.model_switches.len()
    );
    assert!(full.encoded_len() < 2_500_000, "{}", full.encoded_len());
    assert_eq!(full.error_count, 96);
    assert!(!full.errors.is_empty() && full.errors.len() < 96);
    assert!(!full.model_switches.is_empty() && full.model_switches.len() < 800);

    // Eleven copies of it, then every page of a 1,000-batch listing.
    app.db
        .client()
        .await
        .execute(
            "INSERT INTO batches (batch_id, state, reasoning_instruction, metadata, errors,
                                  error_count, model_switches, start_time, update_time)
             SELECT 'copy-' || n, state, reasoning_instruction, metadata, errors,
                    error_count, model_switches, start_time, update_time
             FROM batches, generate_series(1, 11) AS n WHERE batch_id = 'full'",
            &[],
        )
        .await
        .unwrap();
    for view in [BatchView::Unspecified, BatchView::Basic] {
        let (mut listed, mut pages, mut token) = (0, 0, String::new());
        loop {
            let page = client
                .list_batches(ListBatchesRequest {
                    page_size: 1_000,
                    page_token: token,
                    view: view as i32,
                    ..Default::default()
                })
                .await
                .expect("every page fits a default client")
                .into_inner();
            assert!(page.encoded_len() <= 4 * 1024 * 1024);
            if view == BatchView::Basic {
                assert!(
                    page.batches
                        .iter()
                        .all(|b| b.errors.is_empty() && b.model_switches.is_empty())
                );
                assert!(page.batches.iter().all(|b| b.error_count == 96));
            } else {
                assert!(
                    page.batches
                        .iter()
                        .all(|b| b.errors.len() == full.errors.len())
                );
            }
            listed += page.batches.len();
            pages += 1;
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(listed, 12, "{view:?}");
        eprintln!("{view:?}: 12 batches in {pages} pages");
        if view == BatchView::Basic {
            assert_eq!(pages, 1, "without their lists, they fit one page");
        } else {
            assert!(pages > 1, "full batches are split across pages");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn request_ids_are_forgotten_after_the_retention_window_in_chunks() {
    let app = TestApp::spawn().await;
    app.create("b", "groq").await;
    let recent = uuid();
    app.client
        .clone()
        .record_progress(with_request_id("b", 1, &recent))
        .await
        .unwrap();
    app.db
        .client()
        .await
        .execute(
            "INSERT INTO batch_requests (request_id, batch_id, fingerprint, created_at)
             SELECT gen_random_uuid(), 'b', decode(repeat('00', 32), 'hex'),
                    now() - interval '25 hours'
             FROM generate_series(1, 2500)",
            &[],
        )
        .await
        .unwrap();

    let store = Store::new(
        &app.db.database_config(Duration::from_secs(5)),
        app.db.pooling(),
    )
    .unwrap();
    let forgotten = store.forget_requests(REQUEST_ID_RETENTION).await.unwrap();
    assert_eq!(forgotten, 2_500, "three chunks, all of the old ones");
    assert_eq!(app.db.count_rows("batch_requests").await, 1);
    app.client
        .clone()
        .record_progress(with_request_id("b", 1, &recent))
        .await
        .unwrap();
    assert_eq!(samples_of(&app, "b").await, 1, "a recent id is still known");
    app.stop().await;
}

/// Ends every other backend on the test's database (a pooler keeps its
/// own open) and waits until they are gone: a backend reports its
/// temporary-file bytes when it ends, at the latest.
async fn end_other_backends(db: &TestDb) {
    let client = db.client().await;
    let others = "FROM pg_stat_activity \
                  WHERE datname = current_database() AND pid <> pg_backend_pid()";
    client
        .batch_execute(&format!("SELECT pg_terminate_backend(pid) {others}"))
        .await
        .unwrap();
    for _ in 0..100 {
        let left: i64 = client
            .query_one(&format!("SELECT count(*) {others}"), &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backends on the test database did not end");
}

/// The temporary-file bytes of the test's database, as reported so far.
async fn temp_bytes(db: &TestDb) -> i64 {
    let client = db.client().await;
    client
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    client
        .query_one(
            "SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_reports_spill_nothing_to_temporary_files() {
    let app = TestApp::builder().spawn().await;
    app.create("big", "groq").await;
    let before = temp_bytes(&app.db).await;
    const REPORTS: i64 = 4;
    let mut client = app.client.clone();
    for report in 0..REPORTS {
        // 60 errors of 60 KiB: within the contract, and past the 1 MiB the
        // batch keeps, so the oldest are dropped at every report.
        let errors = (0..60)
            .map(|n| proto::BatchError {
                message: format!("{report}-{n}-{}", "e".repeat(60 * 1024 - 16)),
                ..Default::default()
            })
            .collect();
        client
            .record_progress(RecordProgressRequest {
                batch_id: "big".into(),
                errors,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let kept = client
        .get_batch(GetBatchRequest {
            batch_id: "big".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let db = app.stop_keeping_db().await;
    end_other_backends(&db).await;
    let spilled = temp_bytes(&db).await - before;
    eprintln!(
        "{REPORTS} reports of 60 errors x 60 KiB: {} errors kept of {}, {} temporary-file bytes \
         per report",
        kept.errors.len(),
        kept.error_count,
        spilled / REPORTS
    );
    assert_eq!(kept.error_count, 60 * REPORTS);
    assert!(kept.errors.len() < 60, "the newest only are kept");
    assert!(kept.errors.last().unwrap().message.starts_with("3-59-"));
    assert_eq!(spilled, 0, "reports spilled to temporary files");
}
