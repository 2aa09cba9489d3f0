//! Metrics and request ids.

use batch_history::proto::{GetBatchRequest, ListBatchesRequest};
use tonic::{Code, Request};

use crate::support::{TestApp, metric};

#[tokio::test]
async fn metrics_count_calls_by_code_and_show_pool_and_batches() {
    let app = TestApp::spawn().await;
    app.create("m-1", "groq").await;
    app.create("m-2", "groq").await;
    let status = app
        .client
        .clone()
        .get_batch(GetBatchRequest {
            batch_id: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let response = crate::support::http::get(app.metrics_addr, "/metrics", &[]).await;
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let page = app.scrape().await;
    assert_eq!(
        metric(
            &page,
            r#"batch_history_requests_total{code="Ok",method="CreateBatch"}"#
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"batch_history_requests_total{code="NotFound",method="GetBatch"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            r#"batch_history_request_duration_seconds_count{method="CreateBatch"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&page, r#"batch_history_batches{state="RUNNING"}"#),
        Some(2.0)
    );
    assert!(metric(&page, r#"batch_history_pool_connections{state="size"}"#).unwrap() >= 1.0);
    assert!(metric(&page, r#"batch_history_pool_connections{state="waiting"}"#).is_some());
}

#[tokio::test]
async fn request_ids_are_honoured_or_created_and_echoed() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();

    let mut request = Request::new(ListBatchesRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "dash-42".parse().unwrap());
    let response = client.list_batches(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "dash-42");

    let mut request = Request::new(GetBatchRequest {
        batch_id: "nope".into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "dash-43".parse().unwrap());
    let status = client.get_batch(request).await.unwrap_err();
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "dash-43");

    let response = client
        .list_batches(ListBatchesRequest::default())
        .await
        .unwrap();
    let created = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(created.len(), 32);
    assert!(created.bytes().all(|b| b.is_ascii_hexdigit()));
}
