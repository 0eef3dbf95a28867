//! Request rate limits and the cap on concurrent streams, per replica and in memory
//! (docs/adr/0024-limits-per-replica-or-shared.md says why not in PostgreSQL):
//!
//! - a request without a credential: `RATE_LIMIT_ANONYMOUS_PER_MIN` per client address;
//! - a request with one: `RATE_LIMIT_SESSION_PER_MIN` per token;
//! - a credential that turns out unknown (401) costs its address one of
//!   `RATE_LIMIT_AUTH_FAILURES_PER_MIN`, and with none left the address's credentialed
//!   requests are refused too (token guessing, floods of made-up bearers);
//! - `STREAMS_PER_USER_MAX` SSE streams and WebSockets open at once per user.
//!
//! Token buckets: the limit per minute is also the burst. A refusal is 429 problem+json with
//! `Retry-After`. Health, metrics, webhooks (verified by signature, bursty by nature) and the
//! media stream are not limited here. 0 turns a limit off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::auth::credential;
use crate::error::ApiError;
use crate::http::forwarded::ClientInfo;
use crate::state::AppState;

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
    /// A slot for `user`, or 429 when they already hold `max` (0: unlimited).
    pub fn acquire(self: &Arc<Self>, user: &str, max: usize) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(user.to_owned()).or_default();
        if max > 0 && *count >= max {
            metrics::counter!("limits_refused_total", "limit" => "streams_per_user").increment(1);
            return Err(ApiError::TooManyRequests {
                detail: format!(
                    "You already have {max} live streams open (STREAMS_PER_USER_MAX); close one first."
                ),
                retry_after: Duration::from_secs(5),
            });
        }
        *count += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            user: user.to_owned(),
        })
    }
}

/// Routes no request rate limit applies to (probes, signed webhooks, the media stream). The
/// OpenAPI document lists a 429 on every other route.
pub(crate) fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || path.starts_with("/webhooks/")
        || path.starts_with(crate::http::forwarded::MEDIA_STREAM_PREFIX)
}

fn refused(limit: &'static str, detail: &str, retry_after: Duration) -> Response {
    metrics::counter!("limits_refused_total", "limit" => limit).increment(1);
    ApiError::TooManyRequests {
        detail: detail.to_owned(),
        retry_after,
    }
    .into_response()
}

pub async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if exempt(request.uri().path()) {
        return next.run(request).await;
    }
    let limits = &state.config.limits;
    let ip = request
        .extensions()
        .get::<ClientInfo>()
        .and_then(|client| client.ip)
        .map_or_else(|| "unknown".to_owned(), |ip: IpAddr| ip.to_string());
    let token = credential::from_headers(request.headers(), &state.config.auth.cookie_names)
        .ok()
        .flatten()
        .map(|credential| hex::encode(&Sha256::digest(credential.token().as_bytes())[..16]));
    let failures = format!("auth-failures:{ip}");
    match &token {
        None => {
            if let Err(wait) = state
                .limiter
                .take(&format!("ip:{ip}"), limits.anonymous_per_min)
            {
                return refused(
                    "anonymous",
                    "Too many requests from this address; slow down.",
                    wait,
                );
            }
        }
        Some(token) => {
            if let Err(wait) = state.limiter.peek(&failures, limits.auth_failures_per_min) {
                return refused(
                    "auth_failures",
                    "Too many unknown credentials from this address; wait before trying again.",
                    wait,
                );
            }
            if let Err(wait) = state
                .limiter
                .take(&format!("session:{token}"), limits.session_per_min)
            {
                return refused(
                    "session",
                    "Too many requests for this session; slow down.",
                    wait,
                );
            }
        }
    }
    let response = next.run(request).await;
    if token.is_some() && response.status() == axum::http::StatusCode::UNAUTHORIZED {
        let _ = state.limiter.take(&failures, limits.auth_failures_per_min);
    }
    response
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
