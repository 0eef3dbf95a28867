//! The request extractors of `auth`'s callers: [`CurrentUser`], [`MaybeUser`], [`OrgContext`]
//! and [`BrowserOrgContext`], from the session credential, the CSRF check and the organisation
//! a request names (docs/ARCHITECTURE.md, "Auth").

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::auth::credential::{self, Credential};
use crate::auth::{
    BrowserOrgContext, CredentialSource, CurrentUser, MaybeUser, ORG_QUERY_PARAMETER, OrgContext,
    RoleTooLow, X_ORG_ID, csrf, membership_in,
};
use crate::config::Secret;
use crate::http::error::ApiError;
use crate::state::AppState;

impl From<RoleTooLow> for ApiError {
    fn from(refused: RoleTooLow) -> Self {
        ApiError::Forbidden(refused.to_string())
    }
}

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
    let resolved = state.sessions.resolve(credential.token()).await?;
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
    let role = membership_in(&user, organisation_id).ok_or(ApiError::NotFound)?;
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

impl FromRequestParts<AppState> for BrowserOrgContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        org_context(parts, state, true).await.map(BrowserOrgContext)
    }
}
