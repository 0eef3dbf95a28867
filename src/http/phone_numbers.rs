//! The organisation's phone numbers: `POST|GET /api/phone-numbers`, `DELETE /api/phone-numbers/{id}`.
//! An inbound call to one of them is answered; to any other number it is rejected.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::OrgContext;
use crate::calls::{self, PhoneNumber};
use crate::error::{ApiError, Problem};
use crate::http::extract::{Json, Path};
use crate::orgs::Role;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPhoneNumber {
    /// E.164, e.g. `+14155550100`.
    pub number: String,
    pub label: Option<String>,
}

/// Claim a number for the organisation (admins and owners).
#[utoipa::path(post, path = "/api/phone-numbers", operation_id = "createPhoneNumber", tag = "phone-numbers", request_body = NewPhoneNumber,
    params(("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 201, description = "Added", body = PhoneNumber),
        (status = 403, description = "Members cannot add numbers", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The number is already registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an E.164 number", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    org: OrgContext,
    Json(body): Json<NewPhoneNumber>,
) -> Result<(StatusCode, Json<PhoneNumber>), ApiError> {
    org.require(Role::Admin)?;
    if !calls::is_e164(&body.number) {
        return Err(ApiError::Unprocessable(
            "number must be E.164, like +14155550100".into(),
        ));
    }
    if body
        .label
        .as_deref()
        .is_some_and(|l| l.chars().count() > 100)
    {
        return Err(ApiError::Unprocessable(
            "label must be at most 100 characters".into(),
        ));
    }
    let client = state.db.client().await.map_err(ApiError::internal)?;
    calls::add_number(
        &**client,
        org.organisation_id,
        &body.number,
        body.label.as_deref(),
    )
    .await
    .map_err(ApiError::internal)?
    .map(|number| (StatusCode::CREATED, Json(number)))
    .ok_or_else(|| ApiError::Conflict("that number is already registered".into()))
}

/// The organisation's numbers.
#[utoipa::path(get, path = "/api/phone-numbers", operation_id = "listPhoneNumbers", tag = "phone-numbers",
    params(("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses((status = 200, description = "Numbers", body = Vec<PhoneNumber>)))]
pub async fn list(
    State(state): State<AppState>,
    org: OrgContext,
) -> Result<Json<Vec<PhoneNumber>>, ApiError> {
    let client = state.db.client().await.map_err(ApiError::internal)?;
    Ok(Json(
        calls::list_numbers(&**client, org.organisation_id)
            .await
            .map_err(ApiError::internal)?,
    ))
}

/// Release a number (admins and owners).
#[utoipa::path(delete, path = "/api/phone-numbers/{id}", operation_id = "deletePhoneNumber", tag = "phone-numbers",
    params(("id" = Uuid, Path, description = "Phone number id"), ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Members cannot remove numbers", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such number in this organisation", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    org.require(Role::Admin)?;
    let client = state.db.client().await.map_err(ApiError::internal)?;
    if calls::delete_number(&**client, org.organisation_id, id)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
