//! Soak (d): bad bodies on every POST/PUT/PATCH route of the OpenAPI document.
//!
//! The routes come from the service's own `/api/openapi.json`, so a new route is swept
//! without editing this file. Each gets, as a signed-in owner (and, for webhooks, signed or
//! with the shared secret, so the body is what gets judged): malformed JSON, a JSON array,
//! an oversized body, bytes that are not UTF-8, wrong content types, and its own example body
//! (built from the request schema) with a NUL character in each string in turn. Invariants:
//! no 5xx at all; API input with a NUL is a 422 naming the field; a verified webhook with a
//! NUL is accepted and stored; the process is healthy and ready afterwards.
//!
//! `CALLBRIDGE_SOAK=long` (`make soak`) sends 20 MiB bodies and the sweep three times over;
//! the short form (in `make test`) sends 2 MiB bodies once.
#![cfg(feature = "sim")]
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use std::collections::BTreeMap;

use callbridge::sim::telnyx as sim;
use common::telnyx::TelnyxApp;
use reqwest::Method;
use serde_json::{Value, json};

const WEBHOOK_SECRET: &str = "soak-webhook-secret";

fn long() -> bool {
    std::env::var("CALLBRIDGE_SOAK").as_deref() == Ok("long")
}

/// Resolves `#/components/schemas/…` references.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => resolve(
            doc,
            doc.pointer(reference.trim_start_matches('#'))
                .unwrap_or(&Value::Null),
        ),
        None => schema,
    }
}

/// A plausible body for `schema`: every property present, strings plausible by name.
fn example(doc: &Value, schema: &Value, name: &str, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if depth > 8 {
        return Value::Null;
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|v| v.first())
    {
        return first.clone();
    }
    for combinator in ["oneOf", "anyOf", "allOf"] {
        if let Some(options) = schema.get(combinator).and_then(Value::as_array) {
            let chosen = options
                .iter()
                .find(|o| resolve(doc, o).get("type") != Some(&json!("null")))
                .or(options.first());
            if let Some(chosen) = chosen {
                return example(doc, chosen, name, depth + 1);
            }
        }
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null")
            .to_owned(),
        _ if schema.get("properties").is_some() => "object".into(),
        _ => "null".into(),
    };
    match kind.as_str() {
        "object" => {
            let mut object = serde_json::Map::new();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (key, property) in properties {
                    object.insert(key.clone(), example(doc, property, key, depth + 1));
                }
            }
            Value::Object(object)
        }
        "array" => json!([example(
            doc,
            schema.get("items").unwrap_or(&Value::Null),
            name,
            depth + 1
        )]),
        "string" => json!(match (schema.get("format").and_then(Value::as_str), name) {
            (Some("uuid"), _) => uuid::Uuid::new_v4().to_string(),
            (Some("date-time"), _) => "2026-12-06T00:00:00Z".to_owned(),
            (_, "to" | "from" | "number") => "+14155550100".to_owned(),
            (_, "email") => "someone@example.com".to_owned(),
            (_, "source_language" | "target_language" | "language") => "en".to_owned(),
            _ => "soak".to_owned(),
        }),
        "integer" => json!(1),
        "number" => json!(1.0),
        "boolean" => json!(true),
        _ => Value::Null,
    }
}

/// JSON pointers of every string in `value`.
fn strings(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::String(_) => out.push(at),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                strings(item, format!("{at}/{key}"), out);
            }
        }
        _ => {}
    }
}

fn with_nul(value: &Value, pointer: &str) -> Value {
    let mut value = value.clone();
    let text = value.pointer_mut(pointer).unwrap();
    *text = json!(format!("{}\u{0}!", text.as_str().unwrap()));
    value
}

struct Case {
    name: String,
    content_type: &'static str,
    body: Vec<u8>,
    /// A NUL-in-a-string case: 422 naming `field` for API input, 2xx for webhooks.
    nul_field: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_on_every_write_route_never_answer_5xx() {
    let t = TelnyxApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "soak-key"),
        ("ASSEMBLYAI_API_BASE", "http://127.0.0.1:9"),
        ("ASSEMBLYAI_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("DEEPL_API_KEY", "soak-key:fx"),
        ("DEEPL_API_BASE", "http://127.0.0.1:9"),
        ("ELEVENLABS_API_KEY", "soak-key"),
        ("ELEVENLABS_API_BASE", "http://127.0.0.1:9"),
        // The sweep sends hundreds of bodies per route from one session: the per-user and
        // per-session rate limits (tests/limits.rs) would answer 429 before the body is read.
        ("REALTIME_TOKENS_PER_MIN", "10000"),
        ("RATE_LIMIT_SESSION_PER_MIN", "100000"),
        ("RATE_LIMIT_ANONYMOUS_PER_MIN", "100000"),
    ])
    .await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let me: Value = t.app.get_as(&ada, "/api/me").await.json().await.unwrap();
    let org = me["organisations"][0]["id"].as_str().unwrap().to_owned();
    let response = t.app.request_as(Method::POST, &ada, "/api/calls")
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send().await.unwrap();
    assert_eq!(response.status(), 201);
    let call: Value = response.json().await.unwrap();
    let call_id = call["id"].as_str().unwrap().to_owned();
    let dial = t.sim.commands_named("dial").into_iter().last().unwrap();
    let telnyx_template = t.sim.event(
        "call.answered",
        sim::call_payload(
            dial.call_control_id.as_deref().unwrap(),
            dial.body["client_state"].as_str(),
            "+14155550100",
            "+14155550123",
            "outgoing",
        ),
    );

    let doc: Value = t.app.get("/api/openapi.json").await.json().await.unwrap();
    let big = vec![b'a'; if long() { 20 } else { 2 } * 1024 * 1024];
    let rounds = if long() { 3 } else { 1 };

    // A connection per request: a server that answers 413 early closes the connection it
    // was reading, and a pooled client would reuse it for the next case.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut server_errors = Vec::new();
    let mut wrong = Vec::new();
    let mut requests = 0usize;
    let mut routes = 0usize;
    let mut webhook_nul_accepted = 0usize;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["post", "put", "patch"] {
            let Some(operation) = item.get(method) else {
                continue;
            };
            routes += 1;
            let concrete = path
                .replace("/api/orgs/{id}", &format!("/api/orgs/{org}"))
                .replace("/api/calls/{id}", &format!("/api/calls/{call_id}"))
                .replace("{id}", &uuid::Uuid::new_v4().to_string());
            let content = &operation["requestBody"]["content"];
            let declared: &'static str = if content.get("application/json").is_some() {
                "application/json"
            } else if let Some(kind) = content.as_object().and_then(|c| c.keys().next()) {
                Box::leak(kind.clone().into_boxed_str())
            } else {
                "application/json"
            };
            let schema = content[declared]["schema"].clone();
            let is_telnyx = path == "/webhooks/telnyx";
            let is_webhook = path.starts_with("/webhooks/");
            let base = if is_telnyx {
                telnyx_template.clone()
            } else if path == "/webhooks/assemblyai" {
                json!({"transcript_id": "soak-transcript", "status": "completed"})
            } else {
                example(&doc, &schema, "", 0)
            };

            let mut cases = vec![
                Case {
                    name: "malformed JSON".into(),
                    content_type: declared,
                    body: b"{\"a\": ".to_vec(),
                    nul_field: None,
                },
                Case {
                    name: "a JSON array".into(),
                    content_type: declared,
                    body: b"[1, \"two\", null]".to_vec(),
                    nul_field: None,
                },
                Case {
                    name: "an oversized body".into(),
                    content_type: declared,
                    body: big.clone(),
                    nul_field: None,
                },
                Case {
                    name: "bytes that are not UTF-8".into(),
                    content_type: declared,
                    body: b"{\"name\": \"\xff\xfe\xc0\"}".to_vec(),
                    nul_field: None,
                },
                Case {
                    name: "a form content type".into(),
                    content_type: "application/x-www-form-urlencoded",
                    body: b"name=soak&to=%2B1".to_vec(),
                    nul_field: None,
                },
                Case {
                    name: "text/plain".into(),
                    content_type: "text/plain",
                    body: b"\"soak\"".to_vec(),
                    nul_field: None,
                },
            ];
            if declared == "application/json" {
                let mut pointers = Vec::new();
                strings(&base, String::new(), &mut pointers);
                for pointer in pointers {
                    let mut body = with_nul(&base, &pointer);
                    if is_telnyx && pointer != "/data/id" {
                        body["data"]["id"] = json!(uuid::Uuid::new_v4().to_string());
                    }
                    cases.push(Case {
                        name: format!("NUL in {pointer}"),
                        content_type: declared,
                        body: serde_json::to_vec(&body).unwrap(),
                        nul_field: Some(pointer),
                    });
                }
            }

            for round in 0..rounds {
                for case in &cases {
                    let mut request = http
                        .request(
                            Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                            t.app.url(&concrete),
                        )
                        .header("cookie", format!("authjs.session-token={}", ada.token))
                        .header("origin", "https://app.example.com")
                        .header("content-type", case.content_type)
                        .header("x-org-id", &org)
                        .body(case.body.clone());
                    if is_telnyx {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs() as i64;
                        request = request
                            .header("telnyx-timestamp", now.to_string())
                            .header("telnyx-signature-ed25519", t.sim.sign(now, &case.body));
                    }
                    if path == "/webhooks/assemblyai" {
                        request = request.header("x-callbridge-webhook-secret", WEBHOOK_SECRET);
                    }
                    requests += 1;
                    let response = match request.send().await {
                        Ok(response) => response,
                        // The server may answer 413 and close before the whole body is sent.
                        Err(error) if case.body.len() == big.len() => {
                            *statuses.entry(0).or_default() += 1;
                            let _ = error;
                            continue;
                        }
                        Err(error) => panic!("{method} {path} {}: {error}", case.name),
                    };
                    let status = response.status().as_u16();
                    *statuses.entry(status).or_default() += 1;
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    let label = format!(
                        "{} {path} with {}: {status} {body}",
                        method.to_uppercase(),
                        case.name
                    );
                    if status >= 500 {
                        server_errors.push(label);
                        continue;
                    }
                    if let Some(field) = &case.nul_field {
                        if is_webhook {
                            if status != 200 {
                                wrong.push(format!("a verified webhook must be stored: {label}"));
                            } else if round == 0 {
                                // Later rounds re-send the same events: duplicates.
                                webhook_nul_accepted += 1;
                            }
                        } else if status == 422
                            && body["type"] == "urn:callbridge:problem:invalid-field"
                        {
                            if body["field"] != json!(field) {
                                wrong.push(format!("the 422 names the wrong field: {label}"));
                            }
                        } else if !matches!(status, 404 | 422) {
                            wrong.push(format!("NUL must be a 422: {label}"));
                        }
                    } else if status < 400 && !is_webhook && !concrete.ends_with("/hangup") {
                        wrong.push(format!("bad input accepted: {label}"));
                    }
                }
            }
        }
    }

    let healthz = t.app.get("/healthz").await.status();
    let readyz = t.app.get("/readyz").await.status();
    let stored: i64 = t
        .app
        .db()
        .await
        .query_one("select count(*) from webhook_inbox", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "soak bad_input: {routes} write routes, {requests} bad requests, {} 5xx; statuses {statuses:?} \
         (0 = connection closed after an early 413); {webhook_nul_accepted} signed webhooks with a NUL \
         accepted, {stored} inbox rows; healthz {healthz}, readyz {readyz}",
        server_errors.len(),
    );
    assert!(routes >= 10, "the sweep found the write routes: {routes}");
    assert!(
        server_errors.is_empty(),
        "5xx answers:\n{}",
        server_errors.join("\n")
    );
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert!(webhook_nul_accepted > 0);
    assert_eq!(
        stored as usize, webhook_nul_accepted,
        "each accepted webhook stored once"
    );
    assert_eq!((healthz.as_u16(), readyz.as_u16()), (200, 200));
}
