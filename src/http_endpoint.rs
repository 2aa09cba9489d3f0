//! The HTTP/1.1 endpoints beside gRPC (metrics, the web page): one accept
//! loop, each connection served on its own task, over TLS where given.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use http_body_util::combinators::BoxBody;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;
use crate::tls::{HANDSHAKE_TIMEOUT, ReloadingTls};

/// The address a request came from, in its extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// The body of every response these endpoints send: whole or streamed.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Serves `handle` over HTTP/1.1 on `listener` until shutdown, over TLS
/// when `tls` is given. Connections open then keep being served until their
/// client or the process ends them (a live page's event stream ends itself
/// at shutdown).
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    what: &'static str,
    handle: H,
    tls: Option<ReloadingTls>,
    mut shutdown: Shutdown,
) where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving {what}");
    }
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, typically: pause rather than spin.
                    tracing::warn!(%error, "{what} listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (handle, tls) = (handle.clone(), tls.clone());
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(stream, peer, handle, what).await;
            };
            let handshake = tls.page_acceptor().accept(stream);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => serve_connection(stream, peer, handle, what).await,
                Ok(Err(error)) => tracing::debug!(%error, %peer, "{what}: TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "{what}: TLS handshake timed out"),
            }
        });
    }
}

async fn serve_connection<S, H, F>(stream: S, peer: SocketAddr, handle: H, what: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<hyper::body::Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(Peer(peer));
        let response = handle(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    if let Err(error) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%error, "{what} connection ended with an error");
    }
}
