//! CSRF defence for cookie-authenticated requests: an unsafe method must come from one of
//! `ALLOWED_ORIGINS`, proven by `Origin` (or, when a browser omits it, `Referer`).
//! Bearer-authenticated requests are exempt: a cross-site page cannot set that header.

use axum::http::{HeaderMap, Method, header};
use url::Url;

use crate::config::AllowedOrigins;

pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// `Ok(())` when the request's origin is allowed; `Err` says why not.
pub fn check(headers: &HeaderMap, allowed: &AllowedOrigins) -> Result<(), &'static str> {
    let origin = match headers.get(header::ORIGIN) {
        Some(value) => value.to_str().ok().map(str::to_owned),
        None => headers
            .get(header::REFERER)
            .and_then(|value| value.to_str().ok())
            .and_then(|referer| Url::parse(referer).ok())
            .map(|url| url.origin().ascii_serialization()),
    };
    match origin {
        None => Err("a cookie-authenticated request must send Origin or Referer"),
        Some(origin) if allowed.allows(&origin) => Ok(()),
        Some(_) => Err("the request's origin is not allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn allowed() -> AllowedOrigins {
        AllowedOrigins::parse(&["https://app.example.com".into()]).unwrap()
    }

    #[test]
    fn origin_or_referer_must_be_allowed() {
        let mut headers = HeaderMap::new();
        assert!(check(&headers, &allowed()).is_err());
        headers.insert(
            header::REFERER,
            HeaderValue::from_static("https://app.example.com/calls?x=1"),
        );
        assert!(check(&headers, &allowed()).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example.net"),
        );
        assert!(
            check(&headers, &allowed()).is_err(),
            "Origin wins over Referer"
        );
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check(&headers, &allowed()).is_err());
    }
}
