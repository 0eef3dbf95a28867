//! Who the client really is, and whether it may talk to us at all. Behind the edge shim every
//! request reaches us from Cloudflare, signed by the shim (edge-shim/src/signing.ts):
//!
//! ```text
//! x-edge-timestamp:      unix seconds
//! x-edge-content-sha256: hex SHA-256 of the body, or UNSIGNED-PAYLOAD (a streamed body larger
//!                        than HTTP_BODY_LIMIT_BYTES, which the shim does not buffer)
//! x-edge-signature:      v2=hex(HMAC-SHA256(EDGE_SHARED_SECRET,
//!                        "v2\n" ts \n METHOD \n path?query \n xff \n xfp \n xfh \n content-sha256))
//! ```
//!
//! with the timestamp within `EDGE_SIGNATURE_WINDOW_SECS` (the shared test vector is
//! edge-shim/test/vectors/edge-signature.json). With `EDGE_SHARED_SECRET` set, a request
//! without a valid signature, or whose body does not hash to what was signed, is refused with
//! 403 — except the Telnyx media stream (Telnyx connects to it directly, authorised by the
//! token in its path) and the `EDGE_UNSIGNED_PATHS` prefixes (probes, the metrics scraper).
//! `X-Forwarded-For/-Proto/-Host` are honoured only on a signed request; anything else gets
//! the socket's peer address. docs/adr/0021-edge-signature-enforced.md has the reasoning.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::error::ApiError;
use crate::state::AppState;

pub const SIGNATURE_HEADER: &str = "x-edge-signature";
pub const TIMESTAMP_HEADER: &str = "x-edge-timestamp";
pub const CONTENT_SHA256_HEADER: &str = "x-edge-content-sha256";
/// The content hash of a body the shim streamed without buffering.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Telnyx opens the media stream itself; the stream token in the path authorises it.
use crate::paths::MEDIA_STREAM_PREFIX;

/// The client as we trust it, in the request extensions.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    /// The request came through the edge shim with a valid signature.
    pub via_edge: bool,
    pub proto: Option<String>,
    pub host: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Verifies the edge signature of a request with these parts (the body is checked against
/// `x-edge-content-sha256` separately, by [`identify`]).
pub fn verify(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    now_unix: i64,
    window: Duration,
) -> bool {
    let timestamp = header(headers, TIMESTAMP_HEADER);
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if now_unix.abs_diff(seconds) > window.as_secs() {
        return false;
    }
    let Some(presented) = header(headers, SIGNATURE_HEADER).strip_prefix("v2=") else {
        return false;
    };
    let Ok(presented) = hex::decode(presented) else {
        return false;
    };
    let content = header(headers, CONTENT_SHA256_HEADER);
    if content != UNSIGNED_PAYLOAD && !is_sha256_hex(content) {
        return false;
    }
    let message = [
        "v2",
        timestamp,
        method,
        path_and_query,
        header(headers, "x-forwarded-for"),
        header(headers, "x-forwarded-proto"),
        header(headers, "x-forwarded-host"),
        content,
    ]
    .join("\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(message.as_bytes());
    bool::from(mac.finalize().into_bytes().as_slice().ct_eq(&presented))
}

fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reachable without the edge's signature: the media stream and the configured prefixes.
fn exempt(path: &str, unsigned_paths: &[String]) -> bool {
    // A prefix ends at a segment boundary: `/healthz` covers `/healthz/x`, not `/healthzz`.
    path.starts_with(MEDIA_STREAM_PREFIX)
        || unsigned_paths.iter().any(|prefix| {
            let prefix = prefix.trim_end_matches('/');
            path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

fn refused(reason: &str) -> Response {
    metrics::counter!("edge_signature_refused_total").increment(1);
    ApiError::Forbidden(format!(
        "This service is reached through its edge only: {reason}."
    ))
    .into_response()
}

pub async fn identify(
    state: axum::extract::State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let edge = &state.config.edge;
    let signed = edge.shared_secret.as_ref().is_some_and(|secret| {
        verify(
            secret.expose().as_bytes(),
            request.method().as_str(),
            path_and_query,
            request.headers(),
            now,
            edge.signature_window,
        )
    });
    if edge.shared_secret.is_some()
        && !signed
        && !exempt(request.uri().path(), &edge.unsigned_paths)
    {
        return refused("the request carries no valid, current edge signature");
    }
    if signed {
        let claimed = header(request.headers(), CONTENT_SHA256_HEADER).to_owned();
        if claimed != UNSIGNED_PAYLOAD {
            // The shim buffered at most HTTP_BODY_LIMIT_BYTES to hash it; so do we.
            let (parts, body) = request.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, state.config.http.body_limit_bytes).await
            else {
                return refused("the body does not match the signed hash");
            };
            if hex::encode(Sha256::digest(&bytes)) != claimed {
                return refused("the body does not match the signed hash");
            }
            request = Request::from_parts(parts, Body::from(bytes));
        }
    }
    let info = if signed {
        let headers = request.headers();
        ClientInfo {
            // The left-most address is the client as Cloudflare saw it.
            ip: header(headers, "x-forwarded-for")
                .split(',')
                .next()
                .and_then(|ip| ip.trim().parse().ok())
                .or(peer),
            via_edge: true,
            proto: Some(header(headers, "x-forwarded-proto").to_owned()).filter(|s| !s.is_empty()),
            host: Some(header(headers, "x-forwarded-host").to_owned()).filter(|s| !s.is_empty()),
        }
    } else {
        ClientInfo {
            ip: peer,
            via_edge: false,
            proto: None,
            host: None,
        }
    };
    request.extensions_mut().insert(info);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// The vector the TypeScript shim tests too: both sides compute the same signature.
    #[test]
    fn the_media_stream_and_configured_prefixes_are_exempt() {
        let allowed = vec!["/healthz".to_owned(), "/metrics/".to_owned()];
        assert!(exempt("/media/telnyx/abc.def", &allowed));
        assert!(exempt("/healthz", &allowed));
        assert!(exempt("/metrics", &allowed));
        assert!(!exempt("/healthzz", &allowed), "a prefix ends at a segment");
        assert!(!exempt("/api/me", &allowed));
        assert!(!exempt("/media/telnyx", &allowed));
    }

    #[test]
    fn the_shared_vector_verifies_and_tampering_does_not() {
        let vector: serde_json::Value = serde_json::from_str(include_str!(
            "../../edge-shim/test/vectors/edge-signature.json"
        ))
        .unwrap();
        let text = |k: &str| vector[k].as_str().unwrap().to_owned();
        let mut headers = HeaderMap::new();
        for (name, key) in [
            (TIMESTAMP_HEADER, "timestamp"),
            (SIGNATURE_HEADER, "signature"),
            ("x-forwarded-for", "forwardedFor"),
            ("x-forwarded-proto", "forwardedProto"),
            ("x-forwarded-host", "forwardedHost"),
            (CONTENT_SHA256_HEADER, "contentSha256"),
        ] {
            headers.insert(name, HeaderValue::from_str(&text(key)).unwrap());
        }
        let now: i64 = text("timestamp").parse().unwrap();
        let secret = text("secret");
        let (method, path) = (text("method"), text("pathAndQuery"));
        assert_eq!(
            hex::encode(Sha256::digest(text("body").as_bytes())),
            text("contentSha256")
        );
        let window = Duration::from_secs(60);
        let check = |secret: &[u8], method: &str, path: &str, headers: &HeaderMap, now: i64| {
            verify(secret, method, path, headers, now, window)
        };
        assert!(check(secret.as_bytes(), &method, &path, &headers, now));
        assert!(!check(b"another-secret", &method, &path, &headers, now));
        assert!(!check(secret.as_bytes(), "GET", &path, &headers, now));
        assert!(!check(
            secret.as_bytes(),
            &method,
            "/webhooks/telnyx",
            &headers,
            now
        ));
        assert!(
            !check(secret.as_bytes(), &method, &path, &headers, now + 61),
            "stale"
        );
        assert!(
            !check(secret.as_bytes(), &method, &path, &headers, now - 61),
            "from the future"
        );
        let mut other_body = headers.clone();
        other_body.insert(
            CONTENT_SHA256_HEADER,
            HeaderValue::from_str(&hex::encode(Sha256::digest(b"{}"))).unwrap(),
        );
        assert!(
            !check(secret.as_bytes(), &method, &path, &other_body, now),
            "another body"
        );
        other_body.insert(
            CONTENT_SHA256_HEADER,
            HeaderValue::from_static(UNSIGNED_PAYLOAD),
        );
        assert!(
            !check(secret.as_bytes(), &method, &path, &other_body, now),
            "the body hash cannot be swapped for UNSIGNED-PAYLOAD"
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        assert!(
            !check(secret.as_bytes(), &method, &path, &headers, now),
            "spoofed client address"
        );
    }
}
