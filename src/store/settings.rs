//! How the service reaches PostgreSQL, as validated settings.

use std::{str::FromStr, time::Duration};

use tokio_postgres::config::{Host, SslMode};

use super::Pooling;

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// How calls reach the database: directly, or through a pooler.
    pub pg: tokio_postgres::Config,
    /// `DATABASE_DIRECT_URL`: how work that needs a session of its own
    /// reaches the database when `pg` goes through a pooler.
    pub direct: Option<tokio_postgres::Config>,
    /// `DATABASE_READ_URL`: a streaming replica for listings and stats.
    pub read: Option<tokio_postgres::Config>,
    /// How far behind the replica may be and still serve reads.
    pub read_max_lag: Duration,
    /// What `pg` reaches, if configured (`DB_POOLER`); `None`: found out at
    /// start.
    pub pooling: Option<Pooling>,
    /// Connections the pool may open (`DB_POOL_MAX_SIZE`); the replica's pool has as many.
    pub pool_max_size: usize,
    /// Bound on waiting for a connection or a statement.
    pub timeout: Duration,
    /// How long to keep retrying at start while the database does not answer.
    pub startup_timeout: Duration,
}

/// A database URL that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} is not a PostgreSQL URL ({reason}); expected \
     postgres://USER:PASSWORD@HOST:PORT/DATABASE"
)]
pub struct InvalidUrl {
    /// The variable (or flag) that held it.
    pub(crate) name: &'static str,
    pub(crate) reason: String,
}

/// The connection settings of `url`, the value of `name`: plain unless the
/// URL asks for TLS, connecting within `timeout`, with TCP keepalives and
/// the application name `batch-history` unless the URL names one.
pub fn connection(
    name: &'static str,
    url: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Config, InvalidUrl> {
    let invalid = |reason: String| InvalidUrl { name, reason };
    let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| invalid(e.to_string()))?;
    if pg.get_hosts().is_empty() {
        return Err(invalid("it names no host".into()));
    }
    // tokio-postgres defaults to `prefer`; without an sslmode the
    // connection stays plain, as the contract promises.
    if !url.contains("sslmode") {
        pg.ssl_mode(SslMode::Disable);
    }
    pg.connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    if pg.get_application_name().is_none() {
        pg.application_name("batch-history");
    }
    Ok(pg)
}

impl DatabaseConfig {
    /// The settings `serve` makes of `DATABASE_URL` = `url` and
    /// `DB_TIMEOUT_MS` = `timeout`, every other setting at its default.
    pub fn from_url(url: &str, timeout: Duration) -> Result<Self, InvalidUrl> {
        Ok(Self {
            pg: connection("DATABASE_URL", url, timeout)?,
            direct: None,
            read: None,
            read_max_lag: Self::DEFAULT_READ_MAX_LAG,
            pooling: None,
            pool_max_size: Self::DEFAULT_POOL_MAX_SIZE,
            timeout,
            startup_timeout: Self::DEFAULT_STARTUP_TIMEOUT,
        })
    }

    /// Defaults of `DB_READ_MAX_LAG_MS`, `DB_POOL_MAX_SIZE` and
    /// `DB_STARTUP_TIMEOUT_MS`.
    pub(crate) const DEFAULT_READ_MAX_LAG: Duration = Duration::from_secs(5);
    pub(crate) const DEFAULT_POOL_MAX_SIZE: usize = 16;
    pub(crate) const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

    /// How work that needs a session of its own (the change feed's reader, a
    /// session advisory lock, a transaction spanning several round trips) connects:
    /// `DATABASE_DIRECT_URL` when set, else `DATABASE_URL`.
    pub(crate) fn session(&self) -> &tokio_postgres::Config {
        self.direct.as_ref().unwrap_or(&self.pg)
    }

    /// Where the database is, for logs: never the password.
    pub(crate) fn describe(&self) -> String {
        describe(&self.pg)
    }

    /// Where the direct connection goes, if one is set, for logs.
    pub(crate) fn describe_direct(&self) -> Option<String> {
        self.direct.as_ref().map(describe)
    }
}

/// `pg` as a URL without its password.
fn describe(pg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .zip(pg.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        pg.get_user().unwrap_or_default(),
        hosts.join(","),
        pg.get_dbname().unwrap_or_default()
    )
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("database", &self.describe())
            .field("direct", &self.describe_direct())
            .field("read", &self.read.as_ref().map(describe))
            .field("pool_max_size", &self.pool_max_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}
