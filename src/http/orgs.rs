//! Organisations and their members: `POST /api/orgs`, `GET|DELETE /api/orgs/{id}/members`.
//! Members join by invitation only (`http::invitations`).
//!
//! Roles are read from the database here (not the session cache), so a just-removed admin
//! cannot manage members during the cache window. Outsiders get 404 for every organisation.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::CurrentUser;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Json, Path, Query};
use crate::ids::OrgId;
use crate::orgs::{self, Member, Membership, RemoveOutcome, Role};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrganisation {
    /// 1–200 characters.
    pub name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MemberQuery {
    /// The member to remove (alternative to the path form).
    pub user_id: String,
}

pub(super) async fn caller_role(
    state: &AppState,
    organisation_id: OrgId,
    user_id: &str,
) -> Result<Role, ApiError> {
    let client = state.db.client().await?;
    orgs::role_of(&client, organisation_id, user_id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// Create an organisation; the caller becomes its owner.
#[utoipa::path(post, path = "/api/orgs", operation_id = "createOrganisation", tag = "organisations", request_body = NewOrganisation,
    responses(
        (status = 201, description = "Created; the caller is owner", body = Membership),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Cross-site request refused", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    Json(body): Json<NewOrganisation>,
) -> Result<(StatusCode, Json<Membership>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::Unprocessable(
            "name must be 1 to 200 characters".into(),
        ));
    }
    let mut client = state.db.client().await?;
    let membership = orgs::create_organisation(&mut client, user.id(), name).await?;
    state.sessions.forget_user(user.id());
    Ok((StatusCode::CREATED, Json(membership)))
}

/// Members of an organisation the caller belongs to.
#[utoipa::path(get, path = "/api/orgs/{id}/members", operation_id = "listMembers", tag = "organisations",
    params(("id" = Uuid, Path, description = "Organisation id")),
    responses(
        (status = 200, description = "Members with their roles", body = Vec<Member>),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organisation, or not a member", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_members(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(organisation_id): Path<OrgId>,
) -> Result<Json<Vec<Member>>, ApiError> {
    caller_role(&state, organisation_id, user.id()).await?;
    let client = state.db.client().await?;
    let members = orgs::members(&client, &state.config.auth.schema, organisation_id).await?;
    Ok(Json(members))
}

async fn remove(
    state: &AppState,
    user: &CurrentUser,
    organisation_id: OrgId,
    target: &str,
) -> Result<StatusCode, ApiError> {
    let role = caller_role(state, organisation_id, user.id()).await?;
    if target != user.id() {
        let client = state.db.client().await?;
        let target_role = orgs::role_of(&client, organisation_id, target)
            .await?
            .ok_or(ApiError::NotFound)?;
        if !role.may_assign(target_role) {
            return Err(ApiError::Forbidden(format!(
                "A {} cannot remove a {}.",
                role.as_str(),
                target_role.as_str()
            )));
        }
    }
    let mut client = state.db.client().await?;
    match orgs::remove_member(&mut client, organisation_id, target).await? {
        RemoveOutcome::LastOwner => Err(ApiError::Conflict(
            "the last owner cannot leave; make someone else owner first".into(),
        )),
        RemoveOutcome::NotMember => Err(ApiError::NotFound),
        RemoveOutcome::Removed => {
            state.sessions.forget_user(target);
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// Remove a member (or leave, when it is the caller). Admins remove members; owners anyone.
#[utoipa::path(delete, path = "/api/orgs/{id}/members/{user_id}", operation_id = "removeMember", tag = "organisations",
    params(("id" = Uuid, Path, description = "Organisation id"), ("user_id" = String, Path, description = "Member to remove")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "The caller's role may not remove this member", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organisation or member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Would leave the organisation without an owner", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn remove_member(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((organisation_id, target)): Path<(OrgId, String)>,
) -> Result<StatusCode, ApiError> {
    remove(&state, &user, organisation_id, &target).await
}

/// The same as the path form, for clients that address the collection.
#[utoipa::path(delete, path = "/api/orgs/{id}/members", operation_id = "removeMemberByQuery", tag = "organisations",
    params(("id" = Uuid, Path, description = "Organisation id"), MemberQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "The caller's role may not remove this member", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organisation or member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Would leave the organisation without an owner", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn remove_member_by_query(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(organisation_id): Path<OrgId>,
    Query(query): Query<MemberQuery>,
) -> Result<StatusCode, ApiError> {
    remove(&state, &user, organisation_id, &query.user_id).await
}
