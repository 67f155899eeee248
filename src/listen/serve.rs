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
//! dropped; one evicted for memory while requests were still arriving on it is dropped at once.
//!
//! Each request is charged [`REQUEST_COST`] of the memory budget when it starts, and its body
//! as it arrives ([`super::Body`]); with the budget spent it is refused at once
//! (RESOURCE_EXHAUSTED on gRPC, 503 on HTTP, both retryable) and the idlest connection whose
//! requests are all still arriving makes room.

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

use super::budget::{self, Charge, REQUEST_COST};
use super::{
    Activity, Body, ConnectionLimits, Framing, Guarded, MAX_PENDING_ACCEPT_RESET_STREAMS, Registry,
};

/// How long a connection asked to close when idle may take to finish what it has in flight
/// before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The same for a connection evicted to make room: it had no request open when chosen, and a
/// newcomer waits for its place (a peer that does not answer HTTP/2's goodbye is dropped).
pub const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// HTTP/2 flow control: what a peer may send on one stream, and on one connection, before the
/// server has read it (hyper's defaults are 1 MiB each). A login is a few KiB; the windows
/// open again as the server reads.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// What one stream may queue to send (h2's default is 400 KiB): answers are small.
const SEND_BUFFER: usize = 64 * 1024;

/// The protocol a listener speaks, with its limits, and TLS if any.
#[derive(Clone)]
pub struct Protocol {
    builder: auto::Builder<TokioExecutor>,
    framing: Framing,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Protocol {
    /// HTTP/1.1 only: a request head must arrive within the header-read timeout (hyper's
    /// timer), and a keep-alive connection is closed when idle. The read buffer stays small
    /// ([`budget::HTTP1_READ_BUFFER`]): a body passes through it in pieces.
    pub fn http1(limits: &ConnectionLimits, idle_timeout: Duration) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(budget::HTTP1_READ_BUFFER);
        Self {
            builder,
            framing: Framing::Http,
            tls: None,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout,
        }
    }

    /// HTTP/2 only (gRPC): keepalive pings, concurrent streams per connection, and room for
    /// honest cancel churn under the rapid-reset guard. What one connection can make the
    /// server hold is bounded by h2 itself: the header list size, and flow control (data the
    /// server has not read yet stays within the windows; what it has read is charged to the
    /// budget).
    pub fn http2(limits: &ConnectionLimits, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(limits.keepalive_interval))
            .keep_alive_timeout(limits.keepalive_timeout)
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
            .max_header_list_size(budget::MAX_HEADER_LIST_SIZE)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buf_size(SEND_BUFFER)
            // gRPC has no use for a `date` header (gRPC's own servers send none): it costs
            // every response its formatting and HPACK encoding.
            .auto_date_header(false);
        Self {
            builder,
            framing: Framing::Grpc {
                max_message: limits.max_message_bytes,
            },
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
        http::Request<Body>,
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
            http::Request<Body>,
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
        registry: io.registry(),
        framing: protocol.framing,
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
                    if self.activity.abrupt() {
                        // Requests were still arriving on it: their memory is what the
                        // newcomer waits for.
                        return;
                    }
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
/// response is ready (or the request is abandoned), charging it to the memory budget, and
/// handing it its body charged as it arrives.
#[derive(Clone)]
struct Tracked<R> {
    inner: R,
    activity: Arc<Activity>,
    registry: Arc<Registry>,
    framing: Framing,
}

/// What a listener answers: its router's response, or a refusal of ours.
type Answer<B> = http_body_util::Either<B, http_body_util::Full<bytes::Bytes>>;

impl<R: Router> tower::Service<http::Request<hyper::body::Incoming>> for Tracked<R> {
    type Response = http::Response<Answer<R::Body>>;
    type Error = std::convert::Infallible;
    type Future = TrackedFuture<R::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let guard = self.activity.request();
        let Some(charge) = self.registry.requests.try_charge(REQUEST_COST) else {
            self.registry.make_room_for_requests();
            crate::metrics::record_memory_refused("request");
            return TrackedFuture {
                response: None,
                refused: Some(refusal(self.framing)),
                held: None,
            };
        };
        let request = request.map(|body| {
            Body::new(
                body,
                self.framing,
                Arc::clone(&self.registry),
                Arc::clone(&self.activity),
            )
        });
        TrackedFuture {
            response: Some(self.inner.call(request)),
            refused: None,
            held: Some((guard, charge)),
        }
    }
}

/// The answer to a request the memory budget had no room for: retryable, and said the way each
/// protocol says it (gRPC RESOURCE_EXHAUSTED as trailers only; HTTP 503 with `Retry-After`).
fn refusal(framing: Framing) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
    const MESSAGE: &str = "The server is out of memory for new requests; retry.";
    match framing {
        Framing::Grpc { .. } => {
            let mut response = http::Response::new(http_body_util::Full::default());
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from_static("8"));
            if let Ok(message) = HeaderValue::from_str(
                &percent_encoding::utf8_percent_encode(MESSAGE, percent_encoding::NON_ALPHANUMERIC)
                    .to_string(),
            ) {
                headers.insert("grpc-message", message);
            }
            response
        }
        Framing::Http => {
            let body = format!("{{\"message\":\"{MESSAGE}\",\"detail\":\"\"}}");
            let mut response = http::Response::new(http_body_util::Full::new(body.into()));
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response, holding its place in the connection's [`Activity`] and its charge
    /// until ready (or dropped, if the request is abandoned); or a refusal.
    struct TrackedFuture<F> {
        #[pin]
        response: Option<F>,
        refused: Option<http::Response<http_body_util::Full<bytes::Bytes>>>,
        held: Option<(super::RequestGuard, Charge)>,
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, std::convert::Infallible>>,
{
    type Output = Result<http::Response<Answer<B>>, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let Some(response) = this.response.as_pin_mut() else {
            let refused = this.refused.take().unwrap_or_default();
            return std::task::Poll::Ready(Ok(refused.map(http_body_util::Either::Right)));
        };
        let response = std::task::ready!(response.poll(cx));
        this.held.take();
        std::task::Poll::Ready(response.map(|r| r.map(http_body_util::Either::Left)))
    }
}
