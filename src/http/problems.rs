//! Makes *every* error response problem+json: the 404 and 405 fallbacks, panics, and bare
//! error statuses produced by layers (body limit, timeout) that know nothing of our format.

use std::any::Any;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::{PROBLEM_JSON, Problem};

pub async fn not_found(uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND).detail(format!("No route matches {}.", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED).detail(format!(
        "{method} is not allowed on {}; see the Allow header.",
        uri.path()
    ))
}

/// Built inside the request's task, so the problem still carries the request id.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    // The Sentry panic hook already reported it; this target is a breadcrumb there.
    tracing::error!(target: "callbridge::panic", panic = %message, "handler panicked");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
        .detail("An unexpected error occurred. Quote the request_id when reporting it.")
        .into_response()
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()))
}

fn default_detail(status: StatusCode) -> Option<&'static str> {
    match status {
        StatusCode::GATEWAY_TIMEOUT => {
            Some("The request did not complete within the server's time limit.")
        }
        StatusCode::PAYLOAD_TOO_LARGE => Some("The request body is larger than the limit."),
        _ => None,
    }
}

/// Rewrites a non-problem error response as a problem, keeping the headers that matter.
pub async fn normalise(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let plain_text = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    let mut problem = Problem::new(status);
    // Client errors may say what was wrong; server errors never show their text.
    if status.is_client_error() && plain_text {
        if let Ok(bytes) = axum::body::to_bytes(body, 2048).await
            && !bytes.is_empty()
        {
            problem = problem.detail(String::from_utf8_lossy(&bytes).trim().to_owned());
        }
    } else {
        drop::<Body>(body);
    }
    if problem.detail.is_none()
        && let Some(detail) = default_detail(status)
    {
        problem = problem.detail(detail);
    }
    let mut rewritten = problem.into_response();
    for name in [header::ALLOW, header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    if status == StatusCode::GATEWAY_TIMEOUT {
        rewritten
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    rewritten
}
