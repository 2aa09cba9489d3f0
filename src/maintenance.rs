//! Background upkeep: folding the changes to the daily totals into them,
//! trimming the change log, adding the months ahead, stopping stale
//! batches, dropping old months and purging old batches, forgetting old
//! request ids.
//! Every replica looks at every tick, and the one that
//! holds the upkeep lock ([`UpkeepLock`]) does the work; when it stops or
//! crashes, another takes over at its next tick.

use std::time::Duration;

use tokio::time::Instant;

use crate::domain::{StaleThreshold, State};
use crate::shutdown::Shutdown;
use crate::store::{ChangeLogMarks, Store, UpkeepLock};
use crate::telemetry::cause_chain;

/// How long a request id is remembered: a retry after that is applied again.
pub const REQUEST_ID_RETENTION: Duration = Duration::from_secs(24 * 3_600);

/// How often the changes to the daily totals are folded into them (readers
/// add up the changes of about this long one by one), and the change log
/// trimmed.
const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// How the upkeep is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Upkeep {
    /// RUNNING batches not updated for this long are stopped; `None` never.
    pub stale_after: Option<StaleThreshold>,
    /// Finished batches that ended this long ago are deleted; `None` never.
    pub retention: Option<Duration>,
}

impl Upkeep {
    /// A quarter of the stale threshold (so a batch is stopped within 1.25
    /// thresholds), between 100 ms and a minute.
    fn interval(&self) -> Duration {
        self.stale_after
            .map_or(Duration::from_secs(60), |stale| stale.get() / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60))
    }
}

/// Runs the upkeep until shutdown, while this replica holds `lock`.
pub(crate) async fn run(store: Store, mut lock: UpkeepLock, upkeep: Upkeep, shutdown: Shutdown) {
    let chores_interval = upkeep.interval();
    let mut ticks = shutdown.every(chores_interval.min(FOLD_INTERVAL));
    let mut chores_due = Instant::now();
    let mut holding = false;
    let mut change_log_marks = ChangeLogMarks::default();
    while ticks.next().await {
        let held = lock.held().await;
        if held != std::mem::replace(&mut holding, held) {
            if held {
                tracing::info!("this replica runs the upkeep now");
            } else {
                tracing::info!("this replica no longer runs the upkeep");
            }
        }
        if !held {
            continue;
        }
        if let Err(error) = store.fold_totals().await {
            tracing::warn!(error = %cause_chain(&error), "folding the daily totals failed");
        }
        if let Err(error) = store.trim_change_log(&mut change_log_marks).await {
            tracing::warn!(error = %cause_chain(&error), "trimming the change log failed");
        }
        if Instant::now() < chores_due {
            continue;
        }
        chores_due = Instant::now() + chores_interval;
        match store.add_months_ahead().await {
            Ok(0) => {}
            Ok(added) => tracing::info!(added, "added months ahead"),
            Err(error) => tracing::warn!(error = %cause_chain(&error), "adding months failed"),
        }
        if let Some(stale_after) = upkeep.stale_after {
            match store.sweep_stale(stale_after).await {
                Ok(stopped) if !stopped.is_empty() => {
                    let ids: Vec<&str> = stopped.iter().map(|b| b.batch_id.as_str()).collect();
                    tracing::info!(count = stopped.len(), ?ids, "stopped stale batches");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %cause_chain(&error), "stale-batch sweep failed")
                }
            }
        }
        if let Some(retention) = upkeep.retention {
            let cutoff = jiff::Timestamp::now()
                .checked_sub(
                    jiff::SignedDuration::try_from(retention).unwrap_or(jiff::SignedDuration::MAX),
                )
                .unwrap_or(jiff::Timestamp::MIN);
            match store.drop_months(cutoff).await {
                Ok(months) if months.is_empty() => {}
                Ok(months) => {
                    let months: Vec<String> = months.iter().map(|m| m.to_string()).collect();
                    tracing::info!(?months, "dropped months past retention");
                }
                Err(error) => {
                    tracing::warn!(error = %cause_chain(&error), "dropping old months failed")
                }
            }
            match store
                .purge(
                    cutoff,
                    &[State::Completed, State::Stopped, State::Failed],
                    false,
                )
                .await
            {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged batches past retention"),
                Err(error) => {
                    tracing::warn!(error = %cause_chain(&error), "retention purge failed")
                }
            }
        }
        if let Err(error) = store.forget_dropped_ids().await {
            tracing::warn!(error = %cause_chain(&error), "clearing dropped months' ids failed");
        }
        if let Err(error) = store.forget_requests(REQUEST_ID_RETENTION).await {
            tracing::warn!(error = %cause_chain(&error), "forgetting old request ids failed");
        }
    }
}
