//! TLS on the gRPC port and the web page: the certificate, its key and
//! optionally the CA that gRPC clients' certificates must chain to (mutual
//! TLS; the page signs people in with the token instead), read from PEM
//! files and read again when they change or on SIGHUP, so certificates
//! rotate without a restart. A reload that fails keeps the certificates
//! already in use.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::shutdown::Shutdown;
use crate::telemetry::cause_chain;

/// How often the files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(5);

/// How long a client has to complete its handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read PEM from {path:?}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0:?} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("the client CA in {path:?} cannot verify clients")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The server configurations now in force, replaced on reload.
#[derive(Clone)]
pub(crate) struct ReloadingTls {
    files: Arc<TlsFiles>,
    current: Arc<RwLock<Configs>>,
}

/// One configuration per listener: gRPC speaks HTTP/2 (and may ask for
/// client certificates), the page HTTP/1.1.
#[derive(Clone)]
struct Configs {
    grpc: Arc<ServerConfig>,
    page: Arc<ServerConfig>,
}

impl ReloadingTls {
    /// Reads the files; fails if they do not make a working configuration.
    pub(crate) fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let configs = server_configs(&files)?;
        Ok(Self {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(configs)),
        })
    }

    fn current(&self) -> Configs {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The web page's acceptor, with the certificates in force now.
    pub(crate) fn page_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().page)
    }

    /// Reads the files again; new connections use what they hold now.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let configs = server_configs(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = configs;
        Ok(())
    }

    /// Reloads on SIGHUP and whenever a file's modification time changes,
    /// until shutdown.
    pub(crate) async fn watch(self, mut shutdown: Shutdown) {
        #[cfg(unix)]
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = self.modified();
        let mut ticks = tokio::time::interval(RELOAD_POLL);
        loop {
            let reason = tokio::select! {
                () = shutdown.wait() => return,
                Some(()) = hangup(&mut hangups) => "SIGHUP",
                _ = ticks.tick() => {
                    let now = self.modified();
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "changed files"
                }
            };
            match self.reload() {
                Ok(()) => tracing::info!(reason, "TLS certificates reloaded"),
                Err(error) => tracing::error!(
                    reason,
                    error = %cause_chain(&error),
                    "TLS certificates not reloaded; the previous ones stay in use"
                ),
            }
        }
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        let files = [
            Some(&self.files.cert),
            Some(&self.files.key),
            self.files.client_ca.as_ref(),
        ];
        files
            .into_iter()
            .flatten()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Accepts connections on `listener` and completes their handshakes
    /// concurrently (a slow client delays no other), yielding the ones that
    /// succeed until shutdown.
    pub(crate) fn incoming(
        self,
        listener: TcpListener,
        mut shutdown: Shutdown,
    ) -> mpsc::Receiver<io::Result<TlsStream<TcpStream>>> {
        let (streams, incoming) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = shutdown.wait() => return,
                    () = streams.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, "accept failed");
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(self.current().grpc);
                let streams = streams.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = streams.send(Ok(stream)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        incoming
    }
}

#[cfg(unix)]
async fn hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn hangup(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}

fn server_configs(files: &TlsFiles) -> Result<Configs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        path: files.key.clone(),
        source,
    })?;
    let mut page = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(TlsError::Config)?;
    page.alpn_protocols = vec![b"http/1.1".to_vec()];
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let client_ca = |source: Box<dyn std::error::Error + Send + Sync>| TlsError::ClientCa {
                path: path.clone(),
                source,
            };
            let mut roots = RootCertStore::empty();
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| client_ca(e.into()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| client_ca(e.into()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut grpc = builder
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        grpc: Arc::new(grpc),
        page: Arc::new(page),
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}
