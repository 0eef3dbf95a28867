//! Webhook receivers. Verify on the raw bytes before parsing anything; store the event in
//! `webhook_inbox` and enqueue its processing job in one statement; answer at once.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::http::extract::Json;
use crate::providers::telnyx::{SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookEvent};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Received {
    pub event_id: String,
    /// True when this event id had been received before (nothing was stored again).
    pub duplicate: bool,
}

/// Inserts the event unless its id is known, and enqueues its job in the same statement.
/// The edge shim runs this same statement through Hyperdrive (`received_via = 'edge'`).
pub const INBOX_INSERT_SQL: &str = "with inserted as (
        insert into webhook_inbox (provider, event_id, event_type, occurred_at, payload, received_via)
        values ($1, $2, $3, $4, $5, $6)
        on conflict (provider, event_id) do nothing
        returning provider, event_id
    ), enqueued as (
        insert into jobs (kind, payload, dedupe_key)
        select provider || '.event', jsonb_build_object('provider', provider, 'event_id', event_id),
               'webhook:' || provider || ':' || event_id
        from inserted
        on conflict (dedupe_key) where dedupe_key is not null do nothing
        returning id
    )
    select count(*) from inserted";

/// Stores a verified event and enqueues its job (one statement, so both or neither), counting
/// it. Returns whether the event id was already known (a duplicate delivery).
pub async fn store_in_inbox(
    state: &AppState,
    provider: &'static str,
    event_id: &str,
    event_type: &str,
    occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    payload: &serde_json::Value,
) -> Result<bool, ApiError> {
    let client = state.db.client().await.map_err(ApiError::internal)?;
    let statement = state
        .db
        .prepare(&client, INBOX_INSERT_SQL)
        .await
        .map_err(ApiError::internal)?;
    let inserted: i64 = client
        .query_one(
            &statement,
            &[
                &provider,
                &event_id,
                &event_type,
                &occurred_at,
                payload,
                &"origin",
            ],
        )
        .await
        .map_err(ApiError::internal)?
        .get(0);
    let duplicate = inserted == 0;
    if !duplicate {
        state.job_bell.ring();
    }
    metrics::counter!("webhooks_received_total", "provider" => provider, "duplicate" => duplicate.to_string())
        .increment(1);
    Ok(duplicate)
}

/// Telnyx Call Control webhooks (docs/PROVIDERS.md §1.1–1.4).
#[utoipa::path(post, path = "/webhooks/telnyx", tag = "webhooks",
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
    let envelope: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("the body is not JSON: {error}")))?;
    let event = WebhookEvent::parse(&envelope)
        .map_err(|e| ApiError::BadRequest(format!("not a Telnyx webhook: {e}")))?;
    let duplicate = store_in_inbox(
        &state,
        "telnyx",
        &event.id,
        &event.event_type,
        event.occurred_at,
        &envelope,
    )
    .await?;
    Ok(Json(Received {
        event_id: event.id,
        duplicate,
    }))
}
