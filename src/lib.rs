//! batch-history: the legal dashboard's record of synthetic-data generation
//! batches, kept in PostgreSQL and served over gRPC.
//!
//! # Layout
//!
//! - [`cli`]: the command line and environment, validated into each
//!   command's settings. The top: only `main` uses it (tests make settings
//!   with `store::DatabaseConfig::from_url`).
//! - [`config`]: those settings, composed of the settings each module below
//!   defines for itself ([`store::DatabaseConfig`]), so none depends on it.
//! - [`telemetry`]: structured logging, and spans over OTLP.
//! - [`domain`]: validated types; a value that exists is valid.
//! - [`store`]: PostgreSQL access (every SQL statement) and migrations.
//! - [`grpc`]: request parsing, handlers, and the mapping of errors to statuses.
//! - [`startup`]: [`startup::App`], which binds, migrates and serves until told to stop.
//! - [`import`]: `import-sqlite`, which copies the legacy SQLite history in.
//! - [`local_cluster`]: the development default, a private PostgreSQL when no
//!   `DATABASE_URL` is set.
//! - [`web`]: the operator's web page (history, details, live progress, stats).
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`http_endpoint`]: the HTTP/1.1 accept loop both of them run on.
//! - [`background`]: the server's background tasks, supervised.
//! - [`shutdown`]: the stop signal those tasks wait on.
//! - [`health`]: what `grpc.health.v1` reports, and the database probe behind it.
//! - [`watch`]: live change streams fed by the database's change log.
//! - [`maintenance`]: background stale-batch sweep and retention.
//! - [`tls`]: TLS on the gRPC port, reloaded when certificates change.
//! - [`health_client`]: the `healthcheck` command, a `grpc.health.v1` client.
//! - [`proto`]: code generated from `proto/batchhistory/v1/batch_history.proto`.

pub mod background;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod health_client;
pub mod http_endpoint;
pub mod import;
pub mod local_cluster;
pub mod maintenance;
pub mod metrics;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod watch;
pub mod web;

/// Messages, client and server generated from the gRPC contract.
pub mod proto {
    tonic::include_proto!("batchhistory.v1");

    /// The contract's descriptors, with source comments, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/batch_history_descriptor.bin"));
}
