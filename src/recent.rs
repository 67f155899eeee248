//! Keys remembered for a while, at most so many (the least recently used forgotten first): the
//! negative answers not worth asking again soon. The use case keeps the primary's "not found"
//! after a replica's; Azure issuer fetching keeps the URLs that gave nothing usable.

use std::borrow::Borrow;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

pub struct Recent<K: Hash + Eq> {
    seen: Mutex<LruCache<K, Instant>>,
    ttl: Duration,
}

impl<K: Hash + Eq> Recent<K> {
    /// At most `capacity` keys, each remembered for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            seen: Mutex::new(LruCache::new(capacity)),
            ttl,
        }
    }

    /// `key` was remembered less than the TTL ago (an expired one is forgotten).
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        match seen.get(key) {
            Some(at) if at.elapsed() < self.ttl => true,
            Some(_) => {
                seen.pop(key);
                false
            }
            None => false,
        }
    }

    /// Remembers `key` from now on.
    pub fn insert(&self, key: K) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.put(key, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_remembered_for_its_ttl_and_the_oldest_goes_first() {
        let recent = Recent::new(2, Duration::from_millis(50));
        recent.insert("a".to_owned());
        recent.insert("b".to_owned());
        assert!(recent.contains("a"));
        recent.insert("c".to_owned());
        assert!(
            !recent.contains("b"),
            "the least recently used is forgotten"
        );
        assert!(recent.contains("a") && recent.contains("c"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!recent.contains("a"), "expired");
    }
}
