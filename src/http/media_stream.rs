//! `GET /media/telnyx/{stream_token}`: where Telnyx connects a call's media stream. The token
//! (signed, expiring, bound to one call, or to one leg of an interpreted call) is checked *before* the upgrade; then the bridge
//! task runs until the stream ends.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use axum::Extension;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;

use crate::calls::{self, legs, stream_token};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Path;
use crate::ids::{CallId, LegId};
use crate::media::hub::Hub;
use crate::media::{bridge, frames};
use crate::state::AppState;

/// Telnyx media stream (WebSocket, docs/PROVIDERS.md §1.6).
#[utoipa::path(get, path = "/media/telnyx/{stream_token}", operation_id = "connectTelnyxMediaStream", security(), tag = "media",
    params(("stream_token" = String, Path, description = "Token from the stream_url we gave Telnyx")),
    responses(
        (status = 101, description = "Switching to the media WebSocket"),
        (status = 401, description = "Invalid or expired stream token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The call does not exist or has ended", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "AssemblyAI is not configured (`provider-disabled`), or the database is busy or unreachable (`database-unavailable`: Telnyx reconnects after `Retry-After`)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "With `database-unavailable`: seconds before reconnecting"))),
    ))]
pub async fn telnyx_stream(
    State(state): State<AppState>,
    Extension(hub): Extension<Arc<Hub>>,
    Path(token): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // When Telnyx connected: a re-attached stream's audio starts here (media::resume).
    let connected_at = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let bound = stream_token::verify(state.config.auth.secret.expose().as_bytes(), &token, now)
        .map_err(|error| ApiError::Unauthorized(format!("Stream token rejected: {error}.")))?;
    let assemblyai = state.assemblyai()?.clone();
    let client = state.db.client().await?;
    // A one-leg call's token names the call; an interpreted call's names one leg. One
    // query for a one-leg call: every stream (re)connecting at once reads here.
    let (call, leg) = match calls::get_unscoped(&client, CallId::from(bound)).await? {
        Some(call) if !call.interpreted => (call, None),
        Some(_) => return Err(ApiError::NotFound),
        None => {
            let leg = legs::get(&client, LegId::from(bound))
                .await?
                .ok_or(ApiError::NotFound)?;
            if leg.status.is_terminal() {
                return Err(ApiError::NotFound);
            }
            let call = calls::get_unscoped(&client, leg.call_id)
                .await?
                .ok_or(ApiError::NotFound)?;
            (call, Some(leg))
        }
    };
    drop(client);
    if call.status.is_terminal() {
        return Err(ApiError::NotFound);
    }
    let call_id = call.id;
    let target = match leg {
        None => bridge::Target::Call(call_id),
        Some(leg) => bridge::Target::Leg(
            Box::new(leg),
            bridge::OriginalAudio::parse(&call.original_audio),
        ),
    };
    let tracker = state.bridges.clone();
    // Small per-socket buffers (`frames::SOCKET_READ_BUFFER`); writes go out as they are made.
    Ok(upgrade
        .read_buffer_size(frames::SOCKET_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(frames::SOCKET_MAX_MESSAGE)
        .on_upgrade(move |socket| {
            tracker.track_future(bridge::run(
                state,
                hub,
                target,
                assemblyai,
                socket,
                connected_at,
            ))
        }))
}
