//! What upkeep asks for: stopping stale batches and purging old ones.

use std::time::Duration;

use super::{InvalidValue, State};

/// How long without any update makes a RUNNING batch stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleThreshold(Duration);

impl StaleThreshold {
    pub(crate) const MIN: Duration = Duration::from_secs(1);
    /// Ten years: PostgreSQL must be able to subtract it from now.
    pub(crate) const MAX: Duration = Duration::from_secs(3_650 * 86_400);

    /// Accepts `value` between [`Self::MIN`] and [`Self::MAX`].
    pub fn parse(value: Duration) -> Result<Self, InvalidValue> {
        if value < Self::MIN {
            Err(InvalidValue("must be at least one second".into()))
        } else if value > Self::MAX {
            Err(InvalidValue("must be at most 3,650 days".into()))
        } else {
            Ok(Self(value))
        }
    }

    pub(crate) fn get(self) -> Duration {
        self.0
    }
}

/// Which finished batches a purge deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// Batches that ended before this.
    pub(crate) older_than: jiff::Timestamp,
    /// Final states only; never empty.
    pub(crate) states: Vec<State>,
    /// Count what would be deleted, and delete nothing.
    pub(crate) dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_thresholds_are_bounded() {
        assert!(StaleThreshold::parse(Duration::from_millis(999)).is_err());
        assert!(StaleThreshold::parse(StaleThreshold::MIN).is_ok());
        assert!(StaleThreshold::parse(StaleThreshold::MAX).is_ok());
        assert!(StaleThreshold::parse(StaleThreshold::MAX + Duration::from_secs(1)).is_err());
    }
}
