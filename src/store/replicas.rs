//! Read replicas (`--postgres-replica-url`): each has its own pipelined connections; logins
//! take them in turn, skipping any that failed until a background probe finds it answering
//! again. The primary answers a login when no replica is healthy, when its replica failed, and
//! when a replica did not find the instance or agent (a workspace created a moment ago may not
//! have reached the replica yet: [`crate::auth`] asks the primary once more).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::pipeline::Connections;

/// How often a failed replica is probed (one empty round trip) until it answers.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

struct Replica {
    connections: Arc<Connections>,
    healthy: Arc<AtomicBool>,
    probing: Arc<AtomicBool>,
}

pub(super) struct Replicas {
    list: Vec<Replica>,
    next: AtomicUsize,
    closed: Arc<AtomicBool>,
}

impl Replicas {
    pub(super) fn new(list: Vec<Connections>) -> Self {
        Self {
            list: list
                .into_iter()
                .map(|connections| Replica {
                    connections: Arc::new(connections),
                    healthy: Arc::new(AtomicBool::new(true)),
                    probing: Arc::new(AtomicBool::new(false)),
                })
                .collect(),
            next: AtomicUsize::new(0),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Connections>> {
        self.list.iter().map(|r| &r.connections)
    }

    /// The next healthy replica in turn, with its index; `None` when there is none.
    pub(super) fn pick(&self) -> Option<(usize, &Arc<Connections>)> {
        let count = self.list.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|i| (start + i) % count)
            .find(|&i| self.list[i].healthy.load(Ordering::Acquire))
            .map(|i| (i, &self.list[i].connections))
    }

    /// Replica `index` could not answer: skip it until a probe finds it answering again.
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
        if replica.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let connections = Arc::clone(&replica.connections);
        let healthy = Arc::clone(&replica.healthy);
        let probing = Arc::clone(&replica.probing);
        let closed = Arc::clone(&self.closed);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if closed.load(Ordering::Acquire) {
                    break;
                }
                if super::ping(&connections).await.is_ok() {
                    healthy.store(true, Ordering::Release);
                    tracing::info!(replica = number, "read replica answers again");
                    break;
                }
            }
            probing.store(false, Ordering::Release);
        });
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for replica in &self.list {
            replica.connections.close();
        }
    }
}
