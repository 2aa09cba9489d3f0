//! The command line and environment (clap), validated into each command's
//! settings ([`crate::config`]) with an error that says what to fix. Only
//! `main` uses it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use jiff::tz::TimeZone;

use crate::config::{ImportConfig, Secret, ServeConfig};
use crate::domain::StaleThreshold;
use crate::import::{ImportOptions, Source};
use crate::local_cluster::{LocalCluster, LocalClusterError};
use crate::maintenance::Upkeep;
use crate::store::{self, DatabaseConfig, OnConflict, Pooling};
use crate::telemetry::LogFormat;
use crate::tls::TlsFiles;

/// The batch-history service and its tools.
#[derive(Debug, Parser)]
#[command(name = "batch-history", version, about)]
pub struct Cli {
    /// Log line format: `pretty` when standard error is a terminal, else
    /// `json`; `RUST_LOG` sets levels (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the database, then serve gRPC until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Apply pending migrations and exit.
    Migrate(DatabaseArgs),
    /// Exit 0 if the server at `--addr` reports SERVING, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Copy the dashboard's legacy history (its SQLite batches.db, or the
    /// batch_history table of its PostgreSQL) into the service's database,
    /// migrating first.
    #[command(visible_alias = "import")]
    ImportSqlite(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to accept gRPC connections on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:50051")]
    pub(crate) listen_addr: SocketAddr,
    /// Address to serve Prometheus metrics on (HTTP); off unless set.
    #[arg(long, env = "METRICS_ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Address to serve the web page on (HTTP): history, batch details, live
    /// progress and stats; off unless set.
    #[arg(long, env = "UI_ADDR")]
    pub(crate) ui_addr: Option<SocketAddr>,
    /// Shared secret: when set, BatchHistory calls need
    /// `authorization: Bearer <token>` (health and reflection stay open).
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    pub(crate) auth_token: Option<String>,
    /// File holding the shared secret instead (a Docker or Kubernetes secret).
    #[arg(long, env = "AUTH_TOKEN_FILE")]
    pub(crate) auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve gRPC over TLS (with --tls-key-file).
    #[arg(long, env = "TLS_CERT_FILE")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "TLS_KEY_FILE")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: clients must then present a certificate they issued.
    #[arg(long, env = "TLS_CLIENT_CA_FILE")]
    pub(crate) tls_client_ca_file: Option<PathBuf>,
    /// RUNNING batches not updated for this long are stopped: minutes, or a
    /// number with s, m or h (`90s`, `2h`); 0 turns the sweep off.
    #[arg(long, env = "STALE_AFTER", default_value = "120m", value_parser = parse_stale_after)]
    pub(crate) stale_after: StaleAfter,
    /// Finished batches that ended this many days ago are deleted; 0 or
    /// unset keeps them forever.
    #[arg(long, env = "RETENTION_DAYS")]
    pub(crate) retention_days: Option<u32>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The stale-batch threshold; `None` turns the sweep off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StaleAfter(pub Option<StaleThreshold>);

fn parse_stale_after(text: &str) -> Result<StaleAfter, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "m"),
    };
    let number: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 120m, 90s or 2h"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3_600),
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    if seconds == 0 {
        return Ok(StaleAfter(None));
    }
    StaleThreshold::parse(Duration::from_secs(seconds))
        .map(|threshold| StaleAfter(Some(threshold)))
        .map_err(|e| format!("{text:?} {e}"))
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, `postgres://user:password@host:port/database`.
    // Parsed by `TryFrom<DatabaseArgs> for DatabaseConfig`, not by clap,
    // whose error would echo the value, password included.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// File holding the URL instead (a Docker or Kubernetes secret).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub(crate) database_url_file: Option<PathBuf>,
    /// A direct connection to the same database, for the work that needs a
    /// session of its own (migrations and their lock, the change feed's
    /// LISTEN, the import) when DATABASE_URL goes through a transaction-mode
    /// pooler such as PgBouncer.
    #[arg(long, env = "DATABASE_DIRECT_URL", hide_env_values = true)]
    pub(crate) database_direct_url: Option<String>,
    /// File holding the direct URL instead.
    #[arg(long, env = "DATABASE_DIRECT_URL_FILE")]
    pub(crate) database_direct_url_file: Option<PathBuf>,
    /// A streaming replica of the same database that listings and stats
    /// may read from; anything lagging more than DB_READ_MAX_LAG_MS, or
    /// unreachable, is skipped for the primary.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub(crate) database_read_url: Option<String>,
    /// File holding the read URL instead.
    #[arg(long, env = "DATABASE_READ_URL_FILE")]
    pub(crate) database_read_url_file: Option<PathBuf>,
    /// How far behind the primary (milliseconds) the replica may be and
    /// still serve reads.
    #[arg(long, env = "DB_READ_MAX_LAG_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) db_read_max_lag_ms: u64,
    /// What DATABASE_URL reaches: `auto` finds out at start; `transaction`
    /// for a transaction-mode pooler; `session` for PostgreSQL itself or a
    /// session-mode pooler.
    #[arg(long, env = "DB_POOLER", value_enum, default_value_t = DbPooler::Auto)]
    pub(crate) db_pooler: DbPooler,
    /// Without a URL: where the private development PostgreSQL keeps its
    /// data (default `$XDG_DATA_HOME/batch-history/postgres`).
    #[arg(long, env = "DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Connections in the pool.
    #[arg(long, env = "DB_POOL_MAX_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) db_pool_max_size: u16,
    /// Milliseconds to wait for a pooled connection, a new connection or a
    /// statement before answering UNAVAILABLE.
    #[arg(long, env = "DB_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) db_timeout_ms: u64,
    /// Milliseconds to keep retrying at start while the database does not
    /// answer (after a host reboot, before it is up), before giving up.
    #[arg(long, env = "DB_STARTUP_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub(crate) db_startup_timeout_ms: u64,
}

/// What stands between the service and PostgreSQL, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DbPooler {
    /// Find out at start.
    Auto,
    /// PostgreSQL itself, or a session-mode pooler.
    Session,
    /// A transaction-mode pooler (PgBouncer `pool_mode = transaction`).
    Transaction,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Server to check, as `HOST:PORT` or an `http://` URL.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Milliseconds to wait for the answer.
    #[arg(long, default_value_t = 3_000)]
    pub timeout_ms: u64,
    /// PEM CA certificate to verify a TLS server with; the check then speaks TLS.
    #[arg(long, env = "HEALTHCHECK_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM certificate to present when the server asks for one (mutual TLS).
    #[arg(long, env = "HEALTHCHECK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "HEALTHCHECK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Name the server's certificate must carry; default: the address's host.
    #[arg(long, env = "HEALTHCHECK_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The legacy history: a SQLite file (backend/data/batches.db), or the
    /// PostgreSQL URL the dashboard's DATABASE_URL held
    /// (postgres://USER:PASSWORD@HOST/DB; read only).
    #[arg(value_name = "FILE_OR_URL")]
    pub(crate) source: String,
    /// Check and stage everything, report, and write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// IANA zone of legacy times without an offset (the dashboard wrote local time).
    #[arg(long, env = "SOURCE_TIMEZONE", default_value = "UTC")]
    pub(crate) source_timezone: String,
    /// What to do when a batch id is stored with other content.
    #[arg(long, value_enum, default_value_t = ConflictPolicy::Fail)]
    pub(crate) on_conflict: ConflictPolicy,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ConflictPolicy {
    /// Import nothing.
    Fail,
    /// Keep the stored batch and import the rest.
    Skip,
}

impl TryFrom<ImportArgs> for ImportConfig {
    type Error = ConfigError;

    fn try_from(args: ImportArgs) -> Result<Self, Self::Error> {
        let source_timezone = TimeZone::get(&args.source_timezone)
            .map_err(|_| ConfigError::UnknownTimeZone(args.source_timezone.clone()))?;
        let timeout = Duration::from_millis(args.database.db_timeout_ms);
        let source = if let Some(url) = postgres_url(&args.source) {
            Source::Postgres {
                config: Box::new(store::connection("the legacy source", &url, timeout)?),
                shown: without_password(&url),
            }
        } else {
            Source::Sqlite(PathBuf::from(args.source))
        };
        Ok(Self {
            options: ImportOptions {
                source,
                source_timezone,
                on_conflict: match args.on_conflict {
                    ConflictPolicy::Fail => OnConflict::Fail,
                    ConflictPolicy::Skip => OnConflict::Skip,
                },
                dry_run: args.dry_run,
            },
            database: args.database.try_into()?,
            json: args.json,
        })
    }
}

impl TryFrom<ServeArgs> for ServeConfig {
    type Error = ConfigError;

    fn try_from(args: ServeArgs) -> Result<Self, Self::Error> {
        Ok(Self {
            listen_addr: args.listen_addr,
            metrics_addr: args.metrics_addr,
            ui_addr: args.ui_addr,
            auth_token: secret("AUTH_TOKEN", args.auth_token, args.auth_token_file)?
                .filter(|token| !token.is_empty())
                .map(Secret::new),
            tls: match (
                args.tls_cert_file,
                args.tls_key_file,
                args.tls_client_ca_file,
            ) {
                (None, None, None) => None,
                (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca,
                }),
                _ => return Err(ConfigError::IncompleteTls),
            },
            upkeep: Upkeep {
                stale_after: args.stale_after.0,
                retention: args
                    .retention_days
                    .filter(|days| *days > 0)
                    .map(|days| Duration::from_secs(u64::from(days) * 86_400)),
            },
            database: args.database.try_into()?,
        })
    }
}

impl TryFrom<DatabaseArgs> for DatabaseConfig {
    type Error = ConfigError;

    fn try_from(args: DatabaseArgs) -> Result<Self, Self::Error> {
        let timeout = Duration::from_millis(args.db_timeout_ms);
        let url = secret("DATABASE_URL", args.database_url, args.database_url_file)?
            .filter(|url| !url.trim().is_empty())
            .or_else(|| libpq_environment(|name| std::env::var(name).ok()))
            .ok_or(ConfigError::MissingDatabaseUrl)?;
        let direct = secret(
            "DATABASE_DIRECT_URL",
            args.database_direct_url,
            args.database_direct_url_file,
        )?
        .filter(|url| !url.trim().is_empty());
        let read = secret(
            "DATABASE_READ_URL",
            args.database_read_url,
            args.database_read_url_file,
        )?
        .filter(|url| !url.trim().is_empty());
        Ok(Self {
            pg: store::connection("DATABASE_URL", &url, timeout)?,
            direct: direct
                .map(|url| store::connection("DATABASE_DIRECT_URL", &url, timeout))
                .transpose()?,
            read: read
                .map(|url| store::connection("DATABASE_READ_URL", &url, timeout))
                .transpose()?,
            read_max_lag: Duration::from_millis(args.db_read_max_lag_ms),
            pooling: match args.db_pooler {
                DbPooler::Auto => None,
                DbPooler::Session => Some(Pooling::Session),
                DbPooler::Transaction => Some(Pooling::Transaction),
            },
            pool_max_size: usize::from(args.db_pool_max_size),
            timeout,
            startup_timeout: Duration::from_millis(args.db_startup_timeout_ms),
        })
    }
}

/// `source` as a URL tokio-postgres reads, if it names PostgreSQL: the
/// dashboard's `DATABASE_URL` may carry SQLAlchemy's driver
/// (`postgresql+psycopg2://`).
fn postgres_url(source: &str) -> Option<String> {
    let (scheme, rest) = source.split_once("://")?;
    let (scheme, _driver) = scheme.split_once('+').unwrap_or((scheme, ""));
    matches!(scheme, "postgres" | "postgresql").then(|| format!("postgresql://{rest}"))
}

/// A URL fit for a report or a log line: its password replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            let masked = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{masked}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// Starts the private cluster when `args` name no database, and points
/// them at it; returns it, to be stopped once the command is done.
pub async fn start_unless_configured(
    args: &mut DatabaseArgs,
) -> Result<Option<LocalCluster>, LocalClusterError> {
    let named = |url: &Option<String>| url.as_deref().is_some_and(|url| !url.trim().is_empty());
    if named(&args.database_url)
        || args.database_url_file.is_some()
        || libpq_environment(|name| std::env::var(name).ok()).is_some()
    {
        return Ok(None);
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(LocalCluster::default_data_dir);
    let cluster = LocalCluster::start(data_dir).await?;
    tracing::info!(
        "no DATABASE_URL: using the development default, a private PostgreSQL in {dir} \
         (psql -h {dir} -U postgres); set DATABASE_URL for anything else",
        dir = cluster.data_dir().display()
    );
    args.database_url = Some(cluster.connection_string());
    Ok(Some(cluster))
}

/// The variables libpq and psql read (`PGHOST`, `PGPORT`, `PGUSER`,
/// `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`) as a connection string, when
/// `PGHOST` is among them: how compose names its bundled database, so that a
/// `DATABASE_URL` in `.env` can override it. `var` looks a variable up.
pub(crate) fn libpq_environment(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let var = |name: &str| var(name).filter(|value| !value.is_empty());
    var("PGHOST")?;
    let settings = [
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("password", "PGPASSWORD"),
        ("dbname", "PGDATABASE"),
        ("sslmode", "PGSSLMODE"),
    ];
    let pairs: Vec<String> = settings
        .iter()
        .filter_map(|(key, name)| {
            let value = var(name)?.replace('\\', "\\\\").replace('\'', "\\'");
            Some(format!("{key}='{value}'"))
        })
        .collect();
    Some(pairs.join(" "))
}

/// A secret given as `name` or read from the file `name`_FILE names (as the
/// postgres image does), without the file's trailing newline.
fn secret(
    name: &'static str,
    value: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::SecretTwice(name)),
        (value, None) => Ok(value),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned())),
            Err(source) => Err(ConfigError::SecretFile { name, path, source }),
        },
    }
}

/// A setting that cannot work, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "DATABASE_URL is not set: set it (or pass --database-url) to \
         postgres://USER:PASSWORD@HOST:PORT/DATABASE, or set PGHOST (and PGUSER, \
         PGPASSWORD, PGDATABASE) as for psql"
    )]
    MissingDatabaseUrl,
    #[error(transparent)]
    InvalidDatabaseUrl(#[from] store::InvalidUrl),
    #[error("--source-timezone {0:?} is not an IANA time zone such as UTC or Europe/Paris")]
    UnknownTimeZone(String),
    #[error("TLS needs both TLS_CERT_FILE and TLS_KEY_FILE (TLS_CLIENT_CA_FILE only with them)")]
    IncompleteTls,
    #[error("{0} and {0}_FILE are both set: keep one")]
    SecretTwice(&'static str),
    #[error("cannot read {name}_FILE {path:?}")]
    SecretFile {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    /// Every variable named in the first column of `docs/CONFIGURATION.md`.
    fn documented_variables() -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for row in include_str!("../docs/CONFIGURATION.md").lines() {
            let Some(first) = row.strip_prefix("| ").and_then(|r| r.split(" |").next()) else {
                continue;
            };
            let mut last = String::new();
            for name in first.split('`').skip(1).step_by(2) {
                // `NAME` (`_FILE`) names both.
                let name = match name.strip_prefix('_') {
                    Some(suffix) => format!("{last}_{suffix}"),
                    None => name.to_owned(),
                };
                last.clone_from(&name);
                names.insert(name);
            }
        }
        names
    }

    /// Every variable a flag of any command reads.
    fn parsed_variables() -> std::collections::BTreeSet<String> {
        use clap::CommandFactory;
        fn walk(command: &clap::Command, names: &mut std::collections::BTreeSet<String>) {
            for arg in command.get_arguments() {
                if let Some(env) = arg.get_env() {
                    names.insert(env.to_string_lossy().into_owned());
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, names);
            }
        }
        let mut names = std::collections::BTreeSet::new();
        walk(&Cli::command(), &mut names);
        names
    }

    #[test]
    fn the_configuration_table_and_the_flags_name_the_same_variables() {
        // Read by libpq's rules, tokio, tracing or OpenTelemetry, not by a flag.
        let read_elsewhere = [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGPASSWORD",
            "PGDATABASE",
            "PGSSLMODE",
            "TOKIO_WORKER_THREADS",
            "RUST_LOG",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_SERVICE_NAME",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_SDK_DISABLED",
        ];
        let documented = documented_variables();
        let parsed = parsed_variables();
        let undocumented: Vec<_> = parsed.difference(&documented).collect();
        let unparsed: Vec<_> = documented
            .difference(&parsed)
            .filter(|name| !read_elsewhere.contains(&name.as_str()))
            .collect();
        assert!(
            undocumented.is_empty() && unparsed.is_empty(),
            "read but not in docs/CONFIGURATION.md: {undocumented:?}; \
             documented but read nowhere: {unparsed:?}"
        );
    }

    #[test]
    fn the_flags_defaults_are_the_settings_defaults() {
        let Command::Migrate(args) = Cli::try_parse_from([
            "batch-history",
            "migrate",
            "--database-url",
            "postgres://db/x",
        ])
        .unwrap()
        .command
        else {
            panic!("migrate parses as migrate");
        };
        let parsed = DatabaseConfig::try_from(args).unwrap();
        let made = DatabaseConfig::from_url("postgres://db/x", parsed.timeout).unwrap();
        assert_eq!(
            (
                parsed.read_max_lag,
                parsed.pool_max_size,
                parsed.startup_timeout
            ),
            (made.read_max_lag, made.pool_max_size, made.startup_timeout)
        );
    }

    #[test]
    fn a_legacy_source_is_a_file_or_the_dashboards_database_url() {
        assert_eq!(
            postgres_url("postgresql+psycopg2://dash:pw@db/legal").as_deref(),
            Some("postgresql://dash:pw@db/legal")
        );
        assert_eq!(
            postgres_url("postgres://db/legal").as_deref(),
            Some("postgresql://db/legal")
        );
        assert_eq!(postgres_url("backend/data/batches.db"), None);
        assert_eq!(postgres_url("sqlite:///data/batches.db"), None);
    }

    #[test]
    fn a_legacy_source_is_reported_without_its_password() {
        assert_eq!(
            without_password("postgresql://dash:s3cret@db:5432/legal?sslmode=require"),
            "postgresql://dash:***@db:5432/legal?sslmode=require"
        );
        assert_eq!(
            without_password("postgres://dash@db/legal"),
            "postgres://dash@db/legal"
        );
        assert_eq!(
            without_password("postgres://db/legal"),
            "postgres://db/legal"
        );
    }

    fn args(url: &str) -> DatabaseArgs {
        DatabaseArgs {
            database_url: Some(url.into()),
            database_url_file: None,
            database_direct_url: None,
            database_direct_url_file: None,
            db_pooler: DbPooler::Auto,
            database_read_url: None,
            database_read_url_file: None,
            db_read_max_lag_ms: 5_000,
            data_dir: None,
            db_pool_max_size: 4,
            db_timeout_ms: 250,
            db_startup_timeout_ms: 0,
        }
    }

    #[test]
    fn secrets_come_from_a_variable_or_a_file_but_not_both() {
        let path = std::env::temp_dir().join(format!("bh-secret-{}", std::process::id()));
        std::fs::write(&path, "postgres://u:p@db:5432/history\n").unwrap();
        let from_file = DatabaseArgs {
            database_url: None,
            database_url_file: Some(path.clone()),
            data_dir: None,
            ..args("")
        };
        let config = DatabaseConfig::try_from(from_file).unwrap();
        assert_eq!(config.pg.get_dbname(), Some("history"));
        assert_eq!(config.pg.get_password(), Some(&b"p"[..]));
        let both = DatabaseArgs {
            database_url_file: Some(path.clone()),
            data_dir: None,
            ..args("postgres://u@db/x")
        };
        let error = DatabaseConfig::try_from(both).unwrap_err().to_string();
        assert_eq!(
            error,
            "DATABASE_URL and DATABASE_URL_FILE are both set: keep one"
        );
        std::fs::remove_file(&path).unwrap();
        let missing = DatabaseArgs {
            database_url: None,
            database_url_file: Some(path),
            data_dir: None,
            ..args("")
        };
        let error = DatabaseConfig::try_from(missing).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read DATABASE_URL_FILE"),
            "{error}"
        );
    }

    #[test]
    fn a_url_becomes_a_config_without_its_password_in_descriptions() {
        let config =
            DatabaseConfig::try_from(args("postgres://app:s3cret@db:6543/history")).unwrap();
        assert_eq!(config.describe(), "postgres://app@db:6543/history");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert_eq!(config.pool_max_size, 4);
    }

    #[test]
    fn unusable_urls_are_refused_without_echoing_them() {
        let missing = DatabaseArgs {
            database_url: None,
            ..args("")
        };
        assert!(matches!(
            DatabaseConfig::try_from(missing),
            Err(ConfigError::MissingDatabaseUrl)
        ));
        let error =
            DatabaseConfig::try_from(args("postgres://app:s3cret@db:notaport/x")).unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        let tls =
            DatabaseConfig::try_from(args("postgres://app:s3cret@db/x?sslmode=require")).unwrap();
        assert_eq!(tls.pg.get_ssl_mode(), SslMode::Require);
        let plain = DatabaseConfig::try_from(args("postgres://app:s3cret@db/x")).unwrap();
        assert_eq!(plain.pg.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn libpq_variables_name_a_database_when_pghost_is_set() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        assert_eq!(libpq_environment(vars(&[("PGUSER", "u")])), None);
        let text = libpq_environment(vars(&[
            ("PGHOST", "postgres"),
            ("PGUSER", "legal_user"),
            ("PGPASSWORD", "p@ss w'rd/?#"),
            ("PGDATABASE", "legal_dashboard"),
            ("PGPORT", ""),
        ]))
        .unwrap();
        let mut parsed = args(&text);
        parsed.db_timeout_ms = 1_000;
        let config = DatabaseConfig::try_from(parsed).unwrap();
        assert_eq!(
            config.describe(),
            "postgres://legal_user@postgres:5432/legal_dashboard"
        );
        assert_eq!(config.pg.get_password(), Some(&b"p@ss w'rd/?#"[..]));
    }

    #[test]
    fn stale_thresholds_read_like_people_write_them() {
        let seconds =
            |s: u64| StaleAfter(Some(StaleThreshold::parse(Duration::from_secs(s)).unwrap()));
        let minutes = |m: u64| seconds(m * 60);
        assert_eq!(parse_stale_after("120m"), Ok(minutes(120)));
        assert_eq!(parse_stale_after("120"), Ok(minutes(120)));
        assert_eq!(parse_stale_after("2h"), Ok(minutes(120)));
        assert_eq!(parse_stale_after("90s"), Ok(seconds(90)));
        assert_eq!(parse_stale_after("0"), Ok(StaleAfter(None)));
        assert!(parse_stale_after("soon").is_err());
        assert!(parse_stale_after("5d").is_err());
        assert_eq!(
            parse_stale_after("100000h"),
            Err(r#""100000h" must be at most 3,650 days"#.into())
        );
    }

    #[test]
    fn command_line_defaults_match_the_contract() {
        let cli =
            Cli::try_parse_from(["batch-history", "serve", "--database-url", "postgres://h/d"])
                .unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.listen_addr, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(serve.database.db_pool_max_size, 16);
        assert_eq!(serve.database.db_timeout_ms, 5_000);
        assert_eq!(cli.log_format, None);
    }
}
