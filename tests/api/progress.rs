//! RecordProgress and FinishBatch: counters, appended history, the state machine.

use batch_history::proto::{
    self, BatchError, FinishBatchRequest, ModelSwitch, RecordProgressRequest, batch::State,
};
use prost_types::{Struct, Value, value::Kind};
use tonic::Code;

use crate::support::{TestApp, assert_invalid, error_info, timestamp};

fn progress(batch_id: &str, samples: i64, tokens: i64) -> RecordProgressRequest {
    RecordProgressRequest {
        batch_id: batch_id.into(),
        samples_delta: samples,
        tokens_delta: tokens,
        ..Default::default()
    }
}

fn error(message: &str) -> BatchError {
    BatchError {
        message: message.into(),
        ..Default::default()
    }
}

fn finish(batch_id: &str, state: State) -> FinishBatchRequest {
    FinishBatchRequest {
        batch_id: batch_id.into(),
        state: state as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn progress_adds_to_counters_and_appends_history() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let created = app.create("b", "groq").await;

    let mut report = progress("b", 5, 1_200);
    report.errors = vec![BatchError {
        message: "rate limited".into(),
        time: Some(timestamp(1_760_796_300)),
        details: Some(Struct {
            fields: [(
                "sample".to_string(),
                Value {
                    kind: Some(Kind::NumberValue(12.0)),
                },
            )]
            .into(),
        }),
    }];
    report.model_switches = vec![ModelSwitch {
        from_model: "llama-3.3-70b".into(),
        to_model: "qwen-3-32b".into(),
        provider: "cerebras".into(),
        reason: "model_unavailable: model not found".into(),
        at_sample: 5,
        time: None,
        details: None,
    }];
    let after = client.record_progress(report).await.unwrap().into_inner();
    assert_eq!(after.samples_generated, 5);
    assert_eq!(after.total_tokens, 1_200);
    assert_eq!(after.error_count, 1);
    assert_eq!(after.errors[0].message, "rate limited");
    assert_eq!(after.errors[0].time, Some(timestamp(1_760_796_300)));
    assert_eq!(
        after.errors[0].details.as_ref().unwrap().fields["sample"].kind,
        Some(Kind::NumberValue(12.0))
    );
    assert_eq!(after.model_switches[0].to_model, "qwen-3-32b");
    assert_eq!(after.model_switches[0].at_sample, 5);
    assert!(
        after.model_switches[0].time.is_some(),
        "unset times are filled in"
    );
    assert_ne!(after.etag, created.etag);

    let after = client
        .record_progress(progress("b", 2, 300))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((after.samples_generated, after.total_tokens), (7, 1_500));
    assert_eq!(after.errors.len(), 1);

    // A heartbeat changes nothing but update_time and etag.
    let beat = client
        .record_progress(progress("b", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(beat.samples_generated, 7);
    assert_ne!(beat.etag, after.etag);
    let micros = |t: &Option<prost_types::Timestamp>| {
        let t = t.as_ref().unwrap();
        t.seconds * 1_000_000 + i64::from(t.nanos / 1_000)
    };
    assert!(micros(&beat.update_time) >= micros(&after.update_time));

    let row = app
        .db
        .client()
        .await
        .query_one(
            "SELECT samples_generated, total_tokens, error_count, jsonb_array_length(model_switches)
             FROM batches WHERE batch_id = 'b'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 7);
    assert_eq!(row.get::<_, i64>(1), 1_500);
    assert_eq!(row.get::<_, i64>(2), 1);
    assert_eq!(row.get::<_, i32>(3), 1);
}

#[tokio::test]
async fn concurrent_reports_are_all_applied() {
    let app = TestApp::spawn().await;
    app.create("busy", "groq").await;
    let reports = (0..32).map(|i| {
        let mut client = app.client.clone();
        async move {
            let mut report = progress("busy", i + 1, 1_000 + i);
            report.errors = vec![error(&format!("worker {i}"))];
            client.record_progress(report).await.unwrap();
        }
    });
    futures::future::join_all(reports).await;

    let stored = app
        .client
        .clone()
        .get_batch(proto::GetBatchRequest {
            batch_id: "busy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.samples_generated, (1..=32).sum::<i64>());
    assert_eq!(stored.total_tokens, (0..32).map(|i| 1_000 + i).sum::<i64>());
    assert_eq!(stored.error_count, 32);
    assert_eq!(stored.errors.len(), 32);
}

#[tokio::test]
async fn only_the_newest_errors_are_kept_but_all_are_counted() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("noisy", "groq").await;
    for round in 0..3 {
        let mut report = progress("noisy", 0, 0);
        report.errors = (0..500).map(|i| error(&format!("{round}-{i}"))).collect();
        client.record_progress(report).await.unwrap();
    }
    let stored = client
        .get_batch(proto::GetBatchRequest {
            batch_id: "noisy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.error_count, 1_500);
    assert_eq!(stored.errors.len(), 1_000);
    assert_eq!(stored.errors.first().unwrap().message, "1-0");
    assert_eq!(stored.errors.last().unwrap().message, "2-499");

    let mut too_many = progress("noisy", 0, 0);
    too_many.errors = (0..1_001).map(|i| error(&i.to_string())).collect();
    assert_invalid(
        client.record_progress(too_many).await.unwrap_err(),
        "errors",
    );
}

#[tokio::test]
async fn progress_rejects_invalid_reports_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let created = app.create("b", "groq").await;

    assert_invalid(
        client
            .record_progress(progress("b", -1, 0))
            .await
            .unwrap_err(),
        "samples_delta",
    );
    assert_invalid(
        client
            .record_progress(progress("b", 0, -1))
            .await
            .unwrap_err(),
        "tokens_delta",
    );
    assert_invalid(
        client
            .record_progress(progress("", 1, 1))
            .await
            .unwrap_err(),
        "batch_id",
    );
    let mut report = progress("b", 1, 1);
    report.errors = vec![error("fine"), error("")];
    assert_invalid(
        client.record_progress(report).await.unwrap_err(),
        "errors[1].message",
    );
    let mut report = progress("b", 1, 1);
    report.model_switches = vec![ModelSwitch {
        at_sample: -3,
        ..Default::default()
    }];
    assert_invalid(
        client.record_progress(report).await.unwrap_err(),
        "model_switches[0].at_sample",
    );

    let status = client
        .record_progress(progress("ghost", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    client
        .record_progress(progress("b", i64::MAX, i64::MAX - 1))
        .await
        .unwrap();
    let status = client
        .record_progress(progress("b", 1, 0))
        .await
        .unwrap_err();
    assert_invalid(status, "samples_delta");
    let status = client
        .record_progress(progress("b", 0, 2))
        .await
        .unwrap_err();
    assert_invalid(status, "tokens_delta");

    let stored = client
        .get_batch(proto::GetBatchRequest {
            batch_id: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.samples_generated, i64::MAX);
    assert_eq!(stored.total_tokens, i64::MAX - 1);
    assert_eq!(stored.error_count, created.error_count);
}

#[tokio::test]
async fn finish_follows_the_state_machine() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("b", "groq").await;

    let mut request = finish("b", State::Failed);
    request.error = Some(error("all providers exhausted"));
    let finished = client
        .finish_batch(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(finished.state(), State::Failed);
    assert!(finished.end_time.is_some());
    assert_eq!(finished.error_count, 1);
    assert_eq!(finished.errors[0].message, "all providers exhausted");

    // The same finish again is a safe retry: nothing changes.
    let again = client.finish_batch(request).await.unwrap().into_inner();
    assert_eq!(again, finished);

    let status = client
        .finish_batch(finish("b", State::Completed))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("FAILED"), "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "BATCH_ALREADY_FINISHED");
    assert_eq!(
        (&*info.metadata["batch_id"], &*info.metadata["state"]),
        ("b", "FAILED")
    );
    let status = client
        .record_progress(progress("b", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("FAILED"), "{status:?}");

    let row = app
        .db
        .client()
        .await
        .query_one(
            "SELECT state, samples_generated, error_count FROM batches WHERE batch_id = 'b'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "FAILED");
    assert_eq!(row.get::<_, i64>(1), 0);
    assert_eq!(row.get::<_, i64>(2), 1);
}

#[tokio::test]
async fn finish_takes_a_caller_end_time_but_not_one_before_the_start() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let started = app.create("b", "groq").await.start_time.unwrap();

    let mut early = finish("b", State::Completed);
    early.end_time = Some(timestamp(started.seconds - 60));
    assert_invalid(client.finish_batch(early).await.unwrap_err(), "end_time");

    let mut request = finish("b", State::Stopped);
    request.end_time = Some(timestamp(started.seconds + 3_600));
    let stopped = client.finish_batch(request).await.unwrap().into_inner();
    assert_eq!(stopped.state(), State::Stopped);
    assert_eq!(stopped.end_time, Some(timestamp(started.seconds + 3_600)));
}

#[tokio::test]
async fn finish_rejects_states_that_are_not_final() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("b", "groq").await;
    for state in [State::Unspecified as i32, State::Running as i32, 42] {
        let request = FinishBatchRequest {
            batch_id: "b".into(),
            state,
            ..Default::default()
        };
        assert_invalid(client.finish_batch(request).await.unwrap_err(), "state");
    }
    let status = client
        .finish_batch(finish("ghost", State::Completed))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn racing_finishes_leave_exactly_one_winner() {
    let app = TestApp::spawn().await;
    app.create("b", "groq").await;
    let racers = [
        State::Completed,
        State::Stopped,
        State::Failed,
        State::Completed,
    ]
    .map(|state| {
        let mut client = app.client.clone();
        async move { (state, client.finish_batch(finish("b", state)).await) }
    });
    let results = futures::future::join_all(racers).await;
    let winner = results
        .iter()
        .find_map(|(_, result)| result.as_ref().ok())
        .expect("one finish must win")
        .get_ref()
        .state();
    for (state, result) in results {
        match result {
            Ok(batch) => {
                assert_eq!(state, winner);
                assert_eq!(batch.get_ref().state(), winner);
            }
            Err(status) => {
                assert_ne!(state, winner);
                assert_eq!(status.code(), Code::FailedPrecondition);
            }
        }
    }
}
