//! The database half of the change feed (`docs/ARCHITECTURE.md`): a
//! connection of its own that `LISTEN`s on `batch_changes`, and the notices
//! migration V3's trigger sends there, typed.

use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::{DatabaseConfig, StoreError, connector};
use crate::domain::{BatchId, BatchLabels, State};

/// A change to a batch, as the trigger announced it.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "UPPERCASE")]
pub enum Notice {
    Insert { batch_id: BatchId, version: i64 },
    Update { batch_id: BatchId, version: i64 },
    Delete(DeletedBatch),
}

/// A deleted batch, as its deletion announced it: enough to filter on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeletedBatch {
    pub(crate) batch_id: BatchId,
    #[serde(deserialize_with = "state_by_name")]
    pub(crate) state: State,
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) topic_filter: String,
    pub(crate) difficulty_filter: String,
    /// Absent from the notices of servers older than labels.
    #[serde(default)]
    pub(crate) labels: BatchLabels,
    pub(crate) start_time: Timestamp,
}

#[cfg(test)]
impl DeletedBatch {
    /// A completed `groq` batch with difficulty `advanced`, as tests use.
    pub(crate) fn example(batch_id: BatchId) -> Self {
        Self {
            batch_id,
            state: State::Completed,
            provider: "groq".into(),
            model: String::new(),
            topic_filter: String::new(),
            difficulty_filter: "advanced".into(),
            labels: BatchLabels::default(),
            start_time: "2025-01-01T00:00:00Z".parse().unwrap(),
        }
    }
}

fn state_by_name<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<State, D::Error> {
    let name = String::deserialize(deserializer)?;
    State::from_name(&name)
        .ok_or_else(|| serde::de::Error::custom(format_args!("unknown state {name:?}")))
}

/// A listening connection; notices arrive in commit order.
pub struct ChangeListener {
    client: tokio_postgres::Client,
    payloads: mpsc::Receiver<String>,
}

impl ChangeListener {
    /// Connects over `database`'s session connection and listens, holding
    /// up to `capacity` notifications not yet taken.
    pub(crate) async fn listen(
        database: &DatabaseConfig,
        capacity: usize,
    ) -> Result<Self, StoreError> {
        let connect = database.session().connect(connector()?);
        let (client, mut connection) = tokio::time::timeout(database.timeout, connect)
            .await
            .map_err(|_| StoreError::TimedOut(database.timeout))??;
        let (notifications, payloads) = mpsc::channel::<String>(capacity);
        tokio::spawn(async move {
            // Polling for messages also drives the connection's I/O.
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let AsyncMessage::Notification(notification) = message
                    && notifications
                        .send(notification.payload().to_owned())
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        client.batch_execute("LISTEN batch_changes").await?;
        Ok(Self { client, payloads })
    }

    /// A round trip on the listening connection, answered within `within`:
    /// proof that the database still serves it, so silence means no changes.
    pub(crate) async fn heartbeat(&self, within: std::time::Duration) -> Result<(), StoreError> {
        tokio::time::timeout(within, self.client.batch_execute("SELECT 1"))
            .await
            .map_err(|_| StoreError::TimedOut(within))??;
        Ok(())
    }

    /// The next notice, waiting for one; an error once the connection is
    /// gone.
    pub(crate) async fn next(&mut self) -> Result<Notice, StoreError> {
        loop {
            let payload = self.payloads.recv().await.ok_or_else(|| {
                StoreError::internal("listening for changes", "the connection closed")
            })?;
            if let Some(notice) = read(&payload) {
                return Ok(notice);
            }
        }
    }

    /// The next notice already received, if any.
    pub(crate) fn try_next(&mut self) -> Option<Notice> {
        while let Ok(payload) = self.payloads.try_recv() {
            if let Some(notice) = read(&payload) {
                return Some(notice);
            }
        }
        None
    }
}

/// A payload as a notice; one this build cannot read is logged and skipped.
fn read(payload: &str) -> Option<Notice> {
    serde_json::from_str(payload)
        .map_err(|error| {
            tracing::warn!(%error, payload, "ignoring an unreadable change notification");
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> BatchId {
        BatchId::parse(name.into()).unwrap()
    }

    fn parse(payload: &str) -> Notice {
        read(payload).unwrap()
    }

    #[test]
    fn reads_notices_as_postgres_writes_them() {
        assert_eq!(
            parse(r#"{"op" : "UPDATE", "batch_id" : "a", "version" : 7}"#),
            Notice::Update {
                batch_id: id("a"),
                version: 7
            }
        );
        assert_eq!(
            parse(
                r#"{"op" : "DELETE", "batch_id" : "a", "state" : "COMPLETED", "provider" : "groq", "model" : "", "topic_filter" : "", "difficulty_filter" : "advanced", "start_time" : "2025-01-01T01:00:00+01:00"}"#
            ),
            Notice::Delete(DeletedBatch::example(id("a")))
        );
        assert!(read(r#"{"op" : "TRUNCATE"}"#).is_none());
    }
}
