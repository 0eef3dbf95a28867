//! `/healthz` (the process answers) and `/readyz` (each dependency, by name).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::error::Problem;
use crate::http::extract::Json;
use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "ok")]
    pub status: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// `ok` or `failed`.
    pub status: &'static str,
    pub latency_ms: u64,
    /// A short class of failure (`timeout`, `unreachable`); details go to the logs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
    pub checks: BTreeMap<&'static str, Check>,
}

/// Liveness: answers while the process can serve HTTP; checks nothing else.
#[utoipa::path(get, path = "/healthz", operation_id = "getHealth", security(), tag = "ops",
    responses((status = 200, description = "The process is alive", body = Liveness)))]
pub async fn healthz() -> Json<Liveness> {
    Json(Liveness {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn timed<E: std::fmt::Display>(
    name: &'static str,
    check: impl Future<Output = Result<(), E>>,
) -> Check {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => {
            tracing::warn!(check = name, error = %error, "readiness check failed");
            Some("unreachable")
        }
        Err(_) => {
            tracing::warn!(check = name, "readiness check timed out");
            Some("timeout")
        }
    };
    Check {
        status: if error.is_none() { "ok" } else { "failed" },
        latency_ms,
        error,
    }
}

/// Readiness: the database answers a query and the storage bucket is reachable. Nothing is
/// cached, so it recovers by itself as soon as the dependency is back.
#[utoipa::path(get, path = "/readyz", operation_id = "getReadiness", security(), tag = "ops",
    responses(
        (status = 200, description = "Every dependency answered", body = Readiness),
        (status = 503, description = "A dependency failed; `checks` and `detail` name it",
            body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (database, storage) = tokio::join!(
        timed("database", state.db.ping()),
        timed("storage", state.storage.check_bucket()),
    );
    let checks = BTreeMap::from([("database", database), ("storage", storage)]);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, check)| check.error.is_some())
        .map(|(name, _)| *name)
        .collect();
    if failed.is_empty() {
        return Json(Readiness {
            status: "ready",
            checks,
        })
        .into_response();
    }
    Problem::typed(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready")
        .detail(format!("Failing: {}.", failed.join(", ")))
        .extension("failed", serde_json::json!(failed))
        .extension("checks", serde_json::to_value(&checks).unwrap_or_default())
        .into_response()
}
