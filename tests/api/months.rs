//! The history split by month (migration V11): the migration of a populated
//! single table, months added on demand, and retention by dropping a month.

use std::time::Duration;

use batch_history::config::ServeConfig;
use batch_history::domain::StaleThreshold;
use batch_history::maintenance::Upkeep;
use batch_history::proto::{
    self, CreateBatchRequest, DeleteBatchRequest, FinishBatchRequest, GetBatchRequest,
    GetBatchStatsRequest, ListBatchesRequest, RecordProgressRequest, SaveBatchRequest,
    batch::State, batch_history_client::BatchHistoryClient,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::list::list_with;
use crate::support::{Server, TestDb, column, database_config, serve_config, timestamp};

mod before_months {
    refinery::embed_migrations!("migrations");
}

/// Every batch, as text, in id order: equal before and after a migration
/// that must lose and change nothing.
const ALL_BATCHES: &str = "SELECT string_agg(b::text, E'\\n' ORDER BY batch_id) FROM batches b";

const WHOLE_COUNT: &str = "SELECT count(*) FROM batches";

async fn start(db: &TestDb, upkeep: Upkeep) -> Server {
    Server::start(ServeConfig {
        upkeep,
        ..serve_config(db.database_config(Duration::from_secs(10)))
    })
    .await
}

async fn total_batches(client: &mut BatchHistoryClient<Channel>) -> i64 {
    client
        .get_batch_stats(GetBatchStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .batch_count
}

#[tokio::test]
async fn a_populated_single_table_moves_into_months_losing_nothing() {
    let db = TestDb::create().await;
    let mut sql = db.client().await;
    before_months::migrations::runner()
        .set_target(refinery::Target::Version(10))
        .run_async(&mut sql)
        .await
        .unwrap();
    // 3,000 batches over 25 months, one per 6 hours, in every state, and a
    // recorded request id.
    sql.batch_execute(
        "INSERT INTO batches (batch_id, state, provider, model, samples_generated,
                              total_tokens, start_time, end_time, update_time, labels)
         SELECT 'm-' || g,
                (ARRAY['RUNNING', 'COMPLETED', 'STOPPED', 'FAILED'])[g % 4 + 1],
                (ARRAY['groq', 'cerebras'])[g % 2 + 1], 'llama', g, 10 * g,
                start_time,
                CASE WHEN g % 4 <> 0 THEN start_time + interval '1 hour' END,
                start_time, jsonb_build_object('n', (g % 3)::text)
         FROM generate_series(1, 3000) AS g,
              LATERAL (SELECT timestamptz '2024-01-15 00:00:00+00'
                              + g * interval '6 hours') AS t (start_time);
         INSERT INTO batch_requests (request_id, batch_id, fingerprint)
         VALUES ('7b5d4c6e-1a2b-4c3d-8e9f-0a1b2c3d4e5f', 'm-4', decode(repeat('ab', 32), 'hex'));
         SELECT batch_totals_fold();",
    )
    .await
    .unwrap();
    let before: String = sql.query_one(ALL_BATCHES, &[]).await.unwrap().get(0);
    let expected_order: Vec<String> = column(
        &sql,
        "SELECT batch_id FROM batches ORDER BY start_time DESC, batch_id DESC",
    )
    .await;

    let server = start(&db, Upkeep::default()).await;
    let mut client = server.client().await;

    let after: String = sql.query_one(ALL_BATCHES, &[]).await.unwrap().get(0);
    assert!(before == after, "the batches changed in the move");
    let (months, ids): (i64, i64) = {
        let row = sql
            .query_one(
                "SELECT (SELECT count(*) FROM pg_inherits
                         WHERE inhparent = 'batches'::regclass),
                        (SELECT count(*) FROM batch_ids i JOIN batches b
                         USING (batch_id, start_time))",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    // January 2024 to February 2026, and the months ahead of today.
    assert!(months >= 26, "{months} months");
    assert_eq!(ids, 3000, "every batch's id registered with its start time");
    let newest_first = ListBatchesRequest {
        page_size: 37,
        ..Default::default()
    };
    assert_eq!(list_with(&client, newest_first).await, expected_order);
    assert_eq!(total_batches(&mut client).await, 3000);
    let batch = client
        .get_batch(GetBatchRequest {
            batch_id: "m-2999".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.samples_generated, 2999);

    // The request id stays tied to its batch: deleting the batch forgets it.
    assert_eq!(db.count_rows("batch_requests").await, 1);
    client
        .delete_batch(DeleteBatchRequest {
            batch_id: "m-4".into(),
            force: true,
        })
        .await
        .unwrap();
    assert_eq!(db.count_rows("batch_requests").await, 0);
    assert_eq!(db.count_rows("batch_ids").await, 2999);
    server.stop().await;
}

/// Whether the month starting on `first` (YYYY-MM) is a partition now.
async fn has_month(sql: &tokio_postgres::Client, year_month: &str) -> bool {
    let name = format!("batches_y{}", year_month.replace('-', "m"));
    sql.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap()
        .get(0)
}

async fn create_old(
    client: &mut BatchHistoryClient<Channel>,
    batch_id: &str,
    start: i64,
    end: Option<(State, i64)>,
) {
    client
        .create_batch(CreateBatchRequest {
            batch_id: batch_id.into(),
            batch: Some(proto::Batch {
                start_time: Some(timestamp(start)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    if let Some((state, end)) = end {
        client
            .finish_batch(FinishBatchRequest {
                batch_id: batch_id.into(),
                state: state as i32,
                end_time: Some(timestamp(end)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn months_are_added_on_demand_and_dropped_whole_past_retention() {
    const JAN_2020: i64 = 1_578_614_400; // 2020-01-10
    const FEB_2020: i64 = 1_580_860_800; // 2020-02-05
    const MAR_31_2020_LATE: i64 = 1_585_695_600; // 2020-03-31 23:00 UTC
    const MAY_2019: i64 = 1_557_792_000; // 2019-05-14
    let db = TestDb::create().await;
    let sql = db.client().await;

    // Without upkeep: every month below is added by the write that needs it.
    let server = start(&db, Upkeep::default()).await;
    let mut client = server.client().await;
    create_old(&mut client, "jan-done", JAN_2020, None).await;
    client
        .record_progress(RecordProgressRequest {
            batch_id: "jan-done".into(),
            samples_delta: 3,
            request_id: "0f8b8a3e-6c1d-4f6e-9a7b-2d3c4b5a6f70".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .finish_batch(FinishBatchRequest {
            batch_id: "jan-done".into(),
            state: State::Completed as i32,
            end_time: Some(timestamp(JAN_2020 + 3_600)),
            ..Default::default()
        })
        .await
        .unwrap();
    create_old(
        &mut client,
        "jan-failed",
        JAN_2020 + 86_400,
        Some((State::Failed, JAN_2020 + 90_000)),
    )
    .await;
    // Stopped by the sweep below, today: its month must stay.
    create_old(&mut client, "feb-running", FEB_2020, None).await;
    // Ends in April; its month, March, is past retention all the same.
    create_old(
        &mut client,
        "mar-late",
        MAR_31_2020_LATE,
        Some((State::Stopped, MAR_31_2020_LATE + 2 * 86_400)),
    )
    .await;
    client
        .save_batch(SaveBatchRequest {
            batch: Some(proto::Batch {
                batch_id: "may-saved".into(),
                state: State::Completed as i32,
                start_time: Some(timestamp(MAY_2019)),
                end_time: Some(timestamp(MAY_2019 + 60)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    for month in ["2020-01", "2020-02", "2020-03", "2019-05"] {
        assert!(has_month(&sql, month).await, "{month} was not added");
    }
    assert!(!has_month(&sql, "2020-04").await, "only months written to");
    assert_eq!(db.count_rows("batch_requests").await, 1);
    server.stop().await;

    let server = start(
        &db,
        Upkeep {
            stale_after: Some(StaleThreshold::parse(Duration::from_secs(1)).unwrap()),
            retention: Some(Duration::from_secs(30 * 86_400)),
        },
    )
    .await;
    let mut client = server.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let gone = !has_month(&sql, "2020-01").await
            && !has_month(&sql, "2020-03").await
            && !has_month(&sql, "2019-05").await;
        if gone && db.count_rows("batch_dropped_months").await == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the months past retention were not dropped and cleared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        has_month(&sql, "2020-02").await,
        "a month with a batch ended today"
    );
    let left_over: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'batches_y%_detached'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left_over, 0, "a month taken out was not dropped");
    let registered: Vec<String> =
        column(&sql, "SELECT batch_id FROM batch_ids ORDER BY batch_id").await;
    assert_eq!(registered, ["feb-running"]);
    assert_eq!(db.count_rows("batch_requests").await, 0);
    let status = client
        .get_batch(GetBatchRequest {
            batch_id: "jan-done".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let counted: i64 = sql.query_one(WHOLE_COUNT, &[]).await.unwrap().get(0);
    assert_eq!(counted, 1);
    assert_eq!(total_batches(&mut client).await, counted);

    // An id dropped with its month can be used again.
    create_old(&mut client, "jan-done", FEB_2020, None).await;
    server.stop().await;
}

#[tokio::test]
async fn an_id_left_registered_to_no_batch_can_be_used_again() {
    let db = TestDb::create().await;
    let server = start(&db, Upkeep::default()).await;
    let mut client = server.client().await;
    for batch_id in ["created", "saved"] {
        create_old(&mut client, batch_id, 1_700_000_000, None).await;
    }
    // By hand, past the service: the ids stay registered.
    let sql = db.client().await;
    sql.batch_execute("DELETE FROM batches").await.unwrap();
    assert_eq!(db.count_rows("batch_ids").await, 2);

    create_old(&mut client, "created", 1_750_000_000, None).await;
    client
        .save_batch(SaveBatchRequest {
            batch: Some(proto::Batch {
                batch_id: "saved".into(),
                state: State::Running as i32,
                start_time: Some(timestamp(1_760_000_000)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let registered: Vec<(String, std::time::SystemTime)> = sql
        .query(
            "SELECT batch_id, start_time FROM batch_ids ORDER BY batch_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let at = |seconds| std::time::UNIX_EPOCH + Duration::from_secs(seconds);
    assert_eq!(
        registered,
        [
            ("created".to_owned(), at(1_750_000_000)),
            ("saved".to_owned(), at(1_760_000_000))
        ]
    );
    server.stop().await;
}

/// GetBatch opens its batch's month alone (migration V18): a month whose
/// key is locked, here by a rebuild that has not committed, holds up no
/// lookup of a batch in another month. It did when the lookup found the
/// month by a subquery, which opens every month's key before it prunes.
#[tokio::test]
async fn a_lookup_opens_its_month_alone() {
    const JAN_2020: i64 = 1_578_614_400;
    const FEB_2020: i64 = 1_580_860_800;
    let db = TestDb::create().await;
    // Directly, not through a transaction pooler: the lookups below must
    // reuse the plans that their first calls made, on the same sessions.
    let timeout = Duration::from_secs(3);
    let server = Server::start(serve_config(database_config(&db.url(None), timeout))).await;
    let mut client = server.client().await;
    create_old(&mut client, "january", JAN_2020, None).await;
    create_old(&mut client, "february", FEB_2020, None).await;
    let get = |batch_id: &str| GetBatchRequest {
        batch_id: batch_id.into(),
    };

    // January holds enough batches that a plan reads it by its key, not
    // by a scan of its few rows, which needs no index.
    let sql = db.client().await;
    sql.batch_execute(
        "INSERT INTO batches (batch_id, state, provider, model, start_time, end_time, update_time)
         SELECT 'january-' || g, 'COMPLETED', 'groq', 'llama', start_time, start_time, start_time
         FROM generate_series(1, 2000) AS g,
              LATERAL (SELECT timestamptz '2020-01-01 00:00:00+00' + g * interval '5 minutes')
                  AS t (start_time)",
    )
    .await
    .unwrap();
    // Making a plan opens every month. A session plans its first five calls
    // of a statement one by one, then keeps a plan for any id; and it plans
    // anew after a change to any month's definition. So: the upkeep adds
    // its months ahead, January's row count in the catalog is made current
    // (a rebuild that changes it tells every session at once), and only
    // then does each shared connection make its kept plan.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let last_ahead = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .checked_add(jiff::Span::new().months(2))
        .unwrap()
        .strftime("%Y-%m")
        .to_string();
    while !has_month(&sql, &last_ahead).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the upkeep added no months ahead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sql.batch_execute("ANALYZE batches_y2020m01").await.unwrap();
    for _ in 0..16 {
        client.get_batch(get("february")).await.unwrap();
    }

    let mut rebuild = db.client().await;
    let rebuilding = rebuild.transaction().await.unwrap();
    rebuilding
        .batch_execute("REINDEX TABLE batches_y2020m01")
        .await
        .unwrap();
    for _ in 0..4 {
        let found = client
            .get_batch(get("february"))
            .await
            .unwrap_or_else(|status| panic!("the lookup waited for January: {status:?}"))
            .into_inner();
        assert_eq!(found.batch_id, "february");
    }
    rebuilding.rollback().await.unwrap();
    let found = client.get_batch(get("january")).await.unwrap().into_inner();
    assert_eq!(found.batch_id, "january");
    server.stop().await;
}
