//! A database restart under load: calls fail fast with UNAVAILABLE, health
//! follows the database, the service recovers by itself, and no
//! acknowledged write is lost or applied twice.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use batch_history::config::ServeConfig;
use batch_history::proto::{self, CreateBatchRequest, RecordProgressRequest};
use batch_history::store::DatabaseConfig;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;

use crate::support::cluster::TempCluster;
use crate::support::{Server, database_config, error_info, health_client, serve_config};

const TIMEOUT: Duration = Duration::from_millis(1_000);

/// What one client saw.
#[derive(Default)]
struct Seen {
    batch_id: String,
    acknowledged_samples: i64,
    attempted_samples: i64,
    acknowledged_creates: Vec<String>,
    slowest_failure: Duration,
    failure_codes: Vec<Code>,
}

async fn serving(addr: std::net::SocketAddr) -> bool {
    let mut health = health_client(format!("http://{addr}")).await;
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|response| response.into_inner().status == 1)
}

async fn wait_for_health(addr: std::net::SocketAddr, want: bool, within: Duration) -> Duration {
    let started = Instant::now();
    while serving(addr).await != want {
        assert!(
            started.elapsed() < within,
            "health did not become {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_nothing_and_heals() {
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(""))
        .await
        .unwrap();
    let mut pg = cluster.config("postgres");
    pg.connect_timeout(TIMEOUT);
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let server = Server::start(serve_config(database_config(&url, TIMEOUT))).await;
    let addr = server.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|n| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut client = proto::batch_history_client::BatchHistoryClient::connect(format!(
                    "http://{addr}"
                ))
                .await
                .unwrap();
                let mut seen = Seen {
                    batch_id: format!("load-{n}"),
                    ..Seen::default()
                };
                client
                    .create_batch(CreateBatchRequest {
                        batch_id: seen.batch_id.clone(),
                        batch: Some(proto::Batch::default()),
                    })
                    .await
                    .unwrap();
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let started = Instant::now();
                    seen.attempted_samples += 1;
                    let progress = client
                        .record_progress(RecordProgressRequest {
                            batch_id: seen.batch_id.clone(),
                            samples_delta: 1,
                            ..Default::default()
                        })
                        .await;
                    let id = format!("load-{n}-{round}");
                    let created = client
                        .create_batch(CreateBatchRequest {
                            batch_id: id.clone(),
                            batch: Some(proto::Batch::default()),
                        })
                        .await;
                    for result in [progress.map(drop), created.map(drop)]
                        .into_iter()
                        .enumerate()
                    {
                        match result {
                            (0, Ok(())) => seen.acknowledged_samples += 1,
                            (_, Ok(())) => seen.acknowledged_creates.push(id.clone()),
                            (_, Err(status)) => {
                                seen.failure_codes.push(status.code());
                                seen.slowest_failure = seen.slowest_failure.max(started.elapsed());
                            }
                        }
                    }
                    if seen.failure_codes.last().is_some() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                seen
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(800)).await;
    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| cluster.stop());
    let to_not_serving = wait_for_health(addr, false, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    tokio::task::block_in_place(|| cluster.resume());
    let resumed_at = Instant::now();
    let to_serving = wait_for_health(addr, true, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "NOT_SERVING {to_not_serving:?} after the stop began ({:?} stopping); \
         SERVING {to_serving:?} after the restart",
        resumed_at - stopped_at - Duration::from_millis(1_500) - to_not_serving
    );

    let (db, connection) = pg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut slowest = Duration::ZERO;
    let mut failures = 0;
    let mut after_restart = 0;
    for client in clients {
        let seen = client.await.unwrap();
        assert!(
            seen.failure_codes
                .iter()
                .all(|&code| code == Code::Unavailable),
            "{:?}",
            seen.failure_codes
        );
        failures += seen.failure_codes.len();
        slowest = slowest.max(seen.slowest_failure);
        let stored: i64 = db
            .query_one(
                "SELECT samples_generated FROM batches WHERE batch_id = $1",
                &[&seen.batch_id],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            (seen.acknowledged_samples..=seen.attempted_samples).contains(&stored),
            "{}: acknowledged {} attempted {} stored {stored}",
            seen.batch_id,
            seen.acknowledged_samples,
            seen.attempted_samples
        );
        for id in &seen.acknowledged_creates {
            let found = db
                .query("SELECT 1 FROM batches WHERE batch_id = $1", &[id])
                .await
                .unwrap();
            assert_eq!(found.len(), 1, "acknowledged {id} was lost");
        }
        after_restart += seen.acknowledged_creates.len();
    }
    eprintln!(
        "{failures} calls failed UNAVAILABLE during the outage, the slowest after {slowest:?}"
    );
    assert!(failures > 0, "the outage was felt");
    assert!(
        slowest <= TIMEOUT * 2 + Duration::from_millis(500),
        "a call hung for {slowest:?}"
    );
    assert!(after_restart > 0);
}

/// `sslmode=require` makes every connection the service opens use TLS (here
/// to a server with a self-signed certificate); no sslmode keeps plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_connects_with_tls_and_absent_stays_plain() {
    let cluster = tokio::task::spawn_blocking(|| {
        let dir = std::env::temp_dir().join(format!("bh-cert-{:016x}", crate::support::rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(dir.join("server.key"))
            .arg("-out")
            .arg(dir.join("server.crt"))
            .output()
            .expect("openssl makes a self-signed certificate");
        assert!(status.status.success(), "{status:?}");
        crate::support::cluster::hand_over(&dir);
        let cluster = TempCluster::start(&format!(
            "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'",
            dir.display()
        ));
        (cluster, dir)
    })
    .await
    .unwrap();
    let (cluster, cert_dir) = cluster;

    for (query, want_tls) in [("?sslmode=require", true), ("", false)] {
        let url = format!(
            "postgres://postgres:pw@127.0.0.1:{}/postgres{query}",
            cluster.port
        );
        let database = DatabaseConfig {
            pool_max_size: 2,
            ..database_config(&url, Duration::from_secs(2))
        };
        let server = Server::start(serve_config(database)).await;
        let mut client = server.client().await;
        client
            .create_batch(CreateBatchRequest {
                batch_id: format!("tls-{want_tls}"),
                batch: Some(proto::Batch::default()),
            })
            .await
            .unwrap();

        let db = cluster.client("postgres").await;
        let rows = db
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'batch-history'",
                &[],
            )
            .await
            .unwrap();
        assert!(!rows.is_empty(), "the service's connections are visible");
        for row in rows {
            assert_eq!(row.get::<_, bool>(0), want_tls, "{url}");
        }
        server.stop().await;
        // A backend leaves pg_stat_activity only once it has exited, a
        // moment after its client hung up; the next server's connections
        // must be the only ones checked.
        let start = Instant::now();
        while service_backends(&db).await > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the stopped server's connections stay open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = std::fs::remove_dir_all(cert_dir);
}

/// How many backends serve a batch-history process.
async fn service_backends(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'batch-history'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// After a host reboot the service may start before its database (the
/// engine ignores `depends_on` on restart): it waits for it, within
/// `DB_STARTUP_TIMEOUT_MS`, rather than exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_before_its_database_waits_for_it() {
    let cluster = TempCluster::start("");
    tokio::task::block_in_place(|| cluster.stop());
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let mut server = crate::support::process::ServerProcess::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_TIMEOUT_MS", "500"),
        ("DB_STARTUP_TIMEOUT_MS", "30000"),
    ]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!server.healthcheck(&[]), "serving with no database");
    assert!(
        server
            .logs()
            .contains("the database does not answer yet; retrying"),
        "{}",
        server.logs()
    );
    // One stopped while it waits stops at once, gracefully.
    let mut stopped = crate::support::process::ServerProcess::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_STARTUP_TIMEOUT_MS", "30000"),
    ]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stopped.sigterm();
    let status = tokio::task::block_in_place(|| stopped.wait_exit(Duration::from_secs(3)));
    assert!(status.success(), "{status}");

    tokio::task::block_in_place(|| {
        cluster.resume();
        server.wait_serving(Duration::from_secs(20));
    });
    server.sigterm();
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(15)));
    assert!(status.success(), "{status}");
}

/// A cluster of the test's own, and a server on its `postgres` database.
async fn serving_on_a_cluster_of_its_own() -> (TempCluster, Server) {
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(""))
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let server = Server::start(serve_config(database_config(&url, TIMEOUT))).await;
    (cluster, server)
}

/// The message of each write's outage status, with the database gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_says_how_to_retry_it_during_an_outage() {
    let (cluster, server) = serving_on_a_cluster_of_its_own().await;
    let mut client = server.client().await;
    for id in ["finish-me", "save-me"] {
        client
            .create_batch(CreateBatchRequest {
                batch_id: id.into(),
                batch: Some(proto::Batch::default()),
            })
            .await
            .unwrap();
    }
    tokio::task::spawn_blocking(move || {
        cluster.kill();
        cluster
    })
    .await
    .unwrap();

    let progress = |request_id: &str| RecordProgressRequest {
        batch_id: "finish-me".into(),
        samples_delta: 1,
        request_id: request_id.into(),
        ..Default::default()
    };
    let outcomes = [
        (
            "CreateBatch",
            client
                .create_batch(CreateBatchRequest {
                    batch_id: "new".into(),
                    batch: Some(proto::Batch::default()),
                })
                .await
                .map(drop),
            "with the same batch_id",
        ),
        (
            "RecordProgress with a request id",
            client
                .record_progress(progress("6f1c3f7e-6c1b-4a8e-9d3e-2b7f0f3a9c11"))
                .await
                .map(drop),
            "with the same request_id",
        ),
        (
            "RecordProgress without one",
            client.record_progress(progress("")).await.map(drop),
            "had no request_id",
        ),
        (
            "SaveBatch",
            client
                .save_batch(proto::SaveBatchRequest {
                    batch: Some(proto::Batch {
                        batch_id: "save-me".into(),
                        state: proto::batch::State::Running.into(),
                        samples_generated: 3,
                        ..Default::default()
                    }),
                })
                .await
                .map(drop),
            "harmless",
        ),
        (
            "FinishBatch",
            client
                .finish_batch(proto::FinishBatchRequest {
                    batch_id: "finish-me".into(),
                    state: proto::batch::State::Completed.into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "harmless",
        ),
        (
            "DeleteBatch",
            client
                .delete_batch(proto::DeleteBatchRequest {
                    batch_id: "save-me".into(),
                    force: true,
                })
                .await
                .map(drop),
            "harmless",
        ),
        (
            "GetBatch",
            client
                .get_batch(proto::GetBatchRequest {
                    batch_id: "save-me".into(),
                })
                .await
                .map(drop),
            "retry later",
        ),
    ];
    for (call, outcome, advice) in outcomes {
        let status = outcome.expect_err(call);
        eprintln!("{call}: {:?} {}", status.code(), status.message());
        assert_eq!(status.code(), Code::Unavailable, "{call}");
        assert_eq!(error_info(&status).reason, "DATABASE_UNAVAILABLE", "{call}");
        assert!(
            status.message().contains(advice),
            "{call} should advise {advice:?}: {}",
            status.message()
        );
        if call == "CreateBatch" {
            assert!(
                !status.message().contains("request_id"),
                "{}",
                status.message()
            );
        }
    }
    server.stop().await;
}

/// A tablespace on a 16 MiB tmpfs holds the service's database: writes fill
/// it, as a full disk does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_says_so() {
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(""))
        .await
        .unwrap();
    let small = cluster.data().with_file_name("small");
    std::fs::create_dir_all(&small).unwrap();
    if !crate::support::cluster::is_root() {
        // .ci/run is root; a developer's run says what it left out.
        eprintln!("skipped: mounting a tmpfs needs root, as .ci/run has");
        return;
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|status| status.success());
    assert!(mounted, "mount -t tmpfs failed");
    let unmount = Unmount(small.clone());
    crate::support::cluster::hand_over(&small);
    let admin = cluster.client("postgres").await;
    for statement in [
        format!("CREATE TABLESPACE small LOCATION '{}'", small.display()),
        "CREATE DATABASE bh TABLESPACE small".into(),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    let url = format!("postgres://postgres@127.0.0.1:{}/bh", cluster.port);
    let server = Server::start(ServeConfig {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..serve_config(database_config(&url, TIMEOUT))
    })
    .await;
    let mut client = server.client().await;

    let mut created = 0;
    let full = loop {
        // Random text: TOAST cannot compress it away.
        let instruction: String = (0..4_096)
            .map(|_| format!("{:016x}", crate::support::rand_u64()))
            .collect();
        let outcome = client
            .create_batch(CreateBatchRequest {
                batch_id: format!("fill-{created}"),
                batch: Some(proto::Batch {
                    reasoning_instruction: instruction[..60_000].into(),
                    ..Default::default()
                }),
            })
            .await;
        match outcome {
            Ok(_) => created += 1,
            Err(status) => break status,
        }
        assert!(created < 2_000, "16 MiB never filled");
    };
    eprintln!(
        "after {created} creates: {:?} {}",
        full.code(),
        full.message()
    );
    assert_eq!(full.code(), Code::ResourceExhausted);
    let info = error_info(&full);
    assert_eq!(info.reason, "DATABASE_RESOURCE_EXHAUSTED");
    assert_eq!(info.metadata["sqlstate"], "53100");
    assert!(
        full.message().contains("out of disk space"),
        "{}",
        full.message()
    );
    assert!(full.message().contains("53100"), "{}", full.message());
    // Reads still work: the database is full, not down.
    client
        .get_batch(proto::GetBatchRequest {
            batch_id: "fill-0".into(),
        })
        .await
        .unwrap();
    let metrics = crate::support::scrape(server.metrics_addr.unwrap()).await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("batch_history_database_errors_total{class=\"53\"}")),
        "{metrics}"
    );
    server.stop().await;
    drop(admin);
    drop(cluster);
    drop(unmount);
}

/// Unmounts a test's tmpfs when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A database that hangs (every process stopped) ends open watch streams
/// ABORTED within seconds: silence from the feed always means no changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_hear_when_the_database_hangs() {
    let (cluster, server) = serving_on_a_cluster_of_its_own().await;
    let mut client = server.client().await;
    client
        .create_batch(CreateBatchRequest {
            batch_id: "watched".into(),
            batch: Some(proto::Batch::default()),
        })
        .await
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = client
            .watch_batches(proto::WatchBatchesRequest::default())
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().expect("the snapshot");
        streams.push(stream);
    }
    // Past the first heartbeats, so the freeze meets a feed in its stride.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let frozen = Instant::now();
    cluster.freeze();
    let mut ended = Vec::new();
    for mut stream in streams {
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break None,
                    Err(status) => break Some(status.code()),
                }
            }
        })
        .await;
        ended.push((frozen.elapsed(), outcome));
    }
    cluster.thaw();
    eprintln!("frozen; streams ended: {ended:?}");
    for (after, outcome) in &ended {
        assert_eq!(*outcome, Ok(Some(Code::Aborted)), "{ended:?}");
        assert!(*after < Duration::from_secs(4), "{ended:?}");
    }
    server.stop().await;
}
