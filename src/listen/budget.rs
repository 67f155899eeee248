//! The memory budget of what unauthenticated peers hold (`--memory-budget`).
//!
//! Connections are cheap to open and requests cheap to start, but each holds memory: the
//! connection's protocol state and buffers, each request's stream, head and futures, and the
//! bytes of a message or body received so far. What kills the pod is that memory, not the count
//! of connections, so every one of them is charged here before it is held:
//! - a connection, [`connection_cost`], when it is accepted;
//! - a request, [`REQUEST_COST`], when it starts;
//! - a gRPC message, [`message_cost`] of the length its prefix announces, before tonic reserves
//!   that much; an HTTP body, its bytes as they arrive (`super::body`).
//!
//! A charge is given back when what it paid for is dropped. When the budget is spent, new work
//! is refused at once and room is made by closing the idlest connection without a request
//! being worked on (`super::Registry`): never the newcomer.
//!
//! The admin listener has a budget of its own ([`admin_reserve`]), taken out of the whole, so
//! that no agent or gRPC traffic can take what a probe or a scrape needs.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What an open connection costs at most, before any request: HTTP/2 or HTTP/1 state, its read
/// and write buffers (the HTTP/1 read buffer is capped at [`HTTP1_READ_BUFFER`]), the serving
/// task and our own guard. Measured (`connections::*_costs_*`, RSS per connection on the
/// release build): an idle HTTP/2 connection about 33 KiB, an HTTP/1 one less; the rest is
/// headroom for the buffers a first request grows.
pub const CONNECTION_COST: u64 = 48 * 1024;
/// What TLS adds to a connection: rustls' state and its record buffers.
pub const TLS_CONNECTION_COST: u64 = 32 * 1024;
/// What a request costs before its message: the HTTP/2 stream (or HTTP/1 head, at most the
/// header list size), the request and response heads, the futures that serve it.
pub const REQUEST_COST: u64 = 16 * 1024;
/// hyper's HTTP/1 read buffer at most (hyper's default is about 400 KiB, grown by large bodies).
pub const HTTP1_READ_BUFFER: usize = 16 * 1024;
/// The largest header list an HTTP/2 request may send (hyper's default, set explicitly).
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// What a gRPC message of `announced` bytes holds: tonic's buffer of exactly that length, and
/// the allocator's rounding of a large buffer to whole pages (measured: 100 streams of 256 KiB
/// messages grew the process by 1.3 times their length, small ones by little more than their
/// length; `memory::unfinished_grpc_messages_stay_within_the_budget`).
pub fn message_cost(announced: u64) -> u64 {
    announced + announced / 4
}

/// What the connections themselves may hold of a budget: three quarters; their requests and
/// the messages and bodies of those hold the rest.
pub fn connection_share(budget: u64) -> u64 {
    budget - budget / 4
}

/// The default budget without a container memory limit.
pub const DEFAULT_BUDGET: u64 = 128 * 1024 * 1024;
/// The least `--memory-budget` accepted: the admin reserve and room for the agents' work.
pub const MIN_BUDGET: u64 = 16 * 1024 * 1024;

/// A connection's cost with or without TLS.
pub fn connection_cost(tls: bool) -> u64 {
    CONNECTION_COST + if tls { TLS_CONNECTION_COST } else { 0 }
}

/// The budget in force: the configured one, else half the container's memory limit when one
/// is set, else [`DEFAULT_BUDGET`].
pub fn memory_budget(configured: Option<u64>, memory_limit: Option<u64>) -> u64 {
    configured.unwrap_or_else(|| memory_limit.map_or(DEFAULT_BUDGET, |limit| limit / 2))
}

/// The admin listener's own share of the budget: every admin connection with one request
/// open (probes and scrapes hold nothing else), at most a quarter of the whole.
pub fn admin_reserve(total: u64, admin_max_connections: usize) -> u64 {
    let per_connection = CONNECTION_COST + REQUEST_COST;
    (admin_max_connections as u64)
        .saturating_mul(per_connection)
        .min(total / 4)
}

/// Bytes that may be held at once, taken by [`Charge`]s.
pub struct Budget {
    bytes: Arc<Semaphore>,
    total: u64,
}

/// How often what each budget holds is sampled into `agent_auth_memory_in_use_bytes`.
const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Samples what each `(pool, registry)` holds of its budget every second, until the runtime
/// ends (or the returned task is aborted).
pub fn spawn_sampler(
    pools: Vec<(&'static str, Arc<super::Registry>)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        loop {
            tick.tick().await;
            for (pool, registry) in &pools {
                crate::metrics::record_memory_in_use(pool, registry.in_use());
            }
        }
    })
}

impl Budget {
    pub fn new(total: u64) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS as u64);
        Self {
            bytes: Arc::new(Semaphore::new(usize::try_from(total).unwrap_or(usize::MAX))),
            total,
        }
    }

    /// `bytes`, or `None` at once when the budget has not that much left.
    pub fn try_charge(&self, bytes: u64) -> Option<Charge> {
        let permits = u32::try_from(bytes).ok()?;
        let permit = Arc::clone(&self.bytes)
            .try_acquire_many_owned(permits)
            .ok()?;
        Some(Charge { permit })
    }

    /// `bytes`, waiting for them to be given back.
    pub async fn charge(&self, bytes: u64) -> Option<Charge> {
        let permits = u32::try_from(bytes).ok()?;
        let permit = Arc::clone(&self.bytes)
            .acquire_many_owned(permits)
            .await
            .ok()?;
        Some(Charge { permit })
    }

    /// Bytes charged now.
    pub fn in_use(&self) -> u64 {
        self.total
            .saturating_sub(self.bytes.available_permits() as u64)
    }
}

/// Bytes of a [`Budget`] held for a connection, a request or a body, given back when dropped.
pub struct Charge {
    permit: OwnedSemaphorePermit,
}

impl Charge {
    /// Adds `more` to this charge, or `None` (and nothing changes) when its budget has not
    /// that much left.
    pub fn try_grow(&mut self, more: u64) -> Option<()> {
        let permits = u32::try_from(more).ok()?;
        let added = Arc::clone(self.permit.semaphore())
            .try_acquire_many_owned(permits)
            .ok()?;
        // The same semaphore, so merging cannot fail.
        self.permit.merge(added);
        Some(())
    }

    pub fn bytes(&self) -> u64 {
        self.permit.num_permits() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_half_the_memory_limit_and_the_admin_keeps_its_reserve() {
        let mib = 1024 * 1024;
        assert_eq!(memory_budget(None, None), 128 * mib);
        assert_eq!(memory_budget(None, Some(256 * mib)), 128 * mib);
        assert_eq!(memory_budget(Some(96 * mib), Some(256 * mib)), 96 * mib);
        assert_eq!(admin_reserve(128 * mib, 64), 64 * 64 * 1024);
        assert_eq!(admin_reserve(16 * mib, 1000), 4 * mib);
    }

    #[test]
    fn a_charge_holds_its_bytes_until_dropped() {
        let budget = Budget::new(100_000);
        let mut charge = budget.try_charge(60_000).unwrap();
        assert!(budget.try_charge(50_000).is_none());
        assert!(charge.try_grow(50_000).is_none());
        assert_eq!(charge.bytes(), 60_000);
        charge.try_grow(40_000).unwrap();
        assert_eq!(charge.bytes(), 100_000);
        assert_eq!(budget.in_use(), 100_000);
        drop(charge);
        assert_eq!(budget.in_use(), 0);
    }
}
