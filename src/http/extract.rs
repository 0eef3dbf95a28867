//! Extractors whose rejections are problem+json: `Json`, `Path` and `Query` wrappers.
//!
//! axum's own rejections are plain text; these map them to [`ApiError`] with the parser's
//! message (which says where parsing failed) as the problem's `detail`.
//!
//! `Json` also refuses a NUL character (`\u0000`) anywhere in the body with a 422 naming the
//! field: PostgreSQL cannot store it in `text` or `jsonb`, so letting it through would turn
//! bad input into a 500 at the first insert (docs/API_ERRORS.md).

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;

/// JSON body in, JSON body out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(rejection.body_text()),
                _ => ApiError::BadRequest(rejection.body_text()),
            })?;
        // JSON is UTF-8 (RFC 8259), but serde_json does not check the fields it skips.
        if let Err(error) = std::str::from_utf8(&bytes) {
            return Err(ApiError::BadRequest(format!(
                "The request body is not UTF-8: {error}"
            )));
        }
        // A NUL can only be written as an escape in JSON text, so the fast path is one scan.
        let nul = bytes.windows(6).any(|window| window == b"\\u0000");
        let request = Request::from_parts(parts, Body::from(bytes.clone()));
        let axum::Json(value) = axum::Json::<T>::from_request(request, state).await?;
        if nul && let Some(pointer) = nul_pointer(&bytes) {
            return Err(ApiError::InvalidField {
                field: pointer,
                detail: "contains a NUL character (\\u0000), which is never accepted".into(),
            });
        }
        Ok(Json(value))
    }
}

/// The JSON pointer (RFC 6901) of the first string or key holding a NUL, if any.
pub fn nul_pointer(json: &[u8]) -> Option<String> {
    fn walk(value: &serde_json::Value, path: &mut String) -> bool {
        let start = path.len();
        let found = match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                path.truncate(start);
                path.push('/');
                path.push_str(&i.to_string());
                walk(item, path)
            }),
            serde_json::Value::Object(map) => map.iter().any(|(key, item)| {
                path.truncate(start);
                path.push('/');
                path.push_str(&key.replace('~', "~0").replace('/', "~1"));
                key.contains('\0') || walk(item, path)
            }),
            _ => false,
        };
        if !found {
            path.truncate(start);
        }
        found
    }
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    let mut path = String::new();
    walk(&value, &mut path).then_some(path)
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::JsonSyntaxError(_) => ApiError::BadRequest(message),
            JsonRejection::JsonDataError(_) => ApiError::Unprocessable(message),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(message),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(message)
            }
            _ => ApiError::BadRequest(message),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

// Handlers may take the parts of the state they use (`State<Db>`, `State<Arc<Config>>`).
impl axum::extract::FromRef<crate::state::AppState> for crate::db::Db {
    fn from_ref(state: &crate::state::AppState) -> Self {
        state.db.clone()
    }
}

impl axum::extract::FromRef<crate::state::AppState> for std::sync::Arc<crate::config::Config> {
    fn from_ref(state: &crate::state::AppState) -> Self {
        state.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::nul_pointer;

    #[test]
    fn nul_pointer_names_the_first_string_or_key_with_a_nul() {
        assert_eq!(
            nul_pointer(br#"{"a": "x", "b": ["y", "z\u0000"]}"#).as_deref(),
            Some("/b/1")
        );
        assert_eq!(
            nul_pointer(br#"{"a/b~\u0000": 1}"#).as_deref(),
            Some("/a~1b~0\u{0}")
        );
        assert_eq!(
            nul_pointer(br#"{"a": "\\u0000"}"#),
            None,
            "an escaped backslash"
        );
        assert_eq!(nul_pointer(br#"{"a": 1}"#), None);
    }
}
