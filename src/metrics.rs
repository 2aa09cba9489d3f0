//! Prometheus metrics: per-RPC counts by status code and latency histograms,
//! pool occupancy and the connections GetBatch calls share, and batches by
//! state, served as text on `METRICS_ADDR`.

use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, header};
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::domain::State;
use crate::http_endpoint;
use crate::shutdown::Shutdown;
use crate::store::{Store, database_errors};
use crate::telemetry::cause_chain;

/// The service's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// The pool's connections: open, idle, and callers waiting for one.
    pool: IntGaugeVec,
    /// Connections that concurrent GetBatch calls share.
    shared_reads: IntGauge,
    /// Stored batches per state, read from the daily totals at each scrape
    /// (migration V9): a scrape never counts rows.
    batches: IntGaugeVec,
    /// 1 while listings and stats read the replica.
    replica_reads: IntGauge,
    /// Seconds the replica is behind the primary, as last seen.
    replica_lag: Gauge,
    /// Failed statements, by SQLSTATE class.
    database_errors: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("batch_history".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "BatchHistory calls by method and status code",
            ),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "BatchHistory call latency by method, from request to response",
            )
            .buckets(vec![
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method"],
        )?;
        let pool = IntGaugeVec::new(
            Opts::new(
                "pool_connections",
                "Database pool: open connections (size), idle ones (available), calls waiting for one (waiting)",
            ),
            &["state"],
        )?;
        let shared_reads = IntGauge::new(
            "shared_read_connections",
            "Connections beside the pool that concurrent GetBatch calls share (at most 2)",
        )?;
        let batches = IntGaugeVec::new(
            Opts::new(
                "batches",
                "Stored batches by state, from the daily totals at scrape time",
            ),
            &["state"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(pool.clone()))?;
        registry.register(Box::new(shared_reads.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        let replica_reads = IntGauge::new(
            "replica_reads",
            "1 while listings and stats read from DATABASE_READ_URL's replica, else 0",
        )?;
        let replica_lag = Gauge::new(
            "replica_lag_seconds",
            "How far the read replica is behind the primary, when it last answered",
        )?;
        registry.register(Box::new(replica_reads.clone()))?;
        registry.register(Box::new(replica_lag.clone()))?;
        let database_errors = IntCounterVec::new(
            Opts::new(
                "database_errors_total",
                "Statements and connections that failed for the database's reasons, by SQLSTATE \
                 class (08 connection, 53 out of disk, memory or connections, 57 shut down or \
                 cancelled, io: no SQLSTATE), since the process started",
            ),
            &["class"],
        )?;
        registry.register(Box::new(database_errors.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            pool,
            shared_reads,
            batches,
            replica_reads,
            replica_lag,
            database_errors,
        })
    }

    /// Records one finished call.
    pub(crate) fn observe(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        self.latency
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with pool and batch gauges read now. A database
    /// that does not answer leaves the batch gauges as they were.
    pub(crate) async fn render(&self, store: &Store) -> String {
        let pool = store.pool_status();
        self.pool.with_label_values(&["size"]).set(pool.size as i64);
        self.pool
            .with_label_values(&["available"])
            .set(pool.available as i64);
        self.pool
            .with_label_values(&["waiting"])
            .set(pool.waiting as i64);
        self.shared_reads
            .set(store.shared_read_connections() as i64);
        if let Some(replica) = store.replica_status() {
            self.replica_reads.set(i64::from(replica.in_use));
            if let Some(lag) = replica.lag {
                self.replica_lag.set(lag.as_secs_f64());
            }
        }
        for (class, count) in database_errors::by_class() {
            let counter = self.database_errors.with_label_values(&[&class]);
            counter.inc_by(count.saturating_sub(counter.get()));
        }
        match store.count_by_state().await {
            Ok(counts) => {
                // A state left with no batch is not counted at all.
                for state in State::ALL {
                    let count = counts.iter().find(|(counted, _)| *counted == state);
                    self.batches
                        .with_label_values(&[state.as_str()])
                        .set(count.map_or(0, |(_, count)| *count));
                }
            }
            Err(error) => {
                tracing::warn!(error = %cause_chain(&error), "cannot count batches for metrics");
            }
        }
        let mut text = Vec::new();
        // Encoding into memory fails only on metric families that are
        // malformed, which the registry does not let in.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// Serves the metrics over HTTP/1.1 on `listener`, at any path, until
/// shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    store: Store,
    shutdown: Shutdown,
) {
    let scrape = move |_: Request<hyper::body::Incoming>| {
        let (metrics, store) = (metrics.clone(), store.clone());
        async move {
            let body = metrics.render(&store).await;
            Response::builder()
                .header(header::CONTENT_TYPE, TextEncoder::new().format_type())
                .body(Full::new(Bytes::from(body)).boxed())
                .unwrap_or_default()
        }
    };
    http_endpoint::serve(listener, "metrics", scrape, None, shutdown).await;
}
