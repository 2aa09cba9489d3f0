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
        assert_eq!(
            refused.header("error-reason"),
            Some("FIELD_INVALID"),
            "{path}"
        );
        assert!(
            refused.body.contains(&format!("<code>{field}</code>")),
            "{path}: {}",
            refused.body
        );
    }
    let missing = get(page, "/batches/web-nobody", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("error-reason"), Some("BATCH_NOT_FOUND"));
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
    let (app, page) = page_with_token(token).await;

    let refused = get(page, "/", &[]).await;
    assert_eq!(
        (refused.status, refused.header("location")),
        (303, Some("/login"))
    );
    assert_eq!(get(page, "/events?", &[]).await.status, 401);
    assert_eq!(get(page, "/login", &[]).await.status, 200);
    let wrong = request(page, "POST", "/login", &FORM, "token=web-test-token").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    let signed_in = request(page, "POST", "/login", &FORM, &format!("token={token}")).await;
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
    assert!(
        matches!(
            down.header("error-reason"),
            Some("DATABASE_UNAVAILABLE" | "DATABASE_TIMEOUT")
        ),
        "{:?}",
        down.headers
    );
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

/// One HTTP/1.1 request over TLS to `addr`, trusting `ca`; the raw response.
async fn over_tls(addr: std::net::SocketAddr, ca: &str, head: &str) -> std::io::Result<String> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A browser offers both; the page must pick HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    tls.write_all(head.as_bytes()).await?;
    let mut raw = String::new();
    tls.read_to_string(&mut raw).await?;
    Ok(raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_files_the_page_is_served_over_tls_and_its_cookie_is_secure() {
    let pki = crate::grpc_tls::Pki::new();
    pki.ca("ca");
    pki.leaf("server", "ca", "serverAuth");
    let db = crate::support::TestDb::create().await;
    let token = "tls-page-token-5e1d";
    let server = Server::start(ServeConfig {
        ui_addr: Some("127.0.0.1:0".parse().unwrap()),
        auth_token: Some(batch_history::config::Secret::new(token.into())),
        tls: Some(batch_history::tls::TlsFiles {
            cert: pki.path("server.pem").into(),
            key: pki.path("server.key").into(),
            // Mutual TLS is for gRPC clients; the page signs people in.
            client_ca: Some(pki.path("ca.pem").into()),
        }),
        ..serve_config(db.database_config(Duration::from_secs(5)))
    })
    .await;
    let page = server.ui_addr.unwrap();
    let ca = pki.path("ca.pem");

    let login = over_tls(
        page,
        &ca,
        "GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    let body = format!("token={token}");
    let signed_in = over_tls(
        page,
        &ca,
        &format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
    .unwrap();
    assert!(signed_in.starts_with("HTTP/1.1 303"), "{signed_in}");
    let cookie = signed_in
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP gets no page.
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(page).await.unwrap();
        let _ = stream
            .write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        raw
    })
    .await
    .unwrap();
    assert!(!String::from_utf8_lossy(&plain).contains("200 OK"));
    server.stop().await;
}

/// How a sign-in form is posted.
const FORM: [(&str, &str); 1] = [("content-type", "application/x-www-form-urlencoded")];

/// An app whose page asks for `token`, and the page's address.
async fn page_with_token(token: &str) -> (TestApp, std::net::SocketAddr) {
    let app = TestApp::builder()
        .web_page()
        .auth_token(token)
        .spawn()
        .await;
    let page = app.ui_addr.unwrap();
    (app, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_answered_slower_and_slower_and_a_flood_is_refused() {
    let token = "slow-down-token-0b7f";
    let (app, page) = page_with_token(token).await;
    let mut took = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let wrong = request(page, "POST", "/login", &FORM, "token=guess").await;
        assert_eq!(wrong.status, 401);
        took.push(started.elapsed());
    }
    eprintln!("wrong tokens answered after {took:?}");
    for (took, expected_ms) in took.iter().zip([0, 250, 500, 1_000, 2_000]) {
        let expected = Duration::from_millis(expected_ms);
        assert!(
            *took >= expected.saturating_sub(Duration::from_millis(20))
                && *took < expected + Duration::from_secs(1),
            "{took:?} for a wait of {expected:?}"
        );
    }
    // Many at once from the same address: they queue, and those whose turn
    // would be too far off are refused at once.
    let flood: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move { request(page, "POST", "/login", &FORM, "token=x").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in flood {
        statuses.push(attempt.await.unwrap().status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    app.stop().await;
}

/// A small deterministic generator for the fuzz test.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A value as an attacker or a broken client might send it, already
    /// fit for a request line.
    fn value(&mut self) -> String {
        const WORDS: &[&str] = &[
            "RUNNING",
            "COMPLETED",
            "DONE",
            "-1",
            "0",
            "1000000000000000000000",
            "NaN",
            "2025-01-01T00:00:00Z",
            "2025-13-45T99:99:99Z",
            "yesterday",
            "groq",
            "%00",
            "%ff%fe",
            "%C3%28",
            "%E2%82",
            "'",
            "%22%3E%3Cscript%3E",
            "..%2F..%2F",
            "%0d%0aX:%20y",
        ];
        match self.below(5) {
            0 => WORDS[self.below(WORDS.len())].to_owned(),
            1 => (0..self.below(64))
                .map(|_| format!("%{:02X}", self.below(256)))
                .collect(),
            2 => "A".repeat(self.below(20_000)),
            3 => (0..self.below(40))
                .map(|_| {
                    let safe = b"abcXYZ019-._~!$'()*+,;:@/?";
                    safe[self.below(safe.len())] as char
                })
                .collect(),
            _ => {
                let a = WORDS[self.below(WORDS.len())];
                let b = WORDS[self.below(WORDS.len())];
                format!("{a}{b}")
            }
        }
    }

    fn query(&mut self) -> String {
        const KEYS: &[&str] = &[
            "states",
            "provider",
            "model",
            "topic",
            "difficulty",
            "started_after",
            "started_before",
            "older",
            "newer",
            "order",
            "page_size",
            "view",
            "batch",
            "",
        ];
        (0..self.below(6))
            .map(|_| {
                let key = match self.below(4) {
                    0 => self.value(),
                    _ => KEYS[self.below(KEYS.len())].to_owned(),
                };
                match self.below(6) {
                    0 => key,
                    _ => format!("{key}={}", self.value()),
                }
            })
            .collect::<Vec<_>>()
            .join(if self.below(8) == 0 { ";" } else { "&" })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_route_survives_thousands_of_malformed_inputs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = "fuzz-token-77aa";
    let (app, page) = page_with_token(token).await;
    let signed_in = request(page, "POST", "/login", &FORM, &format!("token={token}")).await;
    let cookie = signed_in
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let (mut sent, mut slowest, mut by_status) =
        (0, Duration::ZERO, std::collections::BTreeMap::new());
    for round in 0..3_000 {
        let (method, target, body) = match round % 6 {
            0 => ("GET", format!("/?{}", noise.query()), String::new()),
            1 => ("GET", format!("/stats?{}", noise.query()), String::new()),
            2 => ("GET", format!("/batches/{}", noise.value()), String::new()),
            3 => ("GET", format!("/events?{}", noise.query()), String::new()),
            4 => ("POST", "/login".to_owned(), noise.query()),
            _ => (
                ["GET", "POST", "PUT", "DELETE"][noise.below(4)],
                format!("/{}?{}", noise.value(), noise.query()),
                noise.value(),
            ),
        };
        let started = std::time::Instant::now();
        // Read the head only: an event stream would not end by itself.
        let head = tokio::time::timeout(Duration::from_secs(10), async {
            let mut stream = tokio::net::TcpStream::connect(page).await.unwrap();
            let request = format!(
                "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nCookie: {cookie}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(request.as_bytes()).await;
            let mut head = Vec::new();
            let mut byte = [0_u8; 1];
            while !head.ends_with(b"\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            String::from_utf8_lossy(&head).into_owned()
        })
        .await
        .unwrap_or_else(|_| panic!("no answer within 10 s to {method} {}", &target[..target.len().min(200)]));
        let elapsed = started.elapsed();
        slowest = slowest.max(elapsed);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(
            (100..500).contains(&status),
            "{method} {} answered {head:?}",
            &target[..target.len().min(300)]
        );
        *by_status.entry(status).or_insert(0) += 1;
        sent += 1;
    }
    eprintln!("{sent} malformed requests: statuses {by_status:?}, slowest {slowest:?}");
    // The slowest are wrong tokens waiting their turn, at most 5 s.
    assert!(slowest < Duration::from_secs(6), "{slowest:?}");
    // Still serving as before.
    assert_eq!(get(page, "/", &[("cookie", &cookie)]).await.status, 200);
    app.stop().await;
}
