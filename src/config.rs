//! The settings each command runs with, composed of the settings each module
//! defines for itself (`store::DatabaseConfig`, `maintenance::Upkeep`,
//! `tls::TlsFiles`, `import::ImportOptions`), so that none of those modules
//! depends on this one. [`crate::cli`] builds them from the command line;
//! tests build them directly.

use std::net::SocketAddr;

use crate::import::ImportOptions;
use crate::maintenance::Upkeep;
use crate::store::DatabaseConfig;
use crate::tls::TlsFiles;

/// Settings of the `serve` command.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The gRPC port (`LISTEN_ADDR`).
    pub listen_addr: SocketAddr,
    /// Where Prometheus metrics are served (`METRICS_ADDR`); not served when `None`.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the web page is served (`UI_ADDR`); not served when `None`.
    pub ui_addr: Option<SocketAddr>,
    /// The bearer token every call and the web page's sign-in must present; open when `None`.
    pub auth_token: Option<Secret>,
    /// TLS on the gRPC port; plain HTTP/2 when `None`.
    pub tls: Option<TlsFiles>,
    /// The stale-batch sweep and retention the server runs in the background.
    pub upkeep: Upkeep,
    pub database: DatabaseConfig,
}

/// A value that must not reach logs: its `Debug` shows no content.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Settings of the `import-sqlite` command.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    pub options: ImportOptions,
    pub database: DatabaseConfig,
    /// Print the report as JSON instead of text.
    pub json: bool,
}
