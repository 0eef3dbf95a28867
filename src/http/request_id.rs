//! The request id: honour `x-request-id`, else Cloudflare's `cf-ray`, else mint a UUIDv7.
//!
//! The id is stored in the request extensions (for the trace span), in a task-local (so any
//! error built while handling the request can quote it), and echoed on the response.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static CF_RAY: HeaderName = HeaderName::from_static("cf-ray");

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being handled by this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Request extension carrying the id.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A client-supplied id is kept only if it is short and plainly printable, so it cannot
/// inject anything into logs or headers.
fn acceptable(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let valid = (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    valid.then(|| text.to_owned())
}

pub fn choose(request: &Request) -> String {
    let headers = request.headers();
    headers
        .get(&X_REQUEST_ID)
        .and_then(acceptable)
        .or_else(|| headers.get(&CF_RAY).and_then(acceptable))
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

pub async fn assign(mut request: Request, next: Next) -> Response {
    let id = choose(&request);
    let header = HeaderValue::from_str(&id).expect("validated or generated ids are valid headers");
    request
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), header.clone());
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = CURRENT.scope(id, next.run(request)).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), header);
    response
}
