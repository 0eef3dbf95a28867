//! Finding the session credential in a request, strictly: this is where the known bug class
//! (wrong cookie name, wrong decoding) is decided, so every rule is explicit and tested.
//!
//! Rules (docs/ARCHITECTURE.md, "Auth"): `Authorization: Bearer <token>` first; else the configured cookie
//! names in order, the first occurrence of a name winning. A cookie value is URL-decoded
//! exactly once (Auth.js writes `encodeURIComponent(token)`); a value that is quoted, still
//! percent-encoded after one decode, empty, over-long, not UTF-8 or not printable ASCII is
//! *malformed*, which is an error, never "anonymous".

use axum::http::{HeaderMap, header};
use percent_encoding::percent_decode;

/// The `sessionToken` column is `varchar(255)`.
pub const MAX_TOKEN_LEN: usize = 255;
/// A raw cookie value longer than this cannot decode to a valid token (×3 for `%XX`).
const MAX_RAW_COOKIE_LEN: usize = MAX_TOKEN_LEN * 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Bearer(String),
    Cookie { name: String, token: String },
}

impl Credential {
    pub fn token(&self) -> &str {
        match self {
            Credential::Bearer(token) | Credential::Cookie { token, .. } => token,
        }
    }

    pub fn is_cookie(&self) -> bool {
        matches!(self, Credential::Cookie { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the session credential is empty")]
    Empty,
    #[error("the session credential is too long")]
    TooLong,
    #[error("the session cookie is quoted")]
    Quoted,
    #[error("the session cookie is percent-encoded more than once")]
    DoubleEncoded,
    #[error("the session credential is not valid UTF-8")]
    NotUtf8,
    #[error("the session credential contains characters a token never has")]
    InvalidCharacters,
}

fn printable_ascii(token: &str) -> bool {
    token.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn check_token(token: String) -> Result<String, Malformed> {
    if token.is_empty() {
        return Err(Malformed::Empty);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(Malformed::TooLong);
    }
    if !printable_ascii(&token) {
        return Err(Malformed::InvalidCharacters);
    }
    Ok(token)
}

/// `%` followed by two hex digits.
fn contains_percent_escape(text: &str) -> bool {
    text.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// Decodes a cookie value exactly once.
pub fn decode_cookie_value(raw: &[u8]) -> Result<String, Malformed> {
    if raw.is_empty() {
        return Err(Malformed::Empty);
    }
    if raw.len() > MAX_RAW_COOKIE_LEN {
        return Err(Malformed::TooLong);
    }
    if raw.first() == Some(&b'"') || raw.last() == Some(&b'"') {
        return Err(Malformed::Quoted);
    }
    let decoded = percent_decode(raw)
        .decode_utf8()
        .map_err(|_| Malformed::NotUtf8)?
        .into_owned();
    if contains_percent_escape(&decoded) {
        return Err(Malformed::DoubleEncoded);
    }
    check_token(decoded)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Every `name=value` pair of every `Cookie` header, in order, as raw bytes.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = trim(pair);
            let split = pair.iter().position(|b| *b == b'=')?;
            Some((trim(&pair[..split]), trim(&pair[split + 1..])))
        })
}

/// The request's credential, `None` when it carries none, or why it is malformed.
pub fn from_headers(
    headers: &HeaderMap,
    cookie_names: &[String],
) -> Result<Option<Credential>, Malformed> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let bytes = value.as_bytes();
        if bytes.len() >= 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ") {
            let token = std::str::from_utf8(&bytes[7..]).map_err(|_| Malformed::NotUtf8)?;
            return check_token(token.trim().to_owned()).map(|t| Some(Credential::Bearer(t)));
        }
        // Another scheme (Basic, say) is not ours to judge; fall through to cookies.
    }
    for name in cookie_names {
        let first = cookie_pairs(headers).find(|(n, _)| *n == name.as_bytes());
        if let Some((_, raw)) = first {
            let token = decode_cookie_value(raw)?;
            return Ok(Some(Credential::Cookie {
                name: name.clone(),
                token,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn names() -> Vec<String> {
        crate::config::DEFAULT_SESSION_COOKIES
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn with_cookie(raw: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_bytes(raw).unwrap());
        headers
    }

    const TOKEN: &str = "6f1c1a3e-1c2d-4f5e-9a8b-7c6d5e4f3a2b";

    #[test]
    fn each_cookie_name_is_found() {
        for name in names() {
            let headers = with_cookie(format!("other=1; {name}={TOKEN}").as_bytes());
            let credential = from_headers(&headers, &names()).unwrap().unwrap();
            assert_eq!(
                credential,
                Credential::Cookie {
                    name: name.clone(),
                    token: TOKEN.into()
                }
            );
        }
    }

    #[test]
    fn value_is_decoded_exactly_once() {
        let headers = with_cookie(b"authjs.session-token=abc%2Bdef%3D");
        assert_eq!(
            from_headers(&headers, &names()).unwrap().unwrap().token(),
            "abc+def="
        );
        let headers = with_cookie(b"authjs.session-token=abc%252Bdef");
        assert_eq!(
            from_headers(&headers, &names()),
            Err(Malformed::DoubleEncoded)
        );
    }

    #[test]
    fn first_occurrence_of_a_name_wins() {
        let headers = with_cookie(b"authjs.session-token=first; authjs.session-token=second");
        assert_eq!(
            from_headers(&headers, &names()).unwrap().unwrap().token(),
            "first"
        );
    }

    #[test]
    fn malformed_values_are_errors() {
        let cases: &[(&[u8], Malformed)] = &[
            (b"authjs.session-token=", Malformed::Empty),
            (b"authjs.session-token=\"abc\"", Malformed::Quoted),
            (b"authjs.session-token=%FF%FE", Malformed::NotUtf8),
            (b"authjs.session-token=a%20b", Malformed::InvalidCharacters),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                from_headers(&with_cookie(raw), &names()),
                Err(*expected),
                "{raw:?}"
            );
        }
        let long = format!("authjs.session-token={}", "a".repeat(300));
        assert_eq!(
            from_headers(&with_cookie(long.as_bytes()), &names()),
            Err(Malformed::TooLong)
        );
        let raw_non_utf8 = with_cookie(b"authjs.session-token=abc\xff");
        assert_eq!(
            from_headers(&raw_non_utf8, &names()),
            Err(Malformed::NotUtf8)
        );
    }

    #[test]
    fn bearer_wins_and_is_not_decoded() {
        let mut headers = with_cookie(format!("authjs.session-token={TOKEN}").as_bytes());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc%2B"),
        );
        assert_eq!(
            from_headers(&headers, &names()).unwrap(),
            Some(Credential::Bearer("abc%2B".into()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(from_headers(&headers, &names()), Err(Malformed::Empty));
    }

    #[test]
    fn unrelated_cookies_and_other_schemes_mean_no_credential() {
        let mut headers = with_cookie(b"theme=dark; authjs.csrf-token=xyz");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        assert_eq!(from_headers(&headers, &names()), Ok(None));
    }
}
