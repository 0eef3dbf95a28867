//! Who is calling: Auth.js session resolution, the callers `CurrentUser` / `MaybeUser`, CSRF
//! for cookie sessions, and `OrgContext` (the active organisation and the caller's role).
//! Their extractors, which answer HTTP, are `http::auth`.
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

use axum::http::HeaderName;
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Secret;
use crate::ids::OrgId;
use crate::orgs::Role;
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

/// The organisation a request acts in (`X-Org-Id`, else the caller's stored active
/// organisation, else their personal one) and the caller's role there. Not a member (or no
/// such organisation) is 404: existence is not revealed to outsiders.
#[derive(Debug, Clone)]
pub struct OrgContext {
    pub user: CurrentUser,
    pub organisation_id: OrgId,
    pub role: Role,
}

impl OrgContext {
    /// Refused (403) unless the caller's role is at least `minimum`.
    pub fn require(&self, minimum: Role) -> Result<(), RoleTooLow> {
        if self.role >= minimum {
            Ok(())
        } else {
            Err(RoleTooLow(minimum))
        }
    }
}

/// The caller's role needed for an action is not theirs.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("This needs the {} role in the organisation.", .0.as_str())]
pub struct RoleTooLow(pub Role);

/// The caller's role in `organisation_id`; `None` when not a member (answered 404:
/// existence is not revealed).
pub fn membership_in(user: &CurrentUser, organisation_id: OrgId) -> Option<Role> {
    user.principal
        .memberships
        .iter()
        .find(|m| m.id == organisation_id)
        .map(|m| m.role)
}

/// The query parameter naming the organisation on routes a browser opens without custom
/// headers (`EventSource`, media elements, links): see [`BrowserOrgContext`].
pub const ORG_QUERY_PARAMETER: &str = "org_id";

/// [`OrgContext`] for routes a browser opens without custom headers (`EventSource`, a
/// media element's `src`, a download link): the organisation may also be named by the
/// `org_id` query parameter. A header and a parameter that disagree are a 400.
#[derive(Debug, Clone)]
pub struct BrowserOrgContext(pub OrgContext);
