//! What the tests share: a real server on a random loopback port over a fresh
//! PostgreSQL database dropped when the test ends ([`TestApp`]), the real
//! binary as a child process ([`process`]), and throwaway clusters
//! ([`cluster`]).

pub mod cluster;
pub mod http;
pub mod pgbouncer;
pub mod process;

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use batch_history::config::{Secret, ServeConfig};
use batch_history::local_cluster::LocalCluster;
use batch_history::proto::{self, batch_history_client::BatchHistoryClient};
use batch_history::startup::App;
use batch_history::store::DatabaseConfig;
use batch_history::store::Pooling;
use batch_history::telemetry::cause_chain;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

/// Server every test database lives on: `TEST_DATABASE_URL`, else the local
/// server on 127.0.0.1:5432, else (nothing answers there) a private cluster
/// for the tests, started once and kept for later runs under `target/`.
pub fn admin_config() -> tokio_postgres::Config {
    static ADMIN: OnceLock<tokio_postgres::Config> = OnceLock::new();
    ADMIN
        .get_or_init(|| {
            let (config, _started) = test_server(
                std::env::var("TEST_DATABASE_URL").ok(),
                "127.0.0.1:5432".parse().unwrap(),
                &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-postgres"),
            );
            config
        })
        .clone()
}

/// The server tests use: `url` if given, else the server on `default` if one
/// answers there, else a private cluster in `cluster_dir` (returned too, so
/// that a caller may stop it).
pub fn test_server(
    url: Option<String>,
    default: SocketAddr,
    cluster_dir: &std::path::Path,
) -> (tokio_postgres::Config, Option<LocalCluster>) {
    if let Some(url) = url {
        let config = url
            .parse()
            .expect("TEST_DATABASE_URL is not a PostgreSQL URL");
        return (config, None);
    }
    if std::net::TcpStream::connect_timeout(&default, Duration::from_secs(1)).is_ok() {
        let url = format!("postgres://postgres@{default}/postgres");
        return (url.parse().unwrap(), None);
    }
    let cluster = LocalCluster::start_blocking(cluster_dir.to_owned())
        .expect("nothing answers on the default port, and no private test cluster");
    (cluster.connection_string().parse().unwrap(), Some(cluster))
}

pub async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect(
        "cannot connect to the test PostgreSQL server; is it running? (see TEST_DATABASE_URL)",
    );
    tokio::spawn(connection);
    client
}

/// The first column of every row `sql` returns.
pub async fn column<T>(client: &tokio_postgres::Client, sql: &str) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// A row locked by a transaction of the test's own.
pub struct RowLock(tokio_postgres::Client);

impl RowLock {
    /// Ends the transaction, releasing the row.
    pub async fn release(self) {
        self.0.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// A uniquely named database, dropped (with its connections) on drop.
pub struct TestDb {
    pub name: String,
    pub config: tokio_postgres::Config,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("bh_test_{:016x}", rand_u64());
        let admin = connect(&admin_config()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("cannot create a test database");
        let mut config = admin_config();
        config.dbname(&name);
        Self { name, config }
    }

    /// The database's URL, as `DATABASE_URL` takes it, with `password`
    /// (which a trust-auth server ignores) if given.
    pub fn url(&self, password: Option<&str>) -> String {
        let user = self.config.get_user().unwrap_or("postgres");
        let password = password.map(|p| format!(":{p}")).unwrap_or_default();
        match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Unix(dir)) => format!(
                "postgres://{user}{password}@{}/{}",
                dir.display().to_string().replace('/', "%2F"),
                self.name
            ),
            host => {
                let host = match host {
                    Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
                    _ => "127.0.0.1".into(),
                };
                let port = self.config.get_ports().first().copied().unwrap_or(5432);
                format!("postgres://{user}{password}@{host}:{port}/{}", self.name)
            }
        }
    }

    /// How many rows `table` holds now.
    pub async fn count_rows(&self, table: &str) -> i64 {
        self.client()
            .await
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Locks batch `batch_id`'s row from a session of the test's own, as
    /// another writer holding it would, until [`RowLock::release`].
    pub async fn lock_row(&self, batch_id: &str) -> RowLock {
        let client = self.client().await;
        client
            .batch_execute(&format!(
                "BEGIN; SELECT FROM batches WHERE batch_id = '{batch_id}' FOR UPDATE"
            ))
            .await
            .unwrap();
        RowLock(client)
    }

    /// A direct connection, to check what the service stored.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.config).await
    }

    /// How the service reaches this database, made the way `serve` makes it
    /// from `DATABASE_URL` (sslmode, keepalives, application name): through
    /// the PgBouncer that `TEST_PGBOUNCER` names, if set, with this URL as
    /// `DATABASE_DIRECT_URL`.
    pub fn database_config(&self, timeout: Duration) -> DatabaseConfig {
        let direct = self.url(None);
        match pgbouncer() {
            Some(pgbouncer) => {
                let user = self.config.get_user().unwrap_or("postgres");
                let pooled = format!("postgres://{user}@{pgbouncer}/{}", self.name);
                database_config_via(&pooled, Some(&direct), timeout)
            }
            None => database_config(&direct, timeout),
        }
    }

    /// What the service's pooled connections are to this database.
    pub fn pooling(&self) -> Pooling {
        match pgbouncer() {
            Some(_) => Pooling::Transaction,
            None => Pooling::Session,
        }
    }

    /// Drops the database now, under a running server.
    pub async fn drop_now(&self) {
        let admin = connect(&admin_config()).await;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .expect("cannot drop the test database");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async move {
                    let admin = connect(&admin_config()).await;
                    admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}

/// A server built from a config, serving in the background until stopped or
/// dropped: for tests that bring their own database.
pub struct Server {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub ui_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Builds the app from `config` (migrating its database) and serves it.
    pub async fn start(config: ServeConfig) -> Self {
        let app = App::build(config)
            .await
            .unwrap_or_else(|error| panic!("the app did not start: {}", cause_chain(&error)));
        let addr = app.local_addr().unwrap();
        let (metrics_addr, ui_addr) = (app.metrics_addr(), app.ui_addr());
        let (shutdown, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("the server failed");
        });
        Self {
            addr,
            metrics_addr,
            ui_addr,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// A client connected to this server.
    pub async fn client(&self) -> BatchHistoryClient<Channel> {
        BatchHistoryClient::connect(format!("http://{}", self.addr))
            .await
            .expect("cannot connect to the server")
    }

    /// Tells the server to shut down gracefully, without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Stops the server gracefully and waits until it has, failing the test
    /// if it stopped with an error.
    pub async fn stop(mut self) {
        self.begin_stop();
        (&mut self.task).await.expect("the server panicked");
    }
}

/// A running server (metrics on), its client and its fresh database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The web page's address, when the builder turned it on.
    pub ui_addr: Option<SocketAddr>,
    pub client: BatchHistoryClient<Channel>,
    pub db: TestDb,
    server: Server,
}

/// How a [`TestApp`] differs from the default: a fresh database, a 5 s
/// database timeout, metrics on, no web page, token or upkeep changes.
#[must_use]
pub struct TestAppBuilder {
    db: Option<TestDb>,
    timeout: Duration,
    database: Option<DatabaseConfig>,
    ui: bool,
    auth_token: Option<String>,
}

impl TestAppBuilder {
    /// Serve this database instead of a fresh one.
    pub fn db(self, db: TestDb) -> Self {
        Self {
            db: Some(db),
            ..self
        }
    }

    /// The budget of each call's database work.
    pub fn timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// Reach the database with these settings (a pooler, a small pool)
    /// instead of the database's own, direct ones.
    pub fn database(self, database: DatabaseConfig) -> Self {
        Self {
            database: Some(database),
            ..self
        }
    }

    /// Serve the web page on a free port too.
    pub fn web_page(self) -> Self {
        Self { ui: true, ..self }
    }

    pub fn auth_token(self, token: &str) -> Self {
        Self {
            auth_token: Some(token.into()),
            ..self
        }
    }

    pub async fn spawn(self) -> TestApp {
        let db = match self.db {
            Some(db) => db,
            None => TestDb::create().await,
        };
        let database = self
            .database
            .unwrap_or_else(|| db.database_config(self.timeout));
        let free = || Some("127.0.0.1:0".parse().unwrap());
        let server = Server::start(ServeConfig {
            metrics_addr: free(),
            ui_addr: if self.ui { free() } else { None },
            auth_token: self.auth_token.map(Secret::new),
            ..serve_config(database)
        })
        .await;
        TestApp {
            addr: server.addr,
            metrics_addr: server.metrics_addr.unwrap(),
            ui_addr: server.ui_addr,
            client: server.client().await,
            db,
            server,
        }
    }
}

impl TestApp {
    /// The default app on a fresh database.
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            db: None,
            timeout: Duration::from_secs(5),
            database: None,
            ui: false,
            auth_token: None,
        }
    }

    /// Tells the server to shut down gracefully, without waiting.
    pub fn begin_stop(&mut self) {
        self.server.begin_stop();
    }

    /// Stops the server gracefully and waits until it has.
    pub async fn stop(self) {
        self.server.stop().await;
    }

    /// Stops the server and hands back its database, to look at afterwards.
    pub async fn stop_keeping_db(self) -> TestDb {
        self.server.stop().await;
        self.db
    }

    /// The metrics page, fetched over plain HTTP/1.1.
    pub async fn scrape(&self) -> String {
        scrape(self.metrics_addr).await
    }

    /// Creates a running batch with the given id and provider.
    pub async fn create(&self, batch_id: &str, provider: &str) -> proto::Batch {
        self.client
            .clone()
            .create_batch(proto::CreateBatchRequest {
                batch_id: batch_id.into(),
                batch: Some(proto::Batch {
                    provider: provider.into(),
                    model: "llama-3.3-70b".into(),
                    target_count: 100,
                    ..Default::default()
                }),
            })
            .await
            .expect("create failed")
            .into_inner()
    }
}

/// Asserts `status` is INVALID_ARGUMENT naming `field`, in the message and in
/// a `google.rpc.BadRequest` detail.
#[track_caller]
pub fn assert_invalid(status: Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "{status:?} does not name {field}"
    );
    let bad_request = status
        .get_details_bad_request()
        .expect("no BadRequest detail");
    assert_eq!(bad_request.field_violations[0].field, field);
    let info = error_info(&status);
    assert_eq!(info.reason, "FIELD_INVALID");
    assert_eq!(info.metadata["field"], field);
}

/// The `ErrorInfo` every failed call carries, checked for the service's domain.
pub fn error_info(status: &Status) -> tonic_types::ErrorInfo {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "batch-history", "{status:?}");
    info
}

/// Whether `status` is how tonic's client reports a stream that a server
/// shutting down gracefully never took: the h2 error of a final
/// `GOAWAY(NO_ERROR)` from the server, which tonic maps to INTERNAL although
/// the call was not processed (see `goaway.rs`).
pub fn refused_by_goaway(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = error.source();
    }
    false
}

/// What tests serve with: a free loopback port, no metrics, TLS or token,
/// the default upkeep, and `database`. Change what a test needs with
/// `ServeConfig { upkeep, ..serve_config(database) }`.
pub fn serve_config(database: DatabaseConfig) -> ServeConfig {
    ServeConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        ui_addr: None,
        auth_token: None,
        tls: None,
        upkeep: Default::default(),
        database,
    }
}

/// `TEST_PGBOUNCER`: the `host:port` of a PgBouncer in transaction mode in
/// front of the test server (`.ci/run` starts one), through which in-process
/// servers then reach their databases.
pub fn pgbouncer() -> Option<String> {
    std::env::var("TEST_PGBOUNCER")
        .ok()
        .filter(|address| !address.is_empty())
}

/// The database settings `serve` makes of `url` (pool of 8).
pub fn database_config(url: &str, timeout: Duration) -> DatabaseConfig {
    database_config_via(url, None, timeout)
}

/// The database settings `serve` makes of `url` and `direct_url`.
pub fn database_config_via(
    url: &str,
    direct_url: Option<&str>,
    timeout: Duration,
) -> DatabaseConfig {
    let mut config = DatabaseConfig::from_url(url, timeout).expect("a test database URL");
    config.direct = direct_url.map(|direct| {
        batch_history::store::connection("DATABASE_DIRECT_URL", direct, timeout)
            .expect("a test database URL")
    });
    config.pool_max_size = 8;
    config.startup_timeout = Duration::ZERO;
    config
}

/// The metrics page at `addr`, fetched over plain HTTP/1.1.
pub async fn scrape(addr: SocketAddr) -> String {
    let response = http::get(addr, "/metrics", &[]).await;
    assert_eq!(response.status, 200, "{response:?}");
    response.body
}

/// The value of `series` (a name, with its labels if it has any) on a
/// metrics page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn rand_u64() -> u64 {
    let mut bytes = [0; 8];
    getrandom::fill(&mut bytes).expect("random source");
    u64::from_le_bytes(bytes)
}

pub fn timestamp(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

/// A health client for the server at `url` (`http://host:port`).
pub async fn health_client(url: String) -> tonic_health::pb::health_client::HealthClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
}

/// A small seeded generator, so that a failing run can be repeated.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }

    pub fn pick<T: Copy>(&mut self, values: &[T]) -> T {
        values[self.below(values.len() as u64) as usize]
    }
}
