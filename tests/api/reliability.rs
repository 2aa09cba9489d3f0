//! Reliability and security promises: racing replicas, divergent schemas,
//! graceful shutdown, hostile input, secrets, authentication.

use std::time::{Duration, Instant};

use batch_history::proto::{
    self, BatchError, CreateBatchRequest, GetBatchRequest, ListBatchesRequest,
    RecordProgressRequest, batch_history_client::BatchHistoryClient,
};
use batch_history::startup::App;
use proptest::{
    collection::{btree_map, vec},
    prelude::*,
    strategy::ValueTree,
    test_runner::TestRunner,
};
use prost_types::{ListValue, Struct, Value, value::Kind};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;

use crate::support::process::ServerProcess;
use crate::support::{
    TestApp, TestDb, column, error_info, health_client, refused_by_goaway, serve_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_racing_on_an_empty_database_all_serve_and_migrate_once() {
    let db = TestDb::create().await;
    let url = db.url(None);
    let mut servers: Vec<_> = (0..3)
        .map(|_| ServerProcess::spawn(&[("DATABASE_URL", url.as_str())]))
        .collect();
    tokio::task::block_in_place(|| {
        for server in &mut servers {
            server.wait_serving(Duration::from_secs(30));
        }
    });
    let client = db.client().await;
    let (applied, versions): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT version) FROM refinery_schema_history",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(applied, versions, "a migration was applied twice");
    assert!(applied >= 1);
    for server in &mut servers {
        server.sigterm();
        let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(15)));
        assert!(status.success(), "{status}");
        let logs = server.logs();
        assert!(!logs.contains(r#""level":"ERROR""#), "{logs}");
        assert!(!logs.contains(r#""level":"WARN""#), "{logs}");
    }
}

async fn build_error(db: &TestDb) -> String {
    let error = App::build(serve_config(db.database_config(Duration::from_secs(5))))
        .await
        .err()
        .expect("the app must refuse to start");
    batch_history::telemetry::cause_chain(&error)
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_build_is_refused() {
    let db = TestDb::create().await;
    batch_history::store::migrate(&db.config, Duration::from_secs(5))
        .await
        .unwrap();
    db.client()
        .await
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (99, 'from_the_future', '2026-01-01T00:00:00Z', '42')",
            &[],
        )
        .await
        .unwrap();
    let message = build_error(&db).await;
    assert!(message.contains("V99__from_the_future"), "{message}");
    assert!(message.contains("newer build"), "{message}");
}

#[tokio::test]
async fn an_edited_applied_migration_is_refused() {
    let db = TestDb::create().await;
    batch_history::store::migrate(&db.config, Duration::from_secs(5))
        .await
        .unwrap();
    db.client()
        .await
        .execute(
            "UPDATE refinery_schema_history SET checksum = '12345' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    let message = build_error(&db).await;
    assert!(message.contains("V1__batches"), "{message}");
    assert!(message.contains("edited after being applied"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_off_drains_calls_and_exits_zero() {
    let db = TestDb::create().await;
    let url = db.url(None);
    let mut server = ServerProcess::spawn(&[("DATABASE_URL", url.as_str())]);
    tokio::task::block_in_place(|| server.wait_serving(Duration::from_secs(20)));
    let endpoint = format!("http://{}", server.addr);

    let mut watch = health_client(endpoint.clone())
        .await
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1, "SERVING");

    // Eight clients create batches back to back until the server is gone.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut client = BatchHistoryClient::connect(endpoint).await.unwrap();
                let (mut acknowledged, mut failed) = (Vec::new(), Vec::new());
                for n in 0.. {
                    let id = format!("w{w}-{n}");
                    match client
                        .create_batch(CreateBatchRequest {
                            batch_id: id.clone(),
                            batch: Some(proto::Batch::default()),
                        })
                        .await
                    {
                        Ok(_) => acknowledged.push(id),
                        Err(status) => {
                            failed.push((id, status));
                            if failed.len() > 3 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (acknowledged, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    server.sigterm();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("health changes at once");
    assert_eq!(next.unwrap().unwrap().status, 2, "NOT_SERVING");
    drop(watch);

    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(15)));
    assert!(status.success(), "exit {status}:\n{}", server.logs());
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "new connections refused"
    );

    let stored = db.client().await;
    let mut total = 0;
    for writer in writers {
        let (acknowledged, failed) = writer.await.unwrap();
        // A call sent after the server's GOAWAY is refused unprocessed
        // (CANCELLED or UNAVAILABLE, safe to retry), or, when the client
        // opened its stream just after the server chose its last one, comes
        // back as tonic's INTERNAL for a GOAWAY (see goaway.rs). Either way a
        // failed call must have written nothing, or an in-flight call was
        // cut off.
        for (id, status) in &failed {
            assert!(
                matches!(status.code(), Code::Unavailable | Code::Cancelled)
                    || refused_by_goaway(status),
                "{id}: {status:?}"
            );
            let rows = stored
                .query("SELECT 1 FROM batches WHERE batch_id = $1", &[id])
                .await
                .unwrap();
            assert!(
                rows.is_empty(),
                "{id} was written but its caller got {status:?}"
            );
        }
        for id in &acknowledged {
            let rows = stored
                .query("SELECT 1 FROM batches WHERE batch_id = $1", &[id])
                .await
                .unwrap();
            assert_eq!(rows.len(), 1, "acknowledged {id} is missing");
        }
        total += acknowledged.len();
    }
    assert!(total > 0, "calls ran before the signal");
}

fn nested_struct(depth: usize) -> Struct {
    let mut value = Value {
        kind: Some(Kind::NumberValue(1.0)),
    };
    for _ in 0..depth {
        value = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![value],
            })),
        };
    }
    Struct {
        fields: [("deep".to_string(), value)].into(),
    }
}

#[tokio::test]
async fn oversized_and_undecodable_requests_are_the_callers_fault() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("b", "groq").await;

    let huge = RecordProgressRequest {
        batch_id: "b".into(),
        errors: (0..80)
            .map(|_| BatchError {
                message: "x".repeat(60_000),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let status = client.record_progress(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_info(&status).reason, "REQUEST_TOO_LARGE");

    // Deeper than prost's recursion limit: not even decodable.
    let deep = CreateBatchRequest {
        batch_id: "deep".into(),
        batch: Some(proto::Batch {
            metadata: Some(nested_struct(120)),
            ..Default::default()
        }),
    };
    let status = client.create_batch(deep).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_info(&status).reason, "REQUEST_MALFORMED");

    // Decodable but deeper than the contract's 32 levels.
    let deep = CreateBatchRequest {
        batch_id: "deep".into(),
        batch: Some(proto::Batch {
            metadata: Some(nested_struct(40)),
            ..Default::default()
        }),
    };
    let status = client.create_batch(deep).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let still = client
        .get_batch(GetBatchRequest {
            batch_id: "b".into(),
        })
        .await
        .unwrap();
    assert_eq!(still.into_inner().error_count, 0, "nothing was applied");
}

/// Text a hostile caller might send: anything, control characters and NUL,
/// huge, or plausible.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f]{0,8}",
        "[A-Za-z0-9._-]{1,110}",
        (0_usize..3).prop_map(|n| ["", "groq", "batch_1_deadbeef"][n].to_string()),
        (60_000_usize..70_000).prop_map(|n| "é".repeat(n / 2)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<f64>().prop_map(Kind::NumberValue),
        Just(Kind::NumberValue(f64::NAN)),
        Just(Kind::NumberValue(f64::INFINITY)),
        text().prop_map(Kind::StringValue),
        any::<bool>().prop_map(Kind::BoolValue),
        any::<i32>().prop_map(Kind::NullValue),
    ]
    .prop_map(|kind| Value { kind: Some(kind) });
    leaf.prop_recursive(40, 200, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|values| Value {
                kind: Some(Kind::ListValue(ListValue { values }))
            }),
            btree_map(text(), inner, 0..4).prop_map(|fields| Value {
                kind: Some(Kind::StructValue(Struct { fields }))
            }),
        ]
    })
}

fn metadata() -> impl Strategy<Value = Option<Struct>> {
    proptest::option::of(btree_map(text(), json_value(), 0..4).prop_map(|fields| Struct { fields }))
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    proptest::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

fn create_request() -> impl Strategy<Value = CreateBatchRequest> {
    (
        text(),
        text(),
        text(),
        text(),
        any::<i32>(),
        metadata(),
        timestamp(),
        text(),
    )
        .prop_map(
            |(id, provider, model, instruction, target_count, metadata, start_time, topic)| {
                CreateBatchRequest {
                    batch_id: id,
                    batch: Some(proto::Batch {
                        provider,
                        model,
                        reasoning_instruction: instruction,
                        topic_filter: topic,
                        target_count,
                        metadata,
                        start_time,
                        state: target_count,
                        ..Default::default()
                    }),
                }
            },
        )
}

fn progress_request() -> impl Strategy<Value = RecordProgressRequest> {
    let error = (text(), timestamp(), metadata()).prop_map(|(message, time, details)| BatchError {
        message,
        time,
        details,
    });
    (text(), any::<i64>(), any::<i64>(), vec(error, 0..3)).prop_map(
        |(batch_id, samples_delta, tokens_delta, errors)| RecordProgressRequest {
            batch_id,
            samples_delta,
            tokens_delta,
            errors,
            ..Default::default()
        },
    )
}

fn list_request() -> impl Strategy<Value = ListBatchesRequest> {
    (
        any::<i32>(),
        text(),
        any::<i32>(),
        vec(any::<i32>(), 0..4),
        text(),
        timestamp(),
    )
        .prop_map(
            |(page_size, page_token, order, states, provider, started_after)| ListBatchesRequest {
                page_size,
                page_token,
                order,
                states,
                provider,
                started_after,
                ..Default::default()
            },
        )
}

const CALLER_CODES: [Code; 6] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::FailedPrecondition,
    Code::ResourceExhausted,
];

#[tokio::test]
async fn hostile_requests_get_caller_codes_and_never_internal() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("batch_1_deadbeef", "groq").await;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..150 {
        let outcome = match round % 3 {
            0 => {
                let request = create_request().new_tree(&mut runner).unwrap().current();
                client.create_batch(request).await.map(drop)
            }
            1 => {
                let request = progress_request().new_tree(&mut runner).unwrap().current();
                client.record_progress(request).await.map(drop)
            }
            _ => {
                let request = list_request().new_tree(&mut runner).unwrap().current();
                client.list_batches(request).await.map(drop)
            }
        };
        let code = outcome.err().map_or(Code::Ok, |status| {
            assert!(
                !status.message().contains("SELECT") && !status.message().contains("postgres"),
                "{status:?}"
            );
            status.code()
        });
        assert!(CALLER_CODES.contains(&code), "round {round}: {code:?}");
        *seen.entry(format!("{code:?}")).or_default() += 1;
    }
    eprintln!("codes seen: {seen:?}");
    assert!(seen.contains_key("InvalidArgument"));
    let health = health_client(format!("http://{}", app.addr))
        .await
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "still SERVING");
    app.create("after-the-storm", "groq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_logs() {
    let db = TestDb::create().await;
    let password = "hunter2-Sekr1t";
    // A database that refuses: the connection error is logged.
    let closed = crate::support::process::free_addr();
    let refused = format!("postgres://postgres:{password}@{closed}/nowhere");
    // Retried for a second first: the retries' warnings hold no password either.
    let mut failing = ServerProcess::spawn(&[
        ("DATABASE_URL", refused.as_str()),
        ("DB_TIMEOUT_MS", "500"),
        ("DB_STARTUP_TIMEOUT_MS", "1000"),
    ]);
    let status = tokio::task::block_in_place(|| failing.wait_exit(Duration::from_secs(15)));
    assert!(!status.success());
    let logs = failing.logs();
    assert!(logs.contains("could not connect"), "{logs}");
    assert!(!logs.contains(password), "{logs}");

    // A working server, then its database dropped under it.
    let url = db.url(Some(password));
    let mut server = ServerProcess::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_TIMEOUT_MS", "500"),
        ("RUST_LOG", "debug"),
    ]);
    tokio::task::block_in_place(|| server.wait_serving(Duration::from_secs(20)));
    let mut client = BatchHistoryClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    client
        .get_batch(GetBatchRequest {
            batch_id: "x".into(),
        })
        .await
        .unwrap_err();
    db.drop_now().await;
    let status = client
        .get_batch(GetBatchRequest {
            batch_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    for leak in [password, "postgres://", "SELECT", "bh_test_"] {
        assert!(!status.message().contains(leak), "{status:?}");
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.sigterm();
    tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(15)));
    let logs = server.logs();
    assert!(
        logs.contains("database unreachable"),
        "the outage was logged:\n{logs}"
    );
    assert!(!logs.contains(password), "{logs}");
}

#[tokio::test]
async fn with_a_token_calls_need_it_but_probes_do_not() {
    let app = TestApp::builder()
        .auth_token("t0ken-for-tests")
        .spawn()
        .await;
    let (addr, mut client) = (app.addr, app.client.clone());

    let status = client
        .list_batches(ListBatchesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_info(&status).reason, "UNAUTHENTICATED");
    for wrong in [
        "Bearer t0ken-for-test",
        "Bearer t0ken-for-tests2",
        "t0ken-for-tests",
    ] {
        let mut request = Request::new(ListBatchesRequest::default());
        request
            .metadata_mut()
            .insert("authorization", wrong.parse().unwrap());
        let status = client.list_batches(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{wrong}");
    }
    let mut request = Request::new(ListBatchesRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Bearer t0ken-for-tests".parse().unwrap());
    client.list_batches(request).await.unwrap();

    let health = health_client(format!("http://{addr}"))
        .await
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_starting_stops_the_server_gracefully() {
    let db = TestDb::create().await;
    let url = db.url(None);
    let mut server = ServerProcess::spawn(&[("DATABASE_URL", url.as_str())]);
    // The moment it starts migrating, well before it serves: an orchestrator
    // may stop a replica at any time.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.logs().contains("\"migrating\"") {
        assert!(Instant::now() < deadline, "{}", server.logs());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.sigterm();
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(15)));
    assert!(
        status.success(),
        "killed by the signal rather than stopped by it: {status}\n{}",
        server.logs()
    );
}

/// Upkeep runs on one replica at a time: three processes share one
/// database, one holds the upkeep lock, and when it is killed another takes
/// over and sweeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_at_a_time_runs_the_upkeep_and_another_takes_over_when_it_dies() {
    let db = TestDb::create().await;
    let url = db.url(None);
    let env = [("DATABASE_URL", url.as_str()), ("STALE_AFTER", "2s")];
    let mut servers: Vec<_> = (0..3).map(|_| ServerProcess::spawn(&env)).collect();
    tokio::task::block_in_place(|| {
        for server in &mut servers {
            server.wait_serving(Duration::from_secs(30));
        }
    });
    let client = db.client().await;
    // The upkeep lock, on this test's database ("bhupkeep").
    let holders = async || -> Vec<i32> {
        column(
            &client,
            "SELECT pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE locktype = 'advisory' AND granted AND d.datname = current_database()
               AND classid = (x'62687570'::bigint)::oid AND objid = (x'6b656570'::bigint)::oid",
        )
        .await
    };
    let runs_upkeep = |server: &ServerProcess| {
        server
            .logs()
            .matches("this replica runs the upkeep now")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let held = holders().await;
        assert!(held.len() <= 1, "held by {held:?}");
        let running: Vec<usize> = (0..3).filter(|&i| runs_upkeep(&servers[i]) > 0).collect();
        if held.len() == 1 && running.len() == 1 {
            break (held[0], running[0]);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replica took the upkeep"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Several ticks later it is still the one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(holders().await, [first.0]);
    let running: Vec<usize> = (0..3).filter(|&i| runs_upkeep(&servers[i]) > 0).collect();
    assert_eq!(running, [first.1]);

    servers[first.1].signal("-KILL");
    tokio::task::block_in_place(|| servers[first.1].wait_exit(Duration::from_secs(10)));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let second = loop {
        let held = holders().await;
        assert!(held.len() <= 1, "held by {held:?}");
        let running: Vec<usize> = (0..3)
            .filter(|&i| i != first.1 && runs_upkeep(&servers[i]) > 0)
            .collect();
        assert!(running.len() <= 1, "{running:?} both took it");
        if held.len() == 1 && held[0] != first.0 && running.len() == 1 {
            break running[0];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nobody took over the upkeep from the killed replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // And it works: a batch left running goes stale and is stopped.
    client
        .execute(
            "INSERT INTO batches (batch_id, state, start_time, update_time)
             VALUES ('left-behind', 'RUNNING', now() - interval '1 hour', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state: String = client
            .query_one(
                "SELECT state FROM batches WHERE batch_id = 'left-behind'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if state == "STOPPED" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new holder did not sweep:\n{}",
            servers[second].logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
