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
use crate::providers::telnyx::{SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookEvent};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Received {
    pub event_id: String,
    /// True when this event id had been received before (nothing was stored again).
    pub duplicate: bool,
}

/// Stores a verified event through the inbox and wakes the workers when it was new.
/// Returns whether the event id was already known (a duplicate delivery).
pub async fn store(state: &AppState, event: &inbox::Event<'_>) -> Result<bool, ApiError> {
    let duplicate = inbox::store(&state.db, event).await?;
    if !duplicate {
        state.job_bell.ring();
    }
    Ok(duplicate)
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
    let mut envelope: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("the body is not JSON: {error}")))?;
    inbox::storable(&mut envelope, Provider::Telnyx);
    let event = WebhookEvent::parse(&envelope)
        .map_err(|e| ApiError::BadRequest(format!("not a Telnyx webhook: {e}")))?;
    let duplicate = store(
        &state,
        &inbox::Event {
            provider: Provider::Telnyx,
            event_id: &event.id,
            event_type: &event.event_type,
            occurred_at: event.occurred_at,
            payload: &envelope,
        },
    )
    .await?;
    Ok(Json(Received {
        event_id: event.id,
        duplicate,
    }))
}
