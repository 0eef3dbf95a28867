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

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::auth::credential;
use crate::http::error::ApiError;
use crate::http::forwarded::ClientInfo;
use crate::limits::StreamsFull;
use crate::state::AppState;

impl From<StreamsFull> for ApiError {
    fn from(full: StreamsFull) -> Self {
        ApiError::TooManyRequests {
            detail: full.to_string(),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// Routes no request rate limit applies to (probes, signed webhooks, the media stream). The
/// OpenAPI document lists a 429 on every other route.
pub(crate) fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || path.starts_with("/webhooks/")
        || path.starts_with(crate::paths::MEDIA_STREAM_PREFIX)
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
