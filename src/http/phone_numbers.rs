//! The organisation's phone numbers: `GET /api/phone-numbers/available`,
//! `POST|GET /api/phone-numbers`, `DELETE /api/phone-numbers/{id}`. Numbers come from the
//! platform's Telnyx account (`calls::provisioning`); an inbound call to one of them is
//! answered, to any other number it is rejected.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::OrgContext;
use crate::calls::provisioning::{self, AvailableQuery, OfferedNumber};
use crate::calls::{self, PhoneNumber, destinations};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Json, Path, Query};
use crate::orgs::Role;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPhoneNumber {
    /// E.164, e.g. `+14155550100`: one `GET /api/phone-numbers/available` offered.
    pub number: String,
    pub label: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AvailableParams {
    /// ISO 3166-1 alpha-2 country, e.g. `US`.
    #[param(example = "US")]
    pub country: String,
    /// NANP area code (3 digits), e.g. `415`.
    pub area_code: Option<String>,
    /// Digits the national number contains (1–10).
    pub contains: Option<String>,
    /// 1–50, default 20.
    pub limit: Option<usize>,
}

fn all_digits(text: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

/// Numbers the organisation can claim now (admins and owners): unassigned numbers the
/// platform's Telnyx account already holds, then numbers Telnyx offers for sale.
#[utoipa::path(get, path = "/api/phone-numbers/available", tag = "phone-numbers",
    operation_id = "searchAvailablePhoneNumbers",
    params(AvailableParams, ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "Claimable numbers, the account's own first", body = Vec<OfferedNumber>),
        (status = 400, description = "A query parameter is missing or malformed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Members cannot add numbers", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown country, or a malformed area code, pattern or limit", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Telnyx refused or failed the search", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Telnyx is not configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn available(
    State(state): State<AppState>,
    org: OrgContext,
    Query(params): Query<AvailableParams>,
) -> Result<Json<Vec<OfferedNumber>>, ApiError> {
    org.require(Role::Admin)?;
    let country = params.country.trim().to_ascii_uppercase();
    let mut problems = Vec::new();
    if !destinations::is_known_country(&country) {
        problems.push("country must be an ISO 3166-1 alpha-2 code like US or GB");
    }
    if let Some(area_code) = &params.area_code
        && !all_digits(area_code, 3..=3)
    {
        problems.push("area_code must be 3 digits");
    }
    if let Some(contains) = &params.contains
        && !all_digits(contains, 1..=10)
    {
        problems.push("contains must be 1 to 10 digits");
    }
    let limit = params.limit.unwrap_or(20);
    if !(1..=50).contains(&limit) {
        problems.push("limit must be between 1 and 50");
    }
    if !problems.is_empty() {
        return Err(ApiError::Unprocessable(problems.join("; ")));
    }
    let query = AvailableQuery {
        country,
        area_code: params.area_code,
        contains: params.contains,
        limit,
    };
    Ok(Json(
        provisioning::search(&state.db, state.telnyx()?, &query).await?,
    ))
}

/// Claim a number for the organisation (admins and owners): one the platform's Telnyx
/// account holds unassigned, or one Telnyx sells (ordered now, onto the platform's
/// connection). Any other number is refused with the same 422, whoever holds it.
#[utoipa::path(post, path = "/api/phone-numbers", tag = "phone-numbers", request_body = NewPhoneNumber,
    operation_id = "claimPhoneNumber",
    params(("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 201, description = "Assigned to the organisation", body = PhoneNumber),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Members cannot add numbers, or the organisation holds `PHONE_NUMBERS_MAX_PER_ORG` numbers (`urn:callbridge:problem:number-limit`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The organisation already holds this number", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an E.164 number, or not available (`urn:callbridge:problem:number-unavailable`)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Telnyx refused or failed the look-up or the order", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Telnyx is not configured", body = Problem, content_type = "application/problem+json"),
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
    let number = provisioning::claim(
        &state.db,
        state.telnyx()?,
        &state.config.telephony,
        org.organisation_id,
        &body.number,
        body.label.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(number)))
}

/// The organisation's numbers.
#[utoipa::path(get, path = "/api/phone-numbers", tag = "phone-numbers",
    operation_id = "listPhoneNumbers",
    params(("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses((status = 200, description = "Numbers", body = Vec<PhoneNumber>)))]
pub async fn list(
    State(state): State<AppState>,
    org: OrgContext,
) -> Result<Json<Vec<PhoneNumber>>, ApiError> {
    let client = state.db.client().await?;
    Ok(Json(
        calls::list_numbers(&client, org.organisation_id).await?,
    ))
}

/// Release a number (admins and owners). It stays in the platform's Telnyx account, free
/// for another organisation to claim.
#[utoipa::path(delete, path = "/api/phone-numbers/{id}", tag = "phone-numbers",
    operation_id = "releasePhoneNumber",
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
    let client = state.db.client().await?;
    if calls::delete_number(&client, org.organisation_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
