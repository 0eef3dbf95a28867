//! Webhook receivers. Verify on the raw bytes before parsing anything; store the event in
//! `webhook_inbox` and enqueue its processing job in one statement (`inbox`); answer at once.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::error::{ApiError, Problem};
use crate::http::extract::Json;
use crate::inbox::{self, Provider};
use crate::providers::telnyx::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Received {
    pub event_id: String,
    /// True when this event id had been received before (nothing was stored again).
    pub duplicate: bool,
}

/// Stores a verified body through the inbox (PostgreSQL reads it: ADR 0030) and answers as the
/// receivers do: the event id and whether it was a duplicate, or a 400 whose detail is the
/// inbox's reason (prefixed with `reject_prefix` when the body is JSON but not this
/// provider's webhook). Rings the job bell for a new event.
pub async fn store(
    state: &AppState,
    provider: Provider,
    body: &[u8],
    reject_prefix: &str,
) -> Result<Received, ApiError> {
    match inbox::store(&state.db, provider, body).await? {
        inbox::Stored::Received {
            event_id,
            duplicate,
        } => {
            if !duplicate {
                state.job_bell.ring();
            }
            Ok(Received {
                event_id,
                duplicate,
            })
        }
        inbox::Stored::Refused { reason, not_json } => Err(ApiError::BadRequest(if not_json {
            reason
        } else {
            format!("{reject_prefix}{reason}")
        })),
    }
}

/// Telnyx Call Control webhooks (docs/PROVIDERS.md §1.1–1.4).
#[utoipa::path(post, path = "/webhooks/telnyx", operation_id = "receiveTelnyxWebhook", security(), tag = "webhooks",
    params(
        ("telnyx-signature-ed25519" = String, Header, description = "base64 Ed25519 signature of `timestamp|body`"),
        ("telnyx-timestamp" = String, Header, description = "unix seconds; ±300 s"),
    ),
    request_body(content = Object, description = "Telnyx webhook v2 envelope", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (or already stored)", body = Received),
        (status = 400, description = "Signed but not a webhook envelope", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, stale or invalid signature; nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Telnyx is not configured here", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn telnyx(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Received>, ApiError> {
    let verifier = state.telnyx_webhooks.as_ref().ok_or_else(|| {
        ApiError::from(
            state
                .telnyx()
                .err()
                .expect("verifier absent means Telnyx disabled"),
        )
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    verifier
        .verify(
            headers.get(TIMESTAMP_HEADER).map(|v| v.as_bytes()),
            headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes()),
            &body,
            now,
        )
        .map_err(|error| {
            metrics::counter!("webhooks_rejected_total", "provider" => "telnyx").increment(1);
            ApiError::Unauthorized(format!("Webhook signature rejected: {error}."))
        })?;
    let received = store(&state, Provider::Telnyx, &body, "not a Telnyx webhook: ").await?;
    Ok(Json(received))
}
