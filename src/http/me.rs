//! `GET /api/me`: the signed-in user, their organisations and roles, and the active one.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::sessions::User;
use crate::auth::{CredentialSource, CurrentUser, X_ORG_ID, membership_in};
use crate::error::{ApiError, Problem};
use crate::http::extract::Json;
use crate::orgs::Membership;

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    pub expires: DateTime<Utc>,
    pub source: CredentialSource,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub organisations: Vec<Membership>,
    /// `X-Org-Id` when sent (and a membership), else the default: the personal organisation.
    pub active_organisation_id: Option<Uuid>,
    pub session: SessionInfo,
}

/// The caller, their organisations with roles, and the active organisation.
#[utoipa::path(get, path = "/api/me", operation_id = "getMe", tag = "auth",
    params(("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "The signed-in user", body = Me),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "X-Org-Id names an organisation the caller is not in", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn me(user: CurrentUser, headers: axum::http::HeaderMap) -> Result<Json<Me>, ApiError> {
    let active_organisation_id = match headers.get(&X_ORG_ID) {
        Some(value) => {
            let id = value
                .to_str()
                .ok()
                .and_then(|text| Uuid::parse_str(text.trim()).ok())
                .ok_or_else(|| ApiError::BadRequest("X-Org-Id must be a UUID.".into()))?;
            membership_in(&user, id)?;
            Some(id)
        }
        None => user.principal.memberships.first().map(|m| m.id),
    };
    Ok(Json(Me {
        user: user.principal.user.clone(),
        organisations: user.principal.memberships.clone(),
        active_organisation_id,
        session: SessionInfo {
            expires: user.principal.session_expires,
            source: user.source,
        },
    }))
}
