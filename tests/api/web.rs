//! The web page over real HTTP: what it lists and refuses, its live event
//! stream, its sign-in, and what it says when the database is down. The
//! browser's view of the same is `tests/browser`.

use std::time::Duration;

use batch_history::config::ServeConfig;
use batch_history::proto::{self, CreateBatchRequest, FinishBatchRequest, RecordProgressRequest};

use crate::support::cluster::TempCluster;
use crate::support::http::{self, get, read_until, request};
use crate::support::{Server, TestApp, database_config, serve_config};

#[tokio::test]
async fn the_page_shows_batches_and_names_the_field_of_a_bad_address() {
    let app = TestApp::builder().web_page().spawn().await;
    let page = app.ui_addr.unwrap();
    app.create("web-groq", "groq").await;
    app.create("web-cerebras", "cerebras").await;

    let history = get(page, "/", &[]).await;
    assert_eq!(history.status, 200);
    assert!(history.body.contains("web-groq") && history.body.contains("web-cerebras"));
    assert!(
        history
            .header("content-security-policy")
            .unwrap()
            .contains("default-src 'self'")
    );
    let filtered = get(page, "/?provider=cerebras&states=RUNNING", &[]).await;
    assert!(filtered.body.contains("web-cerebras") && !filtered.body.contains("web-groq"));

    let detail = get(page, "/batches/web-groq", &[]).await;
    assert_eq!(detail.status, 200);
    assert!(detail.body.contains("llama-3.3-70b") && detail.body.contains("data-live"));

    for (path, field) in [
        ("/?states=DONE", "states"),
        ("/?started_after=yesterday", "started_after"),
        ("/?older=not-a-token", "older"),
        ("/batches/no%20such", "batch_id"),
        ("/stats?started_before=soon", "started_before"),
    ] {
        let refused = get(page, path, &[]).await;
        assert_eq!(refused.status, 400, "{path}");
        assert!(
            refused.body.contains(&format!("<code>{field}</code>")),
            "{path}: {}",
            refused.body
        );
    }
    assert_eq!(get(page, "/batches/web-nobody", &[]).await.status, 404);
    assert_eq!(get(page, "/nowhere", &[]).await.status, 404);
    assert_eq!(request(page, "POST", "/", &[], "").await.status, 405);
    let script = get(page, "/assets/app.js", &[]).await;
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    app.stop().await;
}

#[tokio::test]
async fn the_event_stream_sends_each_change_as_the_row_or_detail_to_show() {
    let app = TestApp::builder().web_page().spawn().await;
    let page = app.ui_addr.unwrap();
    let mut client = app.client.clone();

    app.create("shown-1", "groq").await;
    app.create("hidden-1", "groq").await;
    // A page that shows shown-1 (and not hidden-1, say on another page).
    let events = "/events?states=RUNNING&shown=shown-1";
    let mut history = http::send(page, "GET", events, &[], "").await;
    let mut seen = String::new();
    read_until(&mut history, &mut seen, r#""target":"batch-shown-1""#).await;
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    // Created through another replica: the page hears of it through the feed.
    let other = Server::start(serve_config(app.db.database_config(Duration::from_secs(5)))).await;
    other
        .client()
        .await
        .create_batch(CreateBatchRequest {
            batch_id: "live-1".into(),
            batch: Some(proto::Batch {
                target_count: 100,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    read_until(&mut history, &mut seen, r#""add":true"#).await;
    assert!(seen.contains(r#""target":"batch-live-1""#), "{seen}");
    for (batch_id, samples) in [("hidden-1", 7), ("shown-1", 9), ("live-1", 42)] {
        client
            .record_progress(RecordProgressRequest {
                batch_id: batch_id.into(),
                samples_delta: samples,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    read_until(&mut history, &mut seen, "42 / 100").await;
    assert!(seen.contains("9 / 100"), "{seen}");
    assert!(
        !seen.contains("hidden-1"),
        "a batch the page does not show was sent: {seen}"
    );

    let mut detail = http::send(page, "GET", "/events?batch_id=live-1", &[], "").await;
    let mut detail_seen = String::new();
    read_until(&mut detail, &mut detail_seen, r#""target":"batch-detail""#).await;
    client
        .finish_batch(FinishBatchRequest {
            batch_id: "live-1".into(),
            state: proto::batch::State::Completed as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    // The finish, then the end: nothing more will change.
    read_until(&mut detail, &mut detail_seen, "event: end").await;
    assert!(detail_seen.contains("state-completed"), "{detail_seen}");
    read_until(&mut history, &mut seen, "state-completed").await;
    app.stop().await;
}

#[tokio::test]
async fn with_a_token_only_a_signed_in_browser_sees_the_page() {
    let token = "web-test-token-93c1";
    let app = TestApp::builder()
        .web_page()
        .auth_token(token)
        .spawn()
        .await;
    let page = app.ui_addr.unwrap();

    let refused = get(page, "/", &[]).await;
    assert_eq!(
        (refused.status, refused.header("location")),
        (303, Some("/login"))
    );
    assert_eq!(get(page, "/events?", &[]).await.status, 401);
    assert_eq!(get(page, "/login", &[]).await.status, 200);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let wrong = request(page, "POST", "/login", &form, "token=web-test-token").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    let signed_in = request(page, "POST", "/login", &form, &format!("token={token}")).await;
    assert_eq!(
        (signed_in.status, signed_in.header("location")),
        (303, Some("/"))
    );
    let cookie = signed_in.header("set-cookie").unwrap();
    assert!(
        !cookie.contains(token) && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    assert_eq!(get(page, "/", &[("cookie", pair)]).await.status, 200);
    assert_eq!(get(page, "/stats", &[("cookie", pair)]).await.status, 200);
    let forged = format!("{}x", &pair[..pair.len() - 1]);
    assert_eq!(get(page, "/", &[("cookie", &forged)]).await.status, 303);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_the_page_says_so_and_recovers() {
    let cluster = tokio::task::block_in_place(|| TempCluster::start(""));
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let server = Server::start(ServeConfig {
        ui_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..serve_config(database_config(&url, Duration::from_millis(1_000)))
    })
    .await;
    let page = server.ui_addr.unwrap();
    assert_eq!(get(page, "/", &[]).await.status, 200);

    tokio::task::block_in_place(|| cluster.stop());
    let down = get(page, "/", &[]).await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.body.contains("Database unavailable"));
    assert_eq!(get(page, "/events?", &[]).await.status, 503);

    tokio::task::block_in_place(|| cluster.resume());
    let mut status = 0;
    for _ in 0..50 {
        status = get(page, "/", &[]).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = get(page, "/", &[]).await;
    assert_eq!(
        status, 200,
        "the page did not recover with the database: {last:?}"
    );
}
