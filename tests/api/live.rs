//! Watch streams, stats, the stale-batch sweep and retention.

use std::time::Duration;

use batch_history::config::ServeConfig;
use batch_history::domain::StaleThreshold;
use batch_history::maintenance::Upkeep;
use batch_history::proto::{
    self, BatchEvent, CreateBatchRequest, DeleteBatchRequest, FinishBatchRequest, GetBatchRequest,
    GetBatchStatsRequest, PurgeBatchesRequest, RecordProgressRequest, SweepStaleBatchesRequest,
    WatchBatchRequest, WatchBatchesRequest, batch::State, batch_event::Kind,
    batch_history_client::BatchHistoryClient,
};
use tonic::{Code, Streaming, transport::Channel};

use crate::support::{Server, TestApp, TestDb, error_info, serve_config, timestamp};

const SOON: Duration = Duration::from_secs(1);

async fn next(stream: &mut Streaming<BatchEvent>) -> BatchEvent {
    tokio::time::timeout(SOON, stream.message())
        .await
        .expect("an event within a second")
        .expect("no error")
        .expect("the stream goes on")
}

/// A WatchBatch stream of `batch_id`.
async fn watch_one(client: &BatchHistoryClient<Channel>, batch_id: &str) -> Streaming<BatchEvent> {
    client
        .clone()
        .watch_batch(WatchBatchRequest {
            batch_id: batch_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// A WatchBatches stream for `request`.
async fn watch_all(
    client: &BatchHistoryClient<Channel>,
    request: WatchBatchesRequest,
) -> Streaming<BatchEvent> {
    client
        .clone()
        .watch_batches(request)
        .await
        .unwrap()
        .into_inner()
}

fn progress(batch_id: &str, samples: i64) -> RecordProgressRequest {
    RecordProgressRequest {
        batch_id: batch_id.into(),
        samples_delta: samples,
        ..Default::default()
    }
}

/// A second server on `db`, with `upkeep`.
async fn replica(db: &TestDb, upkeep: Upkeep) -> Server {
    Server::start(ServeConfig {
        upkeep,
        ..serve_config(db.database_config(Duration::from_secs(5)))
    })
    .await
}

#[tokio::test]
async fn watch_batch_streams_its_changes_until_it_finishes() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("w", "groq").await;
    let mut stream = watch_one(&client, "w").await;
    let snapshot = next(&mut stream).await;
    assert_eq!(snapshot.kind(), Kind::Snapshot);
    assert_eq!(snapshot.batch.unwrap().state(), State::Running);

    client.record_progress(progress("w", 3)).await.unwrap();
    let update = next(&mut stream).await;
    assert_eq!(update.kind(), Kind::Updated);
    assert_eq!(update.batch.unwrap().samples_generated, 3);

    client
        .finish_batch(FinishBatchRequest {
            batch_id: "w".into(),
            state: State::Completed as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut stream).await.batch.unwrap().state(),
        State::Completed
    );
    let end = tokio::time::timeout(SOON, stream.message()).await.unwrap();
    assert!(
        matches!(end, Ok(None)),
        "the stream ends once the batch finished: {end:?}"
    );

    let status = client
        .watch_batch(WatchBatchRequest {
            batch_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn a_change_through_one_replica_reaches_a_watcher_on_another() {
    let app = TestApp::spawn().await;
    let other = replica(&app.db, Upkeep::default()).await;
    let other_client = other.client().await;
    app.create("already-running", "groq").await;
    app.create("other-provider", "cerebras").await;

    let mut stream = watch_all(
        &other_client,
        WatchBatchesRequest {
            provider: "groq".into(),
            ..Default::default()
        },
    )
    .await;
    let snapshot = next(&mut stream).await;
    assert_eq!(snapshot.kind(), Kind::Snapshot);
    assert_eq!(snapshot.batch.unwrap().batch_id, "already-running");

    let started = std::time::Instant::now();
    app.create("fresh", "groq").await;
    let created = next(&mut stream).await;
    eprintln!("seen on the other replica after {:?}", started.elapsed());
    assert_eq!(created.kind(), Kind::Created);
    assert_eq!(created.batch.unwrap().batch_id, "fresh");

    // Not matching the filter: not sent. Then a matching change and a delete.
    app.create("cerebras-2", "cerebras").await;
    app.client
        .clone()
        .record_progress(progress("fresh", 2))
        .await
        .unwrap();
    let update = next(&mut stream).await;
    assert_eq!(update.kind(), Kind::Updated);
    assert_eq!(update.batch.unwrap().batch_id, "fresh");
    app.client
        .clone()
        .delete_batch(DeleteBatchRequest {
            batch_id: "fresh".into(),
            force: true,
        })
        .await
        .unwrap();
    let deleted = next(&mut stream).await;
    assert_eq!(deleted.kind(), Kind::Deleted);
    assert_eq!(deleted.batch.unwrap().batch_id, "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_progress_reaches_watchers_in_order_and_once() {
    let app = TestApp::spawn().await;
    app.create("hot", "groq").await;
    let client = app.client.clone();
    let mut one = watch_one(&client, "hot").await;
    let mut all = watch_all(&client, WatchBatchesRequest::default()).await;
    assert_eq!(next(&mut one).await.kind(), Kind::Snapshot);
    assert_eq!(next(&mut all).await.kind(), Kind::Snapshot);

    const WORKERS: i64 = 8;
    const REPORTS: i64 = 50;
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                for _ in 0..REPORTS {
                    client.record_progress(progress("hot", 1)).await.unwrap();
                }
            })
        })
        .collect();
    // Every report adds a sample, so in each stream the samples must
    // strictly increase (no change repeated, none older than one sent), up
    // to the final count.
    let read = |mut stream: Streaming<BatchEvent>| async move {
        let mut samples = Vec::new();
        loop {
            let batch = next(&mut stream).await.batch.unwrap();
            samples.push(batch.samples_generated);
            if batch.samples_generated == WORKERS * REPORTS {
                return samples;
            }
        }
    };
    let (one, all) = tokio::join!(read(one), read(all));
    for worker in workers {
        worker.await.unwrap();
    }
    for samples in [one, all] {
        assert!(
            samples.windows(2).all(|pair| pair[0] < pair[1]),
            "each event is news: {samples:?}"
        );
    }
}

#[tokio::test]
async fn state_filtered_watchers_see_finishes_and_their_deletions() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("a", "groq").await;
    app.create("b", "groq").await;
    let watch = |state: State| {
        watch_all(
            &app.client,
            WatchBatchesRequest {
                states: vec![state as i32],
                provider: "groq".into(),
                ..Default::default()
            },
        )
    };
    let mut running = watch(State::Running).await;
    let mut completed = watch(State::Completed).await;
    assert_eq!(next(&mut running).await.kind(), Kind::Snapshot);
    assert_eq!(next(&mut running).await.kind(), Kind::Snapshot);

    client
        .finish_batch(FinishBatchRequest {
            batch_id: "a".into(),
            state: State::Completed as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    for stream in [&mut running, &mut completed] {
        let finished = next(stream).await;
        assert_eq!(finished.kind(), Kind::Updated);
        assert_eq!(finished.batch.unwrap().state(), State::Completed);
    }

    // A finished batch's deletion is for those whose filter keeps finished
    // batches; a running one's for those who watch running ones.
    for batch_id in ["a", "b"] {
        client
            .delete_batch(DeleteBatchRequest {
                batch_id: batch_id.into(),
                force: true,
            })
            .await
            .unwrap();
    }
    app.create("c", "cerebras").await;
    app.create("d", "groq").await;
    let deleted = next(&mut running).await;
    assert_eq!(
        (deleted.kind(), deleted.batch.unwrap().batch_id.as_str()),
        (Kind::Deleted, "b")
    );
    let created = next(&mut running).await;
    assert_eq!(
        (created.kind(), created.batch.unwrap().batch_id.as_str()),
        (Kind::Created, "d")
    );
    let deleted = next(&mut completed).await;
    assert_eq!(
        (deleted.kind(), deleted.batch.unwrap().batch_id.as_str()),
        (Kind::Deleted, "a")
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), completed.message()).await;
    assert!(
        quiet.is_err(),
        "nothing else is for COMPLETED watchers: {quiet:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_waits_for_unannounced_writes_without_stalling_others() {
    let app = TestApp::spawn().await;
    app.create("w", "groq").await;
    app.create("x", "groq").await;
    // A write that began while nobody watched, so it is not announced.
    let mut db = app.db.client().await;
    let early = db.transaction().await.unwrap();
    early
        .execute(
            "UPDATE batches SET samples_generated = 7 WHERE batch_id = 'w'",
            &[],
        )
        .await
        .unwrap();

    let client = app.client.clone();
    let watch = tokio::spawn(async move { watch_one(&client, "w").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!watch.is_finished(), "the watch waits for the write");
    tokio::time::timeout(
        Duration::from_millis(500),
        app.client.clone().record_progress(progress("x", 1)),
    )
    .await
    .expect("other writes go on meanwhile")
    .unwrap();

    early.commit().await.unwrap();
    let mut stream = tokio::time::timeout(SOON, watch).await.unwrap().unwrap();
    let snapshot = next(&mut stream).await;
    assert_eq!(snapshot.batch.unwrap().samples_generated, 7);
}

/// A transaction that stays open holds back only its own changes: the
/// feed reads what committed since its last read, not what is older than
/// the oldest transaction still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_holds_back_only_its_own_changes() {
    let app = TestApp::spawn().await;
    app.create("long", "groq").await;
    app.create("short", "groq").await;
    let mut stream = watch_all(&app.client, WatchBatchesRequest::default()).await;
    for _ in 0..2 {
        assert_eq!(next(&mut stream).await.kind(), Kind::Snapshot);
    }
    let mut db = app.db.client().await;
    let long = db.transaction().await.unwrap();
    long.execute(
        "UPDATE batches SET samples_generated = 7, version = version + 1
         WHERE batch_id = 'long'",
        &[],
    )
    .await
    .unwrap();

    app.client
        .clone()
        .record_progress(progress("short", 1))
        .await
        .unwrap();
    let update = next(&mut stream).await.batch.unwrap();
    assert_eq!(
        (update.batch_id.as_str(), update.samples_generated),
        ("short", 1)
    );

    long.commit().await.unwrap();
    let update = next(&mut stream).await.batch.unwrap();
    assert_eq!(
        (update.batch_id.as_str(), update.samples_generated),
        ("long", 7)
    );
}

#[tokio::test]
async fn watching_clears_the_lapsed_leases_of_replicas_gone() {
    let app = TestApp::spawn().await;
    app.create("w", "groq").await;
    let db = app.db.client().await;
    db.batch_execute(
        "INSERT INTO batch_watch_leases (replica, expires_at)
         SELECT 'gone-' || i, now() - interval '1 hour' FROM generate_series(1, 100) AS i",
    )
    .await
    .unwrap();
    let mut stream = watch_one(&app.client, "w").await;
    next(&mut stream).await;
    let leases: i64 = db
        .query_one("SELECT count(*) FROM batch_watch_leases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leases, 1, "only this server's live lease is left");
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_unavailable_at_once() {
    let app = TestApp::spawn().await;
    app.create("w", "groq").await;
    let client = app.client.clone();
    let mut one = watch_one(&client, "w").await;
    let mut all = watch_all(&client, WatchBatchesRequest::default()).await;
    next(&mut one).await;
    next(&mut all).await;

    // Well within the drain timeout: watchers do not hold the server open.
    let stopping = tokio::spawn(app.stop());
    for stream in [&mut one, &mut all] {
        let end = tokio::time::timeout(SOON, stream.message())
            .await
            .expect("the stream ends at once");
        assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    }
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .expect("the server stops without waiting out the drain timeout")
        .unwrap();
}

#[tokio::test]
async fn a_large_snapshot_streams_whole_then_changes_follow() {
    let app = TestApp::spawn().await;
    const RUNNING: usize = 3_000;
    app.db
        .client()
        .await
        .batch_execute(&format!(
            "INSERT INTO batches (batch_id, state, provider, start_time, update_time)
             SELECT 'running-' || i, 'RUNNING', 'groq', now(), now()
             FROM generate_series(1, {RUNNING}) AS i"
        ))
        .await
        .unwrap();
    let mut stream = watch_all(&app.client, WatchBatchesRequest::default()).await;
    let mut snapshot = std::collections::HashSet::new();
    for _ in 0..RUNNING {
        let event = next(&mut stream).await;
        assert_eq!(event.kind(), Kind::Snapshot);
        snapshot.insert(event.batch.unwrap().batch_id);
    }
    assert_eq!(snapshot.len(), RUNNING);
    app.create("after", "groq").await;
    let created = next(&mut stream).await;
    assert_eq!(
        (created.kind(), created.batch.unwrap().batch_id.as_str()),
        (Kind::Created, "after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_cut_off_without_holding_back_others() {
    let app = TestApp::spawn().await;
    app.create("busy", "groq").await;
    let client = app.client.clone();
    // Never read: it falls behind.
    let mut slow = watch_all(&client, WatchBatchesRequest::default()).await;
    let mut prompt = watch_one(&client, "busy").await;
    next(&mut prompt).await;
    let reader = tokio::spawn(async move {
        let mut updates = 0;
        while let Ok(Some(event)) = prompt.message().await {
            updates += 1;
            if event.batch.unwrap().samples_generated == 1_000 {
                return updates;
            }
        }
        updates
    });
    // Distinct, large batches: the changes cannot be coalesced, and they
    // overflow the HTTP/2 windows and the watcher's buffer.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                for n in 0..250 {
                    client
                        .create_batch(CreateBatchRequest {
                            batch_id: format!("flood-{w}-{n}"),
                            batch: Some(proto::Batch {
                                reasoning_instruction: "x".repeat(30_000),
                                ..Default::default()
                            }),
                        })
                        .await
                        .unwrap();
                    client.record_progress(progress("busy", 1)).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let updates = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(updates >= 1, "the prompt watcher kept up");

    let mut events = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), slow.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => events += 1,
            other => break other,
        }
    };
    let status = ended.expect_err("the slow watcher's stream ends with a status");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("fresh snapshot"));
    assert_eq!(error_info(&status).reason, "WATCHER_FELL_BEHIND");
    assert!(events < 1_001, "it was cut off, after {events} events");
    eprintln!("the slow watcher was cut off after {events} events");
}

#[tokio::test]
async fn stats_total_the_filtered_batches() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    for (id, provider, model, samples) in [
        ("a", "groq", "llama", 5),
        ("b", "groq", "llama", 7),
        ("c", "groq", "qwen", 11),
        ("d", "cerebras", "llama", 13),
    ] {
        client
            .create_batch(CreateBatchRequest {
                batch_id: id.into(),
                batch: Some(proto::Batch {
                    provider: provider.into(),
                    model: model.into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        client
            .record_progress(RecordProgressRequest {
                tokens_delta: samples * 100,
                ..progress(id, samples)
            })
            .await
            .unwrap();
    }
    client
        .finish_batch(FinishBatchRequest {
            batch_id: "a".into(),
            state: State::Completed as i32,
            ..Default::default()
        })
        .await
        .unwrap();

    let all = client
        .get_batch_stats(GetBatchStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (all.batch_count, all.samples_generated, all.total_tokens),
        (4, 36, 3_600)
    );
    let states: Vec<(i32, i64)> = all
        .by_state
        .iter()
        .map(|s| (s.state, s.batch_count))
        .collect();
    assert_eq!(
        states,
        [(State::Running as i32, 3), (State::Completed as i32, 1)]
    );
    let top = &all.by_model[0];
    assert_eq!(
        (
            top.provider.as_str(),
            top.model.as_str(),
            top.batch_count,
            top.samples_generated
        ),
        ("groq", "llama", 2, 12)
    );
    assert_eq!(all.by_model.len(), 3);

    let groq_running = client
        .get_batch_stats(GetBatchStatsRequest {
            provider: "groq".into(),
            states: vec![State::Running as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (groq_running.batch_count, groq_running.samples_generated),
        (2, 18)
    );

    let status = client
        .get_batch_stats(GetBatchStatsRequest {
            states: vec![9],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn stats_saturate_instead_of_failing_on_huge_totals() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    for batch_id in ["big-1", "big-2"] {
        app.create(batch_id, "groq").await;
        client
            .record_progress(RecordProgressRequest {
                batch_id: batch_id.into(),
                tokens_delta: i64::MAX,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let stats = client
        .get_batch_stats(GetBatchStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.batch_count, stats.total_tokens), (2, i64::MAX));
    assert_eq!(stats.by_model[0].total_tokens, i64::MAX);
}

#[tokio::test]
async fn the_sweep_stops_only_stale_batches_and_says_why() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("stale", "groq").await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    app.create("fresh", "groq").await;

    let swept = client
        .sweep_stale_batches(SweepStaleBatchesRequest {
            stale_after: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = swept.stopped.iter().map(|b| b.batch_id.as_str()).collect();
    assert_eq!(ids, ["stale"]);
    let stale = client
        .get_batch(GetBatchRequest {
            batch_id: "stale".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stale.state(), State::Stopped);
    assert!(stale.end_time.is_some());
    assert!(
        stale.errors[0].message.contains("stale-batch sweep"),
        "{:?}",
        stale.errors
    );
    let fresh = client
        .get_batch(GetBatchRequest {
            batch_id: "fresh".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.state(), State::Running);

    // Too short, and longer than PostgreSQL can subtract from now.
    for seconds in [0, 315_576_000_000] {
        let status = client
            .sweep_stale_batches(SweepStaleBatchesRequest {
                stale_after: Some(prost_types::Duration { seconds, nanos: 5 }),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("stale_after"), "{status:?}");
    }
}

#[tokio::test]
async fn background_upkeep_sweeps_and_purges() {
    // The only server on its database: the one that holds the upkeep lock
    // applies its own settings.
    let db = TestDb::create().await;
    let sweeper = replica(
        &db,
        Upkeep {
            stale_after: Some(StaleThreshold::parse(Duration::from_secs(1)).unwrap()),
            retention: Some(Duration::from_secs(86_400)),
        },
    )
    .await;
    let mut client = sweeper.client().await;
    client
        .create_batch(CreateBatchRequest {
            batch_id: "old".into(),
            batch: Some(proto::Batch {
                start_time: Some(timestamp(1_600_000_000)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    client
        .finish_batch(FinishBatchRequest {
            batch_id: "old".into(),
            state: State::Completed as i32,
            end_time: Some(timestamp(1_600_000_600)),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .create_batch(CreateBatchRequest {
            batch_id: "forgotten".into(),
            batch: Some(proto::Batch::default()),
        })
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let old = client
            .get_batch(GetBatchRequest {
                batch_id: "old".into(),
            })
            .await;
        let forgotten = client
            .get_batch(GetBatchRequest {
                batch_id: "forgotten".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if let Err(status) = &old
            && forgotten.state() == State::Stopped
        {
            assert_eq!(status.code(), Code::NotFound);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upkeep did not run: {forgotten:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn purge_deletes_old_finished_batches_or_counts_them() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    for (id, state) in [
        ("old-done", State::Completed),
        ("old-failed", State::Failed),
    ] {
        client
            .create_batch(CreateBatchRequest {
                batch_id: id.into(),
                batch: Some(proto::Batch {
                    start_time: Some(timestamp(1_600_000_000)),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        client
            .finish_batch(FinishBatchRequest {
                batch_id: id.into(),
                state: state as i32,
                end_time: Some(timestamp(1_600_000_060)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // As old as the others: only being RUNNING keeps it from every purge.
    client
        .create_batch(CreateBatchRequest {
            batch_id: "old-running".into(),
            batch: Some(proto::Batch {
                start_time: Some(timestamp(1_600_000_000)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let request = |states: Vec<i32>, dry_run| PurgeBatchesRequest {
        older_than: Some(timestamp(1_700_000_000)),
        states,
        dry_run,
    };

    let counted = client
        .purge_batches(request(vec![], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counted.purged_count, 2);
    let failed_only = client
        .purge_batches(request(vec![State::Failed as i32], false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed_only.purged_count, 1);
    let rest = client
        .purge_batches(request(vec![], false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.purged_count, 1);
    let left: i64 = app.db.count_rows("batches").await;
    assert_eq!(left, 1, "the running batch stays");
    let kept = client
        .get_batch(proto::GetBatchRequest {
            batch_id: "old-running".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.state(), State::Running);

    let status = client
        .purge_batches(request(vec![State::Running as i32], false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .purge_batches(PurgeBatchesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}
