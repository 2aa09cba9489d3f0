//! SaveBatch: the legacy dashboard's absolute saves, and the current model.

use batch_history::proto::{
    self, BatchError, ModelSwitch, RecordProgressRequest, SaveBatchRequest, batch::State,
};
use tonic::Code;

use crate::support::{TestApp, assert_invalid, timestamp};

/// The batch as the dashboard holds it after `samples` samples.
fn state(batch_id: &str, samples: i64, errors: usize, state: State) -> proto::Batch {
    proto::Batch {
        batch_id: batch_id.into(),
        state: state as i32,
        model: "llama-3.3-70b".into(),
        current_model: if errors > 1 {
            "qwen-3-32b"
        } else {
            "llama-3.3-70b"
        }
        .into(),
        target_count: 100,
        samples_generated: samples,
        total_tokens: samples * 1000,
        start_time: Some(timestamp(1_760_000_000)),
        errors: (0..errors)
            .map(|i| BatchError {
                message: format!("error {i}"),
                ..Default::default()
            })
            .collect(),
        model_switches: (1..errors)
            .map(|_| ModelSwitch {
                from_model: "llama-3.3-70b".into(),
                to_model: "qwen-3-32b".into(),
                at_sample: 3,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn save(batch: proto::Batch) -> SaveBatchRequest {
    SaveBatchRequest { batch: Some(batch) }
}

#[tokio::test]
async fn saves_create_then_set_absolute_values_and_keep_unknown_times_unknown() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let created = client
        .save_batch(save(state("s1", 2, 1, State::Running)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.state(), State::Running);
    assert_eq!(created.start_time, Some(timestamp(1_760_000_000)));
    assert_eq!((created.samples_generated, created.total_tokens), (2, 2000));
    assert_eq!(
        created.errors[0].time, None,
        "no time was given, none invented"
    );

    let saved = client
        .save_batch(save(state("s1", 5, 2, State::Running)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((saved.samples_generated, saved.error_count), (5, 2));
    assert_eq!(saved.model_switches.len(), 1);
    assert_eq!(saved.current_model, "qwen-3-32b");
    assert_eq!(
        saved.model, "llama-3.3-70b",
        "the model it started with stays"
    );

    // The same save again, and a late retry of the first: nothing counted twice,
    // nothing taken back.
    for repeated in [
        state("s1", 5, 2, State::Running),
        state("s1", 2, 1, State::Running),
    ] {
        let again = client
            .save_batch(save(repeated))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                again.samples_generated,
                again.total_tokens,
                again.error_count
            ),
            (5, 5000, 2)
        );
        assert_eq!(again.current_model, "qwen-3-32b");
    }
    let stored = app
        .db
        .client()
        .await
        .query_one(
            "SELECT samples_generated, jsonb_array_length(errors), errors -> 0 ? 'time' FROM batches",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(stored.get::<_, i64>(0), 5);
    assert_eq!(stored.get::<_, i32>(1), 2);
    assert!(!stored.get::<_, bool>(2));
}

#[tokio::test]
async fn a_save_that_is_not_running_finishes_once() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let mut done = state("s2", 9, 0, State::Completed);
    done.end_time = Some(timestamp(1_760_000_600));
    let finished = client
        .save_batch(save(done.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(finished.state(), State::Completed);
    assert_eq!(finished.end_time, Some(timestamp(1_760_000_600)));

    // A later save still records the final totals; the state and end stay.
    let mut later = state("s2", 10, 0, State::Stopped);
    later.end_time = Some(timestamp(1_760_000_900));
    let after = client.save_batch(save(later)).await.unwrap().into_inner();
    assert_eq!(after.state(), State::Completed);
    assert_eq!(after.end_time, Some(timestamp(1_760_000_600)));
    assert_eq!(after.samples_generated, 10);
}

#[tokio::test]
async fn bad_saves_name_the_field_and_store_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let mut cases = Vec::new();
    cases.push((state("", 1, 0, State::Running), "batch.batch_id"));
    let mut ended_while_running = state("s3", 1, 0, State::Running);
    ended_while_running.end_time = Some(timestamp(1_760_000_100));
    cases.push((ended_while_running, "batch.end_time"));
    let mut ends_before_start = state("s3", 1, 0, State::Completed);
    ends_before_start.end_time = Some(timestamp(1_700_000_000));
    cases.push((ends_before_start, "batch.end_time"));
    cases.push((
        state("s3", -1, 0, State::Running),
        "batch.samples_generated",
    ));
    cases.push((state("s3", 1, 0, State::Unspecified), "batch.state"));
    let mut no_message = state("s3", 1, 1, State::Running);
    no_message.errors[0].message.clear();
    cases.push((no_message, "batch.errors[0].message"));
    for (batch, field) in cases {
        let status = client.save_batch(save(batch)).await.unwrap_err();
        assert_invalid(status, field);
    }
    let status = client
        .save_batch(SaveBatchRequest { batch: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(app.db.count_rows("batches").await, 0);
}

#[tokio::test]
async fn reported_switches_move_the_current_model() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let created = app.create("p1", "groq").await;
    assert_eq!(created.current_model, created.model);
    let switched = client
        .record_progress(RecordProgressRequest {
            batch_id: "p1".into(),
            model_switches: vec![
                ModelSwitch {
                    to_model: "qwen-3-32b".into(),
                    ..Default::default()
                },
                // A switch that names no model leaves the current one.
                ModelSwitch::default(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(switched.current_model, "qwen-3-32b");
    assert_eq!(switched.model, "llama-3.3-70b");
    assert!(
        switched.model_switches[0].time.is_some(),
        "reported entries get the receive time"
    );
}
