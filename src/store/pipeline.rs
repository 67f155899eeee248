//! Pipelined connections: a fixed set of long-lived connections (`--db-pool-size`), each shared
//! by up to `--db-pipeline-depth` statements at once.
//!
//! tokio-postgres pipelines the queries issued concurrently on one client: each is
//! Bind/Execute/Sync, written as soon as it is issued, and the answers come back in order. So a
//! login no longer holds a connection for a whole round trip; with the database a few
//! milliseconds away, throughput is bounded by connections × depth ÷ round trip instead of
//! connections ÷ round trip.
//!
//! The rules that stay:
//! - a login is one statement (the resolver's, prepared on each connection as it opens: the
//!   store hands it in with [`Shape::statement`], so this module knows no SQL of its own);
//! - waiting for room is bounded by `--db-checkout-timeout`, then UNAVAILABLE;
//! - a statement is never cancelled: no cancel request is ever sent (one would cancel whatever
//!   that backend runs at that moment, and with several statements in flight that is a
//!   neighbour's), `statement_timeout` bounds a slow one;
//! - a dead connection (a database restart) is replaced on the next use, no restart of ours;
//!   a statement that found its connection dead before reaching the server is retried once on
//!   another one.
//!
//! Room is a semaphore of connections × depth permits (FIFO); each statement takes one and goes
//! to the least-loaded connection, so no connection ever holds more than `depth`. The depth in
//! use adapts to the database's distance ([`super::depth`]): near the database it comes down
//! towards 8, and the statements beyond it wait in the semaphore's line for the first place
//! instead of queueing behind a backend that may stall. The permits follow the depth: a
//! smaller depth forgets the free permits at once and the others as they come back ([`Room`]).
//! While they come back a permit may find no connection with room: it then waits to be woken
//! by the next statement that finishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// An open connection and the resolver's statement prepared on it (none behind a
/// `--db-pooler transaction`: each login then sends it unnamed).
pub(super) struct Live {
    pub client: tokio_postgres::Client,
    pub statement: Option<tokio_postgres::Statement>,
    /// The task that drives the socket: aborted when the connection falls silent, which fails
    /// every statement still waiting on it.
    driver: tokio::task::AbortHandle,
    /// When the connection last delivered an answer (or opened): [`Live::heard`].
    last_heard: std::sync::Mutex<Instant>,
    /// How long it may stay silent with a statement waiting before it is declared dead.
    silence_limit: Duration,
    /// A statement on it ran out of `statement_timeout`: it was closed, and the statements
    /// queued behind it (which would each wait out their own timeout in turn) failed with it.
    timed_out: std::sync::atomic::AtomicBool,
}

/// Beyond `statement_timeout` (which makes the server answer, if only with an error), how long
/// a connection with statements waiting may deliver nothing before it is declared dead: a
/// black-holed connection (a partition, a proxy that stopped forwarding) is never reported by
/// the kernel while its peer still acknowledges.
pub const SILENCE_GRACE: Duration = Duration::from_secs(2);

/// A connection with statements waiting that has answered none of them for longer than the
/// statement timeout (`Connections::stall_limit`) takes no new ones (it is stalled: the
/// database is gone, or that backend waits on a lock): new logins go to another connection, or
/// fail UNAVAILABLE at the checkout timeout, instead of queueing behind it for the silence
/// limit. A database that answers each statement within the statement timeout, however slowly,
/// is never stalled by this rule.
const STALL_LIMIT_FLOOR: Duration = Duration::from_secs(1);

/// Reconnecting after a failed attempt waits this long at first, doubling (with jitter) to
/// [`RECONNECT_MAX_DELAY`]; one attempt in flight per connection slot.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

impl Live {
    /// Waits for `answer`, a statement's on this connection. If the connection delivers
    /// nothing (no answer to this or any other statement) for its silence limit, it is
    /// declared dead: its socket is closed, so this and every other statement on it fail as
    /// "connection closed" (UNAVAILABLE, or one retry on another connection), and the slot
    /// opens a new one.
    pub(super) async fn answer<T>(
        &self,
        answer: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        let mut answer = std::pin::pin!(answer);
        let waiting_since = Instant::now();
        loop {
            let heard = self.last_heard().max(waiting_since);
            match tokio::time::timeout_at((heard + self.silence_limit).into(), answer.as_mut())
                .await
            {
                Ok(result) => {
                    self.heard();
                    if let Err(e) = &result
                        && e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
                        && !self.timed_out.swap(true, Ordering::AcqRel)
                    {
                        tracing::warn!(
                            "a statement ran out of statement_timeout (a lock, or an overloaded \
                             database): closing its connection, so the statements queued \
                             behind it fail now instead of each waiting out its own timeout"
                        );
                        crate::metrics::record_db_connection_timed_out();
                        self.driver.abort();
                    }
                    return result;
                }
                Err(_) => {
                    if self.last_heard().max(waiting_since) + self.silence_limit <= Instant::now() {
                        tracing::warn!(
                            silent = ?self.silence_limit,
                            "database connection delivered nothing with statements waiting: \
                             declared dead, closing it and opening another"
                        );
                        crate::metrics::record_db_connection_silent();
                        self.driver.abort();
                        // The client fails what is still waiting once its socket is gone.
                        return answer.await;
                    }
                }
            }
        }
    }

    fn last_heard(&self) -> Instant {
        self.last_heard
            .lock()
            .map(|at| *at)
            .unwrap_or_else(|poisoned| *poisoned.into_inner())
    }

    /// Whether a statement on it ran out of `statement_timeout` (and it was closed for that).
    pub(super) fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }

    /// The connection just delivered an answer.
    fn heard(&self) {
        if let Ok(mut at) = self.last_heard.lock() {
            *at = Instant::now();
        }
    }
}

/// How many connections, how deep, how patient, and what sits in front of the database.
pub(super) struct Shape {
    pub connections: usize,
    pub depth: usize,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub pooler: super::Pooler,
    pub statement_timeout_ms: u128,
    /// The statement every connection prepares as it opens (none with `--db-pooler
    /// transaction`): its SQL and parameter types.
    pub statement: Prepared,
}

/// A statement's SQL and parameter types, prepared on each new connection.
#[derive(Clone, Copy)]
pub(super) struct Prepared {
    pub sql: &'static str,
    pub types: &'static [tokio_postgres::types::Type],
}

/// One connection's place: the connection when open, and the statements on it now.
struct Slot {
    live: ArcSwapOption<Live>,
    in_flight: AtomicUsize,
    /// Since when (ns after [`Connections::epoch`]) it has had statements waiting: set when
    /// `in_flight` leaves 0.
    busy_since: AtomicU64,
    /// Held while (re)opening, so concurrent callers wait for one connection attempt; holds
    /// the back-off after failed attempts.
    opening: Arc<tokio::sync::Mutex<Reconnect>>,
}

/// A slot's reconnect back-off: when the next attempt may start, and the delays to come.
#[derive(Default)]
struct Reconnect {
    not_before: Option<Instant>,
    delays: Option<backon::ExponentialBackoff>,
}

impl Reconnect {
    /// An attempt failed: the next waits a little longer (with jitter).
    fn failed(&mut self) {
        use backon::BackoffBuilder as _;
        let delays = self.delays.get_or_insert_with(|| {
            backon::ExponentialBuilder::new()
                .with_min_delay(RECONNECT_MIN_DELAY)
                .with_max_delay(RECONNECT_MAX_DELAY)
                .with_jitter()
                .without_max_times()
                .build()
        });
        let delay = delays.next().unwrap_or(RECONNECT_MAX_DELAY);
        self.not_before = Some(Instant::now() + delay);
    }

    fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// The connections, the room on them, and how to open one.
pub(super) struct Connections {
    slots: Box<[Slot]>,
    room: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Statements one connection carries now (adaptive, at most the configured depth); `room`
    /// has connections × depth permits.
    depth: AtomicUsize,
    /// Permits to forget as they come back (the depth came down while they were out).
    debt: AtomicUsize,
    estimate: std::sync::Mutex<super::depth::Estimate>,
    /// Notified when a statement leaves a connection (or the depth grows).
    released: tokio::sync::Notify,
    /// The origin of [`Slot::busy_since`].
    epoch: Instant,
    checkout_timeout: Duration,
    connect_timeout: Duration,
    pooler: super::Pooler,
    statement_timeout_ms: u128,
    /// The statement timeout, at least [`STALL_LIMIT_FLOOR`]: see there.
    stall_limit: Duration,
    statement: Prepared,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// A caller counted as waiting for room until dropped (also when its future is: a readiness
/// probe that timed out).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A statement counted on its connection until dropped.
struct Place {
    connections: Arc<Connections>,
    slot: usize,
    /// Statements that were on the connection before this one.
    ahead: usize,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.connections.slots[self.slot]
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
        // The first in line (if any) looks for room again.
        self.connections.released.notify_one();
    }
}

/// Room for one statement on one open connection, held until its answer came back.
pub(super) struct Claim {
    pub live: Arc<Live>,
    place: Place,
    room: Room,
}

/// One permit of the room: given back when dropped, or forgotten if the depth came down while
/// it was out (so the permits come down to connections × the new depth).
struct Room {
    permit: Option<OwnedSemaphorePermit>,
    connections: Arc<Connections>,
}

impl Drop for Room {
    fn drop(&mut self) {
        let owed = self
            .connections
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                debt.checked_sub(1)
            })
            .is_ok();
        if let (true, Some(permit)) = (owed, self.permit.take()) {
            permit.forget();
        }
    }
}

impl Claim {
    /// The connection turned out dead: forget it (the next claim on its slot opens a new one)
    /// and place this statement, with its room, on another connection.
    pub(super) async fn replace(self) -> Result<Claim, StoreError> {
        let Claim { live, place, room } = self;
        let connections = Arc::clone(&place.connections);
        connections.forget(place.slot, &live).await;
        drop(place);
        let deadline = Instant::now() + connections.checkout_timeout;
        let place = Connections::reserve(&connections, deadline).await?;
        Connections::place(place, room, deadline).await
    }

    /// This claim's statement was answered after `latency` (the depth estimate learns from it).
    pub(super) fn answered(&self, latency: Duration) {
        self.place.connections.observe(self.place.ahead, latency);
    }

    /// Forgets this claim's connection (it failed a round trip).
    pub(super) async fn discard(self) {
        let Claim { live, place, .. } = self;
        place.connections.forget(place.slot, &live).await;
    }
}

impl Connections {
    pub(super) fn new(
        config: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        shape: Shape,
    ) -> Self {
        let Shape {
            connections,
            depth,
            checkout_timeout,
            connect_timeout,
            pooler,
            statement_timeout_ms,
            statement,
        } = shape;
        let connections = connections.max(1);
        Self {
            slots: (0..connections)
                .map(|_| Slot {
                    live: ArcSwapOption::empty(),
                    in_flight: AtomicUsize::new(0),
                    busy_since: AtomicU64::new(0),
                    opening: Arc::new(tokio::sync::Mutex::new(Reconnect::default())),
                })
                .collect(),
            room: Arc::new(Semaphore::new(connections * depth.max(1))),
            waiting: AtomicUsize::new(0),
            depth: AtomicUsize::new(depth.max(1)),
            debt: AtomicUsize::new(0),
            estimate: std::sync::Mutex::new(super::depth::Estimate::new(depth.max(1))),
            released: tokio::sync::Notify::new(),
            epoch: Instant::now(),
            checkout_timeout,
            connect_timeout,
            pooler,
            statement_timeout_ms,
            stall_limit: Duration::from_millis(
                u64::try_from(statement_timeout_ms).unwrap_or(u64::MAX),
            )
            .max(STALL_LIMIT_FLOOR),
            statement,
            config,
            tls,
        }
    }

    /// Whether an open connection delivered an answer within the stall limit: the database
    /// answers, however slowly (readiness needs no round trip of its own then).
    pub(super) fn answered_lately(&self) -> bool {
        let now = Instant::now();
        self.slots.iter().any(|slot| {
            slot.live.load().as_ref().is_some_and(|live| {
                now.saturating_duration_since(live.last_heard()) <= self.stall_limit
                    && !self.stalled(slot, now)
            })
        })
    }

    /// The longest a login waits for this database: room on a connection (the checkout
    /// timeout), then its statement (the statement timeout). Past it the caller is answered
    /// UNAVAILABLE whatever is queued ahead on the connection; the statement goes on in its
    /// task and gives its room back when it ends.
    pub(super) fn login_limit(&self) -> Duration {
        self.checkout_timeout + self.stall_limit
    }

    /// Room for one statement on the least-loaded connection, opening it if needed; waits at
    /// most the checkout timeout in all.
    pub(super) async fn claim(self: &Arc<Self>) -> Result<Claim, StoreError> {
        let started = Instant::now();
        let deadline = started + self.checkout_timeout;
        let waiting = Waiting::new(&self.waiting);
        let room =
            tokio::time::timeout_at(deadline.into(), Arc::clone(&self.room).acquire_owned()).await;
        let placed = match room {
            Ok(Ok(permit)) => {
                let room = Room {
                    permit: Some(permit),
                    connections: Arc::clone(self),
                };
                Self::reserve(self, deadline)
                    .await
                    .map(|place| (place, room))
            }
            Ok(Err(_)) => Err(StoreError::unavailable("pool closed")),
            Err(_) => Err(StoreError::Busy("pool timeout (Wait)")),
        };
        drop(waiting);
        crate::metrics::record_pool_wait(started.elapsed());
        let (place, room) = placed?;
        Self::place(place, room, deadline).await
    }

    /// A place on the least-loaded connection under the current depth; while every connection
    /// holds that many, waits in line (until `deadline`) for one to give a place back.
    async fn reserve(this: &Arc<Self>, deadline: Instant) -> Result<Place, StoreError> {
        if let Some(place) = this.try_reserve() {
            return Ok(place);
        }
        loop {
            // Registered before looking, so a place given back in between is not missed.
            let mut released = std::pin::pin!(this.released.notified());
            released.as_mut().enable();
            if let Some(place) = this.try_reserve() {
                return Ok(place);
            }
            if tokio::time::timeout_at(deadline.into(), released)
                .await
                .is_err()
            {
                let now = Instant::now();
                if this.slots.iter().any(|s| this.stalled(s, now)) {
                    return Err(StoreError::unavailable(format!(
                        "the database answers nothing: no connection with room answered its \
                         waiting statements within {:?}",
                        this.stall_limit
                    )));
                }
                return Err(StoreError::Busy("pool timeout (Wait)"));
            }
        }
    }

    /// A place on the least-loaded connection with room, if any has; a stalled one takes none
    /// (`stall_limit`). Among equals an open connection comes before a closed one, so light
    /// load does not open every connection.
    fn try_reserve(self: &Arc<Self>) -> Option<Place> {
        let depth = self.depth.load(Ordering::Acquire);
        let now = Instant::now();
        let least = (0..self.slots.len())
            .filter(|&i| !self.stalled(&self.slots[i], now))
            .min_by_key(|&i| {
                let s = &self.slots[i];
                (s.in_flight.load(Ordering::Acquire), !s.is_open())
            })?;
        // Another caller may take the least-loaded one's last place first: then any with room.
        std::iter::once(least)
            .chain(0..self.slots.len())
            .filter(|&i| !self.stalled(&self.slots[i], now))
            .find_map(|slot| {
                let s = &self.slots[slot];
                let ahead = s
                    .in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < depth).then_some(n + 1)
                    })
                    .ok()?;
                if ahead == 0 {
                    s.busy_since.store(self.since_epoch(now), Ordering::Release);
                }
                // From here dropping the place gives it back, whatever happens.
                Some(Place {
                    connections: Arc::clone(self),
                    slot,
                    ahead,
                })
            })
    }

    /// Whether `slot` is stalled at `now`: statements waiting on its open connection and no
    /// answer from it for the stall limit since the later of its last answer and its first
    /// waiting statement.
    fn stalled(&self, slot: &Slot, now: Instant) -> bool {
        if slot.in_flight.load(Ordering::Acquire) == 0 {
            return false;
        }
        let live = slot.live.load();
        let Some(live) = live.as_ref() else {
            return false;
        };
        let busy_since = self.epoch + Duration::from_nanos(slot.busy_since.load(Ordering::Acquire));
        now.saturating_duration_since(live.last_heard().max(busy_since)) > self.stall_limit
    }

    fn since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Opens the place's connection if needed: the claim.
    async fn place(place: Place, room: Room, deadline: Instant) -> Result<Claim, StoreError> {
        let live = place.connections.open(place.slot, deadline).await?;
        Ok(Claim { live, place, room })
    }

    /// A statement answered after `latency` with `ahead` statements before it on its
    /// connection: feeds the depth estimate, and applies a new depth at the end of a window.
    fn observe(&self, ahead: usize, latency: Duration) {
        let depth = self
            .estimate
            .lock()
            .ok()
            .and_then(|mut estimate| estimate.observe(ahead, latency));
        if let Some(depth) = depth {
            self.set_depth(depth);
        }
    }

    /// Makes `depth` the statements per connection, and connections × `depth` the permits.
    fn set_depth(&self, depth: usize) {
        let before = self.depth.swap(depth, Ordering::AcqRel);
        let connections = self.slots.len();
        if depth > before {
            let more = (depth - before) * connections;
            // What is still owed is cancelled first, the rest added.
            let owed = match self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                    Some(debt - debt.min(more))
                }) {
                Ok(debt) | Err(debt) => debt,
            };
            self.room.add_permits(more - owed.min(more));
            // More room on every connection: everyone between the two steps looks again.
            self.released.notify_waiters();
        } else if depth < before {
            let fewer = (before - depth) * connections;
            let forgotten = self.room.forget_permits(fewer);
            self.debt.fetch_add(fewer - forgotten, Ordering::AcqRel);
        }
    }

    /// The slot's connection, opened (and its statement prepared) if it is not open. The
    /// attempt runs in a task of its own for up to the connect timeout; the caller waits for it
    /// only until its deadline, so a database that does not answer connection attempts (a
    /// partition) fails logins at the checkout timeout while the attempt goes on.
    async fn open(
        self: &Arc<Self>,
        slot: usize,
        deadline: Instant,
    ) -> Result<Arc<Live>, StoreError> {
        let s = &self.slots[slot];
        if let Some(live) = s.open_live() {
            return Ok(live);
        }
        let mut reconnect =
            tokio::time::timeout_at(deadline.into(), Arc::clone(&s.opening).lock_owned())
                .await
                .map_err(|_| StoreError::unavailable("connecting to the database"))?;
        // Opened by another caller while this one waited for the lock.
        if let Some(live) = s.open_live() {
            return Ok(live);
        }
        // After a failed attempt, the next one waits its turn: within this caller's deadline
        // it waits (holding the lock: one attempt per slot), else it fails at once.
        if let Some(not_before) = reconnect.not_before
            && not_before > Instant::now()
        {
            if not_before > deadline {
                return Err(StoreError::unavailable(
                    "reconnecting to the database (backing off after a failed attempt)",
                ));
            }
            tokio::time::sleep_until(not_before.into()).await;
        }
        let this = Arc::clone(self);
        let attempt = tokio::spawn(async move {
            let opened = tokio::time::timeout(this.connect_timeout, this.connect())
                .await
                .map_err(|_| StoreError::unavailable("pool timeout (Create)"))
                .and_then(|opened| opened);
            match opened {
                Ok(live) => {
                    reconnect.succeeded();
                    let live = Arc::new(live);
                    this.slots[slot].live.store(Some(Arc::clone(&live)));
                    Ok(live)
                }
                Err(e) => {
                    reconnect.failed();
                    Err(e)
                }
            }
        });
        match tokio::time::timeout_at(deadline.into(), attempt).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => Err(StoreError::unavailable_by("connection attempt failed", e)),
            Err(_) => Err(StoreError::unavailable(
                "connecting to the database (the attempt goes on)",
            )),
        }
    }

    async fn connect(&self) -> Result<Live, StoreError> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| StoreError::unavailable(super::connect_error(&e, &self.config)))?;
        // The driver ends by itself once the client is dropped (a failure below).
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        })
        .abort_handle();
        let preparing =
            |e: tokio_postgres::Error| StoreError::unavailable_by("preparing a new connection", e);
        if self.pooler == super::Pooler::Session {
            client
                .batch_execute(&format!(
                    "SET statement_timeout = {}",
                    self.statement_timeout_ms
                ))
                .await
                .map_err(preparing)?;
        }
        let statement = match self.pooler {
            super::Pooler::Transaction => None,
            _ => Some(
                client
                    .prepare_typed(self.statement.sql, self.statement.types)
                    .await
                    .map_err(preparing)?,
            ),
        };
        Ok(Live {
            client,
            statement,
            driver,
            last_heard: std::sync::Mutex::new(Instant::now()),
            silence_limit: Duration::from_millis(
                u64::try_from(self.statement_timeout_ms).unwrap_or(u64::MAX),
            )
            .saturating_add(SILENCE_GRACE),
            timed_out: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Forgets `live` as the slot's connection, unless it was replaced already.
    async fn forget(&self, slot: usize, live: &Arc<Live>) {
        let s = &self.slots[slot];
        let _reconnect = s.opening.lock().await;
        if s.live.load().as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
            s.live.store(None);
        }
    }

    /// The connections at this instant, for the pool gauges.
    pub(super) fn occupancy(&self) -> crate::metrics::Pool {
        let mut pool = crate::metrics::Pool {
            waiting: self.waiting.load(Ordering::Acquire),
            ..crate::metrics::Pool::default()
        };
        for slot in self.slots.iter() {
            let in_flight = slot.in_flight.load(Ordering::Acquire);
            pool.in_flight.push(in_flight);
            pool.depth.push(self.depth.load(Ordering::Acquire));
            if slot.is_open() {
                if in_flight == 0 {
                    pool.idle += 1;
                } else {
                    pool.in_use += 1;
                }
            }
        }
        pool
    }

    /// Refuses new statements and lets every connection close once its statements answered.
    pub(super) fn close(&self) {
        self.room.close();
        for slot in self.slots.iter() {
            slot.live.store(None);
        }
    }
}

impl Slot {
    fn open_live(&self) -> Option<Arc<Live>> {
        self.live.load_full().filter(|l| !l.client.is_closed())
    }

    /// As [`Slot::open_live`] without taking a reference (run per slot on every placement).
    fn is_open(&self) -> bool {
        self.live
            .load()
            .as_ref()
            .is_some_and(|l| !l.client.is_closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(count: usize, depth: usize) -> Option<Arc<Connections>> {
        let config: tokio_postgres::Config = "host=127.0.0.1 user=nobody".parse().ok()?;
        let tls = super::super::tls::connector(None).ok()?;
        Some(Arc::new(Connections::new(
            config,
            tls,
            Shape {
                connections: count,
                depth,
                checkout_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                pooler: super::super::Pooler::None,
                statement_timeout_ms: 1000,
                statement: Prepared {
                    sql: "SELECT $1::text",
                    types: &[],
                },
            },
        )))
    }

    fn take(connections: &Arc<Connections>, count: u32) -> Vec<Room> {
        (0..count)
            .filter_map(|_| Arc::clone(&connections.room).try_acquire_owned().ok())
            .map(|permit| Room {
                permit: Some(permit),
                connections: Arc::clone(connections),
            })
            .collect()
    }

    /// The permits follow the depth: down at once as far as they are free, the rest as the
    /// statements that hold them finish; up at once, less what is still owed.
    #[test]
    fn the_room_follows_the_depth_even_with_statements_out() {
        let Some(c) = connections(2, 32) else {
            return assert!(connections(2, 32).is_some());
        };
        assert_eq!(c.room.available_permits(), 64);
        let out = take(&c, 60);
        assert_eq!(out.len(), 60);
        c.set_depth(8);
        assert_eq!(c.room.available_permits(), 0);
        assert_eq!(c.debt.load(Ordering::Acquire), 44);
        drop(out);
        assert_eq!(c.room.available_permits(), 16, "2 connections × 8");
        assert_eq!(c.debt.load(Ordering::Acquire), 0);

        // Down with everything out, up again before anything came back: the debt is cancelled.
        let out = take(&c, 16);
        c.set_depth(4);
        assert_eq!(c.debt.load(Ordering::Acquire), 8);
        c.set_depth(12);
        assert_eq!(c.debt.load(Ordering::Acquire), 0);
        assert_eq!(c.room.available_permits(), 8);
        drop(out);
        assert_eq!(c.room.available_permits(), 24, "2 connections × 12");
    }
}
