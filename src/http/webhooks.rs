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
use crate::providers::telnyx::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Received {
    pub event_id: String,
    /// True when this event id had been received before (nothing was stored again).
    pub duplicate: bool,
}

/// Stores a verified webhook body and enqueues its job, in one statement that also reads it:
/// `$1` the provider, `$2` the raw body as text, `$3` `received_via`. PostgreSQL is the one
/// parser: `webhook_body` (migration 20261206001300) reads the raw
/// text as `jsonb` after replacing each `\u0000` escape by `\ufffd` (ADR 0020), or says why
/// it will not; the statement picks out the event id and type, and converts
/// `data.occurred_at` when it is an RFC 3339 timestamp (else NULL). The answer is one row:
/// `rejected` (why nothing was stored: the 400's detail), `not_json` (the body is not JSON,
/// as opposed to not this provider's webhook), `event_id`, `nul_replaced` and `inserted` (0
/// for a duplicate). The edge shim runs this statement byte for byte through Hyperdrive
/// (`received_via = 'edge'`), so both sides store identical rows (docs/STRANGLER.md).
pub const INBOX_INSERT_SQL: &str = r#"with parsed as (
        select read.body, read.refusal,
               (select count(*) from regexp_matches($2::text, '(?<!\\)((?:\\\\)*)\\u0000', 'g')) as nul_replaced
        from webhook_body($2::text) read
    ), event as (
        select body, nul_replaced, refusal is not null as not_json, case
            when refusal is not null then 'the body is not JSON: ' || refusal
            else case $1::text
            when 'telnyx' then case
                when (jsonb_typeof(body) = 'object' and body ? 'data') is not true then 'missing data'
                when (jsonb_typeof(body->'data'->'id') = 'string'
                      and octet_length(body->'data'->>'id') between 1 and 200) is not true then 'missing data.id'
                when (jsonb_typeof(body->'data'->'event_type') = 'string'
                      and octet_length(body->'data'->>'event_type') between 1 and 100) is not true then 'missing data.event_type'
                end
            when 'assemblyai' then case
                when (jsonb_typeof(body->'transcript_id') = 'string'
                      and octet_length(body->>'transcript_id') between 1 and 200) is not true then 'missing transcript_id'
                when (jsonb_typeof(body->'status') = 'string'
                      and octet_length(body->>'status') between 1 and 40) is not true then 'missing status'
                end
            else 'unknown provider'
            end end as rejected,
            case $1::text when 'telnyx' then body->'data'->>'id'
                else (body->>'transcript_id') || ':' || (body->>'status') end as event_id,
            case $1::text when 'telnyx' then replace(body->'data'->>'event_type', '_', '.')
                else 'transcript.' || (body->>'status') end as event_type,
            case when $1::text = 'telnyx' then body->'data'->>'occurred_at' end as occurred_text
        from parsed
    ), stamped as (
        select event.*, case
            when jsonb_typeof(body->'data'->'occurred_at') = 'string'
             and occurred_text ~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-](0[0-9]|1[0-5]):[0-5][0-9])$'
             and substr(occurred_text, 1, 4) <> '0000'
             and extract(month from make_date(substr(occurred_text, 1, 4)::int, substr(occurred_text, 6, 2)::int, 1)
                                    + (substr(occurred_text, 9, 2)::int - 1)) = substr(occurred_text, 6, 2)::int
            then occurred_text::timestamptz
            end as occurred_at
        from event
    ), inserted as (
        insert into webhook_inbox (provider, event_id, event_type, occurred_at, payload, received_via)
        select $1, event_id, event_type, occurred_at, body, $3 from stamped where rejected is null
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
    select rejected, not_json, event_id, nul_replaced, (select count(*) from inserted) as inserted from stamped"#;

/// How a receiver answers a body PostgreSQL would not read as JSON. The detail quotes
/// PostgreSQL's message and detail (never its context line, which echoes the body).
pub fn not_json(error: &tokio_postgres::Error) -> Option<String> {
    let db = error.as_db_error()?;
    let code = db.code().code();
    if !(code.starts_with("22") || code == "54001") {
        return None;
    }
    Some(match db.detail() {
        Some(detail) => format!("the body is not JSON: {} ({detail})", db.message()),
        None => format!("the body is not JSON: {}", db.message()),
    })
}

/// The 400 for a body that is not UTF-8 (PostgreSQL only takes text).
pub const NOT_UTF8: &str = "the body is not JSON: it is not valid UTF-8";

/// The 400 for a body with a NUL byte (never JSON; PostgreSQL refuses it in text).
pub const NUL_BYTE: &str = "the body is not JSON: it contains a NUL byte";

/// Stores a verified body (see [`INBOX_INSERT_SQL`]) and enqueues its job, counting it.
/// Returns the event id and whether it was already known (a duplicate delivery), or the
/// 400 for a body that is not JSON or whose fields are missing (`rejected`, prefixed by
/// `reject_prefix`).
pub async fn store_in_inbox(
    state: &AppState,
    provider: &'static str,
    body: &[u8],
    reject_prefix: &str,
) -> Result<Received, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::BadRequest(NOT_UTF8.into()))?;
    if text.contains('\0') {
        return Err(ApiError::BadRequest(NUL_BYTE.into()));
    }
    let client = state.db.client().await.map_err(ApiError::internal)?;
    let statement = state
        .db
        .prepare(&client, INBOX_INSERT_SQL)
        .await
        .map_err(ApiError::internal)?;
    let row = client
        .query_one(&statement, &[&provider, &text, &"origin"])
        .await
        .map_err(|error| match not_json(&error) {
            Some(detail) => ApiError::BadRequest(detail),
            None => ApiError::internal(error),
        })?;
    if let Some(reason) = row.get::<_, Option<String>>("rejected") {
        return Err(ApiError::BadRequest(if row.get("not_json") {
            reason
        } else {
            format!("{reject_prefix}{reason}")
        }));
    }
    let replaced: i64 = row.get("nul_replaced");
    if replaced > 0 {
        metrics::counter!("webhook_nul_replaced_total", "provider" => provider)
            .increment(replaced as u64);
    }
    let duplicate = row.get::<_, i64>("inserted") == 0;
    if !duplicate {
        state.job_bell.ring();
    }
    metrics::counter!("webhooks_received_total", "provider" => provider, "duplicate" => duplicate.to_string())
        .increment(1);
    Ok(Received {
        event_id: row.get("event_id"),
        duplicate,
    })
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
    let received = store_in_inbox(&state, "telnyx", &body, "not a Telnyx webhook: ").await?;
    Ok(Json(received))
}

#[cfg(test)]
mod tests {
    /// The edge shim runs the inbox statement through Hyperdrive; a copy that drifted would
    /// store different rows from the edge. This pins the copy to the original.
    #[test]
    fn the_edge_runs_the_same_inbox_statement() {
        let source = include_str!("../../edge-shim/src/inbox.ts");
        let start = source
            .find("INBOX_INSERT_SQL = String.raw`")
            .expect("edge-shim/src/inbox.ts declares INBOX_INSERT_SQL")
            + "INBOX_INSERT_SQL = String.raw`".len();
        let end = start + source[start..].find('`').expect("closing backtick");
        assert_eq!(&source[start..end], super::INBOX_INSERT_SQL);
    }
}
