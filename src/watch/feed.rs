//! The change feed: reads the notices of migration V12's trigger from the
//! store's [`ChangeLog`], reads the rows they name, and publishes each
//! change to the hub once. A read's notices come in the order of their
//! transactions' ids, which for writes to one batch is as a rule the order
//! they committed in (the later writer waits for the row); where it is not,
//! the row read is the latest anyway, and versions keep a watcher from
//! going back (`streams`).

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;

use super::{Change, Hub, IDLE_READ_INTERVAL, LEASE_RENEWAL, READ_DEADLINE, READ_INTERVAL};
use crate::domain::{Batch, BatchId};
use crate::shutdown::Shutdown;
use crate::store::{
    CHANGES_KEPT, ChangeLog, Current, DatabaseConfig, DeletedBatch, Notice, StoreError,
};
use crate::telemetry::cause_chain;

/// Pause before reconnecting a lost reader connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Notices handled in one go, at most.
const MAX_BURST: usize = 1_000;

/// How often a feed that cannot reconnect says so again.
const REPEAT_WARNING: Duration = Duration::from_secs(60);

/// Follows the changes until shutdown, reconnecting after failures.
pub(crate) async fn feed(
    database: DatabaseConfig,
    store: Current,
    hub: Hub,
    mut shutdown: Shutdown,
) {
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let followed = follow(&database, &store, &hub, &shutdown).await;
        let was_reading = hub.reading.send_replace(false);
        match followed {
            Ok(()) => return hub.publish(Change::ShuttingDown),
            // Said once when the feed breaks, then once a minute while the
            // database stays away, not at every attempt.
            Err(error)
                if was_reading || last_warning.is_none_or(|at| at.elapsed() >= REPEAT_WARNING) =>
            {
                last_warning = Some(tokio::time::Instant::now());
                tracing::warn!(error = %cause_chain(&error), "change feed interrupted; reconnecting");
                hub.publish(Change::Interrupted);
            }
            Err(error) => {
                tracing::debug!(error = %cause_chain(&error), "change feed still reconnecting");
                hub.publish(Change::Interrupted);
            }
        }
        tokio::select! {
            () = shutdown.wait() => return hub.publish(Change::ShuttingDown),
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

async fn follow(
    database: &DatabaseConfig,
    store: &Current,
    hub: &Hub,
    shutdown: &Shutdown,
) -> Result<(), StoreError> {
    let mut log = ChangeLog::open(database).await?;
    log.read(READ_DEADLINE).await?;
    let mut last_read = Instant::now();
    hub.reading.send_replace(true);
    tracing::debug!("change feed reading");
    let mut renewals = shutdown.every(LEASE_RENEWAL);
    let mut reads = shutdown.every(READ_INTERVAL);
    let mut ahead = AheadOfNotices::default();
    loop {
        let woke = tokio::select! {
            renew = renewals.next() => if renew { Wake::Renew } else { Wake::Stop },
            read = reads.next() => if read { Wake::Read } else { Wake::Stop },
            () = hub.read_now.notified() => Wake::ReadNow,
        };
        match woke {
            Wake::Stop => return Ok(()),
            Wake::Renew => hub.renew_lease(store).await?,
            Wake::Read if !hub.has_watchers() && last_read.elapsed() < IDLE_READ_INTERVAL => {}
            Wake::Read | Wake::ReadNow => {
                // The upkeep deletes what every feed has surely read; a feed
                // stalled that long may have lost changes.
                if last_read.elapsed() > CHANGES_KEPT / 2 {
                    return Err(StoreError::internal(
                        "reading the change log",
                        "the feed stalled for longer than the log keeps changes",
                    ));
                }
                let number = hub.begin_read();
                let notices = log.read(READ_DEADLINE).await?;
                last_read = Instant::now();
                if hub.has_watchers() {
                    // A burst of changes to one batch becomes one event with
                    // its latest state, and each burst is read in one query.
                    let mut notices = notices.into_iter().peekable();
                    while notices.peek().is_some() {
                        let burst = notices.by_ref().take(MAX_BURST);
                        publish_burst(store, hub, &mut ahead, burst).await?;
                    }
                } else {
                    // Nothing was published, so nothing is ahead.
                    ahead = AheadOfNotices::default();
                }
                hub.end_read(number);
            }
        }
    }
}

/// Why the feed woke up. (The stop signal's guard must not live across an
/// await, so the select only decides.)
enum Wake {
    Stop,
    Renew,
    Read,
    /// A watcher is waiting for a read.
    ReadNow,
}

async fn publish_burst(
    store: &Current,
    hub: &Hub,
    ahead: &mut AheadOfNotices,
    notices: impl IntoIterator<Item = Notice>,
) -> Result<(), StoreError> {
    let mut fates = coalesce(notices);
    for (batch_id, fate) in &mut fates {
        if fate.deleted.is_some() {
            ahead.forget(batch_id);
        }
        if fate
            .live
            .is_some_and(|live| ahead.covers(batch_id, live.version))
        {
            fate.live = None;
        }
    }
    let to_read: Vec<&str> = fates
        .iter()
        .filter(|(_, fate)| fate.live.is_some())
        .map(|(batch_id, _)| batch_id.as_str())
        .collect();
    let mut rows: HashMap<BatchId, Batch> = if to_read.is_empty() {
        HashMap::new()
    } else {
        store
            .get_many(&to_read)
            .await?
            .into_iter()
            .map(|batch| (batch.batch_id.clone(), batch))
            .collect()
    };
    for (batch_id, fate) in fates {
        if let Some(deleted) = fate.deleted {
            hub.publish(Change::Deleted(deleted));
        }
        let Some(live) = fate.live else { continue };
        // Gone, or created anew since: the notices of that are on their way.
        let Some(batch) = rows
            .remove(&batch_id)
            .filter(|batch| batch.version >= live.version)
        else {
            continue;
        };
        if batch.version > live.version {
            ahead.record(batch_id, batch.version);
        }
        hub.publish(if live.created {
            Change::Created(batch)
        } else {
            Change::Updated(batch)
        });
    }
    Ok(())
}

/// What a burst of notices says happened to one batch.
#[derive(Debug, Default, PartialEq)]
struct Fate {
    /// Its last deletion in the burst.
    deleted: Option<DeletedBatch>,
    /// What happened to it after that deletion, if anything.
    live: Option<Live>,
}

/// The newest version logged, and whether the batch was created in the burst.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Live {
    version: i64,
    created: bool,
}

/// The fate of each batch the notices name, in order of first notice. A
/// deletion stays apart from what follows it: a batch deleted and created
/// again is told as both.
fn coalesce(notices: impl IntoIterator<Item = Notice>) -> Vec<(BatchId, Fate)> {
    let mut fates: Vec<(BatchId, Fate)> = Vec::new();
    let mut positions: HashMap<BatchId, usize> = HashMap::new();
    for notice in notices {
        let batch_id = match &notice {
            Notice::Insert { batch_id, .. } | Notice::Update { batch_id, .. } => batch_id,
            Notice::Delete(deleted) => &deleted.batch_id,
        };
        let position = *positions.entry(batch_id.clone()).or_insert_with(|| {
            fates.push((batch_id.clone(), Fate::default()));
            fates.len() - 1
        });
        let fate = &mut fates[position].1;
        match notice {
            Notice::Insert { version, .. } => {
                fate.live = Some(Live {
                    version,
                    created: true,
                });
            }
            Notice::Update { version, .. } => {
                let (created, newest) = fate.live.map_or((false, version), |live| {
                    (live.created, live.version.max(version))
                });
                fate.live = Some(Live {
                    version: newest,
                    created,
                });
            }
            Notice::Delete(deleted) => {
                fate.deleted = Some(deleted);
                fate.live = None;
            }
        }
    }
    fates
}

/// Versions published before their notices came: the row read for one
/// notice may already hold later changes, whose notices then tell nothing
/// new. An entry goes once its own notice comes, so only batches with
/// notices still in flight are held.
#[derive(Debug, Default)]
struct AheadOfNotices(HashMap<BatchId, i64>);

impl AheadOfNotices {
    fn record(&mut self, batch_id: BatchId, version: i64) {
        self.0.insert(batch_id, version);
    }

    fn forget(&mut self, batch_id: &BatchId) {
        self.0.remove(batch_id);
    }

    /// Whether a notice of `version` was already published.
    fn covers(&mut self, batch_id: &BatchId, version: i64) -> bool {
        let Some(&ahead) = self.0.get(batch_id) else {
            return false;
        };
        if version >= ahead {
            self.0.remove(batch_id);
        }
        version <= ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> BatchId {
        BatchId::parse(name.into()).unwrap()
    }

    fn deleted(name: &str) -> DeletedBatch {
        DeletedBatch::example(id(name))
    }

    #[test]
    fn coalesces_per_batch_in_order_of_first_notice() {
        let insert = |name: &str, version| Notice::Insert {
            batch_id: id(name),
            version,
        };
        let update = |name: &str, version| Notice::Update {
            batch_id: id(name),
            version,
        };
        let fates = coalesce([
            update("b", 4),
            insert("a", 1),
            update("b", 5),
            update("a", 2),
            Notice::Delete(deleted("c")),
            insert("c", 1),
            update("d", 9),
            Notice::Delete(deleted("d")),
        ]);
        let live = |version, created| Some(Live { version, created });
        assert_eq!(
            fates,
            [
                (
                    id("b"),
                    Fate {
                        deleted: None,
                        live: live(5, false)
                    }
                ),
                (
                    id("a"),
                    Fate {
                        deleted: None,
                        live: live(2, true)
                    }
                ),
                (
                    id("c"),
                    Fate {
                        deleted: Some(deleted("c")),
                        live: live(1, true)
                    }
                ),
                (
                    id("d"),
                    Fate {
                        deleted: Some(deleted("d")),
                        live: None
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_version_published_ahead_covers_its_notices_until_its_own_comes() {
        let mut ahead = AheadOfNotices::default();
        assert!(!ahead.covers(&id("a"), 3));
        ahead.record(id("a"), 5);
        assert!(ahead.covers(&id("a"), 4));
        assert!(ahead.covers(&id("a"), 5));
        assert!(!ahead.covers(&id("a"), 5), "its own notice ended the entry");
        ahead.record(id("a"), 8);
        assert!(!ahead.covers(&id("a"), 9), "a newer change is news");
        assert!(ahead.0.is_empty());
        ahead.record(id("a"), 8);
        ahead.forget(&id("a"));
        assert!(!ahead.covers(&id("a"), 1), "deleted and created again");
    }
}
