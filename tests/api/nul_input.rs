//! A NUL character (`\u0000`) in a string: PostgreSQL refuses it in `text` and `jsonb`, so
//! before the fix it was a 500 everywhere it reached an insert. API input is refused with a
//! 422 naming the field; a verified webhook is stored (NUL replaced by U+FFFD) and processed,
//! so Telnyx stops retrying and the call's state still moves.
#![cfg(feature = "sim")]

use crate::common;

use callbridge::sim::telnyx as sim;
use common::telnyx::TelnyxApp;
use common::{TestApp, assert_problem};
use reqwest::Method;
use serde_json::{Value, json};

const NUL: char = '\0';

/// JSON pointers of every string in `value` (object keys excluded).
fn string_pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::String(_) => out.push(at),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                string_pointers(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                string_pointers(item, format!("{at}/{key}"), out);
            }
        }
        _ => {}
    }
}

fn with_nul(value: &Value, pointer: &str) -> Value {
    let mut value = value.clone();
    let text = value.pointer_mut(pointer).unwrap();
    *text = json!(format!("{}{NUL}x", text.as_str().unwrap()));
    value
}

#[tokio::test]
async fn nul_in_api_input_is_a_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let ada = app.sign_in("Ada").await;
    let org = app.organisation_of(&ada).await.to_string();
    let bob = app.sign_in("Bob").await;
    let bob_email: Value = app.get_as(&bob, "/api/me").await.json().await.unwrap();
    let bob_email = bob_email["user"]["email"].as_str().unwrap().to_owned();
    let invitations = format!("/api/orgs/{org}/invitations");
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/api/orgs", json!({"name": format!("Acme{NUL}")}), "/name"),
        (
            &invitations,
            json!({"email": format!("{bob_email}{NUL}"), "role": "member"}),
            "/email",
        ),
        (
            "/api/phone-numbers",
            json!({"number": "+14155550100", "label": format!("front{NUL}desk")}),
            "/label",
        ),
        (
            "/api/phone-numbers",
            json!({"number": format!("+1415555{NUL}0100")}),
            "/number",
        ),
    ];
    for (path, body, field) in cases {
        let response = app
            .request_as(Method::POST, &ada, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["type"], "urn:callbridge:problem:invalid-field");
        assert_eq!(problem["field"], field, "{path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("NUL"),
            "{problem}"
        );
    }
    // The same body without a NUL works.
    let response = app
        .request_as(Method::POST, &ada, "/api/orgs")
        .json(&json!({"name": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // An escaped backslash followed by "u0000" is text, not a NUL.
    let response = app
        .request_as(Method::POST, &ada, "/api/orgs")
        .header("content-type", "application/json")
        .body(r#"{"name": "Acme \\u0000 Ltd"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["name"], "Acme \\u0000 Ltd", "{created}");
}

#[tokio::test]
async fn a_signed_telnyx_event_with_nul_in_any_string_is_stored_and_moves_the_call() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let response = t.app.request_as(Method::POST, &ada, "/api/calls")
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send().await.unwrap();
    assert_eq!(response.status(), 201);
    let call: Value = response.json().await.unwrap();
    let call_id = call["id"].as_str().unwrap().to_owned();
    let dial = t.sim.commands_named("dial").into_iter().last().unwrap();
    let ccid = dial.call_control_id.unwrap();
    let client_state = dial.body["client_state"].as_str().unwrap().to_owned();

    let mut payload = sim::call_payload(
        &ccid,
        Some(&client_state),
        "+14155550100",
        "+14155550123",
        "outgoing",
    );
    payload["custom_headers"] = json!([{"name": "X-Note", "value": "hi"}]);
    let template = t.sim.event("call.answered", payload);
    let mut pointers = Vec::new();
    string_pointers(&template, String::new(), &mut pointers);
    assert!(pointers.len() >= 12, "{pointers:?}");
    let mut delivered = 0;
    for pointer in &pointers {
        // A fresh event id per delivery (unless the id itself is the field under test).
        let mut envelope = t
            .sim
            .event("call.answered", template["data"]["payload"].clone());
        envelope["meta"] = template["meta"].clone();
        let envelope = with_nul(&envelope, pointer);
        let status = t.sim.deliver(&t.webhook_url(), &envelope).await.unwrap();
        assert_eq!(status, 200, "NUL in {pointer}");
        delivered += 1;
    }
    let db = t.app.db().await;
    let stored: i64 = db
        .query_one("select count(*) from webhook_inbox", &[])
        .await
        .unwrap()
        .get("count");
    assert_eq!(stored, delivered, "every delivery stored once");
    let replaced: i64 = db
        .query_one(
            "select count(*) from webhook_inbox where payload::text like '%' || chr(65533) || '%'",
            &[],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(replaced, delivered, "the NUL is stored as U+FFFD");
    assert!(t.drain().await >= delivered as usize);
    let unfinished: i64 = db
        .query_one(
            "select count(*) from jobs where kind = 'telnyx.event' and status <> 'done'",
            &[],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(unfinished, 0, "every event processed, none dead");
    let call: Value = t
        .app
        .get_as(&ada, &format!("/api/calls/{call_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(call["status"], "answered", "{call}");
}

#[tokio::test]
async fn an_assemblyai_webhook_with_nul_is_stored() {
    let app = TestApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "k"),
        ("ASSEMBLYAI_WEBHOOK_SECRET", "s3cret"),
    ])
    .await;
    for body in [
        json!({"transcript_id": format!("t-1{NUL}"), "status": "completed"}),
        json!({"transcript_id": "t-2", "status": format!("completed{NUL}")}),
        json!({"transcript_id": "t-3", "status": "completed", "note": format!("{NUL}")}),
    ] {
        let response = app
            .client
            .post(app.url("/webhooks/assemblyai"))
            .header("x-callbridge-webhook-secret", "s3cret")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{body}");
    }
    let stored: i64 = app
        .db()
        .await
        .query_one(
            "select count(*) from webhook_inbox where provider = 'assemblyai'",
            &[],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(stored, 3);
}
