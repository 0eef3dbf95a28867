//! Issue 14 item 9: what the container logs about a request carries neither the media stream
//! token of its path nor the webhook or debug secrets of its headers (Sentry events are
//! scrubbed by `telemetry::scrub_event`, unit-tested there). One test per process: it installs
//! the global log subscriber.

use crate::common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::TestApp;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn request_logs_carry_no_stream_tokens_or_secret_headers() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    let app =
        TestApp::spawn_with(&[("ASSEMBLYAI_WEBHOOK_SECRET", "the-real-webhook-secret")]).await;
    let token = "eyJjYWxsIjoiMDE5MyJ9.c2lnbmF0dXJlLXN0cmVhbS10b2tlbg";
    for path in [
        format!("/media/telnyx/{token}"),
        format!("/media/telnyx/{token}/extra"),
        format!("/media/telnyx/{token}?x=1"),
    ] {
        app.get(&path).await;
    }
    app.client
        .post(app.url("/webhooks/assemblyai"))
        .header("x-callbridge-webhook-secret", "a-guessed-webhook-secret")
        .header("content-type", "application/json")
        .body(r#"{"transcript_id":"t1","status":"completed"}"#)
        .send()
        .await
        .unwrap();
    app.client
        .get(app.url("/internal/debug/session"))
        .header("x-debug-token", "a-forged-debug-token")
        .send()
        .await
        .unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("/media/telnyx/[redacted]"),
        "the unmatched path is logged, redacted: {logs}"
    );
    for secret in [token, "a-guessed-webhook-secret", "a-forged-debug-token"] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}
