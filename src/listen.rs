//! Accepting connections that cannot hold the process hostage.
//!
//! Every listener (gRPC, agent HTTP, admin) accepts through [`incoming`]:
//! - a **connection cap** (a semaphore; a connection over it is accepted and closed at once, so
//!   it neither waits in the kernel's backlog nor costs a descriptor for long), kept below the
//!   open-file limit, which [`raise_open_file_limit`] lifts to the hard limit at start-up;
//! - **accept errors back off** (5 ms doubling to 1 s) instead of spinning, with at most one
//!   warning every 10 s;
//! - every connection is wrapped in [`Guarded`]: it must read its first bytes (the whole
//!   24-byte HTTP/2 preface for gRPC, one byte for HTTP) within the **handshake timeout**, and
//!   it is closed after the **idle timeout** without a byte read or written (a half-open peer,
//!   a stalled TLS handshake, an HTTP keep-alive connection nobody uses).
//!
//! Protocol-level limits sit on top: hyper's header-read timeout and the body-read timeout and
//! size check for HTTP (`http::serve`), HTTP/2 keepalive, concurrent streams and the message
//! limit for gRPC (`app.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;

/// The HTTP/2 client preface, which a gRPC connection must send in full within the handshake
/// timeout.
pub const HTTP2_PREFACE_BYTES: usize = 24;
/// Descriptors kept free of connections: the pool, trust files, the embedded database's
/// pipes, logs.
const RESERVED_DESCRIPTORS: u64 = 256;
/// Accept errors are logged at WARN at most this often (DEBUG in between).
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Streams the peer reset before the server accepted them, per HTTP/2 connection, before the
/// connection is closed (h2's rapid-reset guard, 20 by default). A caller cancelling many of its
/// own calls (short deadlines on a busy shared channel) hit 20 and the GOAWAY failed every
/// neighbour's call on the connection; the guard stays, with room for honest churn: each
/// connection carries at most `--grpc-max-concurrent-streams` (100) calls, so 10× that is
/// only reached by a flood of resets.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 1000;
/// The default cap never exceeds this, however high the open-file limit.
const MAX_DEFAULT_CONNECTIONS: u64 = 16_384;

/// Timeouts and caps of the listeners' connections (`--conn-*`, `--http-*`, `--grpc-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// gRPC and agent HTTP together; `None`: derived from the open-file limit.
    pub max_connections: Option<usize>,
    pub admin_max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl ConnectionLimits {
    /// The gRPC + HTTP cap: the configured one, else the open-file limit less the admin cap and
    /// a reserve, between 16 and 16,384.
    pub fn agent_cap(&self, open_files: u64) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let spare = open_files
                .saturating_sub(RESERVED_DESCRIPTORS)
                .saturating_sub(self.admin_max_connections as u64);
            usize::try_from(spare.clamp(16, MAX_DEFAULT_CONNECTIONS)).unwrap_or(16)
        })
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (logged) and returns the soft limit in
/// force afterwards.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open-file limit");
                hard
            }
            Err(error) => {
                tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit; assuming 1024");
            1024
        }
    }
}

/// Connections of one listener: how many at most, and each one's timeouts.
#[derive(Clone)]
pub struct Policy {
    /// `grpc`, `http` or `admin`, for logs and metrics.
    pub listener: &'static str,
    pub permits: Arc<Semaphore>,
    /// Bytes a connection must read within `handshake_timeout`.
    pub first_bytes: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A listener we accept from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        let (stream, _) = TcpListener::accept(self).await?;
        // Small request/response messages: never wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        Ok(UnixListener::accept(self).await?.0)
    }
}

/// Accepts on `listener` until the returned stream is dropped, yielding guarded connections.
/// It never yields an error: accept errors are logged and backed off here.
pub fn incoming<L: Listener>(
    listener: L,
    policy: Policy,
) -> ReceiverStream<io::Result<Guarded<L::Io>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = Duration::ZERO;
        let mut warned: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(io) => {
                    backoff = Duration::ZERO;
                    let Ok(permit) = policy.permits.clone().try_acquire_owned() else {
                        // Over the cap: closed at once (dropping `io`).
                        crate::metrics::record_connection_refused(policy.listener);
                        continue;
                    };
                    let guarded = Guarded::new(io, permit, &policy);
                    if tx.send(Ok(guarded)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    if warned.is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_INTERVAL) {
                        warned = Some(Instant::now());
                        tracing::warn!(listener = policy.listener, %error, "accept failed; backing off");
                    } else {
                        tracing::debug!(listener = policy.listener, %error, ?backoff, "accept failed again");
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A connection with a handshake deadline and an idle deadline, holding its place under the
/// listener's cap until it is dropped.
pub struct Guarded<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
    /// Bytes still to read before the handshake deadline is lifted.
    first_bytes: usize,
    handshake: Option<Pin<Box<Sleep>>>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_progress: Instant,
}

impl<T> Guarded<T> {
    fn new(inner: T, permit: OwnedSemaphorePermit, policy: &Policy) -> Self {
        let now = Instant::now();
        crate::metrics::record_connection_open(policy.listener, 1.0);
        Self {
            inner,
            _permit: permit,
            listener: policy.listener,
            first_bytes: policy.first_bytes,
            handshake: Some(Box::pin(tokio::time::sleep_until(
                now + policy.handshake_timeout,
            ))),
            idle: Box::pin(tokio::time::sleep_until(now + policy.idle_timeout)),
            idle_timeout: policy.idle_timeout,
            last_progress: now,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The inner stream is waiting: `Pending`, or the error of a deadline that passed.
    fn waiting<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.check_deadlines(cx) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// `Err` once a deadline passed; registers the waker for both otherwise.
    fn check_deadlines(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(handshake) = &mut self.handshake
            && handshake.as_mut().poll(cx).is_ready()
        {
            crate::metrics::record_connection_timeout(self.listener, "handshake");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within the handshake timeout",
            ));
        }
        while self.idle.as_mut().poll(cx).is_ready() {
            let due = self.last_progress + self.idle_timeout;
            if due <= Instant::now() {
                crate::metrics::record_connection_timeout(self.listener, "idle");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle past the idle timeout",
                ));
            }
            // Progress since the timer was set: wait for the rest.
            self.idle.as_mut().reset(due);
        }
        Ok(())
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        crate::metrics::record_connection_open(self.listener, -1.0);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    this.last_progress = Instant::now();
                    this.first_bytes = this.first_bytes.saturating_sub(read);
                    if this.first_bytes == 0 {
                        this.handshake = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.waiting(cx),
            ready => ready,
        }
    }
}

impl<T> Guarded<T> {
    /// A write's outcome: progress resets the idle deadline; waiting checks the deadlines.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.last_progress = Instant::now();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Pending => self.waiting(cx),
            ready => ready,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            admin_max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            max_message_bytes: 256 * 1024,
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_default_cap_stays_below_the_open_file_limit() {
        assert_eq!(limits().agent_cap(1024), 1024 - 256 - 64);
        assert_eq!(limits().agent_cap(1_048_576), 16_384);
        assert_eq!(limits().agent_cap(100), 16);
        let fixed = ConnectionLimits {
            max_connections: Some(7),
            ..limits()
        };
        assert_eq!(fixed.agent_cap(1024), 7);
    }
}
