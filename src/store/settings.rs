//! How the service reaches PostgreSQL, as validated settings.

use std::time::Duration;

use tokio_postgres::config::Host;

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
    pub pool_max_size: usize,
    /// Bound on waiting for a connection or a statement.
    pub timeout: Duration,
    /// How long to keep retrying at start while the database does not answer.
    pub startup_timeout: Duration,
}

impl DatabaseConfig {
    /// How work that needs a session of its own (a `LISTEN`, a session
    /// advisory lock, a transaction spanning several round trips) connects:
    /// `DATABASE_DIRECT_URL` when set, else `DATABASE_URL`.
    pub fn session(&self) -> &tokio_postgres::Config {
        self.direct.as_ref().unwrap_or(&self.pg)
    }

    /// Where the database is, for logs: never the password.
    pub fn describe(&self) -> String {
        describe(&self.pg)
    }

    /// Where the direct connection goes, if one is set, for logs.
    pub fn describe_direct(&self) -> Option<String> {
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
