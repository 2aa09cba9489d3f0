//! The right to run the background upkeep, held by one replica at a time.
//!
//! It is a session advisory lock on a connection of its own: PostgreSQL
//! releases it when that connection ends, so a replica that crashes, hangs
//! up or is partitioned away hands it on, and another takes it at its next
//! look. Deleting old rows from several replicas at once only multiplies the
//! work and the lock waits (Oban's pruner deadlocked that way, oban#168).

use std::time::Duration;

use tokio_postgres::Client;

use super::{DatabaseConfig, StoreError, connect_dedicated};

/// Key of the session-level advisory lock: "bhupkeep".
const UPKEEP_LOCK_KEY: i64 = 0x6268_7570_6b65_6570;

/// Holds, or tries to take, the upkeep lock.
pub(crate) struct UpkeepLock {
    config: tokio_postgres::Config,
    timeout: Duration,
    /// The connection that holds the lock, or asked for it last.
    client: Option<Client>,
}

impl UpkeepLock {
    /// A lock taken on `config`'s direct connection when it has one: a
    /// transaction pooler would not keep the session the lock belongs to.
    pub(crate) fn new(config: &DatabaseConfig) -> Self {
        Self {
            config: config.direct.clone().unwrap_or_else(|| config.pg.clone()),
            timeout: config.timeout,
            client: None,
        }
    }

    /// Whether this replica holds the lock now, taking it if it is free.
    /// Any failure means it does not: the connection is dropped, and with
    /// it the lock, if it was still held.
    pub(crate) async fn held(&mut self) -> bool {
        let outcome = tokio::time::timeout(self.timeout, self.ask()).await;
        match outcome {
            Ok(Ok(held)) => held,
            Ok(Err(_)) | Err(_) => {
                self.client = None;
                false
            }
        }
    }

    async fn ask(&mut self) -> Result<bool, StoreError> {
        let client = match self.client.take().filter(|client| !client.is_closed()) {
            Some(client) => client,
            None => connect_dedicated(&self.config, self.timeout).await?,
        };
        // Looks before taking: taking a session lock this session already
        // holds would stack another hold on it every time.
        let row = client
            .query_one(
                "SELECT CASE WHEN EXISTS (
                    SELECT FROM pg_locks
                    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                      AND classid = ($1::bigint >> 32)::oid
                      AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1
                ) THEN true ELSE pg_try_advisory_lock($1::bigint) END",
                &[&UPKEEP_LOCK_KEY],
            )
            .await?;
        let held = row.try_get(0)?;
        self.client = Some(client);
        Ok(held)
    }
}
