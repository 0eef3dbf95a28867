//! The guard that keeps `/api/openapi.json` (the frontend's contract, docs/API_CONTRACT.md)
//! true to the code. It reads the document the service serves and, for every operation in it:
//!
//! - checks the rules a generated client relies on (a unique camelCase `operationId`, a
//!   declared tag, every `{param}` of the path declared `in: path`, error answers as
//!   problem+json, a success answer);
//! - calls it against the real service with well-formed parameters in the declared locations
//!   and asserts that the answer is not a 400 and that its status and content type are
//!   documented for the operation;
//! - calls it again with one parameter malformed at a time (a non-UUID id or `X-Org-Id`, a
//!   non-integer `limit`, …), which must answer a documented 400: proof that the handler reads
//!   the parameter from where the document says;
//! - calls it without credentials when it declares the session, which must answer 401.
//!
//! It does so twice: with every provider simulated, and with none configured (the 503s).
//! A failure names the operation and says what to add; a new route usually needs nothing
//! here, only a body in [`body_for`] when its request body has no schema examples.
#![cfg(feature = "sim")]

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx::TelnyxSim;
use callbridge::sim::translation::{self as translation_sim, TranslationSim};
use common::TestApp;
use common::authjs::Session;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const ASSEMBLYAI_WEBHOOK_SECRET: &str = "contract-webhook-secret";
/// The number `claimPhoneNumber` claims during the walk.
const CLAIMED_IN_WALK: &str = "+14155550177";
const FRONTEND_ORIGIN: &str = "https://app.example.com";
/// The session cookie the requests carry (any accepted name would do).
const SESSION_COOKIE: &str = "authjs.session-token";

/// What the walk needs to call each operation with ids that exist.
struct Fixtures {
    session: Session,
    organisation_id: Uuid,
    call_id: Uuid,
    recording_id: Uuid,
    phone_number_id: Uuid,
    /// An E.164 number the organisation owns (for `from`).
    own_number: String,
    /// Members that the two removal operations remove.
    member_by_path: String,
    member_by_query: String,
    /// An address to invite.
    invitee_email: String,
    /// Invitations to the session's user (id, token) to accept and to decline.
    to_accept: (Uuid, String),
    to_decline: (Uuid, String),
    /// A pending invitation of the organisation, to revoke.
    to_revoke: Uuid,
    stream_token: String,
    debug_token: String,
    telnyx: Option<TelnyxSim>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn json_as(
    app: &TestApp,
    session: &Session,
    method: Method,
    path: &str,
    body: Value,
) -> Value {
    let response = app
        .request_as(method.clone(), session, path)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(
        status.is_success(),
        "fixture {method} {path}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap()
}

/// Invites `email` as a member; the invitation's id and accept token.
async fn invite(
    app: &TestApp,
    inviter: &Session,
    organisation_id: Uuid,
    email: &str,
) -> (Uuid, String) {
    let issued = json_as(
        app,
        inviter,
        Method::POST,
        &format!("/api/orgs/{organisation_id}/invitations"),
        json!({"email": email, "role": "member"}),
    )
    .await;
    (
        issued["id"].as_str().unwrap().parse().unwrap(),
        issued["token"].as_str().unwrap().to_owned(),
    )
}

async fn fixtures(app: &TestApp, telnyx: Option<TelnyxSim>) -> Fixtures {
    let session = app.sign_in("Contract").await;
    let me: Value = app.get_as(&session, "/api/me").await.json().await.unwrap();
    let organisation_id: Uuid = me["active_organisation_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let own_number = "+14155550100".to_owned();
    // Numbers come from the platform's Telnyx account: claimed through the API when Telnyx
    // is simulated (the operator holds them first), else stored as claimed.
    let phone_number_id = match &telnyx {
        Some(sim) => {
            sim.hold_number(&own_number, Some("sim-connection"));
            sim.hold_number(CLAIMED_IN_WALK, Some("sim-connection"));
            let number = json_as(
                app,
                &session,
                Method::POST,
                "/api/phone-numbers",
                json!({"number": own_number, "label": "contract"}),
            )
            .await;
            number["id"].as_str().unwrap().parse().unwrap()
        }
        None => {
            let origin = callbridge::calls::NumberOrigin {
                source: "account",
                telnyx_phone_number_id: None,
                telnyx_order_id: None,
            };
            callbridge::calls::add_number(
                &app.db().await,
                organisation_id.into(),
                &own_number,
                Some("contract"),
                origin,
            )
            .await
            .unwrap()
            .unwrap()
            .id
        }
    };

    // The number is an inbound line (stored, so reading it needs no translation engine).
    app.db()
        .await
        .execute(
            "insert into lines (phone_number_id, organisation_id, forward_to, caller_language,
                                agent_language, greeting, prompts, agent_timeout_secs)
             values ($1, $2, '+14155550111', 'es', 'en', 'Hello',
                     '[{\"language\": \"es\", \"greeting\": \"Hola\", \"apology\": \"Lo siento\"}]', 30)",
            &[&phone_number_id, &organisation_id],
        )
        .await
        .unwrap();

    // A dialled call: through the API when Telnyx is simulated, else stored as dialled.
    let call_id: Uuid = if telnyx.is_some() {
        let call = json_as(
            app,
            &session,
            Method::POST,
            "/api/calls",
            json!({"to": "+14155550123", "from": own_number, "source_language": "en", "target_language": "de"}),
        )
        .await;
        call["id"].as_str().unwrap().parse().unwrap()
    } else {
        let client = app.db().await;
        callbridge::calls::insert(
            &client,
            &callbridge::calls::NewCall {
                organisation_id: organisation_id.into(),
                direction: "outbound",
                from: &own_number,
                to: "+14155550123",
                source_language: Some("en"),
                target_language: Some("de"),
                voice_id: None,
                record: false,
                created_by: Some(&session.user_id),
                status: callbridge::calls::CallStatus::Dialing,
                telnyx_call_control_id: Some("v3:contract-test"),
                interpreted: false,
                original_audio: "off",
            },
        )
        .await
        .unwrap()
        .unwrap()
        .id
        .uuid()
    };

    let response = app
        .request_as(
            Method::POST,
            &session,
            &format!("/api/recordings?call_id={call_id}"),
        )
        .header("content-type", "audio/wav")
        .body(callbridge::sim::recordings::wav(500, 1, 8_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "fixture recording upload");
    let recording: Value = response.json().await.unwrap();
    let recording_id = recording["id"].as_str().unwrap().parse().unwrap();

    // Members join by invitation: invited by address, accepted with the token.
    let mut members = Vec::new();
    for name in ["Removed-by-path", "Removed-by-query"] {
        let user = app.sign_in(name).await;
        let (id, token) = invite(app, &session, organisation_id, &app.email_of(&user).await).await;
        json_as(
            app,
            &user,
            Method::POST,
            &format!("/api/invitations/{id}/accept"),
            json!({"token": token}),
        )
        .await;
        members.push(user.user_id);
    }
    let mut invitations = Vec::new();
    for name in ["Inviter-accepted", "Inviter-declined"] {
        let inviter = app.sign_in(name).await;
        let me: Value = app.get_as(&inviter, "/api/me").await.json().await.unwrap();
        let their_org: Uuid = me["active_organisation_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        invitations.push(invite(app, &inviter, their_org, &app.email_of(&session).await).await);
    }
    let revocable = format!("revocable-{}@example.com", Uuid::new_v4().simple());
    let (to_revoke, _) = invite(app, &session, organisation_id, &revocable).await;
    let invitee_email = format!("invitee-{}@example.com", Uuid::new_v4().simple());

    let secret = app.state.config.auth.secret.expose().as_bytes().to_vec();
    Fixtures {
        organisation_id,
        call_id,
        recording_id,
        phone_number_id,
        own_number,
        member_by_query: members.pop().unwrap(),
        member_by_path: members.pop().unwrap(),
        invitee_email,
        to_decline: invitations.pop().unwrap(),
        to_accept: invitations.pop().unwrap(),
        to_revoke,
        stream_token: callbridge::calls::stream_token::mint(&secret, call_id, now_unix() + 600),
        debug_token: callbridge::auth::debug_access::mint_debug_token(
            &secret,
            Duration::from_secs(600),
            now_unix(),
        ),
        session,
        telnyx,
    }
}

/// One operation of the document.
struct Operation {
    method: Method,
    path: String,
    id: String,
    value: Value,
}

impl Operation {
    fn label(&self) -> String {
        format!("{} {} ({})", self.method, self.path, self.id)
    }

    fn parameters(&self) -> Vec<&Value> {
        self.value["parameters"]
            .as_array()
            .map(|p| p.iter().collect())
            .unwrap_or_default()
    }

    fn documents(&self, status: u16) -> bool {
        let responses = &self.value["responses"];
        responses.get(status.to_string()).is_some()
            || responses.get(format!("{}XX", status / 100)).is_some()
            || responses.get("default").is_some()
    }

    fn content_types(&self, status: u16) -> Vec<String> {
        self.value["responses"][status.to_string()]["content"]
            .as_object()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn security_schemes(&self) -> HashSet<String> {
        self.value["security"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|r| r.keys().cloned())
            .collect()
    }

    fn is_websocket(&self) -> bool {
        self.value["responses"].get("101").is_some()
    }
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "patch", "delete", "head", "options"] {
            if let Some(value) = item.get(method) {
                all.push(Operation {
                    method: method.to_uppercase().parse().unwrap(),
                    path: path.clone(),
                    id: value["operationId"].as_str().unwrap_or_default().to_owned(),
                    value: value.clone(),
                });
            }
        }
    }
    // Removals last, so the resources the other operations address still exist; a
    // resource's parts (`…/{id}/line`) before the resource itself.
    all.sort_by_key(|op| {
        let delete = op.method == Method::DELETE;
        (
            delete,
            std::cmp::Reverse(if delete {
                op.path.matches('/').count()
            } else {
                0
            }),
        )
    });
    all
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn schema_types(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(types) => types.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

/// A value the schema accepts: its example, else one built from its type.
fn example(doc: &Value, schema: &Value) -> Value {
    let schema = resolve(doc, schema);
    if let Some(example) = schema.get("example") {
        return example.clone();
    }
    if let Some(first) = schema["examples"].get(0) {
        return first.clone();
    }
    if let Some(first) = schema["enum"].get(0) {
        return first.clone();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array()
            && let Some(option) = options
                .iter()
                .find(|o| !schema_types(resolve(doc, o)).contains(&"null"))
        {
            return example(doc, option);
        }
    }
    if let Some(parts) = schema["allOf"].as_array() {
        let mut merged = serde_json::Map::new();
        for part in parts {
            if let Value::Object(fields) = example(doc, part) {
                merged.extend(fields);
            }
        }
        return Value::Object(merged);
    }
    let types = schema_types(schema);
    let kind = types
        .iter()
        .find(|t| **t != "null")
        .copied()
        .unwrap_or("object");
    match kind {
        "string" => match schema["format"].as_str() {
            Some("uuid") => json!(Uuid::new_v4()),
            Some("date-time") => json!(chrono::Utc::now().to_rfc3339()),
            _ => json!("contract-test"),
        },
        "integer" | "number" => schema.get("minimum").cloned().unwrap_or(json!(1)),
        "boolean" => json!(false),
        "array" => json!([example(doc, &schema["items"])]),
        _ => {
            let mut object = serde_json::Map::new();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                object.insert(name.into(), example(doc, &schema["properties"][name]));
            }
            Value::Object(object)
        }
    }
}

/// A well-formed value for a parameter: the fixture it names, else its schema's example.
/// `None` leaves an optional parameter out.
fn parameter_value(doc: &Value, op: &Operation, parameter: &Value, f: &Fixtures) -> Option<String> {
    let name = parameter["name"].as_str().unwrap();
    let location = parameter["in"].as_str().unwrap();
    let required = parameter["required"].as_bool().unwrap_or(false);
    let resource = op.path.split('/').nth(2).unwrap_or_default();
    let fixture = match (location, name.to_ascii_lowercase().as_str()) {
        ("path", "id") => match resource {
            "calls" => Some(f.call_id.to_string()),
            "recordings" => Some(f.recording_id.to_string()),
            "orgs" => Some(f.organisation_id.to_string()),
            "phone-numbers" => Some(f.phone_number_id.to_string()),
            "invitations" if op.path.ends_with("/accept") => Some(f.to_accept.0.to_string()),
            "invitations" if op.path.ends_with("/decline") => Some(f.to_decline.0.to_string()),
            _ => None,
        },
        ("path", "invitation_id") => Some(f.to_revoke.to_string()),
        ("path", "user_id") => Some(f.member_by_path.clone()),
        ("path", "stream_token") => Some(f.stream_token.clone()),
        ("query", "user_id") => Some(f.member_by_query.clone()),
        ("query", "call_id") => Some(f.call_id.to_string()),
        ("query", "limit") => Some("1".into()),
        ("query", "status") => Some("dialing".into()),
        ("query", "after") | ("header", "last-event-id") => Some("0".into()),
        ("query", "version") => Some("1".into()),
        ("query", "encoding") => Some("pcm_s16le".into()),
        ("query", "sample_rate") => Some("16000".into()),
        ("header", "x-org-id") => Some(f.organisation_id.to_string()),
        ("header", "x-callbridge-webhook-secret") => Some(ASSEMBLYAI_WEBHOOK_SECRET.into()),
        _ => None,
    };
    if fixture.is_some() || !required {
        return fixture;
    }
    let value = match parameter.get("example") {
        Some(example) => example.clone(),
        None => example(doc, &parameter["schema"]),
    };
    Some(match value {
        Value::String(text) => text,
        other => other.to_string(),
    })
}

/// A malformed value for a parameter whose schema is more than a plain string.
fn malformed_value(doc: &Value, parameter: &Value) -> Option<&'static str> {
    let mut schema = resolve(doc, &parameter["schema"]);
    // `Option<T>` of a named schema: `oneOf: [null, T]`.
    for key in ["oneOf", "anyOf"] {
        if let Some(option) = schema[key]
            .as_array()
            .and_then(|options| options.iter().find(|o| o["type"] != "null"))
        {
            schema = resolve(doc, option);
        }
    }
    let types = schema_types(schema);
    if types.contains(&"integer") || types.contains(&"number") {
        return Some("not-a-number");
    }
    if schema.get("format").is_some() || schema.get("enum").is_some() {
        return Some("not-a-valid-value");
    }
    None
}

/// The request body of a well-formed call: `(content type, bytes)`.
fn body_for(doc: &Value, op: &Operation, f: &Fixtures) -> Option<(String, Vec<u8>)> {
    let content = op.value["requestBody"]["content"].as_object()?;
    let json_body = |value: Value| {
        Some((
            "application/json".to_owned(),
            value.to_string().into_bytes(),
        ))
    };
    match op.id.as_str() {
        "createOrganisation" => return json_body(json!({"name": "Contract test"})),
        "createInvitation" => {
            return json_body(json!({"email": f.invitee_email, "role": "member"}));
        }
        "acceptInvitation" => return json_body(json!({"token": f.to_accept.1})),
        "declineInvitation" => return json_body(json!({"token": f.to_decline.1})),
        "claimPhoneNumber" => {
            return json_body(json!({"number": CLAIMED_IN_WALK, "label": "second"}));
        }
        "putPhoneNumberLine" => {
            return json_body(
                json!({"forward_to": "+14155550111", "caller_language": "es",
                "agent_language": "en", "greeting": "Thank you for calling."}),
            );
        }
        "setDialingPolicy" => {
            return json_body(json!({"allowed_countries": ["US"], "min_role": "member"}));
        }
        "createCall" => {
            return json_body(json!({"to": "+14155550123", "from": f.own_number,
                "source_language": "en", "target_language": "de"}));
        }
        "createRecordingUploadUrl" => {
            return json_body(
                json!({"content_type": "audio/wav", "size_bytes": 1044, "call_id": f.call_id}),
            );
        }
        "completeRecordingUpload" => return json_body(json!({"version": 1})),
        "setActiveOrganisation" => return json_body(json!({"organisation_id": f.organisation_id})),
        "createRealtimeToken" => {
            return json_body(json!({"encoding": "pcm_s16le", "sample_rate": 16000}));
        }
        "translateTexts" => {
            return json_body(json!({"texts": ["Good morning"], "target_language": "de"}));
        }
        "synthesizeSpeech" => return json_body(json!({"text": "Good morning"})),
        "receiveAssemblyAiWebhook" => {
            return json_body(json!({"transcript_id": "contract-test", "status": "completed"}));
        }
        "receiveTelnyxWebhook" => {
            let envelope = match &f.telnyx {
                Some(sim) => sim.event(
                    "call.initiated",
                    json!({"call_control_id": "v3:contract-inbound",
                    "direction": "incoming", "from": "+14155550123", "to": "+14155550199"}),
                ),
                None => json!({"data": {"event_type": "call.initiated", "id": Uuid::new_v4()}}),
            };
            return json_body(envelope);
        }
        _ => {}
    }
    if content.contains_key("audio/wav") {
        return Some((
            "audio/wav".into(),
            callbridge::sim::recordings::wav(500, 1, 8_000),
        ));
    }
    let (content_type, media) = content.iter().next()?;
    Some((
        content_type.clone(),
        example(doc, &media["schema"]).to_string().into_bytes(),
    ))
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    WellFormed,
    /// The session operations without any credential.
    Anonymous,
    /// One parameter replaced by a malformed value.
    Malformed,
    /// A WebSocket operation called as plain HTTP.
    PlainHttp,
}

struct Call<'a> {
    variant: Variant,
    malformed: Option<(&'a str, &'a str)>,
}

async fn send(
    app: &TestApp,
    doc: &Value,
    op: &Operation,
    f: &Fixtures,
    call: Call<'_>,
) -> reqwest::Response {
    let mut path = op.path.clone();
    let mut query = Vec::new();
    let mut headers = reqwest::header::HeaderMap::new();
    for parameter in op.parameters() {
        let name = parameter["name"].as_str().unwrap();
        let value = match call.malformed {
            Some((malformed, bad)) if malformed == name => Some(bad.to_owned()),
            _ => parameter_value(doc, op, parameter, f),
        };
        let Some(value) = value else { continue };
        match parameter["in"].as_str().unwrap() {
            "path" => path = path.replace(&format!("{{{name}}}"), &value),
            "query" => query.push((name.to_owned(), value)),
            "header" => {
                headers.insert(
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            other => panic!("{}: parameters in {other} are not supported", op.label()),
        }
    }
    let mut url = url::Url::parse(&app.url(&path)).unwrap();
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(&query);
    }
    let mut request = app.client.request(op.method.clone(), url);
    let schemes = op.security_schemes();
    if call.variant != Variant::Anonymous {
        if schemes.contains(SESSION_COOKIE) {
            request = request
                .header("cookie", format!("{SESSION_COOKIE}={}", f.session.token))
                .header("origin", FRONTEND_ORIGIN);
        }
        if schemes.contains("debugToken") {
            request = request.header("x-debug-token", &f.debug_token);
        }
    }
    if op.is_websocket() && call.variant != Variant::PlainHttp {
        request = request
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    if let Some((content_type, body)) = body_for(doc, op, f) {
        if op.id == "receiveTelnyxWebhook"
            && let Some(sim) = &f.telnyx
        {
            let timestamp = now_unix() as i64;
            headers.insert("telnyx-timestamp", timestamp.to_string().parse().unwrap());
            headers.insert(
                "telnyx-signature-ed25519",
                sim.sign(timestamp, &body).parse().unwrap(),
            );
        }
        request = request.header("content-type", content_type).body(body);
    }
    request.headers(headers).send().await.unwrap()
}

/// Records a finding unless the answer is documented with a documented content type.
fn check_documented(
    op: &Operation,
    what: &str,
    response: &reqwest::Response,
    findings: &mut Vec<String>,
) {
    let status = response.status().as_u16();
    if !op.documents(status) {
        findings.push(format!(
            "{} {what} answered {status}, which its responses do not list: add \
             `(status = {status}, description = \"…\", body = Problem, content_type = \"application/problem+json\")` \
             to its #[utoipa::path] (or, if every route of its kind answers it, a rule in `http::openapi::shared_answers`)",
            op.label()
        ));
        return;
    }
    let sent = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
    let documented = op.content_types(status);
    if let Some(sent) = sent
        && !documented.is_empty()
        && !documented
            .iter()
            .any(|d| d.split(';').next().unwrap_or_default().trim() == sent)
    {
        findings.push(format!(
            "{} {what} answered {status} as `{sent}`, the document says {documented:?}",
            op.label()
        ));
    }
}

async fn walk(app: &TestApp, f: &Fixtures, pass: &str) -> (Vec<String>, BTreeMap<String, u16>) {
    let doc: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    let mut findings = Vec::new();
    let mut answered = BTreeMap::new();
    for op in operations(&doc) {
        let wellformed = send(
            app,
            &doc,
            &op,
            f,
            Call {
                variant: Variant::WellFormed,
                malformed: None,
            },
        )
        .await;
        let status = wellformed.status().as_u16();
        answered.insert(op.label(), status);
        if status == 400 {
            let body = wellformed.text().await.unwrap_or_default();
            findings.push(format!(
                "{} [{pass}] answered 400 to a request built from the document ({body}): a parameter is \
                 read from somewhere else than declared, or a required one is not declared; if the \
                 request body is the problem, give its schema examples or add it to `body_for`",
                op.label()
            ));
        } else {
            check_documented(
                &op,
                &format!("[{pass}] well-formed"),
                &wellformed,
                &mut findings,
            );
        }

        if op.security_schemes().contains(SESSION_COOKIE) {
            let response = send(
                app,
                &doc,
                &op,
                f,
                Call {
                    variant: Variant::Anonymous,
                    malformed: None,
                },
            )
            .await;
            if response.status() != 401 {
                findings.push(format!(
                    "{} [{pass}] declares the session but answered {} without one: if the route is \
                     public, write `security()` in its #[utoipa::path]",
                    op.label(),
                    response.status()
                ));
            }
            check_documented(
                &op,
                &format!("[{pass}] without a session"),
                &response,
                &mut findings,
            );
        }

        for parameter in op.parameters() {
            let Some(bad) = malformed_value(&doc, parameter) else {
                continue;
            };
            let name = parameter["name"].as_str().unwrap();
            let location = parameter["in"].as_str().unwrap();
            let response = send(
                app,
                &doc,
                &op,
                f,
                Call {
                    variant: Variant::Malformed,
                    malformed: Some((name, bad)),
                },
            )
            .await;
            if response.status() != 400 {
                findings.push(format!(
                    "{} [{pass}] answered {} to {location} parameter `{name}` = {bad:?} (400 expected): \
                     the handler does not read it from the {location}; fix its location \
                     (`#[into_params(parameter_in = Query)]` on an IntoParams struct read by `Query`)",
                    op.label(),
                    response.status()
                ));
            }
            check_documented(
                &op,
                &format!("[{pass}] with a malformed `{name}`"),
                &response,
                &mut findings,
            );
        }

        if op.is_websocket() {
            let response = send(
                app,
                &doc,
                &op,
                f,
                Call {
                    variant: Variant::PlainHttp,
                    malformed: None,
                },
            )
            .await;
            check_documented(
                &op,
                &format!("[{pass}] without the WebSocket handshake"),
                &response,
                &mut findings,
            );
        }
    }
    (findings, answered)
}

/// The rules a generated client relies on, checked on the document alone.
fn document_rules(doc: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    let camel = regex_lite_camel_case;
    let tags: HashSet<&str> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let mut seen = HashSet::new();
    if doc["servers"].as_array().is_none_or(|s| s.is_empty()) {
        findings.push("the document has no `servers` (openapi::finish sets it)".into());
    }
    for op in operations(doc) {
        let label = op.label();
        if !camel(&op.id) {
            findings.push(format!(
                "{label}: operationId `{}` is not camelCase verbNoun (e.g. `listCalls`; without `operation_id` utoipa uses the function's name): add `operation_id = \"…\"` to its #[utoipa::path]", op.id
            ));
        }
        if !seen.insert(op.id.clone()) {
            findings.push(format!("{label}: operationId `{}` is used twice", op.id));
        }
        match op.value["tags"].as_array().and_then(|t| t.first()).and_then(Value::as_str) {
            Some(tag) if tags.contains(tag) => {}
            other => findings.push(format!(
                "{label}: tag {other:?} is not one of the document's tags (declare it in `ApiDoc` in src/http/openapi.rs)"
            )),
        }
        if op.value.get("security").is_none() {
            findings.push(format!(
                "{label}: no `security` (openapi::finish should have set it)"
            ));
        }
        let declared: HashSet<&str> = op
            .parameters()
            .into_iter()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let templated: HashSet<&str> = op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        if declared != templated {
            findings.push(format!(
                "{label}: path parameters declared {declared:?} but the path has {templated:?}"
            ));
        }
        let responses = op.value["responses"].as_object().unwrap();
        if !responses
            .keys()
            .any(|s| s.starts_with('2') || s == "101" || s.starts_with('3'))
        {
            findings.push(format!("{label}: no success answer documented"));
        }
        for (status, response) in responses {
            if (status.starts_with('4') || status.starts_with('5'))
                && response["content"]["application/problem+json"]["schema"]["$ref"]
                    != "#/components/schemas/Problem"
            {
                findings.push(format!(
                    "{label}: {status} must be `body = Problem, content_type = \"application/problem+json\"`"
                ));
            }
        }
    }
    findings
}

/// `verbNoun`: a lower-case verb, then at least one capitalised word, letters and digits only.
/// A bare function name (`create`, `list_members`: utoipa's default) is not one.
fn regex_lite_camel_case(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_alphanumeric())
        && id.chars().any(|c| c.is_ascii_uppercase())
}

fn report(findings: &[String]) {
    assert!(
        findings.is_empty(),
        "the OpenAPI document does not match the service ({} findings; docs/API_CONTRACT.md says how to fix each):\n  - {}",
        findings.len(),
        findings.join("\n  - ")
    );
}

#[tokio::test]
async fn every_operation_answers_as_documented_with_every_provider_simulated() {
    let telnyx = TelnyxSim::start("sim-api-key", 0).await.unwrap();
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    let vendors = TranslationSim::start(0).await.unwrap();
    let (telnyx_base, telnyx_key) = (telnyx.api_base(), telnyx.public_key_base64());
    let (aai_url, vendors_base) = (aai.streaming_url(), vendors.base());
    let openai = format!("{vendors_base}/v1");
    let app = TestApp::spawn_with(&[
        ("TELNYX_API_KEY", "sim-api-key"),
        ("TELNYX_PUBLIC_KEY", telnyx_key.as_str()),
        ("TELNYX_CONNECTION_ID", "sim-connection"),
        ("TELNYX_API_BASE", telnyx_base.as_str()),
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", aai_url.as_str()),
        ("ASSEMBLYAI_WEBHOOK_SECRET", ASSEMBLYAI_WEBHOOK_SECRET),
        ("DEEPL_API_KEY", translation_sim::DEEPL_KEY),
        ("DEEPL_API_BASE", vendors_base.as_str()),
        ("OPENAI_API_KEY", translation_sim::OPENAI_KEY),
        ("OPENAI_API_BASE", openai.as_str()),
        ("ELEVENLABS_API_KEY", translation_sim::ELEVENLABS_KEY),
        ("ELEVENLABS_API_BASE", vendors_base.as_str()),
    ])
    .await;
    let f = fixtures(&app, Some(telnyx)).await;
    let (findings, answered) = walk(&app, &f, "providers simulated").await;
    eprintln!("well-formed answers: {answered:#?}");
    report(&findings);
    // With every provider present, each operation reaches its handler's success path.
    let failed: Vec<_> = answered
        .iter()
        .filter(|(_, status)| !(200..400).contains(*status) && **status != 101)
        .collect();
    assert!(
        failed.is_empty(),
        "operations that did not succeed with every provider simulated: {failed:?}"
    );
}

#[tokio::test]
async fn every_operation_answers_as_documented_with_no_provider_configured() {
    let app = TestApp::spawn().await;
    let f = fixtures(&app, None).await;
    let (findings, _) = walk(&app, &f, "no providers").await;
    report(&findings);
}

#[tokio::test]
async fn the_document_follows_the_contract_rules() {
    let app = TestApp::spawn().await;
    let doc: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    report(&document_rules(&doc));
    assert_eq!(
        doc["servers"][0]["url"], "http://127.0.0.1:8080",
        "servers come from PUBLIC_BASE_URL"
    );
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for cookie in callbridge::config::DEFAULT_SESSION_COOKIES {
        assert_eq!(schemes[*cookie]["in"], "cookie");
        assert_eq!(schemes[*cookie]["name"], *cookie);
    }
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
}

/// `edge-shim/openapi.json` is the committed copy of the document the shim's types and the
/// TypeScript client are generated from (and `make lint` lints): the document a development
/// container on the default `PUBLIC_BASE_URL` serves. `UPDATE_OPENAPI_SNAPSHOT=1` rewrites it.
#[tokio::test]
async fn the_committed_snapshot_is_the_served_document() {
    let app = TestApp::spawn_with(&[("PUBLIC_BASE_URL", "http://localhost:8080")]).await;
    let served: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    // The same text as `node edge-shim/scripts/openapi.mjs fetch` writes: the document's own
    // key order, two-space indents.
    let config = &app.state.config;
    let mut document = callbridge::http::api_routes(!config.is_production())
        .split_for_parts()
        .1;
    callbridge::http::openapi::finish(&mut document, config);
    assert_eq!(
        serde_json::to_value(&document).unwrap(),
        served,
        "the served document is finish()'s"
    );
    let mut text = serde_json::to_string_pretty(&document).unwrap();
    text.push('\n');
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-shim/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI_SNAPSHOT").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert!(
        std::fs::read_to_string(&path).unwrap() == text,
        "edge-shim/openapi.json is stale: run `make openapi` (it rewrites the snapshot and the \
         generated types) and commit them"
    );
}
