//! `GET /api/me`: the signed-in user, their organisations and roles, and the active one;
//! `PUT /api/me/active-organisation`: choose the active one (stored, used when a request
//! names none).

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::sessions::User;
use crate::auth::{CredentialSource, CurrentUser, X_ORG_ID, membership_in};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Json;
use crate::ids::OrgId;
use crate::orgs::{self, Membership};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub expires: DateTime<Utc>,
    pub source: CredentialSource,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub organisations: Vec<Membership>,
    /// `X-Org-Id` when sent (and a membership), else the stored active organisation, else
    /// the personal one: where a request that names no organisation acts.
    #[schema(value_type = Option<Uuid>)]
    pub active_organisation_id: Option<OrgId>,
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
                .and_then(|text| text.trim().parse::<OrgId>().ok())
                .ok_or_else(|| ApiError::BadRequest("X-Org-Id must be a UUID.".into()))?;
            membership_in(&user, id).ok_or(ApiError::NotFound)?;
            Some(id)
        }
        None => user.principal.default_organisation(),
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveOrganisationRequest {
    /// One of the caller's organisations.
    #[schema(value_type = Uuid)]
    pub organisation_id: OrgId,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActiveOrganisation {
    #[schema(value_type = Uuid)]
    pub active_organisation_id: OrgId,
}

/// Stores the organisation requests act in when they name none (no `X-Org-Id`, no `org_id`):
/// what an `EventSource`, a WebSocket or a link uses. Kept across sessions and devices.
#[utoipa::path(put, path = "/api/me/active-organisation", operation_id = "setActiveOrganisation", tag = "auth",
    request_body = ActiveOrganisationRequest,
    responses(
        (status = 200, description = "Stored", body = ActiveOrganisation),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Cookie session from a disallowed origin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not one of the caller's organisations", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "organisation_id missing or not a UUID", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn set_active_organisation(
    State(state): State<AppState>,
    user: CurrentUser,
    Json(body): Json<ActiveOrganisationRequest>,
) -> Result<Json<ActiveOrganisation>, ApiError> {
    membership_in(&user, body.organisation_id).ok_or(ApiError::NotFound)?;
    let client = state.db.client().await?;
    let stored = orgs::set_active_organisation(&client, user.id(), body.organisation_id).await?;
    if !stored {
        // The membership went away after this replica cached the session.
        state.sessions.forget_user(user.id());
        return Err(ApiError::NotFound);
    }
    // This replica sees the choice at once; others within the session cache TTL.
    state.sessions.forget_user(user.id());
    Ok(Json(ActiveOrganisation {
        active_organisation_id: body.organisation_id,
    }))
}
