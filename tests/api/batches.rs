//! CreateBatch, GetBatch and DeleteBatch.

use batch_history::proto::{
    self, CreateBatchRequest, DeleteBatchRequest, GetBatchRequest, ListBatchesRequest,
};
use prost_types::{Struct, Value, value::Kind};
use tonic::Code;

use crate::support::{TestApp, assert_invalid, error_info, timestamp};

fn metadata(pairs: &[(&str, Kind)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(key, kind)| {
                (
                    key.to_string(),
                    Value {
                        kind: Some(kind.clone()),
                    },
                )
            })
            .collect(),
    }
}

fn full_request(batch_id: &str) -> CreateBatchRequest {
    CreateBatchRequest {
        batch_id: batch_id.into(),
        batch: Some(proto::Batch {
            provider: "groq".into(),
            model: "llama-3.3-70b-versatile".into(),
            topic_filter: "Contract Law - Formation".into(),
            difficulty_filter: "advanced".into(),
            reasoning_instruction: "Think step by step.\nCite the rule.".into(),
            target_count: 250,
            metadata: Some(metadata(&[
                ("smart_mode", Kind::BoolValue(true)),
                (
                    "sample_type_filter",
                    Kind::StringValue("case_analysis".into()),
                ),
                ("batch_size", Kind::NumberValue(5.0)),
            ])),
            start_time: Some(timestamp(1_760_796_202)),
            // Output-only fields are ignored.
            state: proto::batch::State::Completed as i32,
            samples_generated: 99,
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn create_stores_every_field_and_get_returns_it() {
    let app = TestApp::spawn().await;
    let created = app
        .client
        .clone()
        .create_batch(full_request("batch_1760796202_0a1b2c3d"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.batch_id, "batch_1760796202_0a1b2c3d");
    assert_eq!(created.state(), proto::batch::State::Running);
    assert_eq!(created.samples_generated, 0);
    assert_eq!(created.start_time, Some(timestamp(1_760_796_202)));
    assert!(created.end_time.is_none());
    assert!(!created.etag.is_empty());

    let fetched = app
        .client
        .clone()
        .get_batch(GetBatchRequest {
            batch_id: created.batch_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, created);

    let row = app
        .db
        .client()
        .await
        .query_one(
            "SELECT state, provider, model, topic_filter, difficulty_filter, reasoning_instruction,
                    target_count, metadata::text, extract(epoch FROM start_time)::bigint
             FROM batches WHERE batch_id = $1",
            &[&created.batch_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "RUNNING");
    assert_eq!(row.get::<_, &str>(1), "groq");
    assert_eq!(row.get::<_, &str>(2), "llama-3.3-70b-versatile");
    assert_eq!(row.get::<_, &str>(3), "Contract Law - Formation");
    assert_eq!(row.get::<_, &str>(4), "advanced");
    assert_eq!(row.get::<_, &str>(5), "Think step by step.\nCite the rule.");
    assert_eq!(row.get::<_, i32>(6), 250);
    let stored: serde_json::Value = serde_json::from_str(row.get(7)).unwrap();
    assert_eq!(stored["smart_mode"], true);
    assert_eq!(stored["sample_type_filter"], "case_analysis");
    assert_eq!(stored["batch_size"].as_f64(), Some(5.0));
    assert_eq!(row.get::<_, i64>(8), 1_760_796_202);
}

#[tokio::test]
async fn server_generated_ids_use_the_legacy_format() {
    let app = TestApp::spawn().await;
    let before = jiff::Timestamp::now().as_second();
    let created = app
        .client
        .clone()
        .create_batch(CreateBatchRequest {
            batch: Some(proto::Batch::default()),
            batch_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let rest = created
        .batch_id
        .strip_prefix("batch_")
        .expect(&created.batch_id);
    let (seconds, hex) = rest.split_once('_').unwrap();
    let seconds: i64 = seconds.parse().unwrap();
    assert!((before..=before + 5).contains(&seconds));
    assert_eq!(hex.len(), 8);
    assert!(hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    let start = created.start_time.unwrap().seconds;
    assert!(
        (before - 5..=before + 5).contains(&start),
        "start_time defaults to now"
    );
}

#[tokio::test]
async fn create_is_idempotent_on_the_same_body_and_refuses_a_different_one() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let first = client
        .create_batch(full_request("b-1"))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .create_batch(full_request("b-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);

    // The id may come in the batch instead of the request.
    let mut in_batch = full_request("");
    in_batch.batch.as_mut().unwrap().batch_id = "b-1".into();
    assert_eq!(
        client.create_batch(in_batch).await.unwrap().into_inner(),
        first
    );

    let mut different = full_request("b-1");
    different.batch.as_mut().unwrap().target_count = 251;
    let status = client.create_batch(different).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("b-1"));
    let info = error_info(&status);
    assert_eq!(info.reason, "BATCH_ID_TAKEN");
    assert_eq!(info.metadata["batch_id"], "b-1");

    let count: i64 = app.db.count_rows("batches").await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn concurrent_identical_creates_make_one_batch() {
    let app = TestApp::spawn().await;
    let calls = (0..16).map(|_| {
        let mut client = app.client.clone();
        async move { client.create_batch(full_request("raced")).await }
    });
    let results = futures::future::join_all(calls).await;
    let first = results[0].as_ref().unwrap().get_ref().clone();
    for result in results {
        assert_eq!(result.unwrap().into_inner(), first);
    }
}

#[tokio::test]
async fn create_rejects_invalid_fields_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let cases: Vec<(CreateBatchRequest, &str)> = vec![
        (
            CreateBatchRequest {
                batch_id: "x".into(),
                batch: None,
            },
            "batch",
        ),
        (full_request("has space"), "batch_id"),
        (full_request(&"x".repeat(101)), "batch_id"),
        (
            {
                let mut r = full_request("a");
                r.batch.as_mut().unwrap().batch_id = "b".into();
                r
            },
            "batch_id",
        ),
        (
            {
                let mut r = full_request("");
                r.batch.as_mut().unwrap().batch_id = "bad/id".into();
                r
            },
            "batch.batch_id",
        ),
        (
            {
                let mut r = full_request("ok");
                r.batch.as_mut().unwrap().target_count = -1;
                r
            },
            "batch.target_count",
        ),
        (
            {
                let mut r = full_request("ok");
                r.batch.as_mut().unwrap().provider = "x".repeat(257);
                r
            },
            "batch.provider",
        ),
        (
            {
                let mut r = full_request("ok");
                r.batch.as_mut().unwrap().model = "line\nbreak".into();
                r
            },
            "batch.model",
        ),
        (
            {
                let mut r = full_request("ok");
                r.batch.as_mut().unwrap().reasoning_instruction = "nul\0".into();
                r
            },
            "batch.reasoning_instruction",
        ),
        (
            {
                let mut r = full_request("ok");
                r.batch.as_mut().unwrap().metadata =
                    Some(metadata(&[("big", Kind::StringValue("x".repeat(70_000)))]));
                r
            },
            "batch.metadata",
        ),
        (
            {
                let mut r = full_request("ok");
                r.batch.as_mut().unwrap().metadata =
                    Some(metadata(&[("nan", Kind::NumberValue(f64::NAN))]));
                r
            },
            "batch.metadata",
        ),
        (
            {
                let mut r = full_request("ok");
                r.batch.as_mut().unwrap().start_time = Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -5,
                });
                r
            },
            "batch.start_time",
        ),
    ];
    for (request, field) in cases {
        assert_invalid(client.create_batch(request).await.unwrap_err(), field);
    }
    let count: i64 = app.db.count_rows("batches").await;
    assert_eq!(count, 0);
}

#[tokio::test]
async fn delete_refuses_a_running_batch_unless_forced_and_reports_missing_ones() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("doomed", "groq").await;

    let status = client
        .delete_batch(DeleteBatchRequest {
            batch_id: "doomed".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let info = error_info(&status);
    assert_eq!(info.reason, "BATCH_RUNNING");
    assert_eq!(info.metadata["batch_id"], "doomed");
    assert_eq!(info.metadata["state"], "RUNNING");
    assert_eq!(
        app.db.count_rows("batches").await,
        1,
        "a refused delete deletes nothing"
    );

    client
        .delete_batch(DeleteBatchRequest {
            batch_id: "doomed".into(),
            force: true,
        })
        .await
        .unwrap();
    let remaining: i64 = app.db.count_rows("batches").await;
    assert_eq!(remaining, 0);

    let status = client
        .delete_batch(DeleteBatchRequest {
            batch_id: "doomed".into(),
            force: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let info = error_info(&status);
    assert_eq!(info.reason, "BATCH_NOT_FOUND");
    assert_eq!(info.metadata["batch_id"], "doomed");
    let status = client
        .get_batch(GetBatchRequest {
            batch_id: "doomed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("doomed"));

    assert_invalid(
        client
            .get_batch(GetBatchRequest {
                batch_id: String::new(),
            })
            .await
            .unwrap_err(),
        "batch_id",
    );
    assert_invalid(
        client
            .delete_batch(DeleteBatchRequest {
                batch_id: "é".into(),
                force: false,
            })
            .await
            .unwrap_err(),
        "batch_id",
    );
}

#[tokio::test]
async fn a_lost_database_is_unavailable_not_internal() {
    let app = TestApp::builder()
        .timeout(std::time::Duration::from_millis(1_000))
        .spawn()
        .await;
    app.create("before", "groq").await;
    app.db.drop_now().await;

    let started = std::time::Instant::now();
    let status = app
        .client
        .clone()
        .get_batch(GetBatchRequest {
            batch_id: "before".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        ["DATABASE_UNAVAILABLE", "DATABASE_TIMEOUT"].contains(&&*error_info(&status).reason),
        "{status:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert!(!status.message().contains("bh_test_"), "{status:?}");
}

#[tokio::test]
async fn batch_get_answers_in_the_order_asked_and_lists_the_missing() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.create("a", "groq").await;
    app.create("b", "cerebras").await;
    // Errors up to 60 kB each: large enough that 80 copies pass 4 MiB.
    client
        .record_progress(proto::RecordProgressRequest {
            batch_id: "b".into(),
            errors: (0..1)
                .map(|_| proto::BatchError {
                    message: "e".repeat(60_000),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let lookup = |ids: &[&str], view: proto::BatchView| proto::BatchGetBatchesRequest {
        batch_ids: ids.iter().map(|id| id.to_string()).collect(),
        view: view as i32,
    };

    let answer = client
        .batch_get_batches(lookup(
            &["b", "gone", "a", "b"],
            proto::BatchView::Unspecified,
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = answer.batches.iter().map(|b| b.batch_id.as_str()).collect();
    assert_eq!(ids, ["b", "a", "b"]);
    assert_eq!(answer.missing_batch_ids, ["gone"]);
    assert_eq!(
        answer.batches[0].errors.len(),
        1,
        "FULL unless asked otherwise"
    );
    assert_eq!(answer.batches[0].provider, "cerebras");

    let basic = client
        .batch_get_batches(lookup(&["b"], proto::BatchView::Basic))
        .await
        .unwrap()
        .into_inner();
    assert!(basic.batches[0].errors.is_empty());
    assert_eq!(basic.batches[0].error_count, 1);

    let status = client
        .batch_get_batches(lookup(&["b"; 80], proto::BatchView::Full))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_info(&status).reason, "RESPONSE_TOO_LARGE");
    let fits = client
        .batch_get_batches(lookup(&["b"; 80], proto::BatchView::Basic))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fits.batches.len(), 80);

    assert_invalid(
        client
            .batch_get_batches(lookup(&[], proto::BatchView::Full))
            .await
            .unwrap_err(),
        "batch_ids",
    );
    let too_many: Vec<String> = (0..1_001).map(|i| format!("b-{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_invalid(
        client
            .batch_get_batches(lookup(&too_many, proto::BatchView::Full))
            .await
            .unwrap_err(),
        "batch_ids",
    );
    let thousand: Vec<String> = (0..1_000).map(|i| format!("b-{i}")).collect();
    let thousand: Vec<&str> = thousand.iter().map(String::as_str).collect();
    let none = client
        .batch_get_batches(lookup(&thousand, proto::BatchView::Full))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.missing_batch_ids.len(), 1_000);
    assert_invalid(
        client
            .batch_get_batches(lookup(&["a", "b", "é"], proto::BatchView::Full))
            .await
            .unwrap_err(),
        "batch_ids[2]",
    );
}

#[tokio::test]
async fn update_corrects_only_what_the_mask_names_and_honours_the_etag() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let created = client
        .create_batch(full_request("fix-me"))
        .await
        .unwrap()
        .into_inner();
    client
        .record_progress(proto::RecordProgressRequest {
            batch_id: "fix-me".into(),
            samples_delta: 4,
            tokens_delta: 40,
            ..Default::default()
        })
        .await
        .unwrap();
    let before = client
        .get_batch(GetBatchRequest {
            batch_id: "fix-me".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let update = |batch: proto::Batch, paths: Option<&[&str]>| proto::UpdateBatchRequest {
        batch: Some(batch),
        update_mask: paths.map(|paths| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };

    let corrected = client
        .update_batch(update(
            proto::Batch {
                batch_id: "fix-me".into(),
                topic_filter: "Contract Law - Remedies".into(),
                target_count: 999,
                // Output-only and immutable fields are not corrected.
                state: proto::batch::State::Failed as i32,
                samples_generated: 1,
                provider: "other".into(),
                etag: before.etag.clone(),
                ..Default::default()
            },
            Some(&["topic_filter"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(corrected.topic_filter, "Contract Law - Remedies");
    assert_eq!(
        corrected.target_count, created.target_count,
        "not in the mask"
    );
    assert_eq!(
        (
            corrected.state(),
            corrected.samples_generated,
            &*corrected.provider
        ),
        (proto::batch::State::Running, 4, "groq")
    );
    assert_eq!(corrected.update_time, before.update_time, "times stay");
    assert_eq!(corrected.start_time, before.start_time);
    assert_ne!(corrected.etag, before.etag, "the etag changes");

    // The etag read before that correction is stale now: nothing applies.
    let status = client
        .update_batch(update(
            proto::Batch {
                batch_id: "fix-me".into(),
                difficulty_filter: "basic".into(),
                etag: before.etag.clone(),
                ..Default::default()
            },
            Some(&["difficulty_filter"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "ETAG_MISMATCH");
    assert_eq!(info.metadata["etag"], corrected.etag);
    let unchanged: String = app
        .db
        .client()
        .await
        .query_one(
            "SELECT difficulty_filter FROM batches WHERE batch_id = 'fix-me'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unchanged, "advanced");

    // Without a mask, the correctable fields the batch sets; "*" clears.
    let by_content = client
        .update_batch(update(
            proto::Batch {
                batch_id: "fix-me".into(),
                reasoning_instruction: "Cite the statute.".into(),
                etag: corrected.etag.clone(),
                ..Default::default()
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_content.reasoning_instruction, "Cite the statute.");
    assert_eq!(by_content.topic_filter, "Contract Law - Remedies");
    let cleared = client
        .update_batch(update(
            proto::Batch {
                batch_id: "fix-me".into(),
                ..Default::default()
            },
            Some(&["*"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            &*cleared.topic_filter,
            &*cleared.reasoning_instruction,
            cleared.target_count
        ),
        ("", "", 0)
    );
    assert_eq!(cleared.samples_generated, 4);

    for (paths, field) in [
        (&["state"][..], "update_mask.paths[0]"),
        (&["topic_filter", "provider"][..], "update_mask.paths[1]"),
        (&["nonsense"][..], "update_mask.paths[0]"),
    ] {
        assert_invalid(
            client
                .update_batch(update(
                    proto::Batch {
                        batch_id: "fix-me".into(),
                        ..Default::default()
                    },
                    Some(paths),
                ))
                .await
                .unwrap_err(),
            field,
        );
    }
    assert_invalid(
        client
            .update_batch(update(
                proto::Batch {
                    batch_id: "fix-me".into(),
                    etag: "W/\"1\"".into(),
                    ..Default::default()
                },
                Some(&["topic_filter"]),
            ))
            .await
            .unwrap_err(),
        "batch.etag",
    );
    let status = client
        .update_batch(update(
            proto::Batch {
                batch_id: "never-made".into(),
                topic_filter: "x".into(),
                ..Default::default()
            },
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(error_info(&status).reason, "BATCH_NOT_FOUND");
}

#[tokio::test]
async fn labels_are_set_at_create_corrected_and_filtered_on() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let labels = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for (batch_id, pairs) in [
        ("prod-a", &[("env", "prod"), ("team", "a")][..]),
        ("prod-b", &[("env", "prod"), ("team", "b")][..]),
        ("dev-a", &[("env", "dev"), ("team", "a")][..]),
        ("none", &[][..]),
    ] {
        client
            .create_batch(CreateBatchRequest {
                batch_id: batch_id.into(),
                batch: Some(proto::Batch {
                    labels: labels(pairs),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let listed = |answer: proto::ListBatchesResponse| {
        let mut ids: Vec<String> = answer.batches.into_iter().map(|b| b.batch_id).collect();
        ids.sort();
        ids
    };
    let prod = client
        .list_batches(ListBatchesRequest {
            labels: labels(&[("env", "prod")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        prod.batches[0].labels.get("env").map(String::as_str),
        Some("prod")
    );
    assert_eq!(listed(prod), ["prod-a", "prod-b"]);
    let team_a = client
        .list_batches(ListBatchesRequest {
            labels: labels(&[("env", "prod"), ("team", "a")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed(team_a), ["prod-a"]);
    let stats = client
        .get_batch_stats(proto::GetBatchStatsRequest {
            labels: labels(&[("team", "a")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.batch_count, 2);

    // Corrected by UpdateBatch; the listing follows.
    client
        .update_batch(proto::UpdateBatchRequest {
            batch: Some(proto::Batch {
                batch_id: "dev-a".into(),
                labels: labels(&[("env", "prod")]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels".into()],
            }),
        })
        .await
        .unwrap();
    let prod = client
        .list_batches(ListBatchesRequest {
            labels: labels(&[("env", "prod")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed(prod), ["dev-a", "prod-a", "prod-b"]);

    for bad in [
        labels(&[("Env", "prod")]),
        labels(&[("env", "Prod")]),
        labels(&[("env", "a b")]),
        (0..9).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
    ] {
        assert_invalid(
            client
                .create_batch(CreateBatchRequest {
                    batch_id: "bad".into(),
                    batch: Some(proto::Batch {
                        labels: bad.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap_err(),
            "batch.labels",
        );
        assert_invalid(
            client
                .list_batches(ListBatchesRequest {
                    labels: bad,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "labels",
        );
    }
}
