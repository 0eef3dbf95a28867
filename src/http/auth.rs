//! The request extractors of `auth`'s callers: [`CurrentUser`], [`MaybeUser`], [`OrgContext`]
//! and [`BrowserOrgContext`], from the session credential, the CSRF check and the organisation
//! a request names (docs/ARCHITECTURE.md, "Auth").

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::auth::credential::{self, Credential};
use crate::auth::sessions::{Resolved, Rider};
use crate::auth::{
    BrowserOrgContext, CredentialSource, CurrentUser, MaybeUser, ORG_QUERY_PARAMETER, OrgContext,
    RoleTooLow, X_ORG_ID, csrf, membership_in,
};
use crate::config::Secret;
use crate::http::error::ApiError;
use crate::ids::OrgId;
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
        csrf::check(&parts.headers, &state.config.http.allowed_origins).map_err(csrf_refused)?;
    }
    Ok(Outcome::User(current_user(credential, &resolved)))
}

fn current_user(credential: Credential, resolved: &Resolved) -> CurrentUser {
    let token = Secret::new(credential.token().to_owned());
    let (source, cookie_name) = match credential {
        Credential::Bearer(_) => (CredentialSource::Bearer, None),
        Credential::Cookie { name, .. } => (CredentialSource::Cookie, Some(name)),
    };
    CurrentUser {
        principal: resolved.principal.clone(),
        source,
        cookie_name,
        cache_hit: resolved.cache_hit,
        token,
    }
}

fn sign_in_first() -> ApiError {
    ApiError::Unauthorized("Sign in first: no session cookie or bearer token was sent.".into())
}

fn session_unknown() -> ApiError {
    ApiError::Unauthorized("The session is unknown, expired or signed out.".into())
}

fn csrf_refused(refused: &str) -> ApiError {
    ApiError::Forbidden(format!("Cross-site request refused: {refused}."))
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
            Outcome::Anonymous => Err(sign_in_first()),
            Outcome::NotFound => Err(session_unknown()),
        }
    }
}

fn parse_org_id(text: &str, what: &str) -> Result<OrgId, ApiError> {
    text.trim()
        .parse::<OrgId>()
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
    let from_header = org_id_from_header(parts)?;
    let from_query = match allow_query.then(|| org_id_from_query(parts)).flatten() {
        Some(text) => Some(parse_org_id(&text, ORG_QUERY_PARAMETER)?),
        None => None,
    };
    choose_organisation(user, from_header, from_query)
}

fn org_id_from_header(parts: &Parts) -> Result<Option<OrgId>, ApiError> {
    match parts.headers.get(&X_ORG_ID) {
        Some(value) => Ok(Some(parse_org_id(
            value.to_str().unwrap_or(""),
            "X-Org-Id",
        )?)),
        None => Ok(None),
    }
}

/// The organisation named (header, then query), else the user's default; the caller must
/// be a member (else 404).
fn choose_organisation(
    user: CurrentUser,
    from_header: Option<OrgId>,
    from_query: Option<OrgId>,
) -> Result<OrgContext, ApiError> {
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

/// What a request presents (its credential, the organisation its `X-Org-Id` names and the
/// CSRF verdict), read from its headers without the database: for a handler whose first
/// query can ride on the session lookup, so that a request whose session is not cached is
/// still one round trip to PostgreSQL ([`Caller::org_context_riding`]). Errors come in the
/// same order as [`OrgContext`]'s.
pub struct Caller {
    credential: Option<Credential>,
    named: Result<Option<OrgId>, ApiError>,
    csrf_refusal: Option<&'static str>,
    known: Option<CurrentUser>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let named = org_id_from_header(parts);
        if let Some(user) = parts.extensions.get::<CurrentUser>() {
            return Ok(Caller {
                credential: None,
                named,
                csrf_refusal: None,
                known: Some(user.clone()),
            });
        }
        let credential = credential::from_headers(&parts.headers, &state.config.auth.cookie_names)
            .map_err(|malformed| {
                ApiError::Unauthorized(format!("Malformed credential: {malformed}."))
            })?;
        let csrf_refusal = match &credential {
            Some(credential) if credential.is_cookie() && csrf::is_unsafe(&parts.method) => {
                csrf::check(&parts.headers, &state.config.http.allowed_origins).err()
            }
            _ => None,
        };
        Ok(Caller {
            credential,
            named,
            csrf_refusal,
            known: None,
        })
    }
}

impl Caller {
    /// The [`OrgContext`] and, when the session was not cached, `rider`'s answer for that
    /// organisation from the same statement; `None` when the handler must run its query
    /// itself (a cache hit, or the statement chose another organisation).
    pub async fn org_context_riding<R: Rider>(
        self,
        state: &AppState,
        rider: Option<&R>,
    ) -> Result<(OrgContext, Option<R::Output>), ApiError> {
        let (user, ridden) = match self.known {
            Some(user) => (user, None),
            None => {
                let credential = self.credential.ok_or_else(sign_in_first)?;
                let named = self.named.as_ref().ok().copied().flatten();
                let (resolved, ridden) = match rider {
                    Some(rider) => state
                        .sessions
                        .resolve_riding(credential.token(), named, rider)
                        .await?
                        .ok_or_else(session_unknown)?,
                    None => (
                        state
                            .sessions
                            .resolve(credential.token())
                            .await?
                            .ok_or_else(session_unknown)?,
                        None,
                    ),
                };
                if let Some(refused) = self.csrf_refusal {
                    return Err(csrf_refused(refused));
                }
                (current_user(credential, &resolved), ridden)
            }
        };
        let org = choose_organisation(user, self.named?, None)?;
        let output = ridden
            .filter(|ridden| ridden.organisation_id == org.organisation_id)
            .map(|ridden| ridden.output);
        Ok((org, output))
    }
}
