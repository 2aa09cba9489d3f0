//! The plain HTTP/1.1 endpoints beside gRPC (metrics, the web page): one
//! accept loop, each connection served on its own task.

use std::{convert::Infallible, future::Future, time::Duration};

use http_body_util::combinators::BoxBody;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// The body of every response these endpoints send: whole or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

/// Serves `handle` over HTTP/1.1 on `listener` until shutdown. Connections
/// open then keep being served until their client or the process ends them
/// (a live page's event stream ends itself at shutdown).
pub async fn serve<H, F>(
    listener: TcpListener,
    what: &'static str,
    handle: H,
    mut shutdown: Shutdown,
) where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving {what}");
    }
    loop {
        let stream = tokio::select! {
            () = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, typically: pause rather than spin.
                    tracing::warn!(%error, "{what} listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = handle(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "{what} connection ended with an error");
            }
        });
    }
}
