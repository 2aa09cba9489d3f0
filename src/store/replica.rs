//! Reads on a streaming replica while it keeps up with the primary.
//!
//! Once a second the monitor notes the primary's WAL position and asks the
//! replica how far it has replayed. The replica's lag is the age of the
//! oldest noted position it has not replayed yet (zero when it has replayed
//! them all), so an idle primary does not look like a lagging replica. Reads
//! go to the replica while that lag is within the configured maximum and it
//! answers; otherwise to the primary. Not before it has replayed the first
//! position noted, which the primary reached after this server migrated it:
//! a replica a few seconds behind at boot may not have the tables yet.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{Store, StoreError, lanes::Lane, sql};
use crate::shutdown::Shutdown;
use crate::telemetry::cause_chain;

/// How often the monitor looks.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

/// Positions noted while the replica stays behind, at most; past this the
/// oldest is kept, and the lag still grows from it.
const MAX_NOTED: usize = 4_096;

/// The replica's pool and what the monitor last saw.
pub(super) struct Replica {
    pub(super) lane: Lane,
    max_lag: Duration,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The primary's positions the replica had not replayed when last
    /// asked, oldest first, with when each was noted.
    pending: VecDeque<(u64, Instant)>,
    /// `None` until the replica first answers, and while it does not.
    lag: Option<Duration>,
    /// The primary's position when first noted, after the migrations.
    migrated_at: Option<u64>,
    /// Whether the replica has replayed `migrated_at`.
    has_schema: bool,
}

/// What the monitor last saw of the replica, for metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplicaStatus {
    /// Whether reads go to it.
    pub(crate) in_use: bool,
    /// How far behind it is, if it answered.
    pub(crate) lag: Option<Duration>,
}

impl Replica {
    pub(super) fn new(lane: Lane, max_lag: Duration) -> Self {
        Self {
            lane,
            max_lag,
            seen: Mutex::default(),
        }
    }

    pub(super) fn status(&self) -> ReplicaStatus {
        let seen = self.seen();
        ReplicaStatus {
            in_use: seen.has_schema && seen.lag.is_some_and(|lag| lag <= self.max_lag),
            lag: seen.lag,
        }
    }

    /// Takes the replica out of use until the monitor hears from it again.
    pub(super) fn unreachable(&self) {
        self.seen().lag = None;
    }

    /// Notes the primary at `primary` and the replica replayed up to
    /// `replayed` (`None`: it is not in recovery, so it has been promoted).
    fn observe(&self, primary: u64, replayed: Option<u64>, now: Instant) {
        let mut seen = self.seen();
        let migrated_at = *seen.migrated_at.get_or_insert(primary);
        let Some(replayed) = replayed else {
            seen.pending.clear();
            seen.lag = Some(Duration::ZERO);
            seen.has_schema = true;
            return;
        };
        seen.has_schema |= replayed >= migrated_at;
        if seen.pending.len() < MAX_NOTED {
            seen.pending.push_back((primary, now));
        }
        while seen
            .pending
            .front()
            .is_some_and(|(lsn, _)| *lsn <= replayed)
        {
            seen.pending.pop_front();
        }
        seen.lag = Some(
            seen.pending
                .front()
                .map_or(Duration::ZERO, |(_, noted)| now - *noted),
        );
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // The guarded data stays consistent whatever a panicking holder did.
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Watches the replica's lag until shutdown (at once without a replica).
pub(crate) async fn monitor(store: Store, shutdown: Shutdown) {
    let Some(replica) = store.reads.replica().cloned() else {
        return;
    };
    let mut ticks = shutdown.every(MONITOR_INTERVAL);
    let mut reachable = true;
    while ticks.next().await {
        match look(&store, &replica).await {
            Ok(()) => reachable = true,
            Err(error) => {
                replica.unreachable();
                if std::mem::replace(&mut reachable, false) {
                    tracing::warn!(
                        error = %cause_chain(&error),
                        "the read replica does not answer; reading from the primary"
                    );
                }
            }
        }
    }
}

async fn look(store: &Store, replica: &Replica) -> Result<(), StoreError> {
    let primary = store
        .primary
        .run(None, async |client| {
            let row = client.query_one(&sql::WalPosition {}).await?;
            lsn(row.try_get(0)?)
        })
        .await?;
    let replayed = store
        .reads
        .on_replica(replica, async |client| {
            let row = client.query_one(&sql::ReplayPosition {}).await?;
            match row.try_get::<_, Option<&str>>(0)? {
                Some(replayed) => lsn(replayed).map(Some),
                None => Ok(None),
            }
        })
        .await?;
    replica.observe(primary, replayed, Instant::now());
    Ok(())
}

/// A WAL position (`16/B374D848`) as a number.
fn lsn(text: &str) -> Result<u64, StoreError> {
    let invalid = || StoreError::internal("reading a WAL position", format!("{text:?}"));
    let (high, low) = text.split_once('/').ok_or_else(invalid)?;
    let high = u64::from_str_radix(high, 16).map_err(|_| invalid())?;
    let low = u64::from_str_radix(low, 16).map_err(|_| invalid())?;
    Ok(high << 32 | low)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> Replica {
        let config = super::super::DatabaseConfig::from_url(
            "postgres://localhost/replica",
            Duration::from_secs(1),
        )
        .expect("a valid URL");
        let tls = super::super::connector().unwrap();
        let lane = Lane::new(
            &config.pg,
            super::super::Pooling::Transaction,
            &config,
            &tls,
        );
        Replica::new(lane.unwrap(), Duration::from_secs(5))
    }

    #[test]
    fn wal_positions_compare_as_numbers() {
        assert!(lsn("16/B374D848").unwrap() > lsn("9/FFFFFFFF").unwrap());
        assert_eq!(lsn("0/0").unwrap(), 0);
        assert!(lsn("nonsense").is_err());
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_position_not_replayed() {
        let replica = replica();
        let start = Instant::now();
        assert!(!replica.status().in_use, "unknown until it answers");
        replica.observe(100, Some(100), start);
        assert_eq!(replica.status().lag, Some(Duration::ZERO));
        // Idle primary, replica caught up: no lag however long it lasts.
        replica.observe(100, Some(100), start + Duration::from_secs(60));
        assert_eq!(replica.status().lag, Some(Duration::ZERO));
        // The replica stops replaying while the primary writes.
        replica.observe(200, Some(100), start + Duration::from_secs(61));
        replica.observe(300, Some(100), start + Duration::from_secs(64));
        assert_eq!(replica.status().lag, Some(Duration::from_secs(3)));
        replica.observe(300, Some(100), start + Duration::from_secs(67));
        let status = replica.status();
        assert_eq!(status.lag, Some(Duration::from_secs(6)));
        assert!(!status.in_use, "past the maximum of 5 s");
        // It replays what was noted at 61 s, not yet what was noted at 64 s.
        replica.observe(300, Some(250), start + Duration::from_secs(68));
        assert_eq!(replica.status().lag, Some(Duration::from_secs(4)));
        assert!(replica.status().in_use);
        replica.unreachable();
        assert!(!replica.status().in_use);
        // Promoted: it is no longer behind anything.
        replica.observe(400, None, start + Duration::from_secs(70));
        assert_eq!(replica.status().lag, Some(Duration::ZERO));
    }

    #[test]
    fn no_read_goes_to_the_replica_before_it_has_replayed_the_migrations() {
        let replica = replica();
        let start = Instant::now();
        // The primary's position just after migrating, not replayed yet: the
        // lag is still tiny, but the replica may lack the tables.
        replica.observe(100, Some(40), start);
        assert_eq!(replica.status().lag, Some(Duration::ZERO));
        assert!(!replica.status().in_use);
        replica.observe(120, Some(90), start + Duration::from_secs(1));
        assert!(!replica.status().in_use);
        replica.observe(150, Some(100), start + Duration::from_secs(2));
        assert!(replica.status().in_use);
        // Once it has the tables it keeps them, however far it falls behind.
        replica.unreachable();
        replica.observe(400, Some(120), start + Duration::from_secs(3));
        assert!(replica.status().in_use);
    }
}
