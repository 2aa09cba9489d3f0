//! Schema migrations, embedded from `migrations/` at build time.

use std::time::Duration;

use tokio::time::Instant;

use super::DatabaseConfig;
use super::{Pooling, StoreError, connect_dedicated, detect_pooling};
use crate::telemetry::cause_chain;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Key of the session-level advisory lock held while migrating, so that
/// replicas booting together apply each migration once, one after another
/// (refinery takes no lock of its own).
pub const MIGRATION_LOCK_KEY: i64 = 0x6261_7463_6868_6973; // "batchhis"

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("could not take the migration lock")]
    Lock(#[source] tokio_postgres::Error),
    #[error(
        "the database has applied migration {0}, which this build does not have: it was \
         migrated by a newer build. Refusing to serve a schema this build does not know; \
         deploy the newer build"
    )]
    UnknownMigration(String),
    #[error(
        "applied migration {0} differs from this build's migration of the same version: it \
         was edited after being applied. Refusing to serve a schema this build does not know"
    )]
    EditedMigration(String),
    #[error("could not migrate the schema")]
    Migrate(#[source] refinery::Error),
    #[error("could not connect to the database")]
    Reach(#[source] StoreError),
    #[error(
        "DATABASE_URL goes through a transaction-mode pooler (such as PgBouncer with \
         pool_mode = transaction), where migrations and their lock \
         cannot work: set DATABASE_DIRECT_URL to a direct connection to the same database"
    )]
    PoolerWithoutDirectUrl,
}

impl MigrateError {
    /// Whether the database may answer if asked again: it is down,
    /// starting, or unreachable, rather than refusing this build.
    fn is_transient(&self) -> bool {
        match self {
            Self::Reach(error) => {
                matches!(error, StoreError::Unavailable(_) | StoreError::TimedOut(_))
            }
            Self::Lock(error) => error.is_closed(),
            _ => false,
        }
    }
}

/// Gets `database` ready to serve: finds out (unless `DB_POOLER` says)
/// whether `DATABASE_URL` reaches PostgreSQL through a transaction-mode
/// pooler, refusing one without `DATABASE_DIRECT_URL`, then migrates over a
/// session of its own.
/// Returns what the pool's connections are.
pub async fn set_up(database: &DatabaseConfig) -> Result<Pooling, MigrateError> {
    let give_up = Instant::now() + database.startup_timeout;
    let mut pause = FIRST_RETRY;
    loop {
        match set_up_once(database).await {
            Err(error) if error.is_transient() && Instant::now() + pause < give_up => {
                tracing::warn!(
                    error = %cause_chain(&error),
                    retry_in_ms = pause.as_millis() as u64,
                    "the database does not answer yet; retrying"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LAST_RETRY);
            }
            outcome => return outcome,
        }
    }
}

/// The first pause between start-up attempts, doubled up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(5);

async fn set_up_once(database: &DatabaseConfig) -> Result<Pooling, MigrateError> {
    let pooling = match database.pooling {
        Some(pooling) => pooling,
        None => detect_pooling(&database.pg, database.timeout)
            .await
            .map_err(MigrateError::Reach)?,
    };
    tracing::info!(
        transaction_pooler = pooling == Pooling::Transaction,
        direct_url = database.direct.is_some(),
        "database reached"
    );
    if pooling == Pooling::Transaction && database.direct.is_none() {
        return Err(MigrateError::PoolerWithoutDirectUrl);
    }
    migrate(database.session(), database.timeout).await?;
    Ok(pooling)
}

/// Applies every embedded migration not yet applied, and returns the names
/// of those it applied. Refuses to touch a database whose applied migrations
/// differ from this build's.
pub async fn migrate(
    config: &tokio_postgres::Config,
    connect_timeout: Duration,
) -> Result<Vec<String>, MigrateError> {
    let mut client = connect_dedicated(config, connect_timeout)
        .await
        .map_err(MigrateError::Reach)?;

    // Released when this connection closes, even if migrating fails midway.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(MigrateError::Lock)?;
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(&mut client)
        .await
        .map_err(|error| match error.kind() {
            refinery::error::Kind::MissingVersion(applied) => {
                MigrateError::UnknownMigration(applied.to_string())
            }
            refinery::error::Kind::DivergentVersion(applied, _) => {
                MigrateError::EditedMigration(applied.to_string())
            }
            _ => MigrateError::Migrate(error),
        });

    drop(client);
    let applied: Vec<String> = report?
        .applied_migrations()
        .iter()
        .map(|migration| migration.to_string())
        .collect();
    // One line per migration: log collectors read fields, not debug text.
    for migration in &applied {
        tracing::info!(%migration, "migration applied");
    }
    tracing::info!(applied = applied.len(), "schema up to date");
    Ok(applied)
}
