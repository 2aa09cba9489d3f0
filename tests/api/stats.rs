//! GetBatchStats and the batch metrics read daily totals that every write
//! keeps (migration V9), never the batches themselves: at every moment they
//! must equal a full count of the batches.

use std::collections::BTreeMap;
use std::time::Duration;

use batch_history::config::ServeConfig;
use batch_history::domain::StaleThreshold;
use batch_history::import::{ImportOptions, Source, import_history};
use batch_history::maintenance::Upkeep;
use batch_history::proto::{
    Batch, CreateBatchRequest, DeleteBatchRequest, FinishBatchRequest, GetBatchStatsRequest,
    RecordProgressRequest, SaveBatchRequest, UpdateBatchRequest, batch::State,
    batch_history_client::BatchHistoryClient,
};
use batch_history::store::OnConflict;
use jiff::tz::TimeZone;
use tonic::transport::Channel;

use crate::import::generated_file;
use crate::support::{Server, TestDb, XorShift, rand_u64, scrape, serve_config, timestamp};

const DAY: i64 = 86_400;
const PROVIDERS: [&str; 3] = ["groq", "cerebras", ""];
const MODELS: [&str; 3] = ["llama", "qwen", ""];

/// Totals per (state, provider, model): batches, samples, tokens.
type Groups = BTreeMap<(i32, String, String), (i64, i64, i64)>;

/// One batch as a full count sees it.
#[derive(PartialEq, Debug)]
struct Counted {
    state: i32,
    provider: String,
    model: String,
    start_second: i64,
    samples: i64,
    tokens: i64,
}

#[tokio::test]
async fn stats_equal_a_full_count_after_any_mix_of_writes_imports_purges_and_sweeps() {
    let seed = std::env::var("STATS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| rand_u64() | 1);
    println!("STATS_SEED={seed}");
    let mut random = XorShift(seed);
    let db = TestDb::create().await;
    // The upkeep folds the totals every second, sweeps batches idle for a
    // second and purges those that ended over 30 days ago, all while the
    // writes below run.
    let server = Server::start(ServeConfig {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        upkeep: Upkeep {
            stale_after: Some(StaleThreshold::parse(Duration::from_secs(1)).unwrap()),
            retention: Some(Duration::from_secs(30 * DAY as u64)),
        },
        ..serve_config(db.database_config(Duration::from_secs(10)))
    })
    .await;
    let client = server.client().await;
    let now = jiff::Timestamp::now().as_second();
    let mut ids: Vec<String> = Vec::new();
    for round in 0..8 {
        let writes: Vec<_> = (0..60)
            .map(|i| {
                let op = random.below(7);
                if op == 0 || ids.is_empty() {
                    ids.push(format!("b-{round}-{i}"));
                }
                let id = ids[random.below(ids.len() as u64) as usize].clone();
                write(op, id, &mut random, now, client.clone())
            })
            .collect();
        futures::future::join_all(writes).await;
        if round % 3 == 1 {
            let (file, _) = generated_file(150, random.below(1_000) as u32);
            let options = ImportOptions {
                source: Source::Sqlite(file.0.clone()),
                source_timezone: TimeZone::UTC,
                on_conflict: OnConflict::Skip,
                dry_run: false,
            };
            import_history(&options, &db.database_config(Duration::from_secs(10)))
                .await
                .expect("the import ran");
        }
        assert_stats_equal_a_full_count(&db, &server, &client, &mut random, now, seed).await;
    }
    // Let the sweep stop what is still running and the folds catch up.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_stats_equal_a_full_count(&db, &server, &client, &mut random, now, seed).await;
    let running = db
        .client()
        .await
        .query_one("SELECT count(*) FROM batches WHERE state = 'RUNNING'", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(running, 0, "the sweep ran");
    // Autovacuum would leave a minute of folded changes for every read to
    // scan; the upkeep vacuums them after each fold.
    let vacuumed = db
        .client()
        .await
        .query_one(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'batch_total_changes'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(vacuumed > 0, "the folded changes were never vacuumed");
    server.stop().await;
    db.drop_now().await;
}

/// Write `op` to batch `id`, which may be refused (a finished batch, one
/// that is gone): refusals change nothing, and the count must show it.
fn write(
    op: u64,
    id: String,
    random: &mut XorShift,
    now: i64,
    mut client: BatchHistoryClient<Channel>,
) -> impl Future<Output = ()> + use<> {
    let start = now - random.below(60 * DAY as u64) as i64;
    let batch = Batch {
        batch_id: id.clone(),
        provider: random.pick(&PROVIDERS).into(),
        model: random.pick(&MODELS).into(),
        start_time: Some(timestamp(start)),
        ..Default::default()
    };
    let (samples, tokens) = (random.below(50) as i64, random.below(5_000) as i64);
    let state = random.pick(&[State::Completed, State::Failed, State::Stopped]);
    // Ended 40 days ago (purged at the next upkeep) or now.
    let end_time = (random.below(3) == 0).then(|| timestamp(now - 40 * DAY));
    let force = random.below(2) == 0;
    async move {
        let _ = match op {
            0 => client
                .create_batch(CreateBatchRequest {
                    batch_id: id,
                    batch: Some(batch),
                })
                .await
                .map(drop),
            1 | 2 => client
                .record_progress(RecordProgressRequest {
                    batch_id: id,
                    samples_delta: samples,
                    tokens_delta: tokens,
                    ..Default::default()
                })
                .await
                .map(drop),
            3 => client
                .finish_batch(FinishBatchRequest {
                    batch_id: id,
                    state: state as i32,
                    end_time,
                    ..Default::default()
                })
                .await
                .map(drop),
            4 => client
                .save_batch(SaveBatchRequest {
                    batch: Some(Batch {
                        state: state as i32,
                        samples_generated: samples * 3,
                        total_tokens: tokens * 3,
                        ..batch
                    }),
                })
                .await
                .map(drop),
            5 => client
                .update_batch(UpdateBatchRequest {
                    batch: Some(Batch {
                        batch_id: id,
                        target_count: 10,
                        ..Default::default()
                    }),
                    update_mask: None,
                })
                .await
                .map(drop),
            _ => client
                .delete_batch(DeleteBatchRequest {
                    batch_id: id,
                    force,
                })
                .await
                .map(drop),
        };
    }
}

/// Compares GetBatchStats, for filters the totals answer whole, in part
/// and not at all, and the metrics, with a count of every batch. The
/// upkeep may change batches in between: a comparison counts only when the
/// batches were the same before and after it.
async fn assert_stats_equal_a_full_count(
    db: &TestDb,
    server: &Server,
    client: &BatchHistoryClient<Channel>,
    random: &mut XorShift,
    now: i64,
    seed: u64,
) {
    let midnight = now - now.rem_euclid(DAY);
    let filters = [
        GetBatchStatsRequest::default(),
        GetBatchStatsRequest {
            states: vec![State::Running as i32, State::Stopped as i32],
            provider: random.pick(&PROVIDERS[..2]).into(),
            ..Default::default()
        },
        GetBatchStatsRequest {
            model: random.pick(&MODELS[..2]).into(),
            started_after: Some(timestamp(midnight - 20 * DAY)),
            started_before: Some(timestamp(midnight - 3 * DAY)),
            ..Default::default()
        },
        GetBatchStatsRequest {
            started_after: Some(timestamp(now - random.below(50 * DAY as u64) as i64)),
            started_before: Some(timestamp(now - random.below(10 * DAY as u64) as i64)),
            ..Default::default()
        },
        GetBatchStatsRequest {
            topic_filter: "contracts".into(),
            ..Default::default()
        },
    ];
    for attempt in 0.. {
        let before = counted(db).await;
        let mut answers = Vec::new();
        for filter in &filters {
            let stats = client
                .clone()
                .get_batch_stats(filter.clone())
                .await
                .unwrap()
                .into_inner();
            answers.push(stats);
        }
        let metrics = scrape(server.metrics_addr.unwrap()).await;
        if counted(db).await != before {
            assert!(attempt < 50, "the batches never kept still");
            continue;
        }
        for (filter, stats) in filters.iter().zip(&answers) {
            let expected = groups(&before, filter);
            let mut by_model: BTreeMap<(String, String), (i64, i64, i64)> = BTreeMap::new();
            let mut by_state: BTreeMap<i32, i64> = BTreeMap::new();
            for ((state, provider, model), (count, samples, tokens)) in &expected {
                let totals = by_model
                    .entry((provider.clone(), model.clone()))
                    .or_default();
                *totals = (totals.0 + count, totals.1 + samples, totals.2 + tokens);
                *by_state.entry(*state).or_default() += count;
            }
            let answered_by_model: BTreeMap<_, _> = stats
                .by_model
                .iter()
                .map(|m| {
                    let totals = (m.batch_count, m.samples_generated, m.total_tokens);
                    ((m.provider.clone(), m.model.clone()), totals)
                })
                .collect();
            let answered_by_state: BTreeMap<_, _> = stats
                .by_state
                .iter()
                .map(|s| (s.state, s.batch_count))
                .collect();
            let context = format!("STATS_SEED={seed}, filter {filter:?}");
            assert_eq!(answered_by_model, by_model, "{context}");
            assert_eq!(answered_by_state, by_state, "{context}");
            assert_eq!(
                stats.batch_count,
                by_state.values().sum::<i64>(),
                "{context}"
            );
        }
        for state in [
            State::Running,
            State::Completed,
            State::Stopped,
            State::Failed,
        ] {
            let count = before.iter().filter(|b| b.state == state as i32).count();
            let line = format!(
                "batch_history_batches{{state=\"{}\"}} {count}\n",
                state.as_str_name()
            );
            assert!(
                metrics.contains(&line),
                "STATS_SEED={seed}: no {line:?} in\n{metrics}"
            );
        }
        return;
    }
}

/// Every batch, as a full count reads it.
async fn counted(db: &TestDb) -> Vec<Counted> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT state, provider, model, extract(epoch FROM start_time)::bigint,
                    samples_generated, total_tokens
             FROM batches ORDER BY batch_id",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| Counted {
            state: State::from_str_name(row.get(0)).unwrap() as i32,
            provider: row.get(1),
            model: row.get(2),
            start_second: row.get(3),
            samples: row.get(4),
            tokens: row.get(5),
        })
        .collect()
}

/// The totals of the batches `filter` keeps. Only the filters used above:
/// states, provider, model, start times; a topic keeps none of these
/// batches (the generated legacy ones name none).
fn groups(batches: &[Counted], filter: &GetBatchStatsRequest) -> Groups {
    let mut groups = Groups::new();
    let kept = batches.iter().filter(|b| {
        (filter.states.is_empty() || filter.states.contains(&b.state))
            && (filter.provider.is_empty() || filter.provider == b.provider)
            && (filter.model.is_empty() || filter.model == b.model)
            && filter.topic_filter.is_empty()
            && filter
                .started_after
                .is_none_or(|t| b.start_second >= t.seconds)
            && filter
                .started_before
                .is_none_or(|t| b.start_second < t.seconds)
    });
    for batch in kept {
        let key = (batch.state, batch.provider.clone(), batch.model.clone());
        let totals = groups.entry(key).or_default();
        *totals = (
            totals.0 + 1,
            totals.1 + batch.samples,
            totals.2 + batch.tokens,
        );
    }
    groups
}

/// The upkeep empties the totals' change table every second and vacuums
/// it. That vacuum must not wait for writers to give the emptied pages
/// back: it did, for up to 5 s, past the upkeep's timeout, while writes
/// went on.
#[tokio::test]
async fn vacuuming_the_emptied_changes_waits_for_no_writer() {
    let db = TestDb::create().await;
    batch_history::store::migrate(&db.config, Duration::from_secs(5))
        .await
        .unwrap();
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO batch_total_changes
             SELECT current_date, 'RUNNING', 'groq', 'm', 0, 0, 0 FROM generate_series(1, 20000);
             DELETE FROM batch_total_changes;",
        )
        .await
        .unwrap();
    // What every writer holds on the table while its transaction lasts.
    let writer = db.client().await;
    writer
        .batch_execute("BEGIN; LOCK TABLE batch_total_changes IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    client
        .batch_execute("VACUUM batch_total_changes")
        .await
        .unwrap();
    let took = started.elapsed();
    writer.batch_execute("ROLLBACK").await.unwrap();
    assert!(took < Duration::from_secs(2), "VACUUM took {took:?}");
}
