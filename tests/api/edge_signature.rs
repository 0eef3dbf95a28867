//! Issue 14 item 8: with `EDGE_SHARED_SECRET` set the container answers only requests the edge
//! shim signed (method, path, timestamp, body hash), except the Telnyx media stream and the
//! `EDGE_UNSIGNED_PATHS` prefixes. Each test is an attacker reaching the origin directly.

use crate::common;

use common::edge::{edge_headers, unix_now};
use common::{TestApp, assert_problem};
use reqwest::Method;

const SECRET: &str = "edge-secret-for-tests";

async fn app() -> TestApp {
    TestApp::spawn_with(&[("EDGE_SHARED_SECRET", SECRET)]).await
}

#[tokio::test]
async fn an_unsigned_request_to_the_origin_is_refused() {
    let app = app().await;
    let session = app.sign_in("Direct").await;
    // A valid session does not help: the request did not come through the edge.
    let problem = assert_problem(app.get_as(&session, "/api/me").await, 403).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("through its edge"),
        "{problem}"
    );
    // A forged or wrong-key signature is no better.
    let forged = app
        .client
        .get(app.url("/api/me"))
        .header("x-edge-timestamp", unix_now().to_string())
        .header("x-edge-content-sha256", "UNSIGNED-PAYLOAD")
        .header("x-edge-signature", format!("v2={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_problem(forged, 403).await;
    let wrong_key = app
        .signed("not-the-secret", Method::GET, "/api/me", b"")
        .send()
        .await
        .unwrap();
    assert_problem(wrong_key, 403).await;
    // Signed by the edge: through the gate, and then the session decides.
    let signed = app
        .signed(SECRET, Method::GET, "/api/me", b"")
        .header("cookie", format!("authjs.session-token={}", session.token))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
}

#[tokio::test]
async fn a_replay_outside_the_window_and_a_swapped_path_or_body_are_refused() {
    let app = app().await;
    let body = br#"{"texts":["hi"],"target_language":"de"}"#;
    let send = |headers: Vec<(&'static str, String)>, path: &str, body: &[u8]| {
        let mut request = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    // Captured 61 s ago (the window is 60 s): a replay.
    let stale = edge_headers(
        SECRET,
        "POST",
        "/api/translate",
        Some(body),
        unix_now() - 61,
    );
    assert_problem(send(stale, "/api/translate", body).await.unwrap(), 403).await;
    let future = edge_headers(
        SECRET,
        "POST",
        "/api/translate",
        Some(body),
        unix_now() + 61,
    );
    assert_problem(send(future, "/api/translate", body).await.unwrap(), 403).await;
    // A fresh signature reused for another path or another body.
    let fresh = edge_headers(SECRET, "POST", "/api/translate", Some(body), unix_now());
    assert_problem(send(fresh.clone(), "/api/tts", body).await.unwrap(), 403).await;
    let other = br#"{"texts":["transfer all the money"],"target_language":"de"}"#;
    assert_problem(
        send(fresh.clone(), "/api/translate", other).await.unwrap(),
        403,
    )
    .await;
    // The original passes the gate (then 401: no session).
    assert_problem(send(fresh, "/api/translate", body).await.unwrap(), 401).await;
}

#[tokio::test]
async fn probes_the_media_stream_and_configured_paths_need_no_signature() {
    let app = app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 200);
    // Telnyx connects to the media stream itself: the token in the path decides (401 here,
    // a made-up token), never the edge gate.
    let media = app.get("/media/telnyx/not-a-token").await;
    assert_ne!(media.status(), 403);
    assert_problem(app.get("/api/openapi.json").await, 403).await;

    let custom = TestApp::spawn_with(&[
        ("EDGE_SHARED_SECRET", SECRET),
        ("EDGE_UNSIGNED_PATHS", "/healthz,/api/openapi.json"),
    ])
    .await;
    assert_eq!(custom.get("/api/openapi.json").await.status(), 200);
    assert_problem(custom.get("/metrics").await, 403).await;
    assert_problem(custom.get("/api/openapi.jsonx").await, 403).await;
}

#[tokio::test]
async fn without_the_secret_nothing_is_enforced() {
    let app = TestApp::spawn().await;
    let session = app.sign_in("Local").await;
    assert_eq!(app.get_as(&session, "/api/me").await.status(), 200);
}
