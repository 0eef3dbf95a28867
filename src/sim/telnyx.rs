//! A Telnyx simulator: the Call Control API (docs/PROVIDERS.md §1.5) that records every command and
//! answers like Telnyx, with injectable faults; and a webhook sender that signs envelopes
//! with a test Ed25519 key exactly as Telnyx does (§1.1–1.2), with delivery scenarios:
//! duplicates, shuffled order, retries after a non-2xx.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey};
use rand::seq::SliceRandom as _;
use serde::Serialize;
use serde_json::{Value, json};

/// The simulator's fixed test key. Never a production key.
pub const TEST_SIGNING_SEED: [u8; 32] = *b"callbridge-telnyx-sim-test-key!!";

#[derive(Debug, Clone, Serialize)]
pub struct RecordedCommand {
    /// `dial`, `answer`, `hangup`, `streaming_start`, …
    pub action: String,
    pub call_control_id: Option<String>,
    pub body: Value,
}

/// The next responses the API gives, in order, before behaving normally again.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and a Telnyx-shaped error body.
    Status(u16),
    /// 422 with code 90018: "call has already ended".
    CallEnded,
    /// Wait before answering normally (client timeouts).
    Delay(Duration),
}

#[derive(Default)]
struct Inner {
    commands: Vec<RecordedCommand>,
    faults: VecDeque<Fault>,
    ended: HashMap<String, bool>,
    autopilot: Option<Autopilot>,
    /// Dialled calls the autopilot plays, by call_control_id.
    piloted: HashMap<String, PilotedCall>,
}

/// Plays the far end of every dialled call, as Telnyx and a person answering would: the
/// lifecycle webhooks go to the dial's `webhook_url`, signed, on their own. This is what
/// lets `callbridge sim` + `make dev` take a call through its whole life with nothing else
/// driving it (tests that script deliveries themselves leave it off).
#[derive(Debug, Clone, Copy)]
pub struct Autopilot {
    /// Ringing: `call.initiated` at once, `call.answered` (+ `streaming.started`) after this.
    pub answer_after: Duration,
    /// The callee hangs up this long after answering; `None` waits for our hangup command.
    pub hangup_after: Option<Duration>,
}

#[derive(Debug, Clone)]
struct PilotedCall {
    webhook_url: String,
    client_state: String,
    from: String,
    to: String,
}

#[derive(Clone)]
pub struct TelnyxSim {
    pub address: SocketAddr,
    api_key: String,
    inner: Arc<Mutex<Inner>>,
    signing: Arc<SigningKey>,
    http: reqwest::Client,
}

impl TelnyxSim {
    /// Starts the Call Control API on `127.0.0.1:port` (0 = any free port).
    pub async fn start(api_key: &str, port: u16) -> std::io::Result<Self> {
        crate::tls::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let sim = Self {
            address: listener.local_addr()?,
            api_key: api_key.to_owned(),
            inner: Arc::default(),
            signing: Arc::new(SigningKey::from_bytes(&TEST_SIGNING_SEED)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        };
        let router = Router::new()
            .route("/v2/calls", post(dial))
            .route("/v2/calls/{ccid}/actions/{action}", post(action))
            .route("/_sim/commands", get(list_commands))
            .with_state(sim.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(sim)
    }

    /// `TELNYX_API_BASE` for the service under test.
    pub fn api_base(&self) -> String {
        format!("http://{}/v2", self.address)
    }

    /// `TELNYX_PUBLIC_KEY`: base64 of the raw 32-byte verifying key.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.signing.verifying_key().as_bytes())
    }

    pub fn commands(&self) -> Vec<RecordedCommand> {
        self.lock().commands.clone()
    }

    pub fn commands_named(&self, action: &str) -> Vec<RecordedCommand> {
        self.commands()
            .into_iter()
            .filter(|c| c.action == action)
            .collect()
    }

    /// Turns the autopilot on (or off with `None`) for calls dialled from now on.
    pub fn set_autopilot(&self, autopilot: Option<Autopilot>) {
        self.lock().autopilot = autopilot;
    }

    /// Delivers the piloted call's `call.hangup` once (whoever hangs up first).
    async fn pilot_hangup(&self, ccid: &str, source: &str) {
        let call = {
            let mut inner = self.lock();
            if inner.ended.insert(ccid.to_owned(), true) == Some(true) {
                return;
            }
            inner.piloted.get(ccid).cloned()
        };
        let Some(call) = call else { return };
        let mut payload = call_payload(
            ccid,
            Some(&call.client_state),
            &call.from,
            &call.to,
            "outgoing",
        );
        if let Some(p) = payload.as_object_mut() {
            p.extend([
                ("hangup_cause".into(), json!("normal_clearing")),
                ("hangup_source".into(), json!(source)),
                ("sip_hangup_cause".into(), json!("200")),
                ("state".into(), json!("hangup")),
            ]);
        }
        let event = self.event("call.hangup", payload);
        self.deliver_until_accepted(&call.webhook_url, &event).await;
    }

    /// Re-delivers until a 2xx, as Telnyx does (bounded: 20 tries, 250 ms apart).
    async fn deliver_until_accepted(&self, webhook_url: &str, envelope: &Value) {
        let mut envelope = envelope.clone();
        for attempt in 1..=20u32 {
            envelope["meta"]["attempt"] = json!(attempt);
            envelope["meta"]["delivered_to"] = json!(webhook_url);
            match self.deliver(webhook_url, &envelope).await {
                Ok(status) if (200..300).contains(&status) => return,
                Ok(status) => tracing::warn!(status, webhook_url, "simulated webhook refused"),
                Err(error) => {
                    tracing::warn!(%error, webhook_url, "simulated webhook not delivered")
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The piloted call's ringing, answer and (when configured) the callee's hang-up.
    async fn pilot(self, ccid: String, autopilot: Autopilot) {
        let Some(call) = self.lock().piloted.get(&ccid).cloned() else {
            return;
        };
        // Telnyx's first webhook usually lands after its dial answer has been read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // initiated, then (after ringing) answered and streaming.started; hangup is separate.
        // Each event is made when it happens, so its occurred_at is true.
        let lifecycle =
            || outbound_lifecycle(&self, &ccid, &call.client_state, &call.from, &call.to);
        self.deliver_until_accepted(&call.webhook_url, &lifecycle()[0])
            .await;
        tokio::time::sleep(autopilot.answer_after).await;
        if self.lock().ended.get(&ccid).copied().unwrap_or(false) {
            return;
        }
        for event in &lifecycle()[1..3] {
            self.deliver_until_accepted(&call.webhook_url, event).await;
        }
        if let Some(after) = autopilot.hangup_after {
            tokio::time::sleep(after).await;
            self.pilot_hangup(&ccid, "callee").await;
        }
    }

    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A webhook v2 envelope (docs/PROVIDERS.md §1.2) with a fresh event id.
    pub fn event(&self, event_type: &str, payload: Value) -> Value {
        json!({
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": uuid::Uuid::new_v4().to_string(),
                "occurred_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "payload": payload,
            },
            "meta": { "attempt": 1, "delivered_to": "" }
        })
    }

    /// Signs `body` at `timestamp` as Telnyx does: Ed25519 over `"{timestamp}|{body}"`.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let mut message = timestamp.to_string().into_bytes();
        message.push(b'|');
        message.extend_from_slice(body);
        STANDARD.encode(self.signing.sign(&message).to_bytes())
    }

    /// Delivers one envelope, signed now. Returns the HTTP status.
    pub async fn deliver(&self, webhook_url: &str, envelope: &Value) -> reqwest::Result<u16> {
        let body = serde_json::to_vec(envelope).expect("JSON");
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let response = self
            .http
            .post(webhook_url)
            .header("content-type", "application/json")
            .header("telnyx-timestamp", timestamp.to_string())
            .header("telnyx-signature-ed25519", self.sign(timestamp, &body))
            .body(body)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// Delivers like Telnyx under load: every event possibly twice, in a shuffled order, and
    /// re-delivered (with `meta.attempt` incremented) until a 2xx, up to `max_attempts`.
    pub async fn deliver_scenario(
        &self,
        webhook_url: &str,
        events: &[Value],
        delivery: Delivery,
    ) -> reqwest::Result<Vec<u16>> {
        let mut queue: Vec<Value> = events.to_vec();
        if delivery.duplicate {
            queue.extend(events.iter().cloned());
        }
        if delivery.shuffle {
            queue.shuffle(&mut rand::rng());
        }
        let mut statuses = Vec::new();
        for mut envelope in queue {
            for attempt in 1..=delivery.max_attempts.max(1) {
                envelope["meta"]["attempt"] = json!(attempt);
                let status = self.deliver(webhook_url, &envelope).await?;
                statuses.push(status);
                if (200..300).contains(&status) {
                    break;
                }
                tokio::time::sleep(delivery.retry_delay).await;
            }
        }
        Ok(statuses)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub duplicate: bool,
    pub shuffle: bool,
    pub max_attempts: u32,
    pub retry_delay: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            duplicate: false,
            shuffle: false,
            max_attempts: 1,
            retry_delay: Duration::from_millis(50),
        }
    }
}

/// The common payload fields of call events (docs/PROVIDERS.md §1.2).
pub fn call_payload(
    call_control_id: &str,
    client_state: Option<&str>,
    from: &str,
    to: &str,
    direction: &str,
) -> Value {
    json!({
        "call_control_id": call_control_id,
        "call_leg_id": format!("leg-{call_control_id}"),
        "call_session_id": format!("session-{call_control_id}"),
        "connection_id": "sim-connection",
        "client_state": client_state,
        "from": from,
        "to": to,
        "direction": direction,
        "state": if direction == "incoming" { "parked" } else { "bridging" },
    })
}

/// An outbound call's lifecycle, in the order Telnyx usually sends it.
pub fn outbound_lifecycle(
    sim: &TelnyxSim,
    ccid: &str,
    client_state: &str,
    from: &str,
    to: &str,
) -> Vec<Value> {
    let base = call_payload(ccid, Some(client_state), from, to, "outgoing");
    let with = |extra: Value| {
        let mut payload = base.clone();
        if let (Some(p), Value::Object(e)) = (payload.as_object_mut(), extra) {
            p.extend(e);
        }
        payload
    };
    vec![
        sim.event("call.initiated", base.clone()),
        sim.event("call.answered", with(json!({"codec": "PCMU", "sampling_rate": 8000}))),
        sim.event("streaming.started", with(json!({"stream_id": format!("stream-{ccid}")}))),
        sim.event("call.hangup", with(json!({"hangup_cause": "normal_clearing", "hangup_source": "callee", "sip_hangup_cause": "200", "state": "hangup"}))),
    ]
}

fn telnyx_error(status: u16, code: &str, title: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({"errors": [{"code": code, "title": title, "detail": title}]})),
    )
        .into_response()
}

async fn check(sim: &TelnyxSim, headers: &HeaderMap) -> Option<Response> {
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", sim.api_key));
    if !authorised {
        return Some(telnyx_error(401, "10009", "Authentication failed"));
    }
    let fault = sim.lock().faults.pop_front();
    match fault {
        None => None,
        Some(Fault::Status(status)) => Some(telnyx_error(status, "10007", "Simulated failure")),
        Some(Fault::CallEnded) => Some(telnyx_error(422, "90018", "Call has already ended")),
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            None
        }
    }
}

async fn dial(
    State(sim): State<TelnyxSim>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(response) = check(&sim, &headers).await {
        sim.lock().commands.push(RecordedCommand {
            action: "dial".into(),
            call_control_id: None,
            body,
        });
        return response;
    }
    for required in ["connection_id", "from", "to"] {
        if body.get(required).is_none() {
            return telnyx_error(422, "10015", &format!("{required} is required"));
        }
    }
    let ccid = format!("v3:sim-{}", uuid::Uuid::new_v4().simple());
    let mut inner = sim.lock();
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
    if let (Some(autopilot), Some(webhook_url)) = (inner.autopilot, text("webhook_url")) {
        inner.piloted.insert(
            ccid.clone(),
            PilotedCall {
                webhook_url,
                client_state: text("client_state").unwrap_or_default(),
                from: text("from").unwrap_or_default(),
                to: text("to").unwrap_or_default(),
            },
        );
        // After this answer is sent: the service stores the call_control_id first.
        tokio::spawn(sim.clone().pilot(ccid.clone(), autopilot));
    }
    inner.commands.push(RecordedCommand {
        action: "dial".into(),
        call_control_id: Some(ccid.clone()),
        body,
    });
    inner.ended.insert(ccid.clone(), false);
    Json(json!({"data": {
        "call_control_id": ccid, "call_leg_id": format!("leg-{ccid}"),
        "call_session_id": format!("session-{ccid}"), "is_alive": true, "record_type": "call"
    }}))
    .into_response()
}

async fn action(
    State(sim): State<TelnyxSim>,
    Path((ccid, action)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let recorded = RecordedCommand {
        action: action.clone(),
        call_control_id: Some(ccid.clone()),
        body,
    };
    if let Some(response) = check(&sim, &headers).await {
        sim.lock().commands.push(recorded);
        return response;
    }
    let mut inner = sim.lock();
    inner.commands.push(recorded);
    if inner.ended.get(&ccid).copied().unwrap_or(false) {
        return telnyx_error(422, "90018", "Call has already ended");
    }
    if action == "hangup" {
        if inner.piloted.contains_key(&ccid) {
            drop(inner);
            let sim = sim.clone();
            tokio::spawn(async move { sim.pilot_hangup(&ccid, "caller").await });
        } else {
            inner.ended.insert(ccid, true);
        }
    }
    Json(json!({"data": {"result": "ok"}})).into_response()
}

async fn list_commands(State(sim): State<TelnyxSim>) -> Json<Vec<RecordedCommand>> {
    Json(sim.commands())
}
