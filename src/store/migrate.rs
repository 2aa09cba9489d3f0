//! Schema migrations, embedded from `migrations/` at build time.

use std::time::Duration;

use tokio_postgres::NoTls;

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
    #[error("could not connect to the database within {0:?}")]
    ConnectTimedOut(Duration),
    #[error("could not connect to the database")]
    Connect(#[source] tokio_postgres::Error),
    #[error("could not take the migration lock")]
    Lock(#[source] tokio_postgres::Error),
    /// Includes a database migrated by a newer build (a migration this build
    /// does not know) and an applied migration whose text has since changed.
    #[error("could not migrate the schema")]
    Migrate(#[source] refinery::Error),
}

/// Applies every embedded migration not yet applied, and returns the names
/// of those it applied. Refuses to touch a database whose applied migrations
/// differ from this build's.
pub async fn migrate(
    config: &tokio_postgres::Config,
    connect_timeout: Duration,
) -> Result<Vec<String>, MigrateError> {
    let (mut client, connection) = tokio::time::timeout(connect_timeout, config.connect(NoTls))
        .await
        .map_err(|_| MigrateError::ConnectTimedOut(connect_timeout))?
        .map_err(MigrateError::Connect)?;
    let connection = tokio::spawn(connection);

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
        .map_err(MigrateError::Migrate);

    drop(client);
    // The connection task ends once the client is gone; its result adds nothing.
    let _ = connection.await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|migration| migration.to_string())
        .collect())
}
