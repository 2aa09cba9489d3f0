//! A database liveness probe on its own connection, so that a busy pool
//! never passes for an unreachable database.

use std::time::Duration;

use tokio_postgres::Client;

use super::DatabaseConfig;
use super::StoreError;

/// Checks that PostgreSQL answers, reconnecting as needed.
pub(crate) struct Probe {
    config: tokio_postgres::Config,
    timeout: Duration,
    /// Opened on first use, and again after a failure.
    client: Option<Client>,
}

impl Probe {
    pub(crate) fn new(config: &DatabaseConfig) -> Self {
        Self {
            config: config.pg.clone(),
            timeout: config.timeout,
            client: None,
        }
    }

    /// `Ok` if the database answered a trivial query within the timeout.
    pub(crate) async fn check(&mut self) -> Result<(), StoreError> {
        let outcome = tokio::time::timeout(self.timeout, self.query()).await;
        let outcome = outcome.unwrap_or(Err(StoreError::TimedOut(self.timeout)));
        if outcome.is_err() {
            // Whatever went wrong, start from a fresh connection next time.
            self.client = None;
        }
        outcome
    }

    async fn query(&mut self) -> Result<(), StoreError> {
        let client = match self.client.take().filter(|client| !client.is_closed()) {
            Some(client) => client,
            None => super::connect_dedicated(&self.config, self.timeout).await?,
        };
        client.simple_query("SELECT 1").await?;
        self.client = Some(client);
        Ok(())
    }
}
