//! `POST /webhooks/assemblyai`: AssemblyAI's "transcript done" callback (docs/PROVIDERS.md §2.3).
//!
//! AssemblyAI signs nothing; it sends back the header we named when submitting
//! (`x-callbridge-webhook-secret: ASSEMBLYAI_WEBHOOK_SECRET`), compared here in constant time
//! (SHA-256 of both sides, so not even the length leaks). The body
//! `{"transcript_id", "status"}` goes into `webhook_inbox` (provider `assemblyai`, event id
//! `{transcript_id}:{status}`) and its job is enqueued in the same statement as the Telnyx
//! receiver's; a retried delivery is a no-op. Answers within AssemblyAI's 10 s.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::http::error::{ApiError, Problem};
use crate::http::extract::Json;
use crate::http::webhooks::{Received, store};
use crate::inbox::Provider;
use crate::providers::assemblyai_async::WEBHOOK_AUTH_HEADER;
use crate::state::AppState;

fn same_secret(sent: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(sent), Sha256::digest(expected));
    a.ct_eq(&b).into()
}

/// AssemblyAI transcript webhooks.
#[utoipa::path(post, path = "/webhooks/assemblyai", operation_id = "receiveAssemblyAiWebhook", security(), tag = "webhooks",
    params(("x-callbridge-webhook-secret" = String, Header, description = "ASSEMBLYAI_WEBHOOK_SECRET, as configured when submitting")),
    request_body(content = Object, description = "`{\"transcript_id\": \"…\", \"status\": \"completed\"|\"error\"}`", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (or already stored)", body = Received),
        (status = 400, description = "Not an AssemblyAI transcript webhook", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong auth header; nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "AssemblyAI or its webhook secret is not configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn assemblyai(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Received>, ApiError> {
    let config = state.config.providers.assemblyai()?;
    let secret = config.webhook_secret.as_ref().ok_or_else(|| {
        ApiError::from(crate::config::ProviderDisabled {
            provider: "AssemblyAI webhooks",
            variables: &["ASSEMBLYAI_WEBHOOK_SECRET"],
        })
    })?;
    let sent = headers
        .get(WEBHOOK_AUTH_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if sent.is_empty() || !same_secret(sent, secret.expose().as_bytes()) {
        metrics::counter!("webhooks_rejected_total", "provider" => "assemblyai").increment(1);
        return Err(ApiError::Unauthorized(
            "Webhook auth header missing or wrong.".into(),
        ));
    }
    let received = store(&state, Provider::AssemblyAi, &body, "").await?;
    Ok(Json(received))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_by_value() {
        assert!(super::same_secret(b"s3cret", b"s3cret"));
        assert!(!super::same_secret(b"s3cret", b"s3cret!"));
        assert!(!super::same_secret(b"", b"s3cret"));
    }
}
