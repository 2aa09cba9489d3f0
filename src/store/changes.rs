//! The database half of the change feed (`docs/ARCHITECTURE.md`): a
//! connection of its own that reads `batch_change_log`, and the notices
//! migration V12's trigger writes there, typed.

use std::{collections::VecDeque, time::Duration};

use jiff::Timestamp;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_postgres::types::Type;

use super::{DatabaseConfig, StoreError, connect_dedicated};
use crate::domain::{BatchId, BatchLabels, State};

/// A change to a batch, as the trigger logged it.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "UPPERCASE")]
pub enum Notice {
    Insert { batch_id: BatchId, version: i64 },
    Update { batch_id: BatchId, version: i64 },
    Delete(DeletedBatch),
}

/// A deleted batch, as its deletion logged it: enough to filter on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeletedBatch {
    pub(crate) batch_id: BatchId,
    #[serde(deserialize_with = "state_by_name")]
    pub(crate) state: State,
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) topic_filter: String,
    pub(crate) difficulty_filter: String,
    /// Absent from notices older than labels.
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

/// How long the log keeps a change after its transaction ended: far longer
/// than any live feed takes to read it (one read every 50 ms, each answered
/// within 2 s, or the feed starts over).
pub const CHANGES_KEPT: Duration = Duration::from_secs(30);

/// The upkeep's record of when transactions ended: the oldest transaction
/// still running, as seen every so often. Transactions older than one seen
/// [`CHANGES_KEPT`] ago had ended by then, so every feed has read their rows.
#[derive(Debug, Default)]
pub struct ChangeLogMarks(VecDeque<(Instant, String)>);

impl ChangeLogMarks {
    /// Records `oldest_running`, the oldest transaction running at `at`.
    pub(crate) fn record(&mut self, at: Instant, oldest_running: String) {
        self.0.push_back((at, oldest_running));
    }

    /// The transaction id below which every row has been read by `now`, if
    /// marks go back far enough; older marks are dropped.
    pub(crate) fn read_below(&mut self, now: Instant) -> Option<String> {
        let mut below = None;
        while let Some((at, _)) = self.0.front()
            && now.duration_since(*at) >= CHANGES_KEPT
        {
            below = self.0.pop_front().map(|(_, xid)| xid);
        }
        below
    }
}

/// How the feed reads the log: the rows of the transactions that committed
/// since its last snapshot (`$1`), which then were either in progress or
/// not yet begun. A row is visible to the statement exactly when its
/// transaction is in the snapshot the statement returns, the next `$1`.
/// The first read, with no `$1`, only takes a snapshot.
const READ_LOG: &str = "SELECT now.snapshot::text, log.notice::text
    FROM (SELECT pg_current_snapshot() AS snapshot) now
    LEFT JOIN LATERAL (
        SELECT xid, position, notice FROM batch_change_log
        WHERE xid >= pg_snapshot_xmax($1::pg_snapshot)
        UNION ALL
        SELECT logged.xid, logged.position, logged.notice
        FROM pg_snapshot_xip($1::pg_snapshot) AS running (xid)
        JOIN batch_change_log logged ON logged.xid = running.xid
    ) log ON true
    ORDER BY log.xid, log.position";

/// A reader of `batch_change_log` (migration V12) on a connection of its
/// own; each read returns the notices committed since the one before.
pub struct ChangeLog {
    client: tokio_postgres::Client,
    statement: tokio_postgres::Statement,
    /// The snapshot of the last read: its transactions have been read.
    since: Option<String>,
}

impl ChangeLog {
    /// Connects over `database`'s session connection; the first
    /// [`read`](Self::read) starts the log from that moment.
    pub(crate) async fn open(database: &DatabaseConfig) -> Result<Self, StoreError> {
        let client = connect_dedicated(database.session(), database.timeout).await?;
        let statement = tokio::time::timeout(
            database.timeout,
            client.prepare_typed(READ_LOG, &[Type::TEXT]),
        )
        .await
        .map_err(|_| StoreError::TimedOut(database.timeout))??;
        Ok(Self {
            client,
            statement,
            since: None,
        })
    }

    /// The notices of the transactions that committed since the last read,
    /// in transaction order (each transaction's in the order it wrote
    /// them), answered within `within`: so an empty answer means no changes.
    pub(crate) async fn read(&mut self, within: Duration) -> Result<Vec<Notice>, StoreError> {
        let rows = tokio::time::timeout(within, self.client.query(&self.statement, &[&self.since]))
            .await
            .map_err(|_| StoreError::TimedOut(within))??;
        let mut notices = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(payload) = row.try_get::<_, Option<&str>>(1)?
                && let Some(notice) = read(payload)
            {
                notices.push(notice);
            }
        }
        if let Some(row) = rows.first() {
            self.since = Some(row.try_get(0)?);
        }
        Ok(notices)
    }
}

/// A payload as a notice; one this build cannot read is logged and skipped.
fn read(payload: &str) -> Option<Notice> {
    serde_json::from_str(payload)
        .map_err(|error| {
            tracing::warn!(%error, payload, "ignoring an unreadable change notice");
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
    fn marks_tell_what_every_feed_has_read_once_they_are_old_enough() {
        let start = Instant::now();
        let mut marks = ChangeLogMarks::default();
        marks.record(start, "100".into());
        assert_eq!(marks.read_below(start + CHANGES_KEPT / 2), None);
        marks.record(start + CHANGES_KEPT / 2, "150".into());
        marks.record(start + CHANGES_KEPT, "200".into());
        assert_eq!(marks.read_below(start + CHANGES_KEPT), Some("100".into()));
        assert_eq!(
            marks.read_below(start + CHANGES_KEPT * 3),
            Some("200".into()),
            "the newest old enough"
        );
        assert_eq!(marks.read_below(start + CHANGES_KEPT * 4), None, "all used");
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
