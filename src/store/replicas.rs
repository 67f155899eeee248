//! Read replicas (`--postgres-replica-url`): each has its own pipelined connections; logins
//! take them in turn, skipping any that failed until the lag monitor (below) finds it answering
//! again, and any that lags the primary by more than `--replica-max-lag`. The primary answers
//! a login when no replica is usable, when its replica failed, and when a replica did not find
//! the instance or agent (a workspace created a moment ago may not have reached the replica
//! yet: [`crate::auth`] asks the primary once more).
//!
//! **Only a replica of this primary.** Each check also reads whether the server is in recovery,
//! its system identifier and its timeline. A replica is used only while it is in recovery (a
//! promoted one answers for a history that has moved on), has the primary's system identifier
//! (a URL that reaches another server is no replica of it), and is on the primary's timeline or
//! an earlier one (a later one follows another primary: a failover the configured primary did
//! not take part in). Otherwise it is skipped (`not_replica`) and the log says why.
//!
//! **The lag bound.** Every [`LAG_CHECK_INTERVAL`] a monitor reads the primary's WAL position,
//! then each replica's replayed position. A replica that has replayed at least the position
//! the primary had at instant `t` holds every commit made before `t`; its lag is bounded by
//! `now - t` for the latest such `t`. A replica whose bound exceeds `--replica-max-lag`, or
//! whose position cannot be read (nor the primary's for that long), is skipped until a later
//! check finds it within the bound. So what a replica answers is at most `--replica-max-lag`
//! plus one check interval old, whether replay was paused, the WAL receiver cut off, or the
//! primary idle (an idle primary's position does not move, so a caught-up replica is current).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::pipeline::Connections;

/// How often every replica's lag is measured against the primary.
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What a server is: in recovery or not, its system identifier, its timeline (a primary's
/// current one, from its WAL file name; a standby's last restart point's), and the WAL position
/// it has applied (its own write position on a primary, its replayed position on a standby), in
/// bytes. Sent as a simple query (no prepared statement, so it works behind a transaction-mode
/// pooler; every function here is open to any role), and not counted as a login's statement.
const STATE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (SELECT system_identifier FROM pg_control_system()), \
     CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
     pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() \
     THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, '0/0')::bigint";

/// A server as [`STATE_SQL`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    in_recovery: bool,
    system: i64,
    timeline: i64,
    applied: i64,
}

/// Why a server is no replica of the primary, if it is not.
fn not_a_replica(replica: State, primary_system: i64, primary_timeline: i64) -> Option<String> {
    if !replica.in_recovery {
        Some("it is not in recovery (promoted, or a primary of its own)".into())
    } else if replica.system != primary_system {
        Some(format!(
            "its system identifier {} is not the primary's {primary_system} (another cluster)",
            replica.system
        ))
    } else if replica.timeline > primary_timeline {
        Some(format!(
            "its timeline {} is later than the primary's {primary_timeline} (it follows another \
             primary)",
            replica.timeline
        ))
    } else {
        None
    }
}

struct Replica {
    connections: Arc<Connections>,
    /// False from a failed login until the lag monitor reads its position again.
    healthy: AtomicBool,
    /// Within `--replica-max-lag` at the last check. False until the first check passes.
    current: AtomicBool,
    /// A replica of the primary at the last check (in recovery, same system, a timeline not
    /// past the primary's). False until the first check finds it one.
    replica_of_primary: AtomicBool,
}

pub(super) struct Replicas {
    list: Vec<Replica>,
    next: AtomicUsize,
    closed: AtomicBool,
    max_lag: Duration,
}

/// Why a replica was passed over for a login (`agent_auth_db_replica_skipped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Down,
    NotReplica,
    Lag,
}

impl Replicas {
    pub(super) fn new(list: Vec<Connections>, max_lag: Duration) -> Self {
        for number in 1..=list.len() {
            crate::metrics::replica_series(number);
        }
        Self {
            list: list
                .into_iter()
                .map(|connections| Replica {
                    connections: Arc::new(connections),
                    healthy: AtomicBool::new(true),
                    current: AtomicBool::new(false),
                    replica_of_primary: AtomicBool::new(false),
                })
                .collect(),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            max_lag,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Connections>> {
        self.list.iter().map(|r| &r.connections)
    }

    /// Replicas that may answer a login now: healthy and within the lag bound.
    pub(super) fn usable(&self) -> impl Iterator<Item = &Arc<Connections>> {
        self.list
            .iter()
            .filter(|r| r.skip().is_none())
            .map(|r| &r.connections)
    }

    /// The next usable replica in turn, with its index; `None` when there is none. Every
    /// replica passed over is counted with its reason.
    pub(super) fn pick(&self) -> Option<(usize, &Arc<Connections>)> {
        let count = self.list.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count).map(|i| (start + i) % count).find_map(|i| {
            let replica = &self.list[i];
            match replica.skip() {
                None => Some((i, &replica.connections)),
                Some(skip) => {
                    crate::metrics::record_replica_skipped(
                        i + 1,
                        match skip {
                            Skip::Down => "down",
                            Skip::NotReplica => "not_replica",
                            Skip::Lag => "lag",
                        },
                    );
                    None
                }
            }
        })
    }

    /// Replica `index` could not answer: skip it until the lag monitor finds it answering
    /// again (within a second of it being back).
    pub(super) fn failed(&self, index: usize, cause: &str) {
        let Some(replica) = self.list.get(index) else {
            return;
        };
        let number = index + 1;
        if replica.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                replica = number,
                cause,
                "read replica unavailable: logins go to the primary until it answers again"
            );
        }
    }

    /// Measures every replica's lag against `primary` every [`LAG_CHECK_INTERVAL`] until
    /// [`Replicas::close`]. Runs on the current tokio runtime; without one, no replica is ever
    /// used (logged).
    pub(super) fn spawn_lag_monitor(self: &Arc<Self>, primary: Arc<Connections>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime for the replica lag monitor: logins use the primary only");
            return;
        };
        let replicas = Arc::clone(self);
        let primary_connections = primary;
        runtime.spawn(async move {
            let mut primary = Primary::default();
            let mut tick = tokio::time::interval(LAG_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if replicas.closed.load(Ordering::Acquire) {
                    return;
                }
                replicas.check(&primary_connections, &mut primary).await;
            }
        });
    }

    /// One round of the monitor: the primary's state first, then each replica's.
    async fn check(&self, primary_connections: &Arc<Connections>, primary: &mut Primary) {
        let asked = Instant::now();
        if let Some(state) = server_state(primary_connections).await {
            // Its system never changes; its timeline only grows (a promotion).
            primary.system = Some(state.system);
            primary.timeline = primary.timeline.max(state.timeline);
            primary.positions.push(asked, state.applied);
        }
        primary
            .positions
            .forget_before(asked.checked_sub(self.max_lag + 2 * LAG_CHECK_INTERVAL));
        for (index, replica) in self.list.iter().enumerate() {
            let number = index + 1;
            let state = server_state(&replica.connections).await;
            // An answer is also the sign that a replica which failed a login is back.
            if state.is_some() && !replica.healthy.swap(true, Ordering::AcqRel) {
                tracing::info!(replica = number, "read replica answers again");
            }
            if let (Some(state), Some(system)) = (state, primary.system) {
                let why = not_a_replica(state, system, primary.timeline);
                let was = replica
                    .replica_of_primary
                    .swap(why.is_none(), Ordering::AcqRel);
                match (&why, was) {
                    (Some(why), _) if was || !primary.warned.contains(&number) => {
                        primary.warned.push(number);
                        tracing::warn!(
                            replica = number,
                            why = why.as_str(),
                            "the server at --postgres-replica-url is no replica of the primary: \
                             logins go to the primary until it is one"
                        );
                    }
                    (None, false) if primary.warned.contains(&number) => {
                        primary.warned.retain(|n| *n != number);
                        tracing::info!(replica = number, "read replica of the primary again");
                    }
                    _ => {}
                }
            }
            let lag = state.and_then(|state| primary.positions.lag(state.applied, Instant::now()));
            crate::metrics::record_replica_lag(number, lag);
            let current = lag.is_some_and(|lag| lag <= self.max_lag);
            let was = replica.current.swap(current, Ordering::AcqRel);
            match (was, current) {
                (true, false) => tracing::warn!(
                    replica = number,
                    lag = ?lag,
                    max_lag = ?self.max_lag,
                    "read replica behind the primary beyond --replica-max-lag (or its position \
                     unknown): logins go to the primary until it catches up"
                ),
                (false, true) => {
                    tracing::info!(replica = number, lag = ?lag, "read replica within the lag bound: serving logins")
                }
                _ => {}
            }
        }
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for replica in &self.list {
            replica.connections.close();
        }
    }
}

impl Replica {
    fn skip(&self) -> Option<Skip> {
        if !self.healthy.load(Ordering::Acquire) {
            Some(Skip::Down)
        } else if !self.replica_of_primary.load(Ordering::Acquire) {
            Some(Skip::NotReplica)
        } else if !self.current.load(Ordering::Acquire) {
            Some(Skip::Lag)
        } else {
            None
        }
    }
}

/// The primary's WAL positions as read at each check, oldest first.
#[derive(Default)]
struct Positions(VecDeque<(Instant, i64)>);

impl Positions {
    fn push(&mut self, asked: Instant, lsn: i64) {
        self.0.push_back((asked, lsn));
    }

    fn forget_before(&mut self, oldest: Option<Instant>) {
        let Some(oldest) = oldest else { return };
        while self.0.front().is_some_and(|(at, _)| *at < oldest) {
            self.0.pop_front();
        }
    }

    /// How stale a server that applied `lsn` is at most: the time since the latest reading of
    /// the primary at or below `lsn`. `None`: behind every reading kept (or none kept).
    fn lag(&self, lsn: i64, now: Instant) -> Option<Duration> {
        self.0
            .iter()
            .rev()
            .find(|(_, primary)| *primary <= lsn)
            .map(|(at, _)| now.saturating_duration_since(*at))
    }
}

/// What the primary was found to be: its system (once read), its latest timeline, its WAL
/// positions; and the replicas already said to be none of its.
#[derive(Default)]
struct Primary {
    system: Option<i64>,
    timeline: i64,
    positions: Positions,
    warned: Vec<usize>,
}

/// `connections`' server as [`STATE_SQL`] reads it, or `None` if it cannot say within one
/// check interval (down, black-holed, not replaying).
async fn server_state(connections: &Arc<Connections>) -> Option<State> {
    let read = async {
        let claim = connections.claim().await.ok()?;
        let messages = match claim
            .live
            .answer(claim.live.client.simple_query(STATE_SQL))
            .await
        {
            Ok(messages) => messages,
            Err(_) => {
                claim.discard().await;
                return None;
            }
        };
        messages.iter().find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(State {
                in_recovery: row.get(0)? == "t",
                system: row.get(1)?.parse().ok()?,
                timeline: row.get(2)?.parse().ok()?,
                applied: row.get(3)?.parse().ok()?,
            }),
            _ => None,
        })
    };
    tokio::time::timeout(LAG_CHECK_INTERVAL, read)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_in_recovery_of_the_primarys_system_and_timeline_is_a_replica() {
        let replica = State {
            in_recovery: true,
            system: 7,
            timeline: 2,
            applied: 100,
        };
        assert_eq!(not_a_replica(replica, 7, 2), None);
        assert_eq!(not_a_replica(replica, 7, 3), None, "an earlier timeline");
        let promoted = State {
            in_recovery: false,
            ..replica
        };
        assert!(
            not_a_replica(promoted, 7, 2)
                .unwrap()
                .contains("not in recovery")
        );
        assert!(
            not_a_replica(replica, 8, 2)
                .unwrap()
                .contains("another cluster")
        );
        assert!(not_a_replica(replica, 7, 1).unwrap().contains("later than"));
    }

    #[test]
    fn the_lag_is_the_age_of_the_latest_primary_position_the_replica_holds() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.push(start, 100);
        positions.push(start + Duration::from_secs(1), 100);
        positions.push(start + Duration::from_secs(2), 250);
        let now = start + Duration::from_secs(3);
        // Caught up with the latest reading.
        assert_eq!(positions.lag(250, now), Some(Duration::from_secs(1)));
        // An idle primary: the same position read twice; the later reading counts.
        assert_eq!(positions.lag(100, now), Some(Duration::from_secs(2)));
        assert_eq!(positions.lag(249, now), Some(Duration::from_secs(2)));
        // Behind everything kept: unknown, so not current.
        assert_eq!(positions.lag(99, now), None);
        positions.forget_before(Some(start + Duration::from_millis(1500)));
        assert_eq!(positions.lag(100, now), None);
        assert_eq!(positions.lag(300, now), Some(Duration::from_secs(1)));
    }
}
