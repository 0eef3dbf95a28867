//! Per-replica, in-memory counters behind the request rate limits and the open-streams cap
//! (`http::limits` applies them; docs/adr/0024-limits-per-replica-or-shared.md): token
//! buckets by key, and stream slots per user that free themselves when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The user already holds the most live streams allowed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("You already have {max} live streams open (STREAMS_PER_USER_MAX); close one first.")]
pub struct StreamsFull {
    pub max: usize,
}

/// More keys than this and full (idle) buckets are dropped: memory stays bounded.
const MAX_KEYS: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key.
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one token from `key` (refilled at `per_minute`, holding at most that many);
    /// `Err(wait)` when there is none. `per_minute == 0` is unlimited.
    pub fn take(&self, key: &str, per_minute: u32) -> Result<(), Duration> {
        self.check(key, per_minute, true)
    }

    /// Whether `key` has a token, without taking it.
    pub fn peek(&self, key: &str, per_minute: u32) -> Result<(), Duration> {
        self.check(key, per_minute, false)
    }

    fn check(&self, key: &str, per_minute: u32, take: bool) -> Result<(), Duration> {
        if per_minute == 0 {
            return Ok(());
        }
        let burst = f64::from(per_minute);
        let per_second = burst / 60.0;
        let now = Instant::now();
        let mut buckets = self.lock();
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.updated).as_secs_f64() * per_second)
            .min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second)
                .max(Duration::from_secs(1)))
        }
    }
}

/// Open streams per user.
#[derive(Default)]
pub struct StreamSlots {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream; dropping it frees the slot.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    user: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl StreamSlots {
    /// A slot for `user`, or [`StreamsFull`] (a 429) when they already hold `max` (0:
    /// unlimited).
    pub fn acquire(self: &Arc<Self>, user: &str, max: usize) -> Result<StreamSlot, StreamsFull> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(user.to_owned()).or_default();
        if max > 0 && *count >= max {
            metrics::counter!("limits_refused_total", "limit" => "streams_per_user").increment(1);
            return Err(StreamsFull { max });
        }
        *count += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            user: user.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_its_burst_then_refills() {
        let limiter = Limiter::default();
        for _ in 0..3 {
            assert!(limiter.take("k", 3).is_ok());
        }
        let wait = limiter.take("k", 3).unwrap_err();
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limiter.take("other", 3).is_ok(), "keys are independent");
        assert!(limiter.take("k", 0).is_ok(), "0 is unlimited");
    }

    #[test]
    fn stream_slots_are_freed_on_drop() {
        let slots = Arc::new(StreamSlots::default());
        let first = slots.acquire("u", 2).unwrap();
        let _second = slots.acquire("u", 2).unwrap();
        assert!(slots.acquire("u", 2).is_err());
        assert!(slots.acquire("v", 2).is_ok());
        drop(first);
        assert!(slots.acquire("u", 2).is_ok());
    }
}
