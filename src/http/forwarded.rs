//! Who the client really is. Behind the edge shim every request reaches us from Cloudflare,
//! so `X-Forwarded-For/-Proto/-Host` are honoured only on a request the shim signed:
//! `x-edge-signature: v1=hex(HMAC-SHA256(EDGE_SHARED_SECRET, ts\nMETHOD\npath?query\nxff\nxfp\nxfh))`
//! with `x-edge-timestamp` within 60 s (edge-shim/src/signing.ts; the shared test vector is
//! edge-shim/test/vectors/edge-signature.json). Anything else gets the socket's peer address.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::state::AppState;

pub const SIGNATURE_HEADER: &str = "x-edge-signature";
pub const TIMESTAMP_HEADER: &str = "x-edge-timestamp";
const MAX_SKEW_SECS: i64 = 60;

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

/// Verifies the edge signature of a request with these parts.
pub fn verify(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    now_unix: i64,
) -> bool {
    let timestamp = header(headers, TIMESTAMP_HEADER);
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now_unix - seconds).abs() > MAX_SKEW_SECS {
        return false;
    }
    let Some(presented) = header(headers, SIGNATURE_HEADER).strip_prefix("v1=") else {
        return false;
    };
    let Ok(presented) = hex::decode(presented) else {
        return false;
    };
    let message = [
        timestamp,
        method,
        path_and_query,
        header(headers, "x-forwarded-for"),
        header(headers, "x-forwarded-proto"),
        header(headers, "x-forwarded-host"),
    ]
    .join("\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(message.as_bytes());
    bool::from(mac.finalize().into_bytes().as_slice().ct_eq(&presented))
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
    let signed = state
        .config
        .edge
        .shared_secret
        .as_ref()
        .is_some_and(|secret| {
            verify(
                secret.expose().as_bytes(),
                request.method().as_str(),
                path_and_query,
                request.headers(),
                now,
            )
        });
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
        ] {
            headers.insert(name, HeaderValue::from_str(&text(key)).unwrap());
        }
        let now: i64 = text("timestamp").parse().unwrap();
        let secret = text("secret");
        let (method, path) = (text("method"), text("pathAndQuery"));
        assert!(verify(secret.as_bytes(), &method, &path, &headers, now));
        assert!(!verify(b"another-secret", &method, &path, &headers, now));
        assert!(!verify(secret.as_bytes(), "GET", &path, &headers, now));
        assert!(!verify(
            secret.as_bytes(),
            &method,
            "/webhooks/telnyx",
            &headers,
            now
        ));
        assert!(
            !verify(secret.as_bytes(), &method, &path, &headers, now + 61),
            "stale"
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        assert!(
            !verify(secret.as_bytes(), &method, &path, &headers, now),
            "spoofed client address"
        );
    }
}
