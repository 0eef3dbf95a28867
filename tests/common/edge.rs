//! Requests signed as the edge shim signs them (edge-shim/src/signing.ts): what a test sends
//! to a container that has `EDGE_SHARED_SECRET` set.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::TestApp;

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The shim's headers for a request with no `X-Forwarded-*`: timestamp, content hash
/// (`UNSIGNED-PAYLOAD` when `body` is `None`) and signature.
pub fn edge_headers(
    secret: &str,
    method: &str,
    path_and_query: &str,
    body: Option<&[u8]>,
    timestamp: i64,
) -> Vec<(&'static str, String)> {
    let content = body.map_or_else(
        || "UNSIGNED-PAYLOAD".to_owned(),
        |b| hex::encode(Sha256::digest(b)),
    );
    let timestamp = timestamp.to_string();
    let message = [
        "v2",
        &timestamp,
        method,
        path_and_query,
        "",
        "",
        "",
        &content,
    ]
    .join("\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    let signature = format!("v2={}", hex::encode(mac.finalize().into_bytes()));
    vec![
        ("x-edge-timestamp", timestamp),
        ("x-edge-content-sha256", content),
        ("x-edge-signature", signature),
    ]
}

impl TestApp {
    /// A request signed now with `secret` for exactly this method, path and body.
    pub fn signed(
        &self,
        secret: &str,
        method: reqwest::Method,
        path_and_query: &str,
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .request(method.clone(), self.url(path_and_query))
            .body(body.to_vec());
        for (name, value) in edge_headers(
            secret,
            method.as_str(),
            path_and_query,
            Some(body),
            unix_now(),
        ) {
            request = request.header(name, value);
        }
        request
    }
}
