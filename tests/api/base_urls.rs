//! WEBHOOK_BASE_URL and MEDIA_BASE_URL: webhooks can move to the Worker's hostname while
//! Telnyx media keeps reaching the container directly.
#![cfg(feature = "sim")]

use crate::common;

use common::telnyx::TelnyxApp;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn webhooks_go_to_the_webhook_host_and_media_to_the_media_host() {
    let t = TelnyxApp::spawn_with(&[
        ("PUBLIC_BASE_URL", "http://api.callbridge.test"),
        ("WEBHOOK_BASE_URL", "http://edge.callbridge.test/v1"),
        ("MEDIA_BASE_URL", "http://origin.callbridge.test:8443"),
    ])
    .await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let placed = t
        .app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 201);
    let dial = &t.sim.commands_named("dial")[0].body;
    assert_eq!(
        dial["webhook_url"],
        "http://edge.callbridge.test/v1/webhooks/telnyx"
    );
    let stream = dial["stream_url"].as_str().unwrap();
    assert!(
        stream.starts_with("ws://origin.callbridge.test:8443/media/telnyx/"),
        "{stream}"
    );
}

#[tokio::test]
async fn both_default_to_the_public_base_url() {
    let t = TelnyxApp::spawn_with(&[("PUBLIC_BASE_URL", "http://api.callbridge.test")]).await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    t.app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send()
        .await
        .unwrap();
    let dial = &t.sim.commands_named("dial")[0].body;
    assert_eq!(
        dial["webhook_url"],
        "http://api.callbridge.test/webhooks/telnyx"
    );
    assert!(
        dial["stream_url"]
            .as_str()
            .unwrap()
            .starts_with("ws://api.callbridge.test/media/telnyx/")
    );
}
