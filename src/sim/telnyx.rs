//! A Telnyx simulator: the Call Control API (docs/PROVIDERS.md §1.5) that records every command and
//! answers like Telnyx, with injectable faults; and a webhook sender that signs envelopes
//! with a test Ed25519 key exactly as Telnyx does (§1.1–1.2), with delivery scenarios:
//! duplicates, shuffled order, retries after a non-2xx.
//!
//! Numbers too: a market of numbers for sale (`GET /v2/available_phone_numbers`, with
//! Telnyx's filters and its `best_effort` widening), orders (`POST /v2/number_orders`, only
//! for numbers a search returned, as at Telnyx) and the account's inventory
//! (`GET /v2/phone_numbers`, whose `filter[phone_number]` is a digit substring match).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
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

/// A number the simulated account holds.
#[derive(Debug, Clone, Serialize)]
pub struct HeldNumber {
    pub id: String,
    pub phone_number: String,
    /// `active` unless set otherwise.
    pub status: String,
    pub connection_id: Option<String>,
    pub customer_reference: Option<String>,
}

/// A number for sale.
#[derive(Debug, Clone)]
struct MarketNumber {
    phone_number: String,
    locality: &'static str,
}

#[derive(Default)]
struct Inner {
    commands: Vec<RecordedCommand>,
    faults: VecDeque<Fault>,
    ended: HashMap<String, bool>,
    /// Once set: a hangup command makes the sim send that leg's `call.hangup` webhook here.
    hangup_webhooks: Option<String>,
    account: Vec<HeldNumber>,
    market: Vec<MarketNumber>,
    /// Numbers a search returned: only these can be ordered.
    searched: HashSet<String>,
    autopilot: Option<Autopilot>,
    /// Dialled calls the autopilot plays, and inbound calls to the service, by
    /// call_control_id.
    piloted: HashMap<String, PilotedCall>,
    /// What Telnyx would bill, by call_control_id: when its `call.answered` and then its
    /// `call.hangup` were first accepted by the service.
    billing: HashMap<String, (Option<std::time::Instant>, Option<std::time::Instant>)>,
    /// Numbers that ring until the dial's `timeout_secs` and are never answered.
    unanswered: HashSet<String>,
    /// How long a piloted call's `speak` plays before `call.speak.ended`.
    speak_duration: Option<Duration>,
    /// Where piloted dials' webhooks go instead of the dial's `webhook_url` (a test's
    /// service listens on a port its configured public URL does not name).
    webhooks_to: Option<String>,
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
    /// `outgoing` (we dialed it) or `incoming` (a caller dialed one of our numbers).
    direction: &'static str,
    /// The dial's ring timeout (Telnyx's default: 30 s).
    timeout: Duration,
}

/// What the market sells at start: ten San Francisco, five New York, five London and five
/// Berlin numbers (fictional ranges).
fn default_market() -> Vec<MarketNumber> {
    let mut market = Vec::new();
    let mut add = |prefix: &str, count: u32, locality: &'static str| {
        for i in 0..count {
            market.push(MarketNumber {
                phone_number: format!("{prefix}{i:02}"),
                locality,
            });
        }
    };
    add("+141555502", 10, "San Francisco");
    add("+121255502", 5, "New York");
    add("+4420794605", 5, "London");
    add("+49301234560", 5, "Berlin");
    market
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
            inner: Arc::new(Mutex::new(Inner {
                market: default_market(),
                ..Inner::default()
            })),
            signing: Arc::new(SigningKey::from_bytes(&TEST_SIGNING_SEED)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        };
        let router = Router::new()
            .route("/v2/calls", post(dial))
            .route("/v2/calls/{ccid}/actions/{action}", post(action))
            .route("/v2/available_phone_numbers", get(search_numbers))
            .route("/v2/number_orders", post(order_numbers))
            .route("/v2/phone_numbers", get(list_numbers))
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

    /// Like Telnyx, answer a hangup command with the leg's `call.hangup` webhook (with the
    /// dial's `client_state`), delivered to `webhook_url` (the service under test).
    pub fn send_hangup_webhooks(&self, webhook_url: &str) {
        self.lock().hangup_webhooks = Some(webhook_url.to_owned());
    }

    /// The dial of one leg of an interpreted call (`client_state` names the leg).
    pub fn dial_of_leg(&self, leg: &str) -> Option<RecordedCommand> {
        self.commands_named("dial").into_iter().find(|c| {
            c.body["client_state"]
                .as_str()
                .and_then(crate::providers::telnyx::decode_client_state_leg)
                .as_deref()
                == Some(leg)
        })
    }

    /// A leg's lifecycle events from its dial (initiated, answered, streaming.started,
    /// hangup by `hangup_source`).
    pub fn leg_lifecycle(&self, dial: &RecordedCommand, hangup_source: &str) -> Vec<Value> {
        let body = &dial.body;
        let mut events = outbound_lifecycle(
            self,
            dial.call_control_id.as_deref().unwrap_or_default(),
            body["client_state"].as_str().unwrap_or_default(),
            body["from"].as_str().unwrap_or_default(),
            body["to"].as_str().unwrap_or_default(),
        );
        if let Some(hangup) = events.last_mut() {
            hangup["data"]["payload"]["hangup_source"] = json!(hangup_source);
        }
        events
    }

    /// Puts `e164` in the account, active, attached to `connection_id` (what an operator
    /// does in Mission Control to add a number to the platform's pool). Off the market.
    pub fn hold_number(&self, e164: &str, connection_id: Option<&str>) {
        let mut inner = self.lock();
        inner.market.retain(|n| n.phone_number != e164);
        inner.account.retain(|n| n.phone_number != e164);
        inner.account.push(HeldNumber {
            id: uuid::Uuid::new_v4().to_string(),
            phone_number: e164.to_owned(),
            status: "active".into(),
            connection_id: connection_id.map(str::to_owned),
            customer_reference: None,
        });
    }

    /// What `callbridge sim` puts in the pool of `connection_id` at start, so a local user
    /// has numbers to claim.
    pub const DEV_POOL: [&'static str; 3] = ["+14155550100", "+14155550101", "+442079460100"];

    pub fn hold_dev_pool(&self, connection_id: &str) {
        for number in Self::DEV_POOL {
            self.hold_number(number, Some(connection_id));
        }
    }

    /// Offers `e164` for sale.
    pub fn offer_number(&self, e164: &str) {
        let mut inner = self.lock();
        if !inner.market.iter().any(|n| n.phone_number == e164) {
            inner.market.push(MarketNumber {
                phone_number: e164.to_owned(),
                locality: "Simulated",
            });
        }
    }

    /// The account's numbers now.
    pub fn held_numbers(&self) -> Vec<HeldNumber> {
        self.lock().account.clone()
    }

    /// Turns the autopilot on (or off with `None`) for calls dialled from now on.
    pub fn set_autopilot(&self, autopilot: Option<Autopilot>) {
        self.lock().autopilot = autopilot;
    }

    /// Delivers the piloted call's `call.hangup` once (whoever hangs up first).
    async fn pilot_hangup(&self, ccid: &str, source: &str) {
        self.pilot_hangup_with(ccid, source, "normal_clearing")
            .await
    }

    async fn pilot_hangup_with(&self, ccid: &str, source: &str, cause: &str) {
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
            call.direction,
        );
        if let Some(p) = payload.as_object_mut() {
            p.extend([
                ("hangup_cause".into(), json!(cause)),
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
        if self.lock().unanswered.contains(&call.to) {
            // Rings out: Telnyx ends the dial at its `timeout_secs`.
            tokio::time::sleep(call.timeout).await;
            self.pilot_hangup_with(&ccid, "callee", "timeout").await;
            return;
        }
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

    /// Piloted dials send their webhooks to `webhook_url`, whatever the dial named.
    pub fn deliver_webhooks_to(&self, webhook_url: &str) {
        self.lock().webhooks_to = Some(webhook_url.to_owned());
    }

    /// Calls to `e164` ring until the dial's `timeout_secs` and are never answered
    /// (`call.hangup` with cause `timeout`), with the autopilot on.
    pub fn never_answer(&self, e164: &str) {
        self.lock().unanswered.insert(e164.to_owned());
    }

    /// Piloted calls' `speak` commands play for `duration` (`call.speak.started`, then
    /// `call.speak.ended` with the command's `client_state`); off until set.
    pub fn speak_for(&self, duration: Duration) {
        self.lock().speak_duration = Some(duration);
    }

    /// A caller dials `to` (one of the service's numbers): `call.initiated` (incoming,
    /// parked) is delivered to `webhook_url`; the call is piloted from then on — answering
    /// it sends `call.answered` and `streaming.started`, a speak plays (see
    /// [`Self::speak_for`]), a hangup ends it. Returns its call_control_id.
    pub async fn inbound_call(&self, webhook_url: &str, from: &str, to: &str) -> String {
        let ccid = format!("v3:sim-in-{}", uuid::Uuid::new_v4().simple());
        self.lock().piloted.insert(
            ccid.clone(),
            PilotedCall {
                webhook_url: webhook_url.to_owned(),
                client_state: String::new(),
                from: from.to_owned(),
                to: to.to_owned(),
                direction: "incoming",
                timeout: Duration::from_secs(30),
            },
        );
        self.lock().ended.insert(ccid.clone(), false);
        let event = self.event(
            "call.initiated",
            call_payload(&ccid, None, from, to, "incoming"),
        );
        self.deliver_until_accepted(webhook_url, &event).await;
        ccid
    }

    /// The piloted party hangs up (`call.hangup`, source `caller` for an inbound call).
    pub async fn party_hangs_up(&self, ccid: &str) {
        let source = match self.lock().piloted.get(ccid).map(|c| c.direction) {
            Some("incoming") => "caller",
            _ => "callee",
        };
        self.pilot_hangup(ccid, source).await;
    }

    /// Our answer of a piloted inbound call: answered, then its stream started.
    async fn pilot_answer(self, ccid: String, client_state: String) {
        // Telnyx's webhook lands after its command answer has been read.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let call = {
            let mut inner = self.lock();
            let Some(call) = inner.piloted.get_mut(&ccid) else {
                return;
            };
            call.client_state = client_state;
            call.clone()
        };
        let base = call_payload(
            &ccid,
            Some(&call.client_state),
            &call.from,
            &call.to,
            "incoming",
        );
        let mut answered = base.clone();
        answered["codec"] = json!("PCMU");
        answered["state"] = json!("answered");
        let mut started = base;
        started["stream_id"] = json!(format!("stream-{ccid}"));
        for (kind, payload) in [("call.answered", answered), ("streaming.started", started)] {
            let event = self.event(kind, payload);
            self.deliver_until_accepted(&call.webhook_url, &event).await;
        }
    }

    /// A piloted call's speak: started at once, ended after the configured duration.
    async fn pilot_speak(self, ccid: String, client_state: Option<String>, duration: Duration) {
        let call = {
            let mut inner = self.lock();
            let Some(call) = inner.piloted.get_mut(&ccid) else {
                return;
            };
            // As at Telnyx, a command's client_state rides on every later webhook.
            if let Some(state) = client_state {
                call.client_state = state;
            }
            call.clone()
        };
        let payload = call_payload(
            &ccid,
            Some(&call.client_state),
            &call.from,
            &call.to,
            call.direction,
        );
        let started = self.event("call.speak.started", payload.clone());
        self.deliver_until_accepted(&call.webhook_url, &started)
            .await;
        tokio::time::sleep(duration).await;
        if self.lock().ended.get(&ccid).copied().unwrap_or(false) {
            return;
        }
        let mut ended_payload = payload;
        ended_payload["status"] = json!("completed");
        let ended = self.event("call.speak.ended", ended_payload);
        self.deliver_until_accepted(&call.webhook_url, &ended).await;
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
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            self.count_billing(envelope);
        }
        Ok(status)
    }

    fn count_billing(&self, envelope: &Value) {
        let data = &envelope["data"];
        let Some(ccid) = data["payload"]["call_control_id"].as_str() else {
            return;
        };
        let now = std::time::Instant::now();
        let mut inner = self.lock();
        let entry = inner.billing.entry(ccid.to_owned()).or_default();
        match data["event_type"].as_str() {
            Some("call.answered") => {
                entry.0.get_or_insert(now);
            }
            Some("call.hangup") if entry.0.is_some() => {
                entry.1.get_or_insert(now);
            }
            _ => {}
        }
    }

    /// For tests: the seconds each answered call leg was up, answer to hang-up as this
    /// simulator delivered them, by call control id — what Telnyx would bill.
    pub fn billed_call_seconds(&self) -> Vec<(String, f64)> {
        let inner = self.lock();
        let mut billed: Vec<(String, f64)> = inner
            .billing
            .iter()
            .filter_map(|(ccid, (answered, ended))| {
                Some((
                    ccid.clone(),
                    (ended.as_ref()?.duration_since(*answered.as_ref()?)).as_secs_f64(),
                ))
            })
            .collect();
        billed.sort_by(|a, b| a.0.cmp(&b.0));
        billed
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

/// `dial` and `answer` take the same recording fields, each with a closed set of values
/// (docs/TELNYX.md): anything else is a 422, as Telnyx answers it.
fn recording_fields_refused(body: &Value) -> Option<Response> {
    for (field, allowed) in [
        ("record", &["record-from-answer"][..]),
        ("record_channels", &["single", "dual"][..]),
        ("record_format", &["wav", "mp3"][..]),
    ] {
        if let Some(value) = body.get(field)
            && !value.as_str().is_some_and(|v| allowed.contains(&v))
        {
            return Some(telnyx_error(
                422,
                "10015",
                &format!("{field} must be one of {}", allowed.join(", ")),
            ));
        }
    }
    None
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
    if let Some(refused) = recording_fields_refused(&body) {
        return refused;
    }
    let ccid = format!("v3:sim-{}", uuid::Uuid::new_v4().simple());
    let mut inner = sim.lock();
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
    let webhook_url = inner.webhooks_to.clone().or_else(|| text("webhook_url"));
    if let (Some(autopilot), Some(webhook_url)) = (inner.autopilot, webhook_url) {
        inner.piloted.insert(
            ccid.clone(),
            PilotedCall {
                webhook_url,
                client_state: text("client_state").unwrap_or_default(),
                from: text("from").unwrap_or_default(),
                to: text("to").unwrap_or_default(),
                direction: "outgoing",
                timeout: Duration::from_secs(
                    body.get("timeout_secs")
                        .and_then(Value::as_u64)
                        .unwrap_or(30),
                ),
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
    let refused = (action == "answer")
        .then(|| recording_fields_refused(&recorded.body))
        .flatten();
    let mut inner = sim.lock();
    inner.commands.push(recorded);
    if inner.ended.get(&ccid).copied().unwrap_or(false) {
        return telnyx_error(422, "90018", "Call has already ended");
    }
    if let Some(refused) = refused {
        return refused;
    }
    let text = |key: &str| {
        inner
            .commands
            .last()
            .and_then(|c| c.body.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if action == "answer" && inner.piloted.contains_key(&ccid) {
        let client_state = text("client_state").unwrap_or_default();
        tokio::spawn(sim.clone().pilot_answer(ccid.clone(), client_state));
    }
    if action == "speak"
        && inner.piloted.contains_key(&ccid)
        && let Some(duration) = inner.speak_duration
    {
        let client_state = text("client_state");
        tokio::spawn(
            sim.clone()
                .pilot_speak(ccid.clone(), client_state, duration),
        );
    }
    if action == "hangup" {
        if inner.piloted.contains_key(&ccid) {
            drop(inner);
            let sim = sim.clone();
            tokio::spawn(async move { sim.pilot_hangup(&ccid, "caller").await });
        } else {
            inner.ended.insert(ccid.clone(), true);
            let dial = inner
                .commands
                .iter()
                .find(|c| c.action == "dial" && c.call_control_id.as_deref() == Some(&ccid))
                .cloned();
            if let (Some(url), Some(dial)) = (inner.hangup_webhooks.clone(), dial) {
                let sim = sim.clone();
                tokio::spawn(async move {
                    let mut hangup = sim.leg_lifecycle(&dial, "caller").pop().unwrap_or_default();
                    hangup["data"]["payload"]["hangup_cause"] = json!("normal_clearing");
                    let _ = sim.deliver(&url, &hangup).await;
                });
            }
        }
    }
    Json(json!({"data": {"result": "ok"}})).into_response()
}

async fn list_commands(State(sim): State<TelnyxSim>) -> Json<Vec<RecordedCommand>> {
    Json(sim.commands())
}

fn digits_after(e164: &str, calling_code: &str) -> String {
    e164.trim_start_matches('+')
        .get(calling_code.len()..)
        .unwrap_or_default()
        .to_owned()
}

fn sim_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn validation_error(code: &str, title: &str, detail: &str, pointer: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(
            json!({"errors": [{"code": code, "title": title, "detail": detail,
                                "source": {"pointer": pointer}}]}),
        ),
    )
        .into_response()
}

fn record(sim: &TelnyxSim, action: &str, body: Value) {
    sim.lock().commands.push(RecordedCommand {
        action: action.into(),
        call_control_id: None,
        body,
    });
}

/// `GET /v2/available_phone_numbers` with `filter[country_code]` (required),
/// `filter[national_destination_code]`, `filter[phone_number][starts_with|contains|ends_with]`,
/// `filter[locality]` and `filter[limit]`.
async fn search_numbers(
    State(sim): State<TelnyxSim>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    record(&sim, "search_numbers", json!(query));
    if let Some(response) = check(&sim, &headers).await {
        return response;
    }
    let Some(country) = query
        .get("filter[country_code]")
        .map(|c| c.to_ascii_uppercase())
    else {
        return validation_error(
            "10015",
            "Bad Request",
            "filter[country_code] is required",
            "/filter/country_code",
        );
    };
    let limit: usize = query
        .get("filter[limit]")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let filter = |key: &str| query.get(key).map(String::as_str);
    let mut inner = sim.lock();
    let in_country: Vec<MarketNumber> = inner
        .market
        .iter()
        .filter(|n| {
            crate::calls::destinations::classify(&n.phone_number)
                .is_some_and(|d| d.country == country)
        })
        .cloned()
        .collect();
    let exact: Vec<&MarketNumber> = in_country
        .iter()
        .filter(|n| {
            let Some(d) = crate::calls::destinations::classify(&n.phone_number) else {
                return false;
            };
            let national = digits_after(&n.phone_number, d.calling_code);
            let (ndc, rest) = match filter("filter[national_destination_code]") {
                Some(ndc) if d.calling_code == "1" => (
                    national.starts_with(ndc),
                    national.get(3..).unwrap_or_default(),
                ),
                Some(_) => (false, national.as_str()),
                None => (true, national.as_str()),
            };
            ndc && filter("filter[phone_number][starts_with]").is_none_or(|p| rest.starts_with(p))
                && filter("filter[phone_number][contains]").is_none_or(|p| rest.contains(p))
                && filter("filter[phone_number][ends_with]").is_none_or(|p| rest.ends_with(p))
                && filter("filter[locality]").is_none_or(|l| n.locality.eq_ignore_ascii_case(l))
        })
        .take(limit)
        .collect();
    // Like Telnyx: when nothing matches, nearby numbers of the country, marked best effort.
    let best_effort = exact.is_empty();
    let results: Vec<&MarketNumber> = if best_effort {
        in_country.iter().take(limit.min(3)).collect()
    } else {
        exact
    };
    let data: Vec<Value> = results
        .iter()
        .map(|n| {
            json!({
                "record_type": "available_phone_number",
                "phone_number": n.phone_number,
                "vanity_format": "",
                "best_effort": best_effort,
                "quickship": true,
                "reservable": true,
                "region_information": [
                    {"region_type": "country_code", "region_name": country},
                    {"region_type": "location", "region_name": n.locality},
                ],
                "cost_information": {"upfront_cost": "1.00", "monthly_cost": "1.00", "currency": "USD"},
                "features": [{"name": "voice"}, {"name": "sms"}, {"name": "emergency"}],
            })
        })
        .collect();
    let numbers: Vec<String> = results.iter().map(|n| n.phone_number.clone()).collect();
    inner.searched.extend(numbers);
    let meta = json!({"total_results": data.len(),
                      "best_effort_results": if best_effort { data.len() } else { 0 }});
    Json(json!({"data": data, "meta": meta, "metadata": meta})).into_response()
}

/// `POST /v2/number_orders`: every number must be for sale and returned by a search.
async fn order_numbers(
    State(sim): State<TelnyxSim>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&sim, "order_numbers", body.clone());
    if let Some(response) = check(&sim, &headers).await {
        return response;
    }
    let wanted: Vec<String> = body
        .get("phone_numbers")
        .and_then(Value::as_array)
        .map(|numbers| {
            numbers
                .iter()
                .filter_map(|n| n.get("phone_number").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if wanted.is_empty() {
        return validation_error(
            "10015",
            "Bad Request",
            "phone_numbers must list at least one phone_number",
            "/phone_numbers",
        );
    }
    let connection_id = body
        .get("connection_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let customer_reference = body
        .get("customer_reference")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut inner = sim.lock();
    for number in &wanted {
        let for_sale = inner.market.iter().any(|n| &n.phone_number == number);
        if !for_sale || !inner.searched.contains(number) {
            return validation_error(
                "10002",
                "Invalid phone number",
                &format!("{number} is not available for purchase; search for it first"),
                "/phone_numbers",
            );
        }
    }
    let order_id = uuid::Uuid::new_v4().to_string();
    let now = sim_now();
    let mut ordered = Vec::new();
    for number in &wanted {
        inner.market.retain(|n| &n.phone_number != number);
        inner.searched.remove(number);
        inner.account.push(HeldNumber {
            id: uuid::Uuid::new_v4().to_string(),
            phone_number: number.clone(),
            status: "active".into(),
            connection_id: connection_id.clone(),
            customer_reference: customer_reference.clone(),
        });
        ordered.push(json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "record_type": "number_order_phone_number",
            "phone_number": number,
            "regulatory_requirements": [],
            "requirements_met": true,
            "status": "success",
        }));
    }
    Json(json!({"data": {
        "id": order_id,
        "record_type": "number_order",
        "phone_numbers_count": ordered.len(),
        "connection_id": connection_id,
        "messaging_profile_id": null,
        "billing_group_id": null,
        "phone_numbers": ordered,
        "sub_number_orders_ids": [],
        "status": "success",
        "customer_reference": customer_reference,
        "created_at": now,
        "updated_at": now,
        "requirements_met": true,
    }}))
    .into_response()
}

/// `GET /v2/phone_numbers` with `filter[phone_number]` (digits, a substring match; anything
/// else matches nothing), `filter[connection_id]`, `filter[status]`, `page[number|size]`.
async fn list_numbers(
    State(sim): State<TelnyxSim>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    record(&sim, "list_numbers", json!(query));
    if let Some(response) = check(&sim, &headers).await {
        return response;
    }
    let size: usize = query
        .get("page[size]")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    if !(1..=250).contains(&size) {
        return validation_error(
            "10015",
            "Bad Request",
            "page[size] must be between 1 and 250",
            "/page/size",
        );
    }
    let page: usize = query
        .get("page[number]")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let digits = query.get("filter[phone_number]");
    let inner = sim.lock();
    let matching: Vec<&HeldNumber> = inner
        .account
        .iter()
        .filter(|n| {
            digits.is_none_or(|d| {
                d.len() >= 3
                    && d.bytes().all(|b| b.is_ascii_digit())
                    && n.phone_number.contains(d.as_str())
            }) && query
                .get("filter[connection_id]")
                .is_none_or(|c| n.connection_id.as_ref() == Some(c))
                && query.get("filter[status]").is_none_or(|s| &n.status == s)
        })
        .collect();
    let now = sim_now();
    let data: Vec<Value> = matching
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|n| {
            json!({
                "id": n.id,
                "record_type": "phone_number",
                "phone_number": n.phone_number,
                "status": n.status,
                "connection_id": n.connection_id,
                "connection_name": n.connection_id.as_ref().map(|c| format!("Call Control App {c}")),
                "customer_reference": n.customer_reference,
                "tags": [],
                "country_iso_alpha2": crate::calls::destinations::classify(&n.phone_number).map(|d| d.country),
                "phone_number_type": "local",
                "purchased_at": now,
                "created_at": now,
                "updated_at": now,
            })
        })
        .collect();
    let total = matching.len();
    Json(json!({"data": data, "meta": {
        "total_pages": total.div_ceil(size).max(1),
        "total_results": total,
        "page_number": page,
        "page_size": size,
    }}))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::recording_fields_refused;
    use serde_json::json;

    #[test]
    fn recording_fields_take_telnyx_values_only() {
        assert!(recording_fields_refused(&json!({"to": "+1"})).is_none());
        assert!(
            recording_fields_refused(&json!({"record": "record-from-answer",
                "record_channels": "dual", "record_format": "wav"}))
            .is_none()
        );
        for bad in [
            json!({"record": true}),
            json!({"record": "record-from-ringing"}),
            json!({"record_channels": "stereo"}),
            json!({"record_format": "ogg"}),
        ] {
            let refused = recording_fields_refused(&bad).expect("refused");
            assert_eq!(refused.status(), 422, "{bad}");
        }
    }
}
