//! The server's background tasks (change feed, upkeep, database probe, and
//! where configured the replica monitor, metrics endpoint, web page and TLS
//! reloader), spawned together and watched: none may end unnoticed.

use std::{collections::HashMap, future::Future};

use tokio::task::{Id, JoinSet};

use crate::health::Health;
use crate::shutdown::Shutdown;

/// Background tasks that are meant to run until shutdown.
#[derive(Default)]
pub(crate) struct Background {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Background {
    /// Starts `task`, known as `name` in logs.
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Watches the tasks until shutdown. A task that ends before
    /// then (a panic, a bug) is logged once and turns health NOT_SERVING for
    /// good: a replica that silently stopped announcing changes, sweeping or
    /// probing should be replaced by its orchestrator, not sent more calls.
    pub(crate) async fn supervise(mut self, health: Health, mut shutdown: Shutdown) {
        loop {
            let ended = tokio::select! {
                () = shutdown.wait() => break,
                ended = self.tasks.join_next_with_id() => ended,
            };
            let Some(ended) = ended else { break };
            if shutdown.is_triggered() {
                break;
            }
            let (id, how) = match ended {
                Ok((id, ())) => (id, "returned"),
                Err(error) if error.is_panic() => (error.id(), "panicked"),
                Err(error) => (error.id(), "was cancelled"),
            };
            let task = self.names.get(&id).copied().unwrap_or("unknown");
            tracing::error!(
                task,
                how,
                "a background task ended: NOT_SERVING from now on"
            );
            health.stop().await;
        }
        // Dropping the set would abort the tasks; on shutdown they wind down
        // by themselves (the change feed, for one, ends watch streams).
        self.tasks.detach_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_health::pb::{HealthCheckRequest, health_server::Health as _};

    use super::*;

    #[tokio::test]
    async fn a_task_that_dies_turns_health_off_and_shutdown_does_not() {
        let reporter = tonic_health::server::HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let health = Health::new(reporter);
        health.set_database_reachable(true).await;
        let status = async || {
            service
                .check(tonic::Request::new(HealthCheckRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .status
        };

        let (signal, shutdown) = crate::shutdown::channel();
        let mut background = Background::default();
        background.spawn("steady", std::future::pending());
        let supervisor = tokio::spawn(background.supervise(health.clone(), shutdown));
        signal.trigger();
        supervisor.await.unwrap();
        assert_eq!(status().await, 1, "shutdown alone changes nothing here");

        let (_signal, shutdown) = crate::shutdown::channel();
        let mut background = Background::default();
        background.spawn("steady", std::future::pending());
        background.spawn("fragile", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("injected");
        });
        let supervisor = tokio::spawn(background.supervise(health.clone(), shutdown));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(status().await, 2, "NOT_SERVING");
        health.set_database_reachable(true).await;
        assert_eq!(status().await, 2, "the probe cannot turn it back");
        supervisor.abort();
    }
}
