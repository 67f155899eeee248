//! A cache with single flight: concurrent look-ups of one key share one call, answers are kept
//! for a time that depends on the answer (long for a positive one, short for a negative one),
//! and failures are shared by the callers of that flight only, never kept.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// How a look-up was answered, for `agent_auth_cloud_api_cache_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// A kept answer; no call.
    Hit,
    /// Joined a call another look-up had started.
    Shared,
    /// Started the call.
    Miss,
}

impl CacheResult {
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Shared => "shared",
            CacheResult::Miss => "miss",
        }
    }
}

struct Entry<V, E> {
    value: Result<V, E>,
    at: Instant,
}

type Slot<V, E> = Arc<OnceCell<Entry<V, E>>>;

/// Past this many keys, a look-up that adds one first drops the expired ones.
const SWEEP_ABOVE: usize = 50_000;

pub struct FlightCache<K, V, E> {
    slots: Mutex<HashMap<K, Slot<V, E>>>,
    /// How long an answer is kept; zero keeps it only for its own flight.
    ttl: Box<dyn Fn(&V) -> Duration + Send + Sync>,
}

impl<K, V, E> FlightCache<K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone,
{
    pub fn new(ttl: impl Fn(&V) -> Duration + Send + Sync + 'static) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            ttl: Box::new(ttl),
        }
    }

    fn fresh(&self, slot: &Slot<V, E>, now: Instant) -> bool {
        match slot.get() {
            None => true, // in flight
            Some(Entry { value: Ok(v), at }) => now.duration_since(*at) < (self.ttl)(v),
            Some(Entry { value: Err(_), .. }) => false,
        }
    }

    /// The answer for `key`: kept, shared with a call in flight, or fetched by `fetch`.
    pub async fn get<F, Fut>(&self, key: &K, fetch: F) -> (Result<V, E>, CacheResult)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        let now = Instant::now();
        let (slot, mut result) = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(key) {
                Some(slot) if self.fresh(slot, now) => {
                    let result = if slot.initialized() {
                        CacheResult::Hit
                    } else {
                        CacheResult::Shared
                    };
                    (slot.clone(), result)
                }
                _ => {
                    if slots.len() >= SWEEP_ABOVE {
                        slots.retain(|_, slot| self.fresh(slot, now));
                    }
                    let slot: Slot<V, E> = Arc::new(OnceCell::new());
                    slots.insert(key.clone(), slot.clone());
                    (slot, CacheResult::Miss)
                }
            }
        };
        let mut ran = false;
        let entry = slot
            .get_or_init(|| {
                ran = true;
                async move {
                    Entry {
                        value: fetch().await,
                        at: Instant::now(),
                    }
                }
            })
            .await;
        if ran {
            result = CacheResult::Miss;
        } else if result == CacheResult::Miss {
            // Another look-up initialised the slot we inserted (we were cancelled and retried,
            // or raced): we did not call.
            result = CacheResult::Shared;
        }
        if entry.value.is_err() {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.get(key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(key);
            }
        }
        (entry.value.clone(), result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn concurrent_lookups_share_one_call_and_answers_expire_by_kind() {
        let cache: Arc<FlightCache<u32, bool, String>> =
            Arc::new(FlightCache::new(|positive: &bool| {
                if *positive {
                    Duration::from_secs(60)
                } else {
                    Duration::ZERO
                }
            }));
        let calls = Arc::new(AtomicU32::new(0));
        let lookups: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get(&1, || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, String>(true)
                        })
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for lookup in lookups {
            results.push(lookup.await.unwrap().1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            results.iter().filter(|r| **r == CacheResult::Miss).count(),
            1
        );
        // A kept positive answer: no call.
        let (value, result) = cache.get(&1, || async { Err("called".to_owned()) }).await;
        assert_eq!((value, result), (Ok(true), CacheResult::Hit));
        // A negative answer with a zero lifetime and a failure are both fetched again.
        for _ in 0..2 {
            let (_, result) = cache.get(&2, || async { Ok(false) }).await;
            assert_eq!(result, CacheResult::Miss);
        }
        for _ in 0..2 {
            let (value, result) = cache.get(&3, || async { Err("down".to_owned()) }).await;
            assert_eq!((value, result), (Err("down".to_owned()), CacheResult::Miss));
        }
    }
}
