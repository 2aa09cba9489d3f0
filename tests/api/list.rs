//! ListBatches: order, filters, page sizes and keyset page tokens.

use std::collections::HashSet;

use batch_history::proto::{
    self, CreateBatchRequest, FinishBatchRequest, ListBatchesRequest, batch::State,
    batch_history_client::BatchHistoryClient, list_batches_request::Order,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{TestApp, XorShift, assert_invalid, timestamp};

/// Creates `count` batches one minute apart from `first_second`, alternating
/// providers, and returns their ids oldest first.
async fn seed(app: &TestApp, count: usize, first_second: i64) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(50) {
        let creates = chunk.iter().map(|&i| {
            let mut client = app.client.clone();
            async move {
                client
                    .create_batch(CreateBatchRequest {
                        batch_id: format!("seed-{i:05}"),
                        batch: Some(proto::Batch {
                            provider: if i % 2 == 0 { "groq" } else { "cerebras" }.into(),
                            model: "m".into(),
                            start_time: Some(timestamp(first_second + 60 * i as i64)),
                            ..Default::default()
                        }),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .batch_id
            }
        });
        ids.extend(futures::future::join_all(creates).await);
    }
    ids
}

async fn list_all(app: &TestApp, request: ListBatchesRequest) -> Vec<String> {
    list_with(&app.client, request).await
}

/// The ids of every page of `request`, in order.
pub(crate) async fn list_with(
    client: &BatchHistoryClient<Channel>,
    request: ListBatchesRequest,
) -> Vec<String> {
    let mut client = client.clone();
    let mut request = request;
    let mut ids = Vec::new();
    loop {
        let page = client
            .list_batches(request.clone())
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.batches.into_iter().map(|b| b.batch_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        request.page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn lists_newest_first_by_default_and_oldest_first_on_request() {
    let app = TestApp::spawn().await;
    let ids = seed(&app, 7, 1_700_000_000).await;

    let newest_first = list_all(
        &app,
        ListBatchesRequest {
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(newest_first, expected);

    let oldest_first = list_all(
        &app,
        ListBatchesRequest {
            page_size: 2,
            order: Order::StartTimeAsc as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(oldest_first, ids);
}

#[tokio::test]
async fn page_sizes_default_cap_and_reject_negatives() {
    let app = TestApp::spawn().await;
    seed(&app, 1_050, 1_700_000_000).await;
    let mut client = app.client.clone();

    let page = client
        .list_batches(ListBatchesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.batches.len(), 50);
    assert!(!page.next_page_token.is_empty());

    let page = client
        .list_batches(ListBatchesRequest {
            page_size: 5_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.batches.len(), 1_000);

    assert_invalid(
        client
            .list_batches(ListBatchesRequest {
                page_size: -1,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "page_size",
    );
}

#[tokio::test]
async fn the_last_page_has_an_empty_token() {
    let app = TestApp::spawn().await;
    seed(&app, 4, 1_700_000_000).await;
    let mut client = app.client.clone();
    let page = client
        .list_batches(ListBatchesRequest {
            page_size: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.batches.len(), 4);
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn filters_combine_with_and() {
    let app = TestApp::spawn().await;
    let ids = seed(&app, 20, 1_700_000_000).await;
    let mut client = app.client.clone();
    for id in &ids[..4] {
        client
            .finish_batch(FinishBatchRequest {
                batch_id: id.clone(),
                state: State::Completed as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    let groq = list_all(
        &app,
        ListBatchesRequest {
            provider: "groq".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(groq.len(), 10);

    let completed_groq = list_all(
        &app,
        ListBatchesRequest {
            provider: "groq".into(),
            states: vec![State::Completed as i32],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(completed_groq, vec![ids[2].clone(), ids[0].clone()]);

    let any_of = list_all(
        &app,
        ListBatchesRequest {
            states: vec![
                State::Completed as i32,
                State::Failed as i32,
                State::Completed as i32,
            ],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(any_of.len(), 4);

    // started_after is inclusive, started_before exclusive.
    let window = list_all(
        &app,
        ListBatchesRequest {
            started_after: Some(timestamp(1_700_000_000 + 60 * 5)),
            started_before: Some(timestamp(1_700_000_000 + 60 * 8)),
            order: Order::StartTimeAsc as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(window, ids[5..8].to_vec());

    let nothing = list_all(
        &app,
        ListBatchesRequest {
            model: "other".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(nothing.is_empty());
}

#[tokio::test]
async fn paging_is_stable_while_batches_are_created() {
    let app = TestApp::spawn().await;
    let existing: HashSet<String> = seed(&app, 1_000, 1_700_000_000).await.into_iter().collect();

    // Writers keep creating batches, some newer and some older than every
    // existing one, for as long as the listing runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut client = app.client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0_i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let second = if n % 2 == 0 {
                        1_800_000_000 + n
                    } else {
                        1_600_000_000 - n
                    };
                    client
                        .create_batch(CreateBatchRequest {
                            batch_id: format!("new-{w}-{n}"),
                            batch: Some(proto::Batch {
                                start_time: Some(timestamp(second)),
                                ..Default::default()
                            }),
                        })
                        .await
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();

    let listed = list_all(
        &app,
        ListBatchesRequest {
            page_size: 37,
            ..Default::default()
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut created = 0;
    for writer in writers {
        created += writer.await.unwrap();
    }
    assert!(created > 0, "the writers ran concurrently");

    let mut seen = HashSet::new();
    for id in &listed {
        assert!(seen.insert(id.clone()), "{id} listed twice");
    }
    let missing: Vec<_> = existing.difference(&seen).collect();
    assert!(missing.is_empty(), "skipped: {missing:?}");
}

#[tokio::test]
async fn tokens_are_bound_to_their_listing_and_tamper_evident() {
    let app = TestApp::spawn().await;
    seed(&app, 10, 1_700_000_000).await;
    let mut client = app.client.clone();
    let first = ListBatchesRequest {
        page_size: 3,
        provider: "groq".into(),
        ..Default::default()
    };
    let token = client
        .list_batches(first.clone())
        .await
        .unwrap()
        .into_inner()
        .next_page_token;

    let same = client
        .list_batches(ListBatchesRequest {
            page_token: token.clone(),
            ..first.clone()
        })
        .await;
    assert!(same.is_ok());

    for other in [
        ListBatchesRequest {
            provider: "cerebras".into(),
            ..first.clone()
        },
        ListBatchesRequest {
            order: Order::StartTimeAsc as i32,
            ..first.clone()
        },
        ListBatchesRequest {
            states: vec![State::Running as i32],
            ..first.clone()
        },
    ] {
        let status = client
            .list_batches(ListBatchesRequest {
                page_token: token.clone(),
                ..other
            })
            .await
            .unwrap_err();
        assert_invalid(status, "page_token");
    }

    let mut tampered = token.into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    for bad in [
        String::from_utf8(tampered).unwrap(),
        "garbage".into(),
        "%%%".into(),
    ] {
        let status = client
            .list_batches(ListBatchesRequest {
                page_token: bad,
                ..first.clone()
            })
            .await
            .unwrap_err();
        assert_invalid(status, "page_token");
    }
}

#[tokio::test]
async fn list_rejects_invalid_filters() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let cases = [
        (
            ListBatchesRequest {
                states: vec![State::Running as i32, 9],
                ..Default::default()
            },
            "states[1]",
        ),
        (
            ListBatchesRequest {
                states: vec![0],
                ..Default::default()
            },
            "states[0]",
        ),
        (
            ListBatchesRequest {
                order: 7,
                ..Default::default()
            },
            "order",
        ),
        (
            ListBatchesRequest {
                provider: "a\u{7}".into(),
                ..Default::default()
            },
            "provider",
        ),
        (
            ListBatchesRequest {
                started_before: Some(prost_types::Timestamp {
                    seconds: i64::MIN,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "started_before",
        ),
    ];
    for (request, field) in cases {
        let status = client.list_batches(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_invalid(status, field);
    }
}

/// The listing's SQL, the stats' (daily totals, part days counted one by
/// one) and the in-memory filter that watches use select the same batches,
/// for many random filters over random batches. A seed is printed;
/// `FILTER_SEED=<seed>` repeats a run.
#[tokio::test]
async fn sql_and_in_memory_filters_select_the_same_batches() {
    use batch_history::domain::{BatchFilter, BatchLabels, Facets, Texts};

    let seed = std::env::var("FILTER_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("FILTER_SEED={seed}");
    let mut random = XorShift(seed);
    let app = TestApp::spawn().await;
    let (providers, models) = (["groq", "cerebras", ""], ["llama", "qwen"]);
    let (topics, difficulties) = (["", "contracts", "torts"], ["", "basic", "advanced"]);
    let (envs, teams) = (
        [None, Some("prod"), Some("dev")],
        [None, Some("a"), Some("b")],
    );
    // Ten UTC days from a midnight, so that stats are answered from daily
    // totals and the part days at a filter's ends are counted one by one.
    const FIRST_SECOND: i64 = 1_759_968_000;
    const SPAN: u64 = 10 * 86_400;
    let creates = (0..240).map(|i| {
        let mut client = app.client.clone();
        let batch = proto::Batch {
            provider: random.pick(&providers).into(),
            model: random.pick(&models).into(),
            topic_filter: random.pick(&topics).into(),
            difficulty_filter: random.pick(&difficulties).into(),
            labels: [("env", random.pick(&envs)), ("team", random.pick(&teams))]
                .into_iter()
                .filter_map(|(key, value)| value.map(|v| (key.to_owned(), v.to_owned())))
                .collect(),
            start_time: Some(timestamp(FIRST_SECOND + random.below(SPAN) as i64)),
            ..Default::default()
        };
        let ending = random.pick(&[None, Some(State::Completed), Some(State::Failed)]);
        async move {
            let batch_id = format!("random-{i:03}");
            client
                .create_batch(CreateBatchRequest {
                    batch_id: batch_id.clone(),
                    batch: Some(batch),
                })
                .await
                .unwrap();
            if let Some(state) = ending {
                client
                    .finish_batch(FinishBatchRequest {
                        batch_id,
                        state: state as i32,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }
    });
    futures::future::join_all(creates).await;
    let mut client = app.client.clone();
    let everything = client
        .list_batches(ListBatchesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batches;
    assert_eq!(everything.len(), 240);
    let states = [
        State::Running,
        State::Completed,
        State::Failed,
        State::Stopped,
    ];
    let db = app.db.client().await;
    for round in 0..150 {
        // Stats add up folded totals and changes not yet folded alike.
        if random.below(10) == 0 {
            db.execute("SELECT batch_totals_fold()", &[]).await.unwrap();
        }
        let wanted = |random: &mut XorShift, values: &[&str]| {
            if random.below(2) == 0 {
                String::new()
            } else {
                random.pick(values).to_string()
            }
        };
        let bound = |random: &mut XorShift| {
            (random.below(3) == 0).then(|| match random.below(2) {
                0 => timestamp(FIRST_SECOND + random.below(SPAN) as i64),
                _ => timestamp(FIRST_SECOND + random.below(11) as i64 * 86_400),
            })
        };
        let request = proto::WatchBatchesRequest {
            states: states
                .iter()
                .filter(|_| random.below(3) == 0)
                .map(|state| *state as i32)
                .collect(),
            provider: wanted(&mut random, &providers[..2]),
            model: wanted(&mut random, &models),
            topic_filter: wanted(&mut random, &topics[1..]),
            difficulty_filter: wanted(&mut random, &difficulties[1..]),
            started_after: bound(&mut random),
            started_before: bound(&mut random),
            labels: [("env", &envs[1..]), ("team", &teams[1..])]
                .into_iter()
                .filter_map(|(key, values)| {
                    let value = random.pick(values).unwrap();
                    (random.below(3) == 0).then(|| (key.to_owned(), value.to_owned()))
                })
                .collect(),
        };
        let filter = BatchFilter::try_from(request.clone()).unwrap();
        let labels: Vec<BatchLabels> = everything
            .iter()
            .map(|batch| BatchLabels::parse(batch.labels.clone(), "labels").unwrap())
            .collect();
        let mut in_memory: Vec<&str> = everything
            .iter()
            .zip(&labels)
            .filter(|(batch, labels)| {
                filter.matches(Facets {
                    state: batch_history::domain::State::from_name(batch.state().as_str_name())
                        .unwrap(),
                    texts: Texts {
                        provider: &batch.provider,
                        model: &batch.model,
                        topic_filter: &batch.topic_filter,
                        difficulty_filter: &batch.difficulty_filter,
                    },
                    labels,
                    start_time: jiff::Timestamp::from_second(batch.start_time.unwrap().seconds)
                        .unwrap(),
                })
            })
            .map(|(batch, _)| batch.batch_id.as_str())
            .collect();
        in_memory.sort_unstable();
        let listed = client
            .list_batches(ListBatchesRequest {
                states: request.states.clone(),
                provider: request.provider.clone(),
                model: request.model.clone(),
                topic_filter: request.topic_filter.clone(),
                difficulty_filter: request.difficulty_filter.clone(),
                started_after: request.started_after,
                started_before: request.started_before,
                labels: request.labels.clone(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .batches;
        let mut in_sql: Vec<&str> = listed.iter().map(|b| b.batch_id.as_str()).collect();
        in_sql.sort_unstable();
        assert_eq!(
            in_sql, in_memory,
            "round {round}, FILTER_SEED={seed}: {request:?}"
        );
        let stats = client
            .get_batch_stats(proto::GetBatchStatsRequest {
                states: request.states.clone(),
                provider: request.provider.clone(),
                model: request.model.clone(),
                topic_filter: request.topic_filter.clone(),
                difficulty_filter: request.difficulty_filter.clone(),
                started_after: request.started_after,
                started_before: request.started_before,
                labels: request.labels.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            stats.batch_count,
            in_memory.len() as i64,
            "round {round}, FILTER_SEED={seed}: stats of {request:?}"
        );
    }
    app.stop().await;
}
