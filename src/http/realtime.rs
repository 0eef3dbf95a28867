//! Browser transcription: `POST /api/realtime/token` (a short-lived AssemblyAI token for
//! streaming directly from the browser — the recommended path for captions) and
//! `GET /api/realtime/transcribe` (a WebSocket proxy through us, for when the turns must be
//! stored against a call). docs/MEDIA_BRIDGE.md explains the choice.

use axum::extract::{State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{BrowserOrgContext, CredentialSource, OrgContext, csrf, membership_in, recheck};
use crate::calls;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Json, Query};
use crate::ids::CallId;
use crate::media::browser;
use crate::providers::assemblyai::{AudioEncoding, StreamParams};
use crate::state::AppState;
use crate::usage::{self, Owner};

/// Browser tokens live one minute: enough to open the socket, useless if leaked later.
const TOKEN_TTL_SECS: u32 = 60;

#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct AudioFormat {
    /// `pcm_s16le` (default, little-endian 16-bit) or `pcm_mulaw`.
    pub encoding: Option<String>,
    /// Hz; default 16000.
    pub sample_rate: Option<u32>,
    /// Store final turns as this call's `browser` track (must be the caller's organisation's).
    pub call_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RealtimeToken {
    /// Single-use AssemblyAI streaming token.
    pub token: String,
    pub expires_in_seconds: u32,
    /// Open this WebSocket from the browser (the token is in its query).
    pub websocket_url: String,
}

fn params(state: &AppState, format: &AudioFormat) -> Result<StreamParams, ApiError> {
    let encoding = match format.encoding.as_deref() {
        None => AudioEncoding::PcmS16le,
        Some(name) => AudioEncoding::parse(name)
            .ok_or_else(|| ApiError::Unprocessable(format!("unsupported encoding {name:?}")))?,
    };
    let sample_rate = format.sample_rate.unwrap_or(16_000);
    if !(8_000..=48_000).contains(&sample_rate) || !sample_rate.is_multiple_of(1000) {
        return Err(ApiError::Unprocessable(
            "sample_rate must be a whole kHz between 8000 and 48000".into(),
        ));
    }
    Ok(StreamParams {
        speech_model: state.config.media.speech_model.clone(),
        encoding,
        sample_rate,
        format_turns: true,
        language_detection: false,
    })
}

/// A short-lived token to stream from the browser straight to AssemblyAI. The token is counted
/// in the organisation's usage (`assemblyai` `direct_sessions`: the session's seconds pass
/// AssemblyAI without us, docs/USAGE.md).
#[utoipa::path(post, path = "/api/realtime/token", operation_id = "createRealtimeToken", tag = "realtime",
    params(("X-Org-Id" = Option<Uuid>, Header, description = "Organisation the session is billed to")),
    request_body(content = AudioFormat, description = "Optional audio format (no body: the defaults)", content_type = "application/json"),
    responses(
        (status = 200, description = "Token and the URL to open", body = RealtimeToken),
        (status = 422, description = "Unsupported encoding or sample rate", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "REALTIME_TOKENS_PER_MIN reached", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "AssemblyAI refused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "AssemblyAI is not configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn token(
    State(state): State<AppState>,
    org: OrgContext,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<RealtimeToken>, ApiError> {
    let client = state.assemblyai()?.clone();
    // Each token is billable AssemblyAI time the browser spends without us in between.
    let per_minute = state.config.limits.realtime_tokens_per_min;
    state
        .limiter
        .take(&format!("aai-token:{}", org.user.id()), per_minute)
        .map_err(|retry_after| ApiError::TooManyRequests {
            detail: format!(
                "At most {per_minute} transcription tokens a minute (REALTIME_TOKENS_PER_MIN)."
            ),
            retry_after,
        })?;
    // The body is optional: empty means the defaults. One that is sent is read like every
    // other JSON body (`http::extract::Json`): 415 without the JSON content type, 400 when
    // it does not parse, 422 when it does not fit the schema.
    let format = if body.iter().all(u8::is_ascii_whitespace) {
        AudioFormat {
            encoding: None,
            sample_rate: None,
            call_id: None,
        }
    } else {
        let json = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|essence| essence.trim().to_ascii_lowercase())
            .is_some_and(|essence| essence == "application/json" || essence.ends_with("+json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "Expected request with `Content-Type: application/json`".into(),
            ));
        }
        // From text: serde_json does not check the UTF-8 of fields it skips.
        let text = std::str::from_utf8(&body)
            .map_err(|e| ApiError::BadRequest(format!("The request body is not UTF-8: {e}")))?;
        serde_json::from_str(text).map_err(|e| {
            let message = format!("Failed to parse the request body as JSON: {e}");
            if e.is_data() {
                ApiError::Unprocessable(message)
            } else {
                ApiError::BadRequest(message)
            }
        })?
    };
    let params = params(&state, &format)?;
    let (token, expires_in_seconds) = client
        .temporary_token(TOKEN_TTL_SECS)
        .await
        .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    let websocket_url = client.browser_url(&params, &token).to_string();
    state.ledger.record(vec![usage::direct_session_entry(
        org.organisation_id,
        org.user.id(),
        &params.speech_model,
        expires_in_seconds,
    )]);
    Ok(Json(RealtimeToken {
        token,
        expires_in_seconds,
        websocket_url,
    }))
}

/// Stream audio through us (WebSocket): binary audio in, AssemblyAI's JSON messages out. The
/// session's seconds are billed to the call's organisation (with `call_id`), else to the
/// organisation chosen as for every other route (docs/USAGE.md).
#[utoipa::path(get, path = "/api/realtime/transcribe", operation_id = "connectRealtimeTranscription", tag = "realtime",
    params(AudioFormat,
        ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation the session is billed to (without call_id)"),
        ("org_id" = Option<Uuid>, Query, description = "Organisation the session is billed to, for clients that cannot send X-Org-Id (a browser WebSocket); must equal X-Org-Id when both are sent")),
    responses(
        (status = 101, description = "Switching to the transcription WebSocket. The session (and, with call_id, the membership) is re-checked every AUTH_STREAM_RECHECK_SECS; the socket closes with 4401 (session ended) or 4403 (membership ended) when either is gone"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Cookie session from a disallowed origin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "call_id is not the caller's organisation's", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "STREAMS_PER_USER_MAX live streams already open", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "AssemblyAI is not configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn transcribe(
    State(state): State<AppState>,
    BrowserOrgContext(org): BrowserOrgContext,
    headers: HeaderMap,
    Query(format): Query<AudioFormat>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let user = &org.user;
    // Browsers send cookies on cross-site WebSocket handshakes: check the origin ourselves.
    if user.source == CredentialSource::Cookie {
        csrf::check(&headers, &state.config.http.allowed_origins).map_err(|refused| {
            ApiError::Forbidden(format!("Cross-site request refused: {refused}."))
        })?;
    }
    let assemblyai = state.assemblyai()?.clone();
    let params = params(&state, &format)?;
    let mut organisation_id = None;
    let mut owner = Owner::Organisation {
        organisation_id: org.organisation_id,
        user_id: Some(user.id().to_owned()),
    };
    if let Some(call_id) = format.call_id.map(CallId::from) {
        let client = state.db.client().await?;
        let call = calls::get_unscoped(&client, call_id)
            .await?
            .ok_or(ApiError::NotFound)?;
        membership_in(user, call.organisation_id).ok_or(ApiError::NotFound)?;
        organisation_id = Some(call.organisation_id);
        owner = Owner::Call {
            call_id,
            leg_id: None,
        };
    }
    let slot = state
        .streams
        .acquire(user.id(), state.config.limits.streams_per_user)?;
    let tracker = state.bridges.clone();
    // A browser sends 20–100 ms frames (a few KiB): anything far larger is refused (1009).
    let max_message = state.config.limits.realtime_max_message_bytes;
    let upgrade = upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message);
    Ok(upgrade.on_upgrade(move |socket| {
        // Re-checked while the socket lives: a sign-out or a removal closes it (4401/4403).
        let revoked = recheck::watch(
            &state.sessions,
            state.config.auth.stream_recheck,
            &org.user,
            organisation_id,
        );
        tracker.track_future(async move {
            browser::run(
                state,
                assemblyai,
                params,
                format.call_id.map(CallId::from),
                owner,
                socket,
                revoked,
            )
            .await;
            drop(slot);
        })
    }))
}
