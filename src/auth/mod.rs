//! Who is calling: Auth.js session resolution, the `CurrentUser` / `MaybeUser` extractors,
//! CSRF for cookie sessions, and `OrgContext` (the active organisation and the caller's role).
//!
//! `MaybeUser` exists because `Option<CurrentUser>` would turn a *malformed* credential into
//! "anonymous"; here a malformed credential is always a 401.

mod cache;
pub mod credential;
pub mod csrf;
pub mod debug_access;
pub mod migrate_tokens;
pub mod recheck;
pub mod sessions;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderName;
use axum::http::request::Parts;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::Secret;
use crate::error::ApiError;
use crate::orgs::Role;
use crate::state::AppState;
use credential::Credential;
pub use sessions::{Principal, SessionResolver, StoredForm};

pub static X_ORG_ID: HeaderName = HeaderName::from_static("x-org-id");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialSource {
    Cookie,
    Bearer,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub principal: Arc<Principal>,
    pub source: CredentialSource,
    /// The cookie the session came from, when it came from one.
    pub cookie_name: Option<String>,
    pub cache_hit: bool,
    /// The presented token: long-lived streams re-validate it (`recheck`).
    pub token: Secret<String>,
}

impl CurrentUser {
    pub fn id(&self) -> &str {
        &self.principal.user.id
    }
}

/// An optional caller: `None` without a credential or with an unknown/expired one, but a
/// malformed credential is still rejected.
#[derive(Debug, Clone)]
pub struct MaybeUser(pub Option<CurrentUser>);

enum Outcome {
    Anonymous,
    NotFound,
    User(CurrentUser),
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Outcome, ApiError> {
    let credential = credential::from_headers(&parts.headers, &state.config.auth.cookie_names)
        .map_err(|malformed| {
            ApiError::Unauthorized(format!("Malformed credential: {malformed}."))
        })?;
    let Some(credential) = credential else {
        return Ok(Outcome::Anonymous);
    };
    let resolved = state
        .sessions
        .resolve(credential.token())
        .await
        .map_err(ApiError::internal)?;
    let Some(resolved) = resolved else {
        return Ok(Outcome::NotFound);
    };
    if credential.is_cookie() && csrf::is_unsafe(&parts.method) {
        csrf::check(&parts.headers, &state.config.http.allowed_origins).map_err(|refused| {
            ApiError::Forbidden(format!("Cross-site request refused: {refused}."))
        })?;
    }
    let token = Secret::new(credential.token().to_owned());
    let (source, cookie_name) = match credential {
        Credential::Bearer(_) => (CredentialSource::Bearer, None),
        Credential::Cookie { name, .. } => (CredentialSource::Cookie, Some(name)),
    };
    Ok(Outcome::User(CurrentUser {
        principal: resolved.principal,
        source,
        cookie_name,
        cache_hit: resolved.cache_hit,
        token,
    }))
}

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(user) = parts.extensions.get::<CurrentUser>() {
            return Ok(MaybeUser(Some(user.clone())));
        }
        match authenticate(parts, state).await? {
            Outcome::User(user) => {
                parts.extensions.insert(user.clone());
                Ok(MaybeUser(Some(user)))
            }
            Outcome::Anonymous | Outcome::NotFound => Ok(MaybeUser(None)),
        }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(user) = parts.extensions.get::<CurrentUser>() {
            return Ok(user.clone());
        }
        match authenticate(parts, state).await? {
            Outcome::User(user) => {
                parts.extensions.insert(user.clone());
                Ok(user)
            }
            Outcome::Anonymous => Err(ApiError::Unauthorized(
                "Sign in first: no session cookie or bearer token was sent.".into(),
            )),
            Outcome::NotFound => Err(ApiError::Unauthorized(
                "The session is unknown, expired or signed out.".into(),
            )),
        }
    }
}

/// The organisation a request acts in (`X-Org-Id`, else the caller's stored active
/// organisation, else their personal one) and the caller's role there. Not a member (or no
/// such organisation) is 404: existence is not revealed to outsiders.
#[derive(Debug, Clone)]
pub struct OrgContext {
    pub user: CurrentUser,
    pub organisation_id: Uuid,
    pub role: Role,
}

impl OrgContext {
    /// 403 unless the caller's role is at least `minimum`.
    pub fn require(&self, minimum: Role) -> Result<(), ApiError> {
        if self.role >= minimum {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "This needs the {} role in the organisation.",
                minimum.as_str()
            )))
        }
    }
}

/// Finds `organisation_id` among the caller's memberships.
pub fn membership_in(user: &CurrentUser, organisation_id: Uuid) -> Result<Role, ApiError> {
    user.principal
        .memberships
        .iter()
        .find(|m| m.id == organisation_id)
        .map(|m| m.role)
        .ok_or(ApiError::NotFound)
}

/// The query parameter naming the organisation on routes a browser opens without custom
/// headers (`EventSource`, media elements, links): see [`BrowserOrgContext`].
pub const ORG_QUERY_PARAMETER: &str = "org_id";

fn parse_org_id(text: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text.trim())
        .map_err(|_| ApiError::BadRequest(format!("{what} must be an organisation id (a UUID).")))
}

/// `org_id` from the query string, if present (the last one wins, as serde's would).
fn org_id_from_query(parts: &Parts) -> Option<String> {
    let query = parts.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == ORG_QUERY_PARAMETER)
        .map(|(_, value)| value.into_owned())
        .last()
}

/// Header, then (when `allow_query`) the `org_id` parameter, then the stored active
/// organisation, then the personal one.
async fn org_context(
    parts: &mut Parts,
    state: &AppState,
    allow_query: bool,
) -> Result<OrgContext, ApiError> {
    let user = CurrentUser::from_request_parts(parts, state).await?;
    let from_header = match parts.headers.get(&X_ORG_ID) {
        Some(value) => Some(parse_org_id(value.to_str().unwrap_or(""), "X-Org-Id")?),
        None => None,
    };
    let from_query = match allow_query.then(|| org_id_from_query(parts)).flatten() {
        Some(text) => Some(parse_org_id(&text, ORG_QUERY_PARAMETER)?),
        None => None,
    };
    let organisation_id = match (from_header, from_query) {
        (Some(header), Some(query)) if header != query => {
            return Err(ApiError::BadRequest(
                "X-Org-Id and org_id name different organisations.".into(),
            ));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => user
            .principal
            .default_organisation()
            .ok_or_else(|| ApiError::Forbidden("You belong to no organisation.".into()))?,
    };
    let role = membership_in(&user, organisation_id)?;
    Ok(OrgContext {
        user,
        organisation_id,
        role,
    })
}

impl FromRequestParts<AppState> for OrgContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        org_context(parts, state, false).await
    }
}

/// [`OrgContext`] for routes a browser opens without custom headers (`EventSource`, a
/// media element's `src`, a download link): the organisation may also be named by the
/// `org_id` query parameter. A header and a parameter that disagree are a 400.
#[derive(Debug, Clone)]
pub struct BrowserOrgContext(pub OrgContext);

impl FromRequestParts<AppState> for BrowserOrgContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        org_context(parts, state, true).await.map(BrowserOrgContext)
    }
}
