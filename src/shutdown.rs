//! The server's stop signal, which its background tasks wait on.

use std::time::Duration;

use tokio::{
    sync::watch,
    time::{Interval, MissedTickBehavior},
};

/// Whether the server is stopping: each background task holds a clone and
/// winds down once [`ShutdownSignal::trigger`] is called (or the signal is
/// dropped).
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

/// Tells every [`Shutdown`] made with it that the server is stopping.
#[derive(Debug)]
pub(crate) struct ShutdownSignal(watch::Sender<bool>);

/// A signal and the first of the [`Shutdown`]s it tells.
pub(crate) fn channel() -> (ShutdownSignal, Shutdown) {
    let (signal, shutdown) = watch::channel(false);
    (ShutdownSignal(signal), Shutdown(shutdown))
}

impl ShutdownSignal {
    pub(crate) fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Returns once the server is stopping, at once if it already is.
    pub(crate) async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    pub(crate) fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Ticks every `period` (the first at once; a late tick delays the next
    /// rather than bunching them) until the server is stopping.
    pub(crate) fn every(&self, period: Duration) -> Ticks {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticks {
            interval,
            shutdown: self.clone(),
        }
    }
}

/// The ticks of a loop that works periodically until shutdown.
pub(crate) struct Ticks {
    interval: Interval,
    shutdown: Shutdown,
}

impl Ticks {
    /// Waits for the next tick: `false` once the server is stopping.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::select! {
            () = self.shutdown.wait() => false,
            _ = self.interval.tick() => true,
        }
    }
}
