//! An organisation's dialing policy: `GET|PUT /api/orgs/{id}/dialing-policy` — the countries
//! it may call, the least role that may dial, and the platform's caps (read-only). Enforced
//! by `calls::guard` on every dial.
//!
//! Members read it; only owners change it (opening a country is a toll-fraud decision).
//! Roles are read from the database, not the session cache.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::CurrentUser;
use crate::calls::{destinations, guard};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Json, Path};
use crate::ids::OrgId;
use crate::orgs::{self, Role};
use crate::state::AppState;

/// The platform's caps, the same for every organisation (configuration).
#[derive(Debug, Serialize, ToSchema)]
pub struct DialLimits {
    pub max_concurrent_calls_per_org: i64,
    pub max_concurrent_calls_per_user: i64,
    pub max_calls_per_minute_per_org: i64,
    pub max_calls_per_minute_per_user: i64,
    /// Calls are hung up this long after they were placed (a spoken warning a minute before).
    pub max_call_duration_secs: u64,
    pub max_phone_numbers_per_org: i64,
    /// When set, no organisation may call outside these countries.
    pub platform_countries: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DialingPolicy {
    /// The organisation's own allow-list (ISO 3166-1 alpha-2); `null`: the countries of its
    /// phone numbers.
    pub allowed_countries: Option<Vec<String>>,
    /// The countries dials may reach now: the list (or the numbers' countries), narrowed to
    /// the platform's countries when those are set.
    pub effective_countries: Vec<String>,
    /// The least role that may place calls.
    pub min_role: Role,
    pub limits: DialLimits,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DialingPolicyUpdate {
    /// ISO 3166-1 alpha-2 codes, at most 250; `null` or absent: the countries of the
    /// organisation's phone numbers.
    #[serde(default)]
    pub allowed_countries: Option<Vec<String>>,
    /// The least role that may place calls.
    pub min_role: Role,
}

async fn read(state: &AppState, organisation_id: OrgId) -> Result<DialingPolicy, ApiError> {
    let limits = &state.config.telephony;
    let client = state.db.client().await?;
    let (allowed_countries, min_role) = guard::policy(&client, organisation_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let effective_countries = guard::allowed_countries(&client, limits, organisation_id).await?;
    Ok(DialingPolicy {
        allowed_countries,
        effective_countries,
        min_role,
        limits: DialLimits {
            max_concurrent_calls_per_org: limits.max_concurrent_per_org,
            max_concurrent_calls_per_user: limits.max_concurrent_per_user,
            max_calls_per_minute_per_org: limits.max_per_minute_per_org,
            max_calls_per_minute_per_user: limits.max_per_minute_per_user,
            max_call_duration_secs: limits.max_call_duration.as_secs(),
            max_phone_numbers_per_org: limits.max_numbers_per_org,
            platform_countries: limits.platform_countries.clone(),
        },
    })
}

async fn role(
    state: &AppState,
    organisation_id: OrgId,
    user: &CurrentUser,
) -> Result<Role, ApiError> {
    let client = state.db.client().await?;
    orgs::role_of(&client, organisation_id, user.id())
        .await?
        .ok_or(ApiError::NotFound)
}

/// The organisation's dialing policy and the platform's caps (any member).
#[utoipa::path(get, path = "/api/orgs/{id}/dialing-policy", tag = "organisations",
    operation_id = "getDialingPolicy",
    params(("id" = Uuid, Path, description = "Organisation id")),
    responses(
        (status = 200, description = "The policy in force", body = DialingPolicy),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organisation, or not a member", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(organisation_id): Path<OrgId>,
) -> Result<Json<DialingPolicy>, ApiError> {
    role(&state, organisation_id, &user).await?;
    Ok(Json(read(&state, organisation_id).await?))
}

/// Replace the organisation's allow-list of destination countries and the least role that
/// may dial (owners only).
#[utoipa::path(put, path = "/api/orgs/{id}/dialing-policy", tag = "organisations",
    operation_id = "setDialingPolicy", request_body = DialingPolicyUpdate,
    params(("id" = Uuid, Path, description = "Organisation id")),
    responses(
        (status = 200, description = "The policy now in force", body = DialingPolicy),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only owners change the dialing policy", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organisation, or not a member", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown country, one outside `DIAL_PLATFORM_COUNTRIES`, or more than 250", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(organisation_id): Path<OrgId>,
    Json(body): Json<DialingPolicyUpdate>,
) -> Result<Json<DialingPolicy>, ApiError> {
    if role(&state, organisation_id, &user).await? != Role::Owner {
        return Err(ApiError::Forbidden(
            "Only owners change the dialing policy.".into(),
        ));
    }
    let countries = body.allowed_countries.map(|list| {
        let mut list: Vec<String> = list.iter().map(|c| c.trim().to_ascii_uppercase()).collect();
        list.sort();
        list.dedup();
        list
    });
    if let Some(list) = &countries {
        if list.len() > 250 {
            return Err(ApiError::Unprocessable(
                "allowed_countries holds at most 250 countries".into(),
            ));
        }
        let unknown: Vec<&str> = list
            .iter()
            .filter(|c| !destinations::is_known_country(c))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(ApiError::Unprocessable(format!(
                "not ISO 3166-1 alpha-2 countries we can dial: {}",
                unknown.join(", ")
            )));
        }
        if let Some(platform) = &state.config.telephony.platform_countries {
            let outside: Vec<&str> = list
                .iter()
                .filter(|c| !platform.contains(c))
                .map(String::as_str)
                .collect();
            if !outside.is_empty() {
                return Err(ApiError::Unprocessable(format!(
                    "the platform does not allow calls to: {}",
                    outside.join(", ")
                )));
            }
        }
    }
    let client = state.db.client().await?;
    guard::set_policy(
        &client,
        organisation_id,
        countries.as_deref(),
        body.min_role,
    )
    .await?;
    drop(client);
    Ok(Json(read(&state, organisation_id).await?))
}
