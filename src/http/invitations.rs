//! Invitations over HTTP: admins invite, list and revoke under `/api/orgs/{id}/invitations`;
//! the invitee lists, accepts and declines under `/api/invitations`. The rules are in
//! `orgs::invitations` (docs/adr/0032-membership-by-invitation.md).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::orgs::caller_role;
use crate::auth::CurrentUser;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Json, Path};
use crate::ids::OrgId;
use crate::orgs::invitations::{
    self, Answered, Invitation, InviteRefused, IssuedInvitation, ReceivedInvitation,
};
use crate::orgs::{Membership, Role};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    /// The invitee's email address (3–320 characters). Whether it has an account here is
    /// neither checked nor revealed.
    pub email: String,
    /// The role on accepting: admins invite members; owners any role.
    #[serde(default = "default_role")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::Member
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationAnswer {
    /// The token from the invitation email; needed when the caller's email is not verified.
    pub token: Option<String>,
}

/// Invite an email address into the organisation. The answer is the same whether the address
/// has an account or not; the token is shown only here.
#[utoipa::path(post, path = "/api/orgs/{id}/invitations", operation_id = "createInvitation", tag = "organisations", request_body = NewInvitation,
    params(("id" = Uuid, Path, description = "Organisation id")),
    responses(
        (status = 201, description = "Invited (or the pending invitation renewed)", body = IssuedInvitation),
        (status = 403, description = "The caller's role may not grant this role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organisation, or not a member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many pending invitations", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an email address", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(organisation_id): Path<OrgId>,
    Json(body): Json<NewInvitation>,
) -> Result<(StatusCode, Json<IssuedInvitation>), ApiError> {
    let role = caller_role(&state, organisation_id, user.id()).await?;
    if !role.may_assign(body.role) {
        return Err(ApiError::Forbidden(format!(
            "A {} cannot invite a {}.",
            role.as_str(),
            body.role.as_str()
        )));
    }
    let mut client = state.db.client().await?;
    match invitations::invite(
        &mut client,
        organisation_id,
        user.id(),
        &body.email,
        body.role,
    )
    .await?
    {
        Ok(issued) => Ok((StatusCode::CREATED, Json(issued))),
        Err(refused @ InviteRefused::InvalidEmail) => Err(ApiError::InvalidField {
            field: "/email".into(),
            detail: refused.to_string(),
        }),
        Err(refused @ InviteRefused::TooManyPending) => {
            Err(ApiError::Conflict(refused.to_string()))
        }
    }
}

/// Pending invitations of the organisation (admins and owners).
#[utoipa::path(get, path = "/api/orgs/{id}/invitations", operation_id = "listInvitations", tag = "organisations",
    params(("id" = Uuid, Path, description = "Organisation id")),
    responses(
        (status = 200, description = "Pending invitations, oldest first", body = Vec<Invitation>),
        (status = 403, description = "Members may not see invitations", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organisation, or not a member", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(organisation_id): Path<OrgId>,
) -> Result<Json<Vec<Invitation>>, ApiError> {
    let role = caller_role(&state, organisation_id, user.id()).await?;
    if role < Role::Admin {
        return Err(ApiError::Forbidden(
            "Only admins and owners see invitations.".into(),
        ));
    }
    let client = state.db.client().await?;
    let pending = invitations::pending(&client, organisation_id).await?;
    Ok(Json(pending))
}

/// Withdraw a pending invitation (admins and owners).
#[utoipa::path(delete, path = "/api/orgs/{id}/invitations/{invitation_id}", operation_id = "revokeInvitation", tag = "organisations",
    params(("id" = Uuid, Path, description = "Organisation id"), ("invitation_id" = Uuid, Path, description = "Invitation id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Members may not revoke invitations", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organisation or pending invitation", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((organisation_id, invitation_id)): Path<(OrgId, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let role = caller_role(&state, organisation_id, user.id()).await?;
    if role < Role::Admin {
        return Err(ApiError::Forbidden(
            "Only admins and owners revoke invitations.".into(),
        ));
    }
    let client = state.db.client().await?;
    if invitations::revoke(&client, organisation_id, invitation_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

/// Invitations addressed to the caller's verified email address.
#[utoipa::path(get, path = "/api/invitations", operation_id = "listMyInvitations", tag = "organisations",
    responses(
        (status = 200, description = "Pending invitations to the caller's verified email (none when it is not verified)", body = Vec<ReceivedInvitation>),
    ))]
pub async fn received(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<ReceivedInvitation>>, ApiError> {
    let client = state.db.client().await?;
    let received = invitations::received(&client, &state.config.auth.schema, user.id()).await?;
    Ok(Json(received))
}

async fn answer(
    state: &AppState,
    user: &CurrentUser,
    invitation_id: Uuid,
    body: InvitationAnswer,
    accept: bool,
) -> Result<Answered, ApiError> {
    let mut client = state.db.client().await?;
    let answered = invitations::answer(
        &mut client,
        &state.config.auth.schema,
        user.id(),
        invitation_id,
        body.token.as_deref(),
        accept,
    )
    .await?;
    if matches!(answered, Answered::Accepted(_)) {
        // The new membership counts at once on this replica.
        state.sessions.forget_user(user.id());
    }
    Ok(answered)
}

/// Accept an invitation: the caller joins with its role. Their default organisation does not
/// change.
#[utoipa::path(post, path = "/api/invitations/{id}/accept", operation_id = "acceptInvitation", tag = "organisations", request_body = InvitationAnswer,
    params(("id" = Uuid, Path, description = "Invitation id")),
    responses(
        (status = 200, description = "Joined; the organisation as the new member sees it", body = Membership),
        (status = 404, description = "No such pending invitation for the caller (or a wrong token)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already a member (the invitation is used up)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn accept(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(invitation_id): Path<Uuid>,
    Json(body): Json<InvitationAnswer>,
) -> Result<Json<Membership>, ApiError> {
    match answer(&state, &user, invitation_id, body, true).await? {
        Answered::Accepted(membership) => Ok(Json(membership)),
        Answered::AlreadyMember => Err(ApiError::Conflict("already a member".into())),
        Answered::Declined | Answered::NotFound => Err(ApiError::NotFound),
    }
}

/// Decline an invitation.
#[utoipa::path(post, path = "/api/invitations/{id}/decline", operation_id = "declineInvitation", tag = "organisations", request_body = InvitationAnswer,
    params(("id" = Uuid, Path, description = "Invitation id")),
    responses(
        (status = 204, description = "Declined"),
        (status = 404, description = "No such pending invitation for the caller (or a wrong token)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn decline(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(invitation_id): Path<Uuid>,
    Json(body): Json<InvitationAnswer>,
) -> Result<StatusCode, ApiError> {
    match answer(&state, &user, invitation_id, body, false).await? {
        Answered::Declined => Ok(StatusCode::NO_CONTENT),
        Answered::Accepted(_) | Answered::AlreadyMember | Answered::NotFound => {
            Err(ApiError::NotFound)
        }
    }
}
