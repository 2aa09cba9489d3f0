//! The `healthcheck` command: a `grpc.health.v1` probe for container
//! runtimes whose images have no shell or grpcurl.

use std::{path::PathBuf, time::Duration};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Why the server is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("{0:?} is not a server address; use HOST:PORT or http://HOST:PORT")]
    BadAddress(String),
    #[error("no answer from {addr} within {timeout:?}")]
    TimedOut { addr: String, timeout: Duration },
    #[error("cannot reach {addr}")]
    Unreachable {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("health check failed: {0}")]
    Check(#[source] tonic::Status),
    #[error("the server reports {0:?}")]
    NotServing(ServingStatus),
    #[error("cannot read {path:?}")]
    ReadTls {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TLS")]
    Tls(#[source] tonic::transport::Error),
}

/// How the check speaks TLS to a server that serves it.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA certificate (PEM) the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// Certificate and key (PEM) to present to a server that asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name the server's certificate must carry, if not the address's host.
    pub server_name: Option<String>,
}

impl ClientTls {
    fn config(&self) -> Result<ClientTlsConfig, HealthcheckError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| HealthcheckError::ReadTls {
                path: path.clone(),
                source,
            })
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca_file)?));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// Asks the server at `addr` for its overall health, over TLS if `tls` is
/// set; `Ok` only if SERVING.
pub async fn check(
    addr: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<(), HealthcheckError> {
    let url = match (addr.contains("://"), tls) {
        (true, _) => addr.to_owned(),
        (false, None) => format!("http://{addr}"),
        (false, Some(_)) => format!("https://{addr}"),
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|_| HealthcheckError::BadAddress(addr.to_owned()))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config()?)
            .map_err(HealthcheckError::Tls)?;
    }
    let probe = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| HealthcheckError::Unreachable {
                addr: addr.to_owned(),
                source,
            })?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(HealthcheckError::Check)?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(HealthcheckError::NotServing(other)),
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or_else(|_| {
            Err(HealthcheckError::TimedOut {
                addr: addr.to_owned(),
                timeout,
            })
        })
}
