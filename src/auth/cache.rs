//! A bounded, time-limited, in-process cache of resolved sessions.
//!
//! Keyed by the SHA-256 of the token, so raw tokens are not kept around longer than the
//! request. An entry lives for at most the TTL (and never past the session's own expiry):
//! that TTL is the revocation delay — a deleted session keeps working on a replica that
//! cached it for up to TTL seconds (docs/adr/0004-session-cache.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type TokenDigest = [u8; 32];

struct Entry<V> {
    value: Arc<V>,
    valid_until: Instant,
}

pub struct TtlCache<V> {
    entries: Mutex<HashMap<TokenDigest, Entry<V>>>,
    ttl: Duration,
    capacity: usize,
}

impl<V> TtlCache<V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::with_capacity(capacity.min(1024))),
            ttl,
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, Entry<V>>> {
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &TokenDigest) -> Option<Arc<V>> {
        let now = Instant::now();
        let mut entries = self.lock();
        match entries.get(key) {
            Some(entry) if entry.valid_until > now => Some(entry.value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `value` until the TTL elapses or `not_after`, whichever is sooner.
    pub fn insert(&self, key: TokenDigest, value: Arc<V>, not_after: Option<Instant>) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut valid_until = now + self.ttl;
        if let Some(limit) = not_after {
            valid_until = valid_until.min(limit);
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.valid_until > now);
            if entries.len() >= self.capacity {
                // Still full of live entries: drop an arbitrary tenth rather than grow.
                let victims: Vec<TokenDigest> = entries
                    .keys()
                    .take(self.capacity / 10 + 1)
                    .copied()
                    .collect();
                for victim in victims {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(key, Entry { value, valid_until });
    }

    pub fn remove(&self, key: &TokenDigest) {
        self.lock().remove(key);
    }

    pub fn remove_where(&self, mut predicate: impl FnMut(&V) -> bool) {
        self.lock().retain(|_, entry| !predicate(&entry.value));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_is_a_hard_bound() {
        let cache = TtlCache::new(Duration::from_millis(50), 100);
        cache.insert([1; 32], Arc::new("a"), None);
        assert_eq!(cache.get(&[1; 32]).as_deref(), Some(&"a"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&[1; 32]), None);

        for i in 0..1000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(key, Arc::new("x"), None);
            assert!(cache.len() <= 100);
        }
    }

    #[test]
    fn never_outlives_the_session() {
        let cache = TtlCache::new(Duration::from_secs(60), 10);
        cache.insert(
            [2; 32],
            Arc::new(1),
            Some(Instant::now() + Duration::from_millis(20)),
        );
        assert!(cache.get(&[2; 32]).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(cache.get(&[2; 32]).is_none());
    }
}
