//! Accepting connections that cannot hold the process hostage, and serving HTTP on them.
//!
//! Every listener (gRPC, agent HTTP, admin) accepts through [`incoming`]:
//! - a **connection cap** (a semaphore), kept below the open-file limit, which
//!   [`raise_open_file_limit`] lifts to the hard limit at start-up
//!   ([`ConnectionLimits::agent_cap`]); memory is the budget's (below);
//! - a **per-source share** of the cap: one client address never holds more than
//!   `--max-connections-per-source` of it;
//! - a **memory budget** ([`budget`]): a connection, a request, a gRPC message (from its
//!   prefix) and the bytes of an HTTP body are each charged before they are held; the admin
//!   listener has a budget of its own;
//! - **the idlest connection makes room**: with the cap reached (or the budget spent), the
//!   connection whose last sign of life is oldest (for requests' memory, one whose requests
//!   are all still arriving) and that has no request being worked on is closed (gracefully, HTTP/2 GOAWAY, unless requests are still
//!   arriving on it) and the newcomer takes its place, so a fresh caller, a probe or a scrape
//!   always gets in while others merely hold connections or send requests slowly; the newcomer
//!   itself is never the one chosen; only when every connection is being worked on is a
//!   newcomer closed at once;
//! - **accept errors back off** (5 ms doubling to 1 s) instead of spinning, with at most one
//!   warning every 10 s;
//! - every connection is wrapped in [`Guarded`]: it must read its first bytes (the whole
//!   24-byte HTTP/2 preface for gRPC, one byte for HTTP) within the **handshake timeout**, and
//!   it is closed when no byte moves for the idle timeout (a peer that neither reads nor
//!   writes).
//!
//! [`serve`] runs HTTP on them (HTTP/2 for gRPC, HTTP/1 for the others) and owns **idleness**:
//! a connection on which no request started or ended for the idle timeout is closed
//! gracefully, whatever bytes flow: the server's keepalive pings and the client's replies, or
//! a request left open, do not keep it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// The admin listener's idle timeout at most: probes and scrapes need no long-lived
/// connection.
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A newcomer over the cap waits this long at most for the idlest connection to close (an
/// evicted connection is dropped after `serve::EVICTION_GRACE` at the latest).
const EVICTION_WAIT: Duration = Duration::from_secs(2);
/// Newcomers waiting for an evicted connection's place (or memory) at once, per cap; more are
/// closed at once. Each holds an accepted socket and a small task (about 2 KiB) while it waits.
const EVICTION_WAITERS: usize = 256;

/// Timeouts and caps of the listeners' connections (`--conn-*`, `--http-*`, `--grpc-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// gRPC and agent HTTP together; `None`: derived from the open-file limit.
    pub max_connections: Option<usize>,
    /// One client address's share of the gRPC + HTTP cap; `None`: a quarter of the cap.
    pub max_connections_per_source: Option<usize>,
    pub admin_max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// `--memory-budget`; `None`: half the container's memory limit, else 128 MiB.
    pub memory_budget: Option<u64>,
}

impl ConnectionLimits {
    /// The gRPC + HTTP cap: the configured one, else the open-file limit less the admin cap and
    /// a reserve, between 16 and 16,384. Memory is the budget's business ([`budget`]).
    pub fn agent_cap(&self, open_files: u64) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let by_files = open_files
                .saturating_sub(RESERVED_DESCRIPTORS)
                .saturating_sub(self.admin_max_connections as u64);
            usize::try_from(by_files.clamp(16, MAX_DEFAULT_CONNECTIONS)).unwrap_or(16)
        })
    }

    /// One source address's share of `cap`: the configured one, else a quarter (at least 16).
    pub fn per_source(&self, cap: usize) -> usize {
        self.max_connections_per_source
            .unwrap_or_else(|| (cap / 4).max(16))
            .min(cap)
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1's), if one is set.
pub fn memory_limit() -> Option<u64> {
    let read = |path: &str| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        let limit: u64 = text.trim().parse().ok()?;
        // v1 reports "no limit" as a huge number.
        (limit < (1 << 60)).then_some(limit)
    };
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
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

mod body;
pub mod budget;
mod serve;

pub use body::{Body, BodyError, Framing};
pub use serve::{Protocol, serve};

/// Connections of one listener: how many at most, per source, and each one's timeouts.
#[derive(Clone)]
pub struct Policy {
    /// `grpc`, `http` or `admin`, for logs and metrics.
    pub listener: &'static str,
    pub permits: Arc<Semaphore>,
    /// The open connections of the listeners sharing `permits`.
    pub registry: Arc<Registry>,
    /// Bytes a connection must read within `handshake_timeout`.
    pub first_bytes: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// What each connection is charged of the budget ([`budget::connection_cost`]).
    pub connection_cost: u64,
}

/// A listener we accept from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A connection and its peer's address (none for a unix socket).
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Option<IpAddr>)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Io, Option<IpAddr>)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Small request/response messages: never wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(peer.ip())))
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Io, Option<IpAddr>)> {
        Ok((UnixListener::accept(self).await?.0, None))
    }
}

/// What a connection is doing, shared by its IO, its request layer and its serving task.
#[derive(Default)]
pub struct Activity {
    /// Requests started and not yet answered.
    open_requests: AtomicUsize,
    /// Of those, requests whose first message or body is still arriving ([`Body`]): not yet
    /// worked on, so they do not keep the connection from being closed to make room.
    receiving: AtomicUsize,
    /// The connection sent its first bytes in full (the HTTP/2 preface): it can be told
    /// goodbye (GOAWAY); before, it is simply dropped.
    greeted: AtomicBool,
    /// When a request last started or ended (or the connection was accepted): milliseconds
    /// since [`epoch`].
    last_request_ms: AtomicU64,
    /// Asked to close to make room (the cap was reached and it was the idlest).
    evicted: tokio::sync::Notify,
    evicting: AtomicBool,
    /// Evicted while requests were still arriving on it: dropped at once, not told goodbye
    /// (its memory is what a newcomer waits for).
    abrupt: AtomicBool,
}

/// The instant [`Activity`] times count from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Activity {
    fn new() -> Self {
        Self {
            last_request_ms: AtomicU64::new(now_ms()),
            ..Self::default()
        }
    }

    /// A sign of life other than a request starting or ending: the preface, a message received
    /// whole. It counts for the idle timeout and for who makes room, like a request.
    fn alive(&self) {
        self.last_request_ms.store(now_ms(), Ordering::Release);
    }

    /// A request started: counted until the returned guard is dropped (answered or abandoned).
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.open_requests.fetch_add(1, Ordering::AcqRel);
        self.last_request_ms.store(now_ms(), Ordering::Release);
        RequestGuard(Arc::clone(self))
    }

    /// When the connection turns idle if nothing starts or ends meanwhile.
    fn idle_at(&self, idle_timeout: Duration) -> Instant {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Acquire));
        epoch() + last + idle_timeout
    }

    /// Whether the connection can be closed gracefully: past its preface (or first byte).
    fn greeted(&self) -> bool {
        self.greeted.load(Ordering::Acquire)
    }

    /// Requests being worked on: started, received whole, not yet answered.
    fn working(&self) -> usize {
        self.open_requests
            .load(Ordering::Acquire)
            .saturating_sub(self.receiving.load(Ordering::Acquire))
    }

    /// Whether it was evicted to be dropped at once rather than told goodbye.
    fn abrupt(&self) -> bool {
        self.abrupt.load(Ordering::Acquire)
    }

    /// Resolves once the connection was asked to make room.
    async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

/// One request in flight on a connection.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.last_request_ms.store(now_ms(), Ordering::Release);
        self.0.open_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections of the listeners that share one cap and one memory budget: who holds
/// how many per source, and which is the idlest.
pub struct Registry {
    inner: std::sync::Mutex<Members>,
    per_source: usize,
    /// Newcomers waiting for an evicted connection's place.
    waiters: Arc<Semaphore>,
    /// What these connections may hold ([`budget::connection_share`] of the whole).
    pub connections: budget::Budget,
    /// What their requests and the messages and bodies of those may hold (the rest): a flood of
    /// connections cannot starve requests of memory, nor a flood of requests new connections.
    pub requests: budget::Budget,
}

#[derive(Default)]
struct Members {
    next: u64,
    open: HashMap<u64, (Option<IpAddr>, Arc<Activity>)>,
    by_source: HashMap<IpAddr, usize>,
}

/// A connection's place in its [`Registry`], left when dropped.
pub struct Membership {
    id: u64,
    source: Option<IpAddr>,
    registry: Arc<Registry>,
    activity: Arc<Activity>,
    /// Its source's idlest connection was asked to close for it.
    made_room: bool,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let Ok(mut members) = self.registry.inner.lock() else {
            return;
        };
        members.open.remove(&self.id);
        if let Some(source) = self.source
            && let Some(count) = members.by_source.get_mut(&source)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                members.by_source.remove(&source);
            }
        }
    }
}

impl Registry {
    /// Connections at most `per_source` from one address, all of them and their requests
    /// holding at most `budget` bytes.
    pub fn new(per_source: usize, budget: u64) -> Arc<Self> {
        let connections = budget::connection_share(budget);
        Arc::new(Self {
            inner: std::sync::Mutex::new(Members::default()),
            per_source: per_source.max(1),
            waiters: Arc::new(Semaphore::new(EVICTION_WAITERS)),
            connections: budget::Budget::new(connections),
            requests: budget::Budget::new(budget - connections),
        })
    }

    /// Bytes held now by the connections and their requests.
    pub fn in_use(&self) -> u64 {
        self.connections.in_use() + self.requests.in_use()
    }

    /// Admits a connection from `source`. A source holding its share already makes room
    /// among its own connections (its idlest is asked to close), or is refused when all of
    /// them are being worked on.
    fn admit(self: &Arc<Self>, source: Option<IpAddr>) -> Option<Membership> {
        let mut members = self.inner.lock().ok()?;
        let mut made_room = false;
        if let Some(source) = source {
            let count = members.by_source.get(&source).copied().unwrap_or(0);
            if count >= self.per_source {
                if !members.evict(Some(source), None, false) {
                    return None;
                }
                made_room = true;
            }
            *members.by_source.entry(source).or_insert(0) += 1;
        }
        members.next += 1;
        let id = members.next;
        let activity = Arc::new(Activity::new());
        members.open.insert(id, (source, Arc::clone(&activity)));
        Some(Membership {
            id,
            source,
            registry: Arc::clone(self),
            activity,
            made_room,
        })
    }

    /// Asks a connection other than `newcomer` to close to make room; false if every other
    /// one is being worked on or already closing.
    fn make_room(&self, newcomer: Option<u64>) -> bool {
        self.inner
            .lock()
            .map(|members| members.evict(None, newcomer, false))
            .unwrap_or(false)
    }

    /// The requests' budget is spent: the idlest connection whose requests are all still
    /// arriving (they hold that budget, nothing is being worked on) is closed at once.
    pub fn make_room_for_requests(&self) -> bool {
        self.inner
            .lock()
            .map(|members| members.evict(None, None, true))
            .unwrap_or(false)
    }
}

impl Members {
    /// Asks the idlest connection to close, among all or those of `source` only, never
    /// `except` (and with `receiving`, only one with requests still arriving), and only one with
    /// no request being worked on and not already closing: the one
    /// whose last sign of life (accepted, preface, a request started or ended, a message
    /// received whole) is oldest. A caller is always the freshest: it greets, asks and is
    /// answered within milliseconds, so floods of bare, greeted or slow connections push out
    /// their own older members, never a caller arriving or logging in. Requests still arriving
    /// do not count as work: a peer that starts messages and never finishes them is as idle as
    /// one that sends nothing; such a connection is dropped at once, its memory given back.
    fn evict(&self, source: Option<IpAddr>, except: Option<u64>, receiving: bool) -> bool {
        let chosen = self
            .open
            .iter()
            .filter(|(id, (from, _))| Some(**id) != except && (source.is_none() || *from == source))
            .map(|(_, (_, activity))| activity)
            .filter(|a| a.working() == 0 && !a.evicting.load(Ordering::Acquire))
            .filter(|a| !receiving || a.receiving.load(Ordering::Acquire) > 0)
            .min_by_key(|a| a.last_request_ms.load(Ordering::Acquire));
        match chosen {
            Some(activity) => {
                if activity.receiving.load(Ordering::Acquire) > 0 {
                    activity.abrupt.store(true, Ordering::Release);
                }
                activity.evicting.store(true, Ordering::Release);
                activity.evicted.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Accepts on `listener` until the returned stream is dropped, yielding guarded connections.
/// Accept errors are logged and backed off here.
pub fn incoming<L: Listener>(listener: L, policy: Policy) -> ReceiverStream<Guarded<L::Io>> {
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
                Ok((io, source)) => {
                    backoff = Duration::ZERO;
                    let Some(membership) = policy.registry.admit(source) else {
                        // This address holds its share: closed at once (dropping `io`).
                        crate::metrics::record_connection_refused(policy.listener);
                        continue;
                    };
                    let permit = policy.permits.clone().try_acquire_owned().ok();
                    let charge = policy
                        .registry
                        .connections
                        .try_charge(policy.connection_cost);
                    match (permit, charge) {
                        (Some(permit), Some(charge)) => {
                            let guarded = Guarded::new(io, permit, charge, membership, &policy);
                            if tx.send(guarded).await.is_err() {
                                return;
                            }
                        }
                        (permit, charge) => make_room(io, membership, permit, charge, &policy, &tx),
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

/// Over the cap or the budget: the idlest other connection is asked to close and the newcomer
/// waits (a moment, in a task of its own) for its
/// place and its memory; with none to close, or too many waiting, it is closed at once.
fn make_room<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: Io,
    membership: Membership,
    permit: Option<OwnedSemaphorePermit>,
    charge: Option<budget::Charge>,
    policy: &Policy,
    tx: &mpsc::Sender<Guarded<Io>>,
) {
    let refuse = |what| {
        crate::metrics::record_connection_refused(policy.listener);
        if what == "memory" {
            crate::metrics::record_memory_refused("connection");
        }
    };
    let Ok(waiter) = policy.registry.waiters.clone().try_acquire_owned() else {
        return refuse(if charge.is_none() { "memory" } else { "place" });
    };
    let registry = &policy.registry;
    // Room is made once per newcomer and need: a place by its own source's idlest, else by
    // the idlest of all; memory by the idlest of all. Never by the newcomer itself.
    if permit.is_none() && !membership.made_room && !registry.make_room(Some(membership.id)) {
        return refuse("place");
    }
    if charge.is_none() && !registry.make_room(Some(membership.id)) {
        return refuse("memory");
    }
    let (policy, tx) = (policy.clone(), tx.clone());
    tokio::spawn(async move {
        let _waiter = waiter;
        let room = tokio::time::timeout(EVICTION_WAIT, async {
            let permit = match permit {
                Some(permit) => permit,
                None => policy.permits.clone().acquire_owned().await.ok()?,
            };
            let charge = match charge {
                Some(charge) => charge,
                None => {
                    policy
                        .registry
                        .connections
                        .charge(policy.connection_cost)
                        .await?
                }
            };
            Some((permit, charge))
        })
        .await;
        match room {
            Ok(Some((permit, charge))) => {
                let _ = tx
                    .send(Guarded::new(io, permit, charge, membership, &policy))
                    .await;
            }
            _ => crate::metrics::record_connection_refused(policy.listener),
        }
    });
}

/// A connection with a handshake deadline and a stall deadline, holding its place under the
/// listener's cap (and its source's share) until it is dropped.
pub struct Guarded<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
    _charge: budget::Charge,
    membership: Membership,
    listener: &'static str,
    /// Bytes still to read before the handshake deadline is lifted.
    first_bytes: usize,
    handshake: Option<Pin<Box<Sleep>>>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_progress: Instant,
}

impl<T> Guarded<T> {
    fn new(
        inner: T,
        permit: OwnedSemaphorePermit,
        charge: budget::Charge,
        membership: Membership,
        policy: &Policy,
    ) -> Self {
        let now = Instant::now();
        crate::metrics::record_connection_open(policy.listener, 1.0);
        Self {
            inner,
            _permit: permit,
            _charge: charge,
            membership,
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

    /// What the connection's requests do, for [`serve`].
    pub fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.membership.activity)
    }

    /// The registry it belongs to, whose budget its requests are charged to.
    fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.membership.registry)
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
                    if this.first_bytes == 0 && this.handshake.is_some() {
                        this.handshake = None;
                        let activity = &this.membership.activity;
                        activity.greeted.store(true, Ordering::Release);
                        activity.alive();
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
            max_connections_per_source: None,
            admin_max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            max_message_bytes: 256 * 1024,
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            memory_budget: None,
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
        assert_eq!(limits().per_source(2_560), 640);
        assert_eq!(limits().per_source(16), 16);
    }

    #[test]
    fn the_idlest_connection_without_a_request_is_evicted_and_a_source_keeps_its_share() {
        let registry = Registry::new(2, 1 << 20);
        let source: IpAddr = [10, 0, 0, 1].into();
        let first = registry.admit(Some(source)).unwrap();
        let second = registry.admit(Some(source)).unwrap();
        // Both busy: a third from that source is refused.
        let busy = (first.activity.request(), second.activity.request());
        assert!(
            registry.admit(Some(source)).is_none(),
            "a third from one source"
        );
        assert!(
            registry.admit(None).is_some(),
            "unix sockets have no source"
        );
        // One idle: the source's own idlest makes room for the newcomer.
        drop(busy.1);
        let third = registry.admit(Some(source)).unwrap();
        assert!(second.activity.evicting.load(Ordering::Acquire));
        assert!(!first.activity.evicting.load(Ordering::Acquire));
        drop(second);
        // Among all: the busy one stays, the one that never made a request goes first.
        assert!(registry.make_room(None));
        assert!(!first.activity.evicting.load(Ordering::Acquire));
        assert!(third.activity.evicting.load(Ordering::Acquire));
        drop(busy.0);
    }

    /// The third review's finding 1: with the cap full of connections that had sent their
    /// preface (or made a request once), the newcomer, which has sent nothing yet, was always
    /// the idlest and evicted itself.
    #[test]
    fn the_newcomer_is_never_the_one_that_makes_room() {
        let registry = Registry::new(100, 1 << 20);
        let held: Vec<_> = (1..=4u8)
            .map(|last| {
                let membership = registry.admit(Some([10, 0, 0, last].into())).unwrap();
                membership.activity.greeted.store(true, Ordering::Release);
                membership
            })
            .collect();
        let newcomer = registry.admit(Some([10, 0, 0, 9].into())).unwrap();
        assert!(registry.make_room(Some(newcomer.id)));
        assert!(!newcomer.activity.evicting.load(Ordering::Acquire));
        assert_eq!(
            held.iter()
                .filter(|m| m.activity.evicting.load(Ordering::Acquire))
                .count(),
            1
        );
    }

    #[test]
    fn request_memory_is_made_by_the_idlest_receiving_one_at_once_never_a_worked_on_one() {
        let registry = Registry::new(100, 1 << 20);
        let stalled = registry.admit(Some([10, 0, 0, 1].into())).unwrap();
        let worked = registry.admit(Some([10, 0, 0, 2].into())).unwrap();
        let bare = registry.admit(Some([10, 0, 0, 3].into())).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        // A request whose message is still arriving: not work.
        let _arriving = stalled.activity.request();
        stalled.activity.receiving.fetch_add(1, Ordering::AcqRel);
        // A request that has arrived whole is worked on: its connection is never chosen.
        let _request = worked.activity.request();
        // The bare one is the idlest, but holds none of the requests' memory.
        assert!(registry.make_room_for_requests());
        assert!(stalled.activity.evicting.load(Ordering::Acquire));
        assert!(stalled.activity.abrupt(), "dropped at once, no goodbye");
        assert!(!registry.make_room_for_requests(), "none else receiving");
        assert!(!bare.activity.evicting.load(Ordering::Acquire));
        // For a place, the idlest of all goes: the bare one; never the worked-on one.
        assert!(registry.make_room(None));
        assert!(bare.activity.evicting.load(Ordering::Acquire));
        assert!(!bare.activity.abrupt());
        assert!(!registry.make_room(None));
        assert!(!worked.activity.evicting.load(Ordering::Acquire));
    }
}
