//! The `healthcheck` command: a `grpc.health.v1` probe for container
//! runtimes whose images have no shell or grpcurl.

use std::time::Duration;

use tonic::transport::Endpoint;
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
}

/// Asks the server at `addr` for its overall health; `Ok` only if SERVING.
pub async fn check(addr: &str, timeout: Duration) -> Result<(), HealthcheckError> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url)
        .map_err(|_| HealthcheckError::BadAddress(addr.to_owned()))?
        .connect_timeout(timeout)
        .timeout(timeout);
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
