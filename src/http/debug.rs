//! `/internal/debug/*`: diagnostics for operators. Not registered at all in production (404);
//! elsewhere every call needs a Cloudflare Access JWT or a short-lived debug token.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::credential::{self, Credential};
use crate::auth::debug_access::{self, Denied};
use crate::auth::sessions::User;
use crate::auth::{CredentialSource, StoredForm};
use crate::config::TokenStorage;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Json;
use crate::orgs::Membership;
use crate::state::AppState;

const ACCESS_HEADER: &str = "cf-access-jwt-assertion";
const DEBUG_TOKEN_HEADER: &str = "x-debug-token";

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Proof that the caller may use debug endpoints; names who they are.
pub struct DebugAccess(pub String);

impl FromRequestParts<AppState> for DebugAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let deny =
            |denied: Denied| ApiError::Unauthorized(format!("Debug access refused: {denied}."));
        if let Some(token) = parts.headers.get(DEBUG_TOKEN_HEADER) {
            let token = token.to_str().map_err(|_| deny(Denied::MalformedToken))?;
            debug_access::verify_debug_token(
                state.config.auth.secret.expose().as_bytes(),
                token,
                now_unix(),
            )
            .map_err(deny)?;
            return Ok(DebugAccess("debug-token".into()));
        }
        if let Some(jwt) = parts.headers.get(ACCESS_HEADER) {
            let verifier = state
                .access
                .as_ref()
                .ok_or_else(|| deny(Denied::AccessNotConfigured))?;
            let jwt = jwt.to_str().map_err(|_| deny(Denied::MalformedJwt))?;
            let who = verifier.verify(jwt, now_unix()).await.map_err(deny)?;
            return Ok(DebugAccess(who));
        }
        Err(deny(Denied::Missing))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialReport {
    pub present: bool,
    pub source: Option<CredentialSource>,
    pub cookie_name: Option<String>,
    /// Why the credential was rejected as malformed, if it was.
    pub malformed: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionReport {
    /// Who is using the debug endpoint (Access email, or `debug-token`).
    pub debug_caller: String,
    pub credential: CredentialReport,
    pub token_storage: TokenStorage,
    pub resolved: bool,
    /// Which stored form matched (raw or hashed), when resolved.
    pub stored_form: Option<StoredForm>,
    pub cache_hit: Option<bool>,
    /// The revocation delay: how long a deleted session may keep working.
    pub cache_ttl_secs: u64,
    pub user: Option<User>,
    #[serde(serialize_with = "crate::timestamps::option::serialize")]
    pub session_expires: Option<DateTime<Utc>>,
    pub organisations: Vec<Membership>,
}

/// How this request's session was (or was not) resolved. Never echoes the token.
#[utoipa::path(get, path = "/internal/debug/session", operation_id = "debugSession", tag = "internal",
    security(("debugToken" = []), ("cloudflareAccess" = [])),
    responses(
        (status = 200, description = "The resolution report", body = SessionReport),
        (status = 401, description = "No valid debug access", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn session(
    State(state): State<AppState>,
    DebugAccess(debug_caller): DebugAccess,
    headers: HeaderMap,
) -> Result<Json<SessionReport>, ApiError> {
    let mut report = SessionReport {
        debug_caller,
        credential: CredentialReport {
            present: false,
            source: None,
            cookie_name: None,
            malformed: None,
        },
        token_storage: state.sessions.storage(),
        resolved: false,
        stored_form: None,
        cache_hit: None,
        cache_ttl_secs: state.sessions.cache_ttl().as_secs(),
        user: None,
        session_expires: None,
        organisations: Vec::new(),
    };
    let credential = match credential::from_headers(&headers, &state.config.auth.cookie_names) {
        Ok(credential) => credential,
        Err(malformed) => {
            report.credential.present = true;
            report.credential.malformed = Some(malformed.to_string());
            return Ok(Json(report));
        }
    };
    let Some(credential) = credential else {
        return Ok(Json(report));
    };
    report.credential.present = true;
    match &credential {
        Credential::Bearer(_) => report.credential.source = Some(CredentialSource::Bearer),
        Credential::Cookie { name, .. } => {
            report.credential.source = Some(CredentialSource::Cookie);
            report.credential.cookie_name = Some(name.clone());
        }
    }
    if let Some(resolved) = state.sessions.resolve(credential.token()).await? {
        let principal = &resolved.principal;
        report.resolved = true;
        report.stored_form = Some(principal.stored_form);
        report.cache_hit = Some(resolved.cache_hit);
        report.user = Some(principal.user.clone());
        report.session_expires = Some(principal.session_expires);
        report.organisations = principal.memberships.clone();
    }
    Ok(Json(report))
}
