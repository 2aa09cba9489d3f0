//! Connections: how a statement is sent depends on what stands between the
//! service and PostgreSQL, and work that needs a session of its own gets a
//! dedicated connection.

use std::{pin::pin, time::Duration};

use deadpool_postgres::Client;
use futures_util::TryStreamExt;
use tokio_postgres::{
    Row, SimpleQueryMessage,
    types::{ToSql, Type},
};

use super::{StoreError, params::Bind, sql::Statement};

/// What a client connection of the pool is to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// One server session for the connection's life: PostgreSQL itself, or a
    /// session-mode pooler. Statements are prepared once per connection.
    Session,
    /// A transaction-mode pooler (PgBouncer's `pool_mode = transaction`, RDS
    /// Proxy, Supavisor): consecutive transactions may meet different server
    /// sessions, so a statement prepared in one is unknown in the next. Each
    /// statement is sent unnamed, with its parameter types, in the round
    /// trip that runs it.
    Transaction,
}

/// A pooled connection as a store operation uses it.
pub(crate) struct Connection<'c> {
    client: &'c Client,
    /// Whether statements are prepared, or sent with their types each time.
    pooling: Pooling,
}

impl<'c> Connection<'c> {
    pub(crate) fn new(client: &'c Client, pooling: Pooling) -> Self {
        Self { client, pooling }
    }

    pub(crate) async fn query(&self, bound: &impl Bind) -> Result<Vec<Row>, StoreError> {
        let (statement, params) = (bound.statement(), bound.values());
        let rows = match self.pooling {
            Pooling::Session => {
                let prepared = self.prepare(statement).await?;
                self.client.query(&prepared, &params).await?
            }
            Pooling::Transaction => {
                let typed = typed(statement, &params)?;
                self.client.query_typed(statement.text, &typed).await?
            }
        };
        Ok(rows)
    }

    /// The statement's only row, if any; more than one is an error.
    pub(crate) async fn query_opt(&self, bound: &impl Bind) -> Result<Option<Row>, StoreError> {
        let (statement, params) = (bound.statement(), bound.values());
        let row = match self.pooling {
            Pooling::Session => {
                let prepared = self.prepare(statement).await?;
                self.client.query_opt(&prepared, &params).await?
            }
            Pooling::Transaction => {
                let typed = typed(statement, &params)?;
                self.client.query_typed_opt(statement.text, &typed).await?
            }
        };
        Ok(row)
    }

    /// The statement's only row; none, or more than one, is an error.
    pub(crate) async fn query_one(&self, bound: &impl Bind) -> Result<Row, StoreError> {
        self.query_opt(bound).await?.ok_or_else(|| {
            StoreError::internal(
                "running a statement",
                "it returned no row where one was due",
            )
        })
    }

    /// Runs the statement; returns how many rows it changed.
    pub(crate) async fn execute(&self, bound: &impl Bind) -> Result<u64, StoreError> {
        let (statement, params) = (bound.statement(), bound.values());
        match self.pooling {
            Pooling::Session => {
                let prepared = self.prepare(statement).await?;
                Ok(self.client.execute(&prepared, &params).await?)
            }
            Pooling::Transaction => {
                let typed = typed(statement, &params)?;
                let mut rows = pin!(self.client.query_typed_raw(statement.text, typed).await?);
                while rows.try_next().await?.is_some() {}
                Ok(rows.rows_affected().unwrap_or_default())
            }
        }
    }

    /// Runs `text`, which takes no parameters, over the simple protocol.
    pub(crate) async fn simple(&self, text: &str) -> Result<(), StoreError> {
        self.client.simple_query(text).await?;
        Ok(())
    }

    async fn prepare(
        &self,
        statement: Statement<'_>,
    ) -> Result<tokio_postgres::Statement, StoreError> {
        Ok(self
            .client
            .prepare_typed_cached(statement.text, statement.types)
            .await?)
    }
}

/// Pairs each parameter with its declared type; a count that differs is a
/// defect, which would otherwise show only behind a transaction pooler.
fn typed<'p>(
    statement: Statement<'_>,
    params: &[&'p (dyn ToSql + Sync)],
) -> Result<Vec<(&'p (dyn ToSql + Sync), Type)>, StoreError> {
    if params.len() != statement.types.len() {
        return Err(StoreError::internal(
            "binding parameters",
            format!(
                "{} parameters for {} declared types",
                params.len(),
                statement.types.len()
            ),
        ));
    }
    Ok(params
        .iter()
        .copied()
        .zip(statement.types.iter().cloned())
        .collect())
}

/// A connection of its own (not from the pool) to `config`, opened within
/// `timeout`, for work that needs a session: the change feed's reader, a session
/// advisory lock, a transaction spanning many round trips, a liveness probe. Its I/O
/// runs on a task that ends when the client is dropped.
pub async fn connect_dedicated(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = tokio::time::timeout(timeout, config.connect(super::connector()?))
        .await
        .map_err(|_| StoreError::TimedOut(timeout))??;
    tokio::spawn(connection);
    Ok(client)
}

/// Rounds of [`detect_pooling`]: enough for a pooler handing out server
/// sessions in turn (PgBouncer's `server_round_robin`) to show it.
const DETECTION_ROUNDS: usize = 3;

/// What `config` reaches. Two client connections ask in turn which server
/// process serves them: PostgreSQL and session poolers give each connection
/// one process of its own for its life; a transaction pooler lends whichever
/// is free, so the answers repeat across connections or change within one.
pub async fn detect_pooling(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<Pooling, StoreError> {
    let first = connect_dedicated(config, timeout).await?;
    let second = connect_dedicated(config, timeout).await?;
    let (mut firsts, mut seconds) = (Vec::new(), Vec::new());
    for _ in 0..DETECTION_ROUNDS {
        firsts.push(backend_pid(&first, timeout).await?);
        seconds.push(backend_pid(&second, timeout).await?);
    }
    let one_process = |pids: &[String]| pids.iter().all(|pid| *pid == pids[0]);
    Ok(
        if one_process(&firsts) && one_process(&seconds) && firsts[0] != seconds[0] {
            Pooling::Session
        } else {
            Pooling::Transaction
        },
    )
}

async fn backend_pid(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> Result<String, StoreError> {
    let messages = tokio::time::timeout(timeout, client.simple_query("SELECT pg_backend_pid()"))
        .await
        .map_err(|_| StoreError::TimedOut(timeout))??;
    messages
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| StoreError::internal("detecting a pooler", "pg_backend_pid() gave no row"))
}
