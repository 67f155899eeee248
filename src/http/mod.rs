//! HTTP: the admin endpoints and the Coder-compatible agent endpoints, and the one way both
//! are served.

pub mod admin;
pub mod agent;

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{Stream, StreamExt as _};

/// Serves `router` over HTTP/1.1 on the connections of `incoming` (already guarded by
/// `crate::listen`) until `shutdown` resolves; then stops accepting, lets requests in flight
/// finish and closes idle keep-alive connections. A request head that does not arrive in full
/// within `header_read_timeout` closes its connection (hyper's timer).
pub async fn serve<S, I>(
    incoming: S,
    router: axum::Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    S: Stream<Item = std::io::Result<I>> + Unpin,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut incoming = incoming;
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            _ = &mut shutdown => break,
            next = incoming.next() => match next {
                Some(Ok(io)) => io,
                // `crate::listen::incoming` logs and backs off accept errors itself.
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection =
            graceful.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(incoming);
    graceful.shutdown().await;
}
