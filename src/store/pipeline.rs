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
//! - a login is one statement (the prepared [`super::resolve::RESOLVE_SQL`]);
//! - waiting for room is bounded by `--db-checkout-timeout`, then UNAVAILABLE;
//! - a statement is never cancelled: no cancel request is ever sent (one would cancel whatever
//!   that backend runs at that moment, and with several statements in flight that is a
//!   neighbour's), `statement_timeout` bounds a slow one;
//! - a dead connection (a database restart) is replaced on the next use, no restart of ours;
//!   a statement that found its connection dead before reaching the server is retried once on
//!   another one.
//!
//! Room is a semaphore of connections × depth permits; each statement takes one and goes to the
//! least-loaded connection, so no connection ever holds more than `depth`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// An open connection and the resolver's statement prepared on it (none behind a
/// transaction-mode pooler: each login then sends it unnamed).
pub(super) struct Live {
    pub client: tokio_postgres::Client,
    pub statement: Option<tokio_postgres::Statement>,
}

/// How many connections, how deep, how patient, and what sits in front of the database.
pub(super) struct Shape {
    pub connections: usize,
    pub depth: usize,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub pooler: super::Pooler,
    pub statement_timeout_ms: u128,
}

/// One connection's place: the connection when open, and the statements on it now.
struct Slot {
    live: ArcSwapOption<Live>,
    in_flight: AtomicUsize,
    /// Held while (re)opening, so concurrent callers wait for one connection attempt.
    opening: tokio::sync::Mutex<()>,
}

/// The connections, the room on them, and how to open one.
pub(super) struct Connections {
    slots: Box<[Slot]>,
    room: Arc<Semaphore>,
    waiting: AtomicUsize,
    checkout_timeout: Duration,
    connect_timeout: Duration,
    pooler: super::Pooler,
    statement_timeout_ms: u128,
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
}

impl Drop for Place {
    fn drop(&mut self) {
        self.connections.slots[self.slot]
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// Room for one statement on one open connection, held until its answer came back.
pub(super) struct Claim {
    pub live: Arc<Live>,
    place: Place,
    room: OwnedSemaphorePermit,
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
        Connections::place(&connections, room, deadline).await
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
        } = shape;
        let connections = connections.max(1);
        Self {
            slots: (0..connections)
                .map(|_| Slot {
                    live: ArcSwapOption::empty(),
                    in_flight: AtomicUsize::new(0),
                    opening: tokio::sync::Mutex::new(()),
                })
                .collect(),
            room: Arc::new(Semaphore::new(connections * depth.max(1))),
            waiting: AtomicUsize::new(0),
            checkout_timeout,
            connect_timeout,
            pooler,
            statement_timeout_ms,
            config,
            tls,
        }
    }

    /// Room for one statement on the least-loaded connection, opening it if needed; waits at
    /// most the checkout timeout in all.
    pub(super) async fn claim(self: &Arc<Self>) -> Result<Claim, StoreError> {
        let started = Instant::now();
        let deadline = started + self.checkout_timeout;
        let waiting = Waiting::new(&self.waiting);
        let room =
            tokio::time::timeout_at(deadline.into(), Arc::clone(&self.room).acquire_owned()).await;
        drop(waiting);
        crate::metrics::record_pool_wait(started.elapsed());
        let room = match room {
            Ok(Ok(room)) => room,
            Ok(Err(_)) => return Err(StoreError::Unavailable("pool closed".into())),
            Err(_) => return Err(StoreError::Busy("pool timeout (Wait)".into())),
        };
        Self::place(self, room, deadline).await
    }

    /// Puts a statement that has room on the least-loaded connection.
    async fn place(
        this: &Arc<Self>,
        room: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Result<Claim, StoreError> {
        // Least loaded first; among equals an open connection before a closed one, so light
        // load does not open every connection.
        let slot = (0..this.slots.len())
            .min_by_key(|&i| {
                let s = &this.slots[i];
                (s.in_flight.load(Ordering::Acquire), !s.is_open())
            })
            .unwrap_or(0);
        this.slots[slot].in_flight.fetch_add(1, Ordering::AcqRel);
        // From here dropping `place` gives the place back, whatever happens.
        let place = Place {
            connections: Arc::clone(this),
            slot,
        };
        let live = this.open(slot, deadline).await?;
        Ok(Claim { live, place, room })
    }

    /// The slot's connection, opened (and its statement prepared) if it is not open.
    async fn open(&self, slot: usize, deadline: Instant) -> Result<Arc<Live>, StoreError> {
        let s = &self.slots[slot];
        if let Some(live) = s.open_live() {
            return Ok(live);
        }
        let _opening = tokio::time::timeout_at(deadline.into(), s.opening.lock())
            .await
            .map_err(|_| StoreError::Unavailable("pool timeout (Create)".into()))?;
        // Opened by another caller while this one waited for the lock.
        if let Some(live) = s.open_live() {
            return Ok(live);
        }
        // Boxed: opening is rare, and inline its future (connect, SET, PREPARE) would make every
        // login's resolver task larger, copied when it is spawned (callgrind).
        let live = tokio::time::timeout(self.connect_timeout, Box::pin(self.connect()))
            .await
            .map_err(|_| StoreError::Unavailable("pool timeout (Create)".into()))??;
        let live = Arc::new(live);
        s.live.store(Some(Arc::clone(&live)));
        Ok(live)
    }

    async fn connect(&self) -> Result<Live, StoreError> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| StoreError::Unavailable(super::connect_error(&e, &self.config)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let preparing = |e: tokio_postgres::Error| {
            StoreError::Unavailable(format!("preparing a new connection: {e}"))
        };
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
            _ => Some(super::resolve::prepare(&client).await.map_err(preparing)?),
        };
        Ok(Live { client, statement })
    }

    /// Forgets `live` as the slot's connection, unless it was replaced already.
    async fn forget(&self, slot: usize, live: &Arc<Live>) {
        let s = &self.slots[slot];
        let _opening = s.opening.lock().await;
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
