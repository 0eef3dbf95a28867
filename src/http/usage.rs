//! Usage: `GET /api/usage` (the organisation's units and estimated cost, JSON or CSV) and
//! `GET /api/usage/quotas` (its quotas and this month so far). Scoped to the active
//! organisation; docs/USAGE.md.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::OrgContext;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Json, Query};
use crate::state::AppState;
use crate::usage::{self, GroupBy, Money, ReportLine, quota};

/// How lines are grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// Per UTC day (the default).
    #[default]
    Day,
    /// Per call (units spent on no call, like downloads, have an empty group).
    Call,
    /// Per user who placed the call or made the request.
    User,
}

/// The answer's format when not chosen by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    Json,
    Csv,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// From this instant, inclusive (RFC 3339); default: the start of this month (UTC).
    pub from: Option<DateTime<Utc>>,
    /// Until this instant, exclusive (RFC 3339); default: now. At most 366 days after `from`.
    pub to: Option<DateTime<Utc>>,
    #[param(inline)]
    pub group_by: Option<Grouping>,
    /// `csv` for CSV whatever `Accept` says; else `Accept: text/csv` chooses CSV.
    #[param(inline)]
    pub format: Option<ReportFormat>,
}

/// The organisation's usage over a period.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub to: DateTime<Utc>,
    pub group_by: Grouping,
    /// One line per group, vendor and unit, priced at the rate of each day.
    pub lines: Vec<ReportLine>,
    /// The sum of the lines' estimated cost, per currency.
    pub estimated_cost: Vec<Money>,
}

fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

fn wants_csv(query: &UsageQuery, headers: &HeaderMap) -> bool {
    match query.format {
        Some(format) => format == ReportFormat::Csv,
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| {
                // CSV only when asked for before JSON (or without it).
                let csv = accept.find("text/csv");
                let json = accept.find("application/json");
                csv.is_some_and(|c| json.is_none_or(|j| c < j))
            }),
    }
}

/// Units and estimated cost of the organisation per vendor and unit, grouped by day, call
/// or user; as JSON, or CSV (`format=csv` or `Accept: text/csv`:
/// `group,vendor,unit,quantity,currency,estimated_cost`).
#[utoipa::path(get, path = "/api/usage", operation_id = "getUsage", tag = "usage",
    params(UsageQuery, ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "The report",
            content((UsageReport = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Malformed parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`from` not before `to`, or more than 366 days apart", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn report(
    State(state): State<AppState>,
    org: OrgContext,
    Query(query): Query<UsageQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let to = query.to.unwrap_or(now);
    let from = query.from.unwrap_or_else(|| month_start(now));
    if from >= to {
        return Err(ApiError::Unprocessable("from must be before to".into()));
    }
    if to - from > chrono::Duration::days(366) {
        return Err(ApiError::Unprocessable(
            "from and to may be at most 366 days apart".into(),
        ));
    }
    let grouping = query.group_by.unwrap_or_default();
    let group_by = match grouping {
        Grouping::Day => GroupBy::Day,
        Grouping::Call => GroupBy::Call,
        Grouping::User => GroupBy::User,
    };
    let client = state.db.client().await?;
    let lines = usage::report(
        &client,
        &state.config.usage.prices,
        org.organisation_id,
        from,
        to,
        group_by,
    )
    .await?;
    if wants_csv(&query, &headers) {
        let mut response = usage::to_csv(&lines).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        response.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"usage.csv\""),
        );
        return Ok(response);
    }
    let mut estimated_cost: Vec<Money> = Vec::new();
    for line in &lines {
        for money in &line.estimated_cost {
            match estimated_cost
                .iter_mut()
                .find(|m| m.currency == money.currency)
            {
                Some(total) => total.amount += money.amount,
                None => estimated_cost.push(money.clone()),
            }
        }
    }
    Ok(Json(UsageReport {
        from,
        to,
        group_by: grouping,
        lines,
        estimated_cost,
    })
    .into_response())
}

/// The organisation's quotas in force and this month so far.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaStatus {
    /// Call minutes per calendar month (UTC); absent: none.
    pub monthly_minutes: Option<i64>,
    /// Calls in progress at once; absent: none.
    pub concurrent_calls: Option<i64>,
    /// Estimated spend per calendar month, in `currency`; absent: none.
    pub monthly_spend: Option<f64>,
    pub currency: String,
    /// At 100 % of a monthly quota: `end` (announce and hang up) or `continue` (flagged).
    #[schema(example = "continue")]
    pub at_limit: String,
    /// Call minutes this month, live calls included.
    pub minutes_used: f64,
    /// Estimated spend this month, in `currency`.
    pub spend_used: f64,
}

/// The organisation's usage quotas and how much of them this month has used (any member;
/// operators set quotas, docs/USAGE.md).
#[utoipa::path(get, path = "/api/usage/quotas", operation_id = "getUsageQuotas", tag = "usage",
    params(("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "Quotas and this month so far", body = QuotaStatus),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn quotas(
    State(state): State<AppState>,
    org: OrgContext,
) -> Result<Json<QuotaStatus>, ApiError> {
    let config = &state.config.usage;
    let client = state.db.client().await?;
    let quotas = quota::quotas(&client, config, org.organisation_id).await?;
    let used = quota::month_to_date(&client, config, org.organisation_id).await?;
    Ok(Json(QuotaStatus {
        monthly_minutes: quotas.monthly_minutes,
        concurrent_calls: quotas.concurrent_calls,
        monthly_spend: quotas.monthly_spend,
        currency: config.currency.clone(),
        at_limit: if quotas.end_at_limit {
            "end"
        } else {
            "continue"
        }
        .into(),
        minutes_used: used.minutes,
        spend_used: used.spend,
    }))
}
