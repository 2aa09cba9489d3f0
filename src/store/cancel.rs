//! Cancel requests for statements that ran past their deadline.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::{
    CancelToken,
    config::Host,
    tls::{MakeTlsConnect, TlsConnect},
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::Pooling;

/// Bound on delivering one cancel request through a pooler.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends cancel requests the way the path to PostgreSQL needs.
#[derive(Clone)]
pub(crate) struct Canceller {
    /// For the cancel requests, each sent on a connection of its own.
    tls: MakeRustlsConnect,
    /// Where the transaction pooler listens, when there is one.
    pooler: Option<Arc<[(Host, u16)]>>,
}

impl Canceller {
    pub(crate) fn new(
        tls: MakeRustlsConnect,
        config: &tokio_postgres::Config,
        pooling: Pooling,
    ) -> Self {
        let pooler = (pooling == Pooling::Transaction).then(|| {
            let ports = config.get_ports();
            config
                .get_hosts()
                .iter()
                .enumerate()
                .map(|(at, host)| {
                    let port = ports.get(at).or(ports.first()).copied().unwrap_or(5432);
                    (host.clone(), port)
                })
                .collect()
        });
        Self { tls, pooler }
    }

    /// Asks the server to cancel whatever statement `token`'s connection
    /// runs. If the request cannot be delivered, the statement's own result
    /// (or its absence) still decides, so failures are not reported.
    pub(crate) async fn cancel(&self, token: CancelToken) {
        match &self.pooler {
            None => {
                let _ = token.cancel_query(self.tls.clone()).await;
            }
            Some(addresses) => {
                let delivery = self.cancel_through(addresses, &token);
                let _ = tokio::time::timeout(DELIVERY_TIMEOUT, delivery).await;
            }
        }
    }

    /// Sends the request to the first pooler address that accepts a
    /// connection, then waits for the pooler to close it. tokio-postgres
    /// closes its end as soon as the request is written, and PgBouncer
    /// before 1.20 exits on a cancel connection closed before it has
    /// forwarded the request ("bad client state: 0", pgbouncer#801): so the
    /// pooler, not this end, closes it.
    async fn cancel_through(&self, addresses: &[(Host, u16)], token: &CancelToken) {
        for (host, port) in addresses {
            let delivered = match host {
                Host::Tcp(name) => {
                    match tokio::net::TcpStream::connect((name.as_str(), *port)).await {
                        Ok(stream) => self.deliver(stream, name, token).await,
                        Err(_) => continue,
                    }
                }
                #[cfg(unix)]
                Host::Unix(dir) => {
                    let path = dir.join(format!(".s.PGSQL.{port}"));
                    match tokio::net::UnixStream::connect(path).await {
                        Ok(stream) => self.deliver(stream, "localhost", token).await,
                        Err(_) => continue,
                    }
                }
            };
            if delivered {
                return;
            }
        }
    }

    async fn deliver<S>(&self, stream: S, hostname: &str, token: &CancelToken) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut tls = self.tls.clone();
        let Ok(connect) = MakeTlsConnect::<ClosedByPeer<S>>::make_tls_connect(&mut tls, hostname);
        connect_and_send(token, ClosedByPeer(stream), connect).await
    }
}

async fn connect_and_send<S, T>(token: &CancelToken, stream: S, tls: T) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: TlsConnect<S>,
{
    token.cancel_query_raw(stream, tls).await.is_ok()
}

/// A stream whose shutdown waits for the other end to close it.
struct ClosedByPeer<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for ClosedByPeer<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClosedByPeer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    /// Reads (and drops) whatever arrives until the other end closes.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}
