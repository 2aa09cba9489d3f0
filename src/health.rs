//! What `grpc.health.v1` reports: SERVING while the database answers and the
//! server is not shutting down, NOT_SERVING otherwise.

use std::{sync::Arc, time::Duration};

use tokio::sync::Mutex;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::shutdown::Shutdown;
use crate::store::Probe;
use crate::telemetry::cause_chain;

/// Health-service name of the batch history API, as clients ask for it.
pub const SERVICE_NAME: &str = "batchhistory.v1.BatchHistory";

/// How often the background probe asks the database whether it answers.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The reported health, changed only through here so that a probe that
/// finishes late cannot report SERVING after shutdown has begun.
#[derive(Clone)]
pub(crate) struct Health {
    reporter: HealthReporter,
    stopping: Arc<Mutex<bool>>,
}

impl Health {
    pub(crate) fn new(reporter: HealthReporter) -> Self {
        Self {
            reporter,
            stopping: Arc::new(Mutex::new(false)),
        }
    }

    /// Reports whether the database answers, unless shutdown has begun.
    pub(crate) async fn set_database_reachable(&self, reachable: bool) {
        let stopping = self.stopping.lock().await;
        if !*stopping {
            self.set(if reachable {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            })
            .await;
        }
    }

    /// NOT_SERVING from now on.
    pub(crate) async fn stop(&self) {
        let mut stopping = self.stopping.lock().await;
        *stopping = true;
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        for service in ["", SERVICE_NAME] {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// Probes the database every [`PROBE_INTERVAL`] until shutdown,
/// turning health NOT_SERVING while it does not answer and SERVING again
/// once it does.
pub(crate) async fn watch_database(mut probe: Probe, health: Health, shutdown: Shutdown) {
    let mut reachable = true;
    let mut ticks = shutdown.every(PROBE_INTERVAL);
    while ticks.next().await {
        let answer = probe.check().await;
        match (&answer, reachable) {
            (Err(error), true) => {
                tracing::warn!(error = %cause_chain(error), "database unreachable: NOT_SERVING");
            }
            (Ok(()), false) => tracing::info!("database reachable again: SERVING"),
            _ => continue,
        }
        reachable = answer.is_ok();
        health.set_database_reachable(reachable).await;
    }
}
