//! Building the application and running it until it is told to stop.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Server, server::TcpIncoming};
use tower::util::{MapRequestLayer, MapResponseLayer};

use crate::background::Background;
use crate::config::{Secret, ServeConfig};
use crate::grpc::{
    BatchHistoryService, BearerAuth, MAX_REQUEST_BYTES, remap_decoding_errors, stamp_arrival,
};
use crate::health::{self, Health};
use crate::maintenance::Upkeep;
use crate::metrics::Metrics;
use crate::proto::{self, batch_history_server::BatchHistoryServer};
use crate::store::{self, DatabaseConfig, MigrateError, Probe, Store, StoreError};
use crate::tls::{ReloadingTls, TlsError};
use crate::watch::Hub;
use crate::web::WebPage;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

pub use crate::health::SERVICE_NAME;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("could not listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("the database did not answer after migrating")]
    Database(#[source] StoreError),
    #[error("could not set up metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("could not build server reflection")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    #[error("cannot serve TLS")]
    Tls(#[from] TlsError),
}

/// How long in-flight calls may take to finish once shutdown has begun.
/// Long-lived streams (health watches) would otherwise hold the server open.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits, after the drain, for the statements of the
/// calls it cut to end.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A migrated database and a bound listener, ready to serve.
pub struct App {
    listener: TcpListener,
    /// Bound when metrics are served.
    metrics_listener: Option<TcpListener>,
    /// Bound when the web page is served.
    ui_listener: Option<TcpListener>,
    /// The shared secret of gRPC calls and the web page's sign-in, if set.
    auth_token: Option<Secret>,
    store: Store,
    /// The health service's check of the database, on a connection of its own.
    probe: Probe,
    /// TLS on the gRPC port and the web page, reloaded when its files change.
    tls: Option<ReloadingTls>,
    /// For the change feed, which listens on a connection of its own.
    database: DatabaseConfig,
    upkeep: Upkeep,
}

impl App {
    /// Binds the listen address (port 0 picks a free port), migrates the
    /// database and checks that it answers.
    pub async fn build(config: ServeConfig) -> Result<Self, StartupError> {
        let tls = config.tls.map(ReloadingTls::load).transpose()?;
        let listener = bind(config.listen_addr).await?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let ui_listener = match config.ui_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        tracing::info!(database = %config.database.describe(), "migrating");
        let pooling = store::set_up(&config.database).await?;
        let store = Store::new(&config.database, pooling).map_err(StartupError::Database)?;
        store.ping().await.map_err(StartupError::Database)?;
        Ok(Self {
            listener,
            metrics_listener,
            ui_listener,
            auth_token: config.auth_token,
            store,
            probe: Probe::new(&config.database),
            tls,
            database: config.database,
            upkeep: config.upkeep,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The metrics address actually bound, if metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The web page's address actually bound, if the page is on.
    pub fn ui_addr(&self) -> Option<SocketAddr> {
        self.ui_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Serves until `shutdown` completes. Health turns NOT_SERVING first, so
    /// probes steer new work away, then the listener closes and in-flight
    /// calls get up to [`DRAIN_TIMEOUT`] to finish before this returns.
    /// While serving, health follows whether the database answers.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter);
        let reflection_v1 = reflection().build_v1().map_err(StartupError::Reflection)?;
        // grpcurl before 1.9 speaks only v1alpha.
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(StartupError::Reflection)?;
        let metrics = Arc::new(Metrics::new().map_err(StartupError::Metrics)?);
        let auth = BearerAuth::new(self.auth_token.as_ref().map(Secret::expose));
        let hub = Hub::default();
        let batch_history = BatchHistoryServer::new(BatchHistoryService::new(
            self.store.clone(),
            metrics.clone(),
            hub.clone(),
            self.upkeep.stale_after,
        ))
        .max_decoding_message_size(MAX_REQUEST_BYTES);

        let addr = self.local_addr().ok();
        let (stop_signal, stopping) = crate::shutdown::channel();
        let mut background = Background::default();
        if let Some(listener) = self.metrics_listener {
            background.spawn(
                "metrics endpoint",
                crate::metrics::serve(listener, metrics, self.store.clone(), stopping.clone()),
            );
        }
        if let Some(listener) = self.ui_listener {
            let page = WebPage::new(
                self.store.clone(),
                hub.clone(),
                self.auth_token.as_ref().map(Secret::expose),
                self.tls.clone(),
            );
            background.spawn("web page", page.serve(listener, stopping.clone()));
        }
        let upkeep_lock = store::UpkeepLock::new(&self.database);
        background.spawn(
            "change feed",
            crate::watch::feed(self.database, self.store.current(), hub, stopping.clone()),
        );
        if self.store.replica_status().is_some() {
            background.spawn(
                "replica monitor",
                store::monitor_replica(self.store.clone(), stopping.clone()),
            );
        }
        background.spawn(
            "upkeep",
            crate::maintenance::run(
                self.store.clone(),
                upkeep_lock,
                self.upkeep,
                stopping.clone(),
            ),
        );
        health.set_database_reachable(true).await;
        background.spawn(
            "database probe",
            health::watch_database(self.probe, health.clone(), stopping.clone()),
        );
        if let Some(tls) = &self.tls {
            background.spawn("TLS reloader", tls.clone().watch(stopping.clone()));
        }
        tokio::spawn(background.supervise(health.clone(), stopping.clone()));

        if let Some(addr) = addr {
            tracing::info!(%addr, tls = self.tls.is_some(), "serving");
        }
        let stop = async move {
            shutdown.await;
            tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
            health.stop().await;
            stop_signal.trigger();
        };
        let router = Server::builder()
            .layer(MapResponseLayer::new(remap_decoding_errors as fn(_) -> _))
            .layer(MapRequestLayer::new(stamp_arrival as fn(_) -> _))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(batch_history, auth));
        let tls_stopping = stopping.clone();
        let server = async move {
            match self.tls {
                Some(tls) => {
                    let incoming = ReceiverStream::new(tls.incoming(self.listener, tls_stopping));
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
                None => {
                    let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
            }
        };
        let mut stopping = stopping;
        let drain_expired = async move {
            stopping.wait().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        let served = tokio::select! {
            served = server => served.map_err(StartupError::Serve),
            () = drain_expired => {
                tracing::warn!(?DRAIN_TIMEOUT, "calls still open after the drain timeout; stopping anyway");
                Ok(())
            }
        };
        // Calls cut at the drain give up their statements, which are
        // cancelled until they have ended: none may apply after the exit.
        self.store.cut_in_flight();
        if !self.store.all_settled(SETTLE_TIMEOUT).await {
            tracing::warn!(
                ?SETTLE_TIMEOUT,
                "statements given up on at shutdown had not ended; exiting anyway"
            );
        }
        self.store.close();
        tracing::info!("stopped");
        served
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

/// Reflection over every service this server offers.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Resolves at SIGTERM or Ctrl-C (SIGINT). The handlers are installed by
/// this call, not when the future is first polled: a SIGTERM that arrives
/// while the server is still starting (an orchestrator that stops it as soon
/// as it is healthy) must still shut it down gracefully, not kill it.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| {
        signal(kind)
            .map_err(|error| tracing::error!(%error, "cannot listen for {name}"))
            .ok()
    };
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = listen(SignalKind::interrupt(), "Ctrl-C");
    async fn received(signal: &mut Option<Signal>) {
        match signal {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    async move {
        tokio::select! {
            () = received(&mut terminate) => {},
            () = received(&mut interrupt) => {},
        }
    }
}

/// Resolves at Ctrl-C.
#[cfg(not(unix))]
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
