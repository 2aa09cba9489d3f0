//! A bound on how many pooled connections writes to one batch may hold.
//!
//! Writes to one row run one at a time in PostgreSQL (each waits for the
//! row lock), so more connections per batch buy nothing; but a row locked
//! for long (by another session, or a slow statement) would otherwise soak
//! up the whole pool with waiting writes and starve every other batch.
//! Callers beyond the bound wait here, in the service, within their own
//! deadline, without a connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections writes to one batch may hold at once: one running, one ready
/// to run as soon as the row lock passes.
pub(crate) const CONNECTIONS_PER_BATCH: usize = 2;

/// Per-batch semaphores, kept only while someone holds or awaits one.
#[derive(Clone, Default)]
pub(crate) struct HotRows {
    batches: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// The right to hold a connection for writes to one batch.
pub(crate) struct WritePermit {
    batch_id: String,
    semaphore: Arc<Semaphore>,
    /// `None` only while waiting for it.
    permit: Option<OwnedSemaphorePermit>,
    batches: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl HotRows {
    /// Waits until a write to `batch_id` may take a connection.
    pub(crate) async fn acquire(&self, batch_id: &str) -> WritePermit {
        let semaphore = self
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(batch_id.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(CONNECTIONS_PER_BATCH)))
            .clone();
        // Built before waiting, so that a caller who gives up still cleans up.
        let mut permit = WritePermit {
            batch_id: batch_id.to_owned(),
            semaphore,
            permit: None,
            batches: self.batches.clone(),
        };
        let acquired = permit
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        permit.permit = Some(acquired);
        permit
    }

    /// How many batches have writers holding or awaiting a connection.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are only made under this lock, so two references (the map's
        // and this one) mean nobody else holds or awaits this semaphore.
        if Arc::strong_count(&self.semaphore) == 2 {
            batches.remove(&self.batch_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn bounds_one_batch_without_slowing_another_and_forgets_idle_batches() {
        let hot_rows = HotRows::default();
        let held: Vec<_> = acquire_n(&hot_rows, "hot", CONNECTIONS_PER_BATCH).await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), hot_rows.acquire("hot"));
        assert!(blocked.await.is_err(), "a third writer to one batch waits");
        let other = tokio::time::timeout(Duration::from_millis(50), hot_rows.acquire("cold"));
        let other = other.await.expect("another batch does not wait");
        assert_eq!(hot_rows.tracked(), 2);
        drop(other);
        drop(held);
        assert_eq!(hot_rows.tracked(), 0, "idle batches are forgotten");
    }

    async fn acquire_n(hot_rows: &HotRows, batch_id: &str, n: usize) -> Vec<WritePermit> {
        let mut permits = Vec::new();
        for _ in 0..n {
            permits.push(hot_rows.acquire(batch_id).await);
        }
        permits
    }
}
