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

/// The edge secret of [`PRODUCTION`].
pub const PRODUCTION_EDGE_SECRET: &str = "production-edge-secret";
/// The metrics token of [`PRODUCTION`].
pub const PRODUCTION_METRICS_TOKEN: &str = "production-metrics-token";

/// Everything `APP_ENV=production` requires besides the database and storage the harness
/// sets: requests to such an app must be signed with [`PRODUCTION_EDGE_SECRET`].
pub fn production<'a>(auth_secret: &'a str, telnyx_key: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("APP_ENV", "production"),
        ("PUBLIC_BASE_URL", "https://api.example.com"),
        ("AUTH_SECRET", auth_secret),
        ("TELNYX_API_KEY", "k"),
        ("TELNYX_PUBLIC_KEY", telnyx_key),
        ("TELNYX_CONNECTION_ID", "c"),
        ("ASSEMBLYAI_API_KEY", "k"),
        ("ASSEMBLYAI_WEBHOOK_SECRET", "s"),
        ("DEEPL_API_KEY", "k"),
        ("OPENAI_API_KEY", "k"),
        ("ELEVENLABS_API_KEY", "k"),
        ("EDGE_SHARED_SECRET", PRODUCTION_EDGE_SECRET),
        ("METRICS_TOKEN", PRODUCTION_METRICS_TOKEN),
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
