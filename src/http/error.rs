//! The one error type of the HTTP layer and its RFC 9457 `application/problem+json` form.
//!
//! Handlers return `Result<_, ApiError>`. Each variant's doc names its status. 5xx responses
//! hide their cause from the client; the cause is logged exactly once, here, at ERROR level,
//! which the Sentry tracing integration turns into an event.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::ProviderDisabled;
use crate::http::request_id;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// `Retry-After` of a 503 `database-unavailable`: about one pool wait, so a retry meets a
/// freed connection or a restarted server rather than the same queue.
pub const DATABASE_RETRY_AFTER_SECS: u64 = 1;

/// An RFC 9457 problem details object, plus our `request_id` extension member.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub type_uri: String,
    #[schema(example = "Not Found")]
    pub title: String,
    #[schema(example = 404)]
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Quote this when reporting a problem; it is in our logs and in Sentry.
    pub request_id: String,
    /// Extra members for specific problem types (e.g. `variables`, `checks`).
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    pub fn new(status: StatusCode) -> Self {
        Self {
            type_uri: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: None,
            request_id: request_id::current().unwrap_or_default(),
            extensions: serde_json::Map::new(),
        }
    }

    /// A named problem type; documented in docs/API_ERRORS.md.
    pub fn typed(status: StatusCode, slug: &str, title: &str) -> Self {
        Self {
            type_uri: format!("urn:callbridge:problem:{slug}"),
            title: title.into(),
            ..Self::new(status)
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn extension(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(key.into(), value);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// A refusal by a named rule (a limit, an allow-list): what the client needs to act on it.
#[derive(Debug, Clone)]
pub struct PolicyRefusal {
    pub status: StatusCode,
    /// The problem type's slug (`urn:callbridge:problem:<slug>`).
    pub slug: &'static str,
    pub title: &'static str,
    /// The rule's stable name.
    pub rule: &'static str,
    pub detail: String,
    pub limit: Option<i64>,
    /// Sent as `Retry-After` (and `retry_after` in the body).
    pub retry_after_secs: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credential.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed (never used to reveal another tenant's data).
    #[error("{0}")]
    Forbidden(String),
    /// 404: absent, or belongs to another organisation.
    #[error("not found")]
    NotFound,
    /// 409: conflicts with the current state of the resource.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: wrong or missing `Content-Type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but semantically invalid.
    #[error("{0}")]
    Unprocessable(String),
    /// 422: one field of the body is unacceptable; `field` is its JSON pointer (`/name`).
    #[error("{field}: {detail}")]
    InvalidField { field: String, detail: String },
    /// 429: a limit is reached; `Retry-After` says when to try again.
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after: std::time::Duration,
    },
    /// 403, 422 or 429: a named rule refused the request (the problem's `rule` member;
    /// 429 carries `Retry-After`). Typed problems, docs/API_ERRORS.md.
    #[error("{}", .0.detail)]
    Policy(PolicyRefusal),
    /// 503: the feature's provider has no credentials in this deployment.
    #[error(transparent)]
    ProviderDisabled(#[from] ProviderDisabled),
    /// 502: a provider refused or failed the request we made for this one.
    #[error("{0}")]
    BadGateway(String),
    /// 503: a dependency is down; safe to retry.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure; the cause is logged, never returned.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) | ApiError::InvalidField { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Policy(refusal) => refusal.status,
            ApiError::ProviderDisabled(_) | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // Load or an outage, not a bug: the client may retry (docs/API_ERRORS.md).
            ApiError::Internal(cause) if crate::db::is_unavailable(cause) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn to_problem(&self) -> Problem {
        let status = self.status();
        match self {
            ApiError::Internal(cause) if status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(
                    error = format!("{cause:#}"),
                    "database unavailable; answered 503"
                );
                Problem::typed(status, "database-unavailable", "Database unavailable")
                    .detail(
                        "The database is busy or unreachable; retry after `Retry-After` seconds.",
                    )
                    .extension("retry_after", DATABASE_RETRY_AFTER_SECS.into())
            }
            ApiError::Internal(cause) => {
                // The single place a 5xx cause is logged; Sentry picks up ERROR events.
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Problem::new(status)
                    .detail("An unexpected error occurred. Quote the request_id when reporting it.")
            }
            ApiError::ProviderDisabled(disabled) => {
                Problem::typed(status, "provider-disabled", "Provider not configured")
                    .detail(disabled.to_string())
                    .extension("provider", disabled.provider.into())
                    .extension("variables", serde_json::json!(disabled.variables))
            }
            ApiError::Unauthorized(message) => {
                Problem::typed(status, "unauthenticated", "Authentication required")
                    .detail(message.clone())
            }
            ApiError::NotFound => Problem::new(status).detail("No such resource."),
            ApiError::InvalidField { field, detail } => {
                Problem::typed(status, "invalid-field", "Invalid field")
                    .detail(format!("`{field}` {detail}"))
                    .extension("field", field.clone().into())
            }
            ApiError::BadGateway(message) => {
                tracing::warn!(error = %message, "provider failure");
                Problem::typed(status, "provider-failed", "Provider request failed")
                    .detail(message.clone())
            }
            ApiError::Policy(refusal) => {
                let mut problem = Problem::typed(status, refusal.slug, refusal.title)
                    .detail(refusal.detail.clone())
                    .extension("rule", refusal.rule.into());
                if let Some(limit) = refusal.limit {
                    problem = problem.extension("limit", limit.into());
                }
                if let Some(seconds) = refusal.retry_after_secs {
                    problem = problem.extension("retry_after", seconds.into());
                }
                problem
            }
            other => Problem::new(status).detail(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.to_problem().into_response();
        if let ApiError::Policy(PolicyRefusal {
            retry_after_secs: Some(seconds),
            ..
        }) = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if response.status() == StatusCode::SERVICE_UNAVAILABLE
            && matches!(self, ApiError::Internal(_))
        {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(DATABASE_RETRY_AFTER_SECS),
            );
        }
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A database failure is a 500 (its cause logged once, by [`ApiError::to_problem`]).
impl From<crate::db::DbError> for ApiError {
    fn from(error: crate::db::DbError) -> Self {
        ApiError::internal(error)
    }
}

/// A query a handler ran itself failed: a 500 like [`crate::db::DbError`].
impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        ApiError::internal(error)
    }
}

impl From<crate::providers::telnyx::TelnyxError> for ApiError {
    fn from(error: crate::providers::telnyx::TelnyxError) -> Self {
        ApiError::BadGateway(error.to_string())
    }
}

impl From<crate::calls::guard::Refusal> for ApiError {
    fn from(refusal: crate::calls::guard::Refusal) -> Self {
        let retry_after_secs = refusal.retry_after_secs();
        let quota = matches!(refusal, crate::calls::guard::Refusal::Quota(_));
        let (status, slug, title) = if refusal.payment_required() {
            (
                StatusCode::PAYMENT_REQUIRED,
                "quota-exceeded",
                "Usage quota reached",
            )
        } else if quota {
            (
                StatusCode::TOO_MANY_REQUESTS,
                "quota-exceeded",
                "Usage quota reached",
            )
        } else if retry_after_secs.is_some() {
            (
                StatusCode::TOO_MANY_REQUESTS,
                "dial-rate-limited",
                "Too many calls",
            )
        } else {
            (StatusCode::FORBIDDEN, "dial-refused", "Dialing refused")
        };
        ApiError::Policy(PolicyRefusal {
            status,
            slug,
            title,
            rule: refusal.rule(),
            detail: refusal.to_string(),
            limit: refusal.limit(),
            retry_after_secs,
        })
    }
}

impl From<crate::calls::guard::GuardError> for ApiError {
    fn from(error: crate::calls::guard::GuardError) -> Self {
        match error {
            crate::calls::guard::GuardError::Refused(refusal) => refusal.into(),
            crate::calls::guard::GuardError::Db(error) => ApiError::internal(error),
        }
    }
}

impl From<crate::calls::provisioning::ClaimError> for ApiError {
    fn from(error: crate::calls::provisioning::ClaimError) -> Self {
        use crate::calls::provisioning::ClaimError;
        match error {
            ClaimError::Unavailable => ApiError::Policy(PolicyRefusal {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                slug: "number-unavailable",
                title: "Number not available",
                rule: "number-available",
                detail: error.to_string(),
                limit: None,
                retry_after_secs: None,
            }),
            ClaimError::AlreadyYours => ApiError::Conflict(error.to_string()),
            ClaimError::LimitReached { limit } => ApiError::Policy(PolicyRefusal {
                status: StatusCode::FORBIDDEN,
                slug: "number-limit",
                title: "Phone number limit reached",
                rule: "phone-numbers-per-org",
                detail: error.to_string(),
                limit: Some(limit),
                retry_after_secs: None,
            }),
            ClaimError::Telnyx(error) => error.into(),
            ClaimError::Db(error) => ApiError::internal(error),
        }
    }
}
