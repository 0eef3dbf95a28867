//! The calls and phone-number APIs against the Telnyx simulator: dialling with the right
//! stream settings, retries, failures, pagination, hangup, and tenant isolation.
#![cfg(feature = "sim")]

use crate::common;

use callbridge::sim::telnyx::Fault;
use common::assert_problem;
use common::telnyx::TelnyxApp;
use reqwest::Method;
use serde_json::{Value, json};

fn new_call(record: bool) -> Value {
    json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en",
           "target_language": "de", "voice_id": "voice-1", "record": record})
}

#[tokio::test]
async fn placing_a_call_dials_with_our_call_id_and_a_signed_media_stream() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let response = t
        .app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&new_call(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let call: Value = response.json().await.unwrap();
    assert_eq!(call["status"], "dialing");
    assert_eq!(call["direction"], "outbound");

    let dial = &t.sim.commands_named("dial")[0];
    let body = &dial.body;
    assert_eq!(body["connection_id"], "sim-connection");
    assert_eq!(
        (body["from"].as_str(), body["to"].as_str()),
        (Some("+14155550100"), Some("+14155550123"))
    );
    assert_eq!(
        body["command_id"],
        format!("dial:{}", call["id"].as_str().unwrap())
    );
    let call_id =
        callbridge::providers::telnyx::decode_client_state(body["client_state"].as_str().unwrap())
            .unwrap();
    assert_eq!(call_id.to_string(), call["id"].as_str().unwrap());
    assert_eq!(body["stream_track"], "both_tracks");
    assert_eq!(body["stream_bidirectional_mode"], "rtp");
    assert_eq!(body["stream_bidirectional_codec"], "PCMU");
    assert_eq!(body["record"], "record-from-answer");
    assert_eq!(body["record_channels"], "dual");
    let url = body["stream_url"].as_str().unwrap();
    let token = url
        .strip_prefix("ws://127.0.0.1:8080/media/telnyx/")
        .expect("stream URL on PUBLIC_BASE_URL");
    let secret = t.app.state.config.auth.secret.expose().as_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        callbridge::calls::stream_token::verify(secret, token, now),
        Ok(call_id.uuid()),
        "token bound to this call"
    );
}

#[tokio::test]
async fn transient_telnyx_errors_are_retried_with_the_same_command_id() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    t.sim.inject(Fault::Status(503));
    t.sim.inject(Fault::Status(500));
    let response = t
        .app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&new_call(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let dials = t.sim.commands_named("dial");
    assert_eq!(dials.len(), 3);
    assert!(
        dials
            .iter()
            .all(|d| d.body["command_id"] == dials[0].body["command_id"])
    );
}

#[tokio::test]
async fn a_refused_dial_stores_a_failed_call_and_answers_502() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    t.sim.inject(Fault::Status(422));
    let response = t
        .app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&new_call(false))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 502).await;
    assert_eq!(problem["type"], "urn:callbridge:problem:provider-failed");
    let page: Value = t.app.get_as(&ada, "/api/calls").await.json().await.unwrap();
    assert_eq!(page["calls"][0]["status"], "failed");
    assert!(
        page["calls"][0]["failure_reason"]
            .as_str()
            .unwrap()
            .contains("422")
    );
}

#[tokio::test]
async fn bad_input_is_422_and_telnyx_disabled_is_503() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    let post = |body: Value| {
        t.app
            .request_as(Method::POST, &ada, "/api/calls")
            .json(&body)
            .send()
    };
    let problem = assert_problem(post(json!({"to": "0800", "from": "+1", "source_language": "English", "target_language": "de"})).await.unwrap(), 422).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("to must be")
            && detail.contains("from must be")
            && detail.contains("source_language")
    );
    let problem = assert_problem(post(new_call(false)).await.unwrap(), 422).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("phone numbers"),
        "from must be ours"
    );

    let plain = common::TestApp::spawn().await;
    let bob = plain.sign_in("Bob").await;
    let response = plain
        .request_as(Method::POST, &bob, "/api/calls")
        .json(&new_call(false))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 503).await;
    assert!(
        problem["variables"]
            .as_array()
            .unwrap()
            .contains(&json!("TELNYX_API_KEY"))
    );
}

#[tokio::test]
async fn listing_is_newest_first_with_cursor_pages_and_filters() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let call: Value = t
            .app
            .request_as(Method::POST, &ada, "/api/calls")
            .json(&new_call(false))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(call["id"].as_str().unwrap().to_owned());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut path = "/api/calls?limit=2".to_string();
    loop {
        let page: Value = t.app.get_as(&ada, &path).await.json().await.unwrap();
        seen.extend(
            page["calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/calls?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every call once, newest first");
    let dialing: Value = t
        .app
        .get_as(&ada, "/api/calls?status=dialing")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dialing["calls"].as_array().unwrap().len(), 5);
    let ended: Value = t
        .app
        .get_as(&ada, "/api/calls?status=ended")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ended["calls"].as_array().unwrap().len(), 0);
    let future: Value = t
        .app
        .get_as(&ada, "/api/calls?since=2999-01-01T00:00:00Z")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(future["calls"].as_array().unwrap().len(), 0);
    assert_problem(t.app.get_as(&ada, "/api/calls?cursor=garbage").await, 400).await;
    assert_problem(t.app.get_as(&ada, "/api/calls?limit=0").await, 400).await;
}

#[tokio::test]
async fn hangup_is_idempotent_and_an_already_ended_call_counts_as_success() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let call: Value = t
        .app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&new_call(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!("/api/calls/{}/hangup", call["id"].as_str().unwrap());
    assert_eq!(
        t.app
            .request_as(Method::POST, &ada, &path)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    // Telnyx now says the call ended (422 / 90018): still a success.
    assert_eq!(
        t.app
            .request_as(Method::POST, &ada, &path)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let hangups = t.sim.commands_named("hangup");
    assert_eq!(hangups.len(), 2);
    assert_eq!(
        hangups[0].body["command_id"],
        format!("hangup:{}", call["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn calls_and_numbers_of_another_organisation_are_404() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    let eve = t.app.sign_in("Eve").await;
    t.own_number(&ada, "+14155550100").await;
    let call: Value = t
        .app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&new_call(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = call["id"].as_str().unwrap();
    assert_problem(t.app.get_as(&eve, &format!("/api/calls/{id}")).await, 404).await;
    assert_problem(
        t.app.get_as(&eve, &format!("/api/calls/{id}/events")).await,
        404,
    )
    .await;
    assert_problem(
        t.app
            .request_as(Method::POST, &eve, &format!("/api/calls/{id}/hangup"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let eves: Value = t.app.get_as(&eve, "/api/calls").await.json().await.unwrap();
    assert_eq!(eves["calls"].as_array().unwrap().len(), 0);

    let numbers: Value = t
        .app
        .get_as(&ada, "/api/phone-numbers")
        .await
        .json()
        .await
        .unwrap();
    let number_id = numbers[0]["id"].as_str().unwrap();
    assert_problem(
        t.app
            .request_as(
                Method::DELETE,
                &eve,
                &format!("/api/phone-numbers/{number_id}"),
            )
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    // Another tenant's number is simply not available (tests/api/phone_number_provisioning.rs
    // checks the answer is the one any unavailable number gets).
    let taken = t
        .app
        .request_as(Method::POST, &eve, "/api/phone-numbers")
        .json(&json!({"number": "+14155550100"}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(taken, 422).await;
    assert_eq!(problem["type"], "urn:callbridge:problem:number-unavailable");
    let eves: Value = t
        .app
        .get_as(&eve, "/api/phone-numbers")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(eves.as_array().unwrap().len(), 0);
    assert_eq!(
        t.app
            .request_as(
                Method::DELETE,
                &ada,
                &format!("/api/phone-numbers/{number_id}")
            )
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let bad = t
        .app
        .request_as(Method::POST, &ada, "/api/phone-numbers")
        .json(&json!({"number": "555-0100"}))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 422).await;
}
