//! The request timeout, per route: `HTTP_REQUEST_TIMEOUT_SECS` for every route except the
//! streamed recording upload and the completion of a direct upload (copies and hashes the
//! object), which get `RECORDINGS_UPLOAD_TIMEOUT_SECS` (a 1 GiB body does not arrive in
//! 30 s). The upload also has an idle limit per body chunk (`RECORDINGS_UPLOAD_IDLE_SECS`),
//! so a stalled client is still cut quickly.
//!
//! Like `tower_http`'s `TimeoutLayer` it bounds the time to the response head (streamed
//! response bodies such as SSE are not cut) and answers a bare 504 that `problems::normalise`
//! turns into problem+json.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Routes (method, template) allowed the long upload timeout.
pub const LONG_UPLOADS: &[(Method, &str)] = &[
    (Method::POST, "/api/recordings"),
    (Method::POST, "/api/recordings/{id}/complete"),
];

pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let long = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|path| {
            LONG_UPLOADS
                .iter()
                .any(|(method, route)| request.method() == method && path.as_str() == *route)
        });
    let limit = if long {
        state.config.recordings.upload_timeout
    } else {
        state.config.http.request_timeout
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => StatusCode::GATEWAY_TIMEOUT.into_response(),
    }
}
