//! One way to serve HTTP on guarded connections, for every listener: gRPC (HTTP/2 only, TLS
//! when configured) and the HTTP/1 listeners (admin, agent).
//!
//! Each connection runs in a task of its own that closes it **gracefully** (HTTP/2 GOAWAY,
//! or HTTP/1 once the response in flight is written) when:
//! - no request started or ended on it for the idle timeout, whatever else flows (keepalive
//!   pings and their replies count for nothing), or
//! - it was the idlest when the cap was reached and a newcomer needed its place, or
//! - the server shuts down.
//!
//! A connection asked to close that has not closed within [`CLOSE_GRACE`] (a request still
//! open: GOAWAY lets streams in flight finish), or [`EVICTION_GRACE`] when evicted, is
//! dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt as _};

use super::{Activity, ConnectionLimits, Guarded, MAX_PENDING_ACCEPT_RESET_STREAMS};

/// How long a connection asked to close when idle may take to finish what it has in flight
/// before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The same for a connection evicted to make room: it had no request open when chosen, and a
/// newcomer waits for its place (a peer that does not answer HTTP/2's goodbye is dropped).
pub const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// The protocol a listener speaks, with its limits, and TLS if any.
#[derive(Clone)]
pub struct Protocol {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Protocol {
    /// HTTP/1.1 only: a request head must arrive within the header-read timeout (hyper's
    /// timer), and a keep-alive connection is closed when idle.
    pub fn http1(limits: &ConnectionLimits, idle_timeout: Duration) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        Self {
            builder,
            tls: None,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout,
        }
    }

    /// HTTP/2 only (gRPC): keepalive pings, concurrent streams per connection, and room for
    /// honest cancel churn under the rapid-reset guard.
    pub fn http2(limits: &ConnectionLimits, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(limits.keepalive_interval))
            .keep_alive_timeout(limits.keepalive_timeout)
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
            // gRPC has no use for a `date` header (gRPC's own servers send none): it costs
            // every response its formatting and HPACK encoding.
            .auto_date_header(false);
        Self {
            builder,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }
}

/// What a listener serves: a router answering any request hyper reads (an axum router, or
/// the gRPC listener's [`crate::grpc`] routes), cloned for each request as hyper does.
pub trait Router:
    tower::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<Self::Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
    type Body: http_body::Body<Data = bytes::Bytes, Error: Into<axum::BoxError>> + Send + 'static;
}

impl<S, B> Router for S
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
    B: http_body::Body<Data = bytes::Bytes, Error: Into<axum::BoxError>> + Send + 'static,
{
    type Body = B;
}

/// Serves `router` on the connections of `incoming` until `shutdown` resolves; then stops
/// accepting, closes every connection gracefully and returns once all have closed.
pub async fn serve<S, Io, R>(
    incoming: S,
    protocol: Protocol,
    router: R,
    shutdown: impl Future<Output = ()>,
) where
    S: Stream<Item = Guarded<Io>> + Unpin,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Router,
{
    let (stop, stopping) = watch::channel(false);
    // Every connection task holds a sender; all dropped means all connections closed.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut incoming = incoming;
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            _ = &mut shutdown => break,
            next = incoming.next() => match next {
                Some(io) => io,
                None => break,
            },
        };
        let (protocol, router, stopping, open) = (
            protocol.clone(),
            router.clone(),
            stopping.clone(),
            open.clone(),
        );
        tokio::spawn(async move {
            connection(io, protocol, router, stopping).await;
            drop(open);
        });
    }
    drop(incoming);
    let _ = stop.send(true);
    drop(open);
    let _ = all_closed.recv().await;
}

/// One connection, TLS first if configured (within the handshake timeout).
async fn connection<Io, R: Router>(
    io: Guarded<Io>,
    protocol: Protocol,
    router: R,
    stopping: watch::Receiver<bool>,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = io.activity();
    let listener = io.listener;
    let service = hyper_util::service::TowerToHyperService::new(Tracked {
        inner: router,
        activity: Arc::clone(&activity),
    });
    let watch = Watch {
        activity,
        listener,
        idle_timeout: protocol.idle_timeout,
        stopping,
    };
    match &protocol.tls {
        None => {
            let conn = protocol.builder.serve_connection(TokioIo::new(io), service);
            watch.drive(conn).await;
        }
        Some(acceptor) => {
            match tokio::time::timeout(protocol.handshake_timeout, acceptor.accept(io)).await {
                Ok(Ok(io)) => {
                    let conn = protocol.builder.serve_connection(TokioIo::new(io), service);
                    watch.drive(conn).await;
                }
                Ok(Err(error)) => tracing::debug!(listener, %error, "TLS handshake failed"),
                Err(_) => crate::metrics::record_connection_timeout(listener, "handshake"),
            }
        }
    }
}

/// What may close a connection: its idleness, an eviction, the server's shutdown.
struct Watch {
    activity: Arc<Activity>,
    listener: &'static str,
    idle_timeout: Duration,
    stopping: watch::Receiver<bool>,
}

impl Watch {
    async fn drive<C, E>(mut self, conn: C)
    where
        C: GracefulConnection<Error = E>,
        E: std::fmt::Display,
    {
        tokio::pin!(conn);
        // Set once the connection was asked to close: when it is dropped if still open.
        let mut closing: Option<Instant> = None;
        loop {
            let idle_at = self.activity.idle_at(self.idle_timeout);
            let give_up = closing.unwrap_or_else(|| Instant::now() + CLOSE_GRACE);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(error) = done {
                        tracing::debug!(listener = self.listener, %error, "connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep_until(idle_at), if closing.is_none() => {
                    // Something may have started or ended meanwhile: look again.
                    if self.activity.idle_at(self.idle_timeout) <= Instant::now() {
                        crate::metrics::record_connection_timeout(self.listener, "idle");
                        closing = goodbye(&self.activity, conn.as_mut(), CLOSE_GRACE);
                        if closing.is_none() {
                            return;
                        }
                    }
                }
                _ = self.activity.evicted(), if closing.is_none() => {
                    crate::metrics::record_connection_evicted(self.listener);
                    closing = goodbye(&self.activity, conn.as_mut(), EVICTION_GRACE);
                    if closing.is_none() {
                        return;
                    }
                }
                _ = self.stopping.wait_for(|stop| *stop), if closing.is_none() => {
                    // The server's own drain bounds this (`--shutdown-grace`).
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + Duration::from_secs(24 * 60 * 60));
                }
                _ = tokio::time::sleep_until(give_up), if closing.is_some() => return,
            }
        }
    }
}

/// Asks an idle or evicted connection to close: `None` when it never got past its preface
/// (nothing to say goodbye to: drop it now), else it is closed gracefully (HTTP/2 GOAWAY) and
/// the instant returned is when it is dropped if still open.
fn goodbye<C: GracefulConnection>(
    activity: &Activity,
    conn: std::pin::Pin<&mut C>,
    grace: Duration,
) -> Option<Instant> {
    if !activity.greeted() {
        return None;
    }
    conn.graceful_shutdown();
    Some(Instant::now() + grace)
}

/// The router, counting each request on its connection's [`Activity`] from the call until the
/// response is ready (or the request is abandoned).
#[derive(Clone)]
struct Tracked<R> {
    inner: R,
    activity: Arc<Activity>,
}

impl<R: Router> tower::Service<http::Request<hyper::body::Incoming>> for Tracked<R> {
    type Response = R::Response;
    type Error = std::convert::Infallible;
    type Future = TrackedFuture<R::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        TrackedFuture {
            guard: Some(self.activity.request()),
            response: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response, holding its place in the connection's [`Activity`] until ready
    /// (or dropped, if the request is abandoned).
    struct TrackedFuture<F> {
        #[pin]
        response: F,
        guard: Option<super::RequestGuard>,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let response = std::task::ready!(this.response.poll(cx));
        this.guard.take();
        std::task::Poll::Ready(response)
    }
}
