//! Telnyx: the Call Control API client and webhook signature verification.
//!
//! docs/PROVIDERS.md §1.1 (signatures: Ed25519 over `"{timestamp}|{raw body}"`, ±300 s), §1.2
//! (envelope), §1.5 (commands; `command_id` makes retries harmless; 422/90018 = call ended).
//! Numbers: search (`GET /available_phone_numbers`), the account's inventory
//! (`GET /phone_numbers`) and orders (`POST /number_orders`), docs/TELNYX.md.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use serde_json::{Value, json};
use url::Url;

use crate::config::{Secret, TelnyxConfig};
use crate::ids::CallId;
use crate::retry::{self, Failure, Policy};

/// `abs(now - timestamp)` beyond this is refused, in both directions (current SDKs).
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 300;
pub const SIGNATURE_HEADER: &str = "telnyx-signature-ed25519";
pub const TIMESTAMP_HEADER: &str = "telnyx-timestamp";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing telnyx-signature-ed25519 or telnyx-timestamp header")]
    Missing,
    #[error("telnyx-timestamp is not unix seconds")]
    BadTimestamp,
    #[error("telnyx-timestamp is more than 300 s away from now")]
    Stale,
    #[error("the signature is not base64 of 64 bytes")]
    BadEncoding,
    #[error("the signature does not verify")]
    Invalid,
}

#[derive(Clone)]
pub struct WebhookVerifier {
    key: VerifyingKey,
}

impl WebhookVerifier {
    /// `TELNYX_PUBLIC_KEY`: base64 of the raw 32-byte key (validated at start-up).
    pub fn from_base64(public_key: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(public_key.trim())
            .map_err(|e| e.to_string())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the key must be 32 bytes".to_string())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())?;
        Ok(Self { key })
    }

    /// Checks the timestamp window first, then the signature over the untouched body.
    pub fn verify(
        &self,
        timestamp: Option<&[u8]>,
        signature: Option<&[u8]>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), SignatureError> {
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(SignatureError::Missing);
        };
        if timestamp.is_empty() || timestamp.len() > 12 || !timestamp.iter().all(u8::is_ascii_digit)
        {
            return Err(SignatureError::BadTimestamp);
        }
        let seconds: i64 = std::str::from_utf8(timestamp)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(SignatureError::BadTimestamp)?;
        if (now_unix - seconds).abs() > TIMESTAMP_TOLERANCE_SECS {
            return Err(SignatureError::Stale);
        }
        let signature = STANDARD
            .decode(signature)
            .map_err(|_| SignatureError::BadEncoding)?;
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| SignatureError::BadEncoding)?;
        let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
        message.extend_from_slice(timestamp);
        message.push(b'|');
        message.extend_from_slice(body);
        self.key
            .verify_strict(&message, &Signature::from_bytes(&signature))
            .map_err(|_| SignatureError::Invalid)
    }
}

/// The parts of a stored webhook v2 envelope we route on (docs/PROVIDERS.md §1.2). Its
/// `occurred_at` is read by PostgreSQL when the event is stored (`webhook_inbox.occurred_at`).
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    pub id: String,
    /// Normalised to dots: `call_initiated` arrives as `call.initiated` here.
    pub event_type: String,
    pub payload: Value,
}

impl WebhookEvent {
    pub fn parse(envelope: &Value) -> Result<Self, String> {
        let data = envelope.get("data").ok_or("missing data")?;
        let id = data
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= 200)
            .ok_or("missing data.id")?
            .to_owned();
        let event_type = data
            .get("event_type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 100)
            .ok_or("missing data.event_type")?
            .replace('_', ".");
        Ok(Self {
            id,
            event_type,
            payload: data.get("payload").cloned().unwrap_or(Value::Null),
        })
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.payload.get(name).and_then(Value::as_str)
    }
}

/// The locale Telnyx's `speak` (voice `female`) uses for a BCP-47 language, when it has
/// one: the exact tag when Telnyx speaks it (`pt-BR`, `es-MX`), else the primary
/// language's usual locale. `None`: Telnyx cannot speak the language.
pub fn speak_locale(language: &str) -> Option<&'static str> {
    const EXACT: &[&str] = &[
        "cy-GB", "da-DK", "de-DE", "en-AU", "en-GB", "en-IN", "en-US", "es-ES", "es-MX", "es-US",
        "fr-CA", "fr-FR", "hi-IN", "is-IS", "it-IT", "ja-JP", "ko-KR", "nb-NO", "nl-NL", "pl-PL",
        "pt-BR", "pt-PT", "ro-RO", "ru-RU", "sv-SE", "tr-TR", "cmn-CN",
    ];
    if let Some(exact) = EXACT.iter().find(|l| l.eq_ignore_ascii_case(language)) {
        return Some(exact);
    }
    let primary = language.split('-').next().unwrap_or_default();
    Some(match primary.to_ascii_lowercase().as_str() {
        "cy" => "cy-GB",
        "da" => "da-DK",
        "de" => "de-DE",
        "en" => "en-US",
        "es" => "es-ES",
        "fr" => "fr-FR",
        "hi" => "hi-IN",
        "is" => "is-IS",
        "it" => "it-IT",
        "ja" => "ja-JP",
        "ko" => "ko-KR",
        "nb" | "no" => "nb-NO",
        "nl" => "nl-NL",
        "pl" => "pl-PL",
        "pt" => "pt-PT",
        "ro" => "ro-RO",
        "ru" => "ru-RU",
        "sv" => "sv-SE",
        "tr" => "tr-TR",
        "zh" | "cmn" => "cmn-CN",
        "ar" => "arb",
        _ => return None,
    })
}

/// `client_state` is base64 of our JSON; we put `{"call_id": …}` in it.
pub fn encode_client_state(call_id: CallId) -> String {
    STANDARD.encode(json!({ "call_id": call_id }).to_string())
}

/// An interpreted call's leg: `{"call_id": …, "leg": "agent" | "remote"}`.
pub fn encode_leg_client_state(call_id: CallId, leg: &str) -> String {
    STANDARD.encode(json!({ "call_id": call_id, "leg": leg }).to_string())
}

/// A leg's state while a prompt of an inbound line plays: `prompt` is `greeting:<n>` or
/// `apology:<n>`, so its `call.speak.ended` says which part ended.
pub fn encode_prompt_client_state(call_id: CallId, leg: &str, prompt: &str) -> String {
    STANDARD.encode(json!({ "call_id": call_id, "leg": leg, "prompt": prompt }).to_string())
}

/// The prompt named in `client_state` ([`encode_prompt_client_state`]).
pub fn decode_client_state_prompt(state: &str) -> Option<String> {
    let bytes = STANDARD.decode(state).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    Some(value.get("prompt")?.as_str()?.to_owned())
}

/// The leg named in `client_state`, when there is one.
pub fn decode_client_state_leg(state: &str) -> Option<String> {
    let bytes = STANDARD.decode(state).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    Some(value.get("leg")?.as_str()?.to_owned())
}

pub fn decode_client_state(state: &str) -> Option<CallId> {
    let bytes = STANDARD.decode(state).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.get("call_id")?.as_str()?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum TelnyxError {
    /// Telnyx answered 4xx: retrying will not help.
    #[error("Telnyx refused the command ({status}{}): {detail}", code.as_deref().map(|c| format!(", code {c}")).unwrap_or_default())]
    Rejected {
        status: u16,
        code: Option<String>,
        detail: String,
    },
    /// 5xx, 429, timeouts, connection errors, after our retries.
    #[error("Telnyx is unavailable: {0}")]
    Unavailable(String),
}

/// Media stream settings for dial/answer/streaming_start (docs/PROVIDERS.md §1.5 table).
#[derive(Debug, Clone, Serialize)]
pub struct StreamSettings {
    pub stream_url: String,
    pub stream_track: &'static str,
    pub stream_codec: &'static str,
    pub stream_bidirectional_mode: &'static str,
    pub stream_bidirectional_codec: &'static str,
}

impl StreamSettings {
    /// Both tracks in, µ-law out: no transcoding anywhere (docs/MEDIA_BRIDGE.md).
    pub fn bidirectional_pcmu(stream_url: String) -> Self {
        Self {
            stream_url,
            stream_track: "both_tracks",
            stream_codec: "PCMU",
            stream_bidirectional_mode: "rtp",
            stream_bidirectional_codec: "PCMU",
        }
    }

    /// One party's leg of an interpreted call: their voice in, their translations out.
    pub fn inbound_pcmu(stream_url: String) -> Self {
        Self {
            stream_track: "inbound_track",
            ..Self::bidirectional_pcmu(stream_url)
        }
    }
}

#[derive(Debug, Clone)]
pub struct DialRequest {
    pub from: String,
    pub to: String,
    pub client_state: String,
    pub command_id: String,
    pub stream: StreamSettings,
    pub record: bool,
    pub webhook_url: Option<String>,
    /// Ring this long before Telnyx gives up (`call.hangup` with cause `timeout`); Telnyx's
    /// default when `None`.
    pub timeout_secs: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialedCall {
    pub call_control_id: String,
    pub call_leg_id: Option<String>,
    pub call_session_id: Option<String>,
}

#[derive(Clone)]
pub struct TelnyxClient {
    http: reqwest::Client,
    base: Url,
    api_key: Secret<String>,
    connection_id: String,
    attempts: u32,
}

impl TelnyxClient {
    pub fn new(config: &TelnyxConfig) -> Self {
        Self {
            http: super::http_client(Duration::from_secs(10)),
            base: config.api_base.clone(),
            api_key: config.api_key.clone(),
            connection_id: config.connection_id.clone(),
            attempts: 3,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    /// POSTs a command, retrying 5xx/429/network failures with jitter. The body's
    /// `command_id` makes a retried command a no-op at Telnyx.
    async fn command(&self, path: &str, body: &Value) -> Result<Value, TelnyxError> {
        self.send(reqwest::Method::POST, path, &[], Some(body), self.attempts)
            .await
    }

    /// One API request with up to `attempts` tries (5xx, 429 and network failures are
    /// retried with jitter; 4xx are final and parsed from Telnyx's `errors` array).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        attempts: u32,
    ) -> Result<Value, TelnyxError> {
        let mut url = Url::parse(&self.url(path))
            .map_err(|e| TelnyxError::Unavailable(format!("bad Telnyx URL: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let policy = Policy::provider(attempts);
        retry::run(&policy, "a Telnyx request", |_| async {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(self.api_key.expose());
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|error| Failure::Transient(TelnyxError::Unavailable(error.to_string())))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if status.is_success() {
                return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            if status.is_server_error() || status.as_u16() == 429 {
                return Err(Failure::Transient(TelnyxError::Unavailable(format!(
                    "{status}: {}",
                    truncate(&text)
                ))));
            }
            let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let first_error = parsed.get("errors").and_then(|e| e.get(0));
            Err(Failure::Final(TelnyxError::Rejected {
                status: status.as_u16(),
                code: first_error.and_then(|e| e.get("code")).map(|c| {
                    c.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| c.to_string())
                }),
                detail: first_error
                    .and_then(|e| e.get("detail").or_else(|| e.get("title")))
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| truncate(&text))
                    .to_owned(),
            }))
        })
        .await
    }

    /// `GET /v2/available_phone_numbers`: numbers Telnyx would sell now. Only numbers a
    /// recent search returned can be ordered.
    pub async fn search_available(
        &self,
        search: &NumberSearch<'_>,
    ) -> Result<Vec<AvailableNumber>, TelnyxError> {
        let mut query = vec![
            ("filter[country_code]", search.country.to_owned()),
            ("filter[limit]", search.limit.to_string()),
            ("filter[features][]", "voice".to_owned()),
        ];
        if let Some(ndc) = search.national_destination_code {
            query.push(("filter[national_destination_code]", ndc.to_owned()));
        }
        if let Some(starts_with) = search.starts_with {
            query.push(("filter[phone_number][starts_with]", starts_with.to_owned()));
        }
        if let Some(contains) = search.contains {
            query.push(("filter[phone_number][contains]", contains.to_owned()));
        }
        if let Some(locality) = search.locality {
            query.push(("filter[locality]", locality.to_owned()));
        }
        self.list(
            "/available_phone_numbers",
            &query,
            AvailableNumber::from_json,
        )
        .await
    }

    /// A GET whose `data` array is parsed item by item (unparseable items are skipped).
    async fn list<T>(
        &self,
        path: &str,
        query: &[(&str, String)],
        parse: fn(&Value) -> Option<T>,
    ) -> Result<Vec<T>, TelnyxError> {
        let response = self
            .send(reqwest::Method::GET, path, query, None, self.attempts)
            .await?;
        Ok(response
            .get("data")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(parse).collect())
            .unwrap_or_default())
    }

    /// `GET /v2/phone_numbers`: numbers the account holds, optionally only those whose digits
    /// contain `digits` (Telnyx matches a substring of at least three digits) or attached to
    /// `connection_id`. One page of 250: the pool of one platform stays well below it.
    pub async fn account_numbers(
        &self,
        digits: Option<&str>,
        connection_id: Option<&str>,
    ) -> Result<Vec<AccountNumber>, TelnyxError> {
        let mut query = vec![("page[size]", "250".to_owned())];
        if let Some(digits) = digits {
            query.push(("filter[phone_number]", digits.to_owned()));
        }
        if let Some(connection_id) = connection_id {
            query.push(("filter[connection_id]", connection_id.to_owned()));
        }
        self.list("/phone_numbers", &query, AccountNumber::from_json)
            .await
    }

    /// The account's number `e164`, if it holds it (filtered exactly: Telnyx's filter is a
    /// substring match).
    pub async fn account_number(&self, e164: &str) -> Result<Option<AccountNumber>, TelnyxError> {
        let digits = e164.trim_start_matches('+');
        Ok(self
            .account_numbers(Some(digits), None)
            .await?
            .into_iter()
            .find(|n| n.phone_number == e164))
    }

    /// `POST /v2/number_orders` for one number, attached to the platform's connection.
    /// Sent once: a retried order could buy twice, so the caller checks the account after
    /// an ambiguous failure instead.
    pub async fn order_number(
        &self,
        e164: &str,
        customer_reference: &str,
    ) -> Result<NumberOrder, TelnyxError> {
        let body = json!({
            "phone_numbers": [{"phone_number": e164}],
            "connection_id": self.connection_id,
            "customer_reference": customer_reference,
        });
        let response = self
            .send(reqwest::Method::POST, "/number_orders", &[], Some(&body), 1)
            .await?;
        let data = response.get("data").cloned().unwrap_or_default();
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let number = data
            .get("phone_numbers")
            .and_then(Value::as_array)
            .and_then(|numbers| {
                numbers
                    .iter()
                    .find(|n| n.get("phone_number").and_then(Value::as_str) == Some(e164))
            });
        Ok(NumberOrder {
            id: text(&data, "id").ok_or_else(|| {
                TelnyxError::Unavailable("number order answered without an id".into())
            })?,
            status: text(&data, "status").unwrap_or_default(),
            number_status: number.and_then(|n| text(n, "status")).unwrap_or_default(),
        })
    }

    /// `POST /v2/calls/{id}/actions/speak`: text-to-speech into the call. A call that
    /// already ended (422, code 90018) counts as success, as for hangup.
    pub async fn speak(
        &self,
        call_control_id: &str,
        command_id: &str,
        text: &str,
    ) -> Result<(), TelnyxError> {
        self.speak_in(call_control_id, command_id, text, "en-US", None)
            .await
    }

    /// Speaks `text` in `locale` (one of [`speak_locale`]'s). `client_state`, when given,
    /// comes back on the `call.speak.started`/`call.speak.ended` webhooks (and later ones).
    pub async fn speak_in(
        &self,
        call_control_id: &str,
        command_id: &str,
        text: &str,
        locale: &str,
        client_state: Option<&str>,
    ) -> Result<(), TelnyxError> {
        let mut body = json!({"payload": text, "voice": "female", "language": locale,
                              "command_id": command_id});
        if let Some(client_state) = client_state {
            merge(&mut body, json!({"client_state": client_state}));
        }
        ended_is_done(
            self.command(&Self::action_path(call_control_id, "speak"), &body)
                .await,
        )
    }

    /// The Call Control App numbers must be attached to for us to receive their calls.
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    /// `POST /v2/calls`.
    pub async fn dial(&self, request: &DialRequest) -> Result<DialedCall, TelnyxError> {
        let mut body = json!({
            "connection_id": self.connection_id,
            "from": request.from,
            "to": request.to,
            "client_state": request.client_state,
            "command_id": request.command_id,
        });
        merge(
            &mut body,
            serde_json::to_value(&request.stream).unwrap_or_default(),
        );
        if request.record {
            merge(&mut body, record_from_answer());
        }
        if let Some(webhook_url) = &request.webhook_url {
            merge(&mut body, json!({"webhook_url": webhook_url}));
        }
        if let Some(timeout_secs) = request.timeout_secs {
            merge(&mut body, json!({"timeout_secs": timeout_secs}));
        }
        let response = self.command("/calls", &body).await?;
        let data = response.get("data").cloned().unwrap_or_default();
        let call_control_id = data
            .get("call_control_id")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TelnyxError::Unavailable("dial answered without call_control_id".into())
            })?
            .to_owned();
        Ok(DialedCall {
            call_control_id,
            call_leg_id: data
                .get("call_leg_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            call_session_id: data
                .get("call_session_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    fn action_path(call_control_id: &str, action: &str) -> String {
        let id: String = url::form_urlencoded::byte_serialize(call_control_id.as_bytes()).collect();
        format!("/calls/{id}/actions/{action}")
    }

    pub async fn answer(
        &self,
        call_control_id: &str,
        client_state: &str,
        command_id: &str,
        stream: &StreamSettings,
        record: bool,
    ) -> Result<(), TelnyxError> {
        let mut body = json!({"client_state": client_state, "command_id": command_id});
        merge(&mut body, serde_json::to_value(stream).unwrap_or_default());
        if record {
            // Telnyx's answer takes the dial's recording fields: an answered leg (a line's
            // caller) is recorded like a dialed one.
            merge(&mut body, record_from_answer());
        }
        self.command(&Self::action_path(call_control_id, "answer"), &body)
            .await
            .map(drop)
    }

    /// Hanging up a call that already ended (422, code 90018) counts as success.
    pub async fn hangup(&self, call_control_id: &str, command_id: &str) -> Result<(), TelnyxError> {
        let body = json!({"command_id": command_id});
        ended_is_done(
            self.command(&Self::action_path(call_control_id, "hangup"), &body)
                .await,
        )
    }

    pub async fn streaming_start(
        &self,
        call_control_id: &str,
        command_id: &str,
        stream: &StreamSettings,
    ) -> Result<(), TelnyxError> {
        let mut body = json!({"command_id": command_id});
        merge(&mut body, serde_json::to_value(stream).unwrap_or_default());
        self.command(
            &Self::action_path(call_control_id, "streaming_start"),
            &body,
        )
        .await
        .map(drop)
    }

    pub async fn streaming_stop(
        &self,
        call_control_id: &str,
        command_id: &str,
    ) -> Result<(), TelnyxError> {
        let body = json!({"command_id": command_id});
        self.command(&Self::action_path(call_control_id, "streaming_stop"), &body)
            .await
            .map(drop)
    }

    /// Dual-channel WAV, one channel per party (what the post-call transcript wants).
    pub async fn record_start(
        &self,
        call_control_id: &str,
        command_id: &str,
    ) -> Result<(), TelnyxError> {
        let body = json!({"command_id": command_id, "channels": "dual", "format": "wav"});
        self.command(&Self::action_path(call_control_id, "record_start"), &body)
            .await
            .map(drop)
    }

    pub async fn record_stop(
        &self,
        call_control_id: &str,
        command_id: &str,
    ) -> Result<(), TelnyxError> {
        let body = json!({"command_id": command_id});
        self.command(&Self::action_path(call_control_id, "record_stop"), &body)
            .await
            .map(drop)
    }
}

/// The recording fields of `dial` and `answer`: dual-channel WAV from the answer (the party on
/// the first channel, what we played on the second; docs/RECORDINGS.md).
fn record_from_answer() -> Value {
    json!({"record": "record-from-answer", "record_channels": "dual", "record_format": "wav"})
}

/// Filters of a number search (`filter[...]` on `GET /available_phone_numbers`).
#[derive(Debug, Clone, Default)]
pub struct NumberSearch<'a> {
    /// ISO 3166-1 alpha-2; Telnyx requires it.
    pub country: &'a str,
    /// NANP area code.
    pub national_destination_code: Option<&'a str>,
    /// National digits the number starts with (after the area code when one is given).
    pub starts_with: Option<&'a str>,
    pub contains: Option<&'a str>,
    pub locality: Option<&'a str>,
    pub limit: u32,
}

/// One number for sale.
#[derive(Debug, Clone, PartialEq)]
pub struct AvailableNumber {
    pub phone_number: String,
    pub country: Option<String>,
    pub locality: Option<String>,
    pub upfront_cost: Option<String>,
    pub monthly_cost: Option<String>,
    pub currency: Option<String>,
    pub features: Vec<String>,
    /// Telnyx could not match every filter and widened the search.
    pub best_effort: bool,
}

impl AvailableNumber {
    fn from_json(value: &Value) -> Option<Self> {
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let region = |kind: &str| {
            value
                .get("region_information")
                .and_then(Value::as_array)?
                .iter()
                .find(|r| r.get("region_type").and_then(Value::as_str) == Some(kind))
                .and_then(|r| text(r, "region_name"))
        };
        let cost = value.get("cost_information").cloned().unwrap_or_default();
        Some(Self {
            phone_number: text(value, "phone_number")?,
            country: region("country_code"),
            locality: region("location").or_else(|| region("rate_center")),
            upfront_cost: text(&cost, "upfront_cost"),
            monthly_cost: text(&cost, "monthly_cost"),
            currency: text(&cost, "currency"),
            features: value
                .get("features")
                .and_then(Value::as_array)
                .map(|features| features.iter().filter_map(|f| text(f, "name")).collect())
                .unwrap_or_default(),
            best_effort: value
                .get("best_effort")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// A number the Telnyx account holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountNumber {
    pub id: String,
    pub phone_number: String,
    /// `active`, `purchase_pending`, `port_pending`, …
    pub status: String,
    pub connection_id: Option<String>,
}

impl AccountNumber {
    fn from_json(value: &Value) -> Option<Self> {
        let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            id: text("id")?,
            phone_number: text("phone_number")?,
            status: text("status").unwrap_or_default(),
            connection_id: text("connection_id").filter(|c| !c.is_empty()),
        })
    }
}

/// What a number order answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberOrder {
    pub id: String,
    /// The order's status: `pending`, `success` or `failure`.
    pub status: String,
    /// Our number's status within the order.
    pub number_status: String,
}

/// A command on a call that already ended (422, code 90018) has nothing left to do: success.
fn ended_is_done(result: Result<Value, TelnyxError>) -> Result<(), TelnyxError> {
    match result {
        Ok(_) => Ok(()),
        Err(TelnyxError::Rejected {
            status: 422,
            code: Some(code),
            ..
        }) if code == "90018" => Ok(()),
        Err(error) => Err(error),
    }
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}

fn truncate(text: &str) -> &str {
    let end = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    fn keys() -> (SigningKey, WebhookVerifier) {
        let signing = SigningKey::from_bytes(&[42u8; 32]);
        let verifier =
            WebhookVerifier::from_base64(&STANDARD.encode(signing.verifying_key().as_bytes()))
                .unwrap();
        (signing, verifier)
    }

    fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
        let mut message = timestamp.as_bytes().to_vec();
        message.push(b'|');
        message.extend_from_slice(body);
        STANDARD.encode(key.sign(&message).to_bytes())
    }

    #[test]
    fn signature_rules() {
        let (signing, verifier) = keys();
        let body = br#"{"data":{"id":"e1"}}"#;
        let now = 1_700_000_000;
        let good = sign(&signing, "1700000000", body);
        let check = |ts: &str, sig: &str, body: &[u8]| {
            verifier.verify(Some(ts.as_bytes()), Some(sig.as_bytes()), body, now)
        };
        assert_eq!(check("1700000000", &good, body), Ok(()));
        assert_eq!(
            check("1700000000", &good, br#"{"data":{"id":"e2"}}"#),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            check("1700000001", &good, body),
            Err(SignatureError::Invalid),
            "timestamp is signed"
        );
        let stale = sign(&signing, "1699999699", body);
        assert_eq!(
            check("1699999699", &stale, body),
            Err(SignatureError::Stale)
        );
        let future = sign(&signing, "1700000301", body);
        assert_eq!(
            check("1700000301", &future, body),
            Err(SignatureError::Stale)
        );
        let edge = sign(&signing, "1700000300", body);
        assert_eq!(check("1700000300", &edge, body), Ok(()));
        assert_eq!(
            check("17e8", &good, body),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            check("1700000000", "not base64!", body),
            Err(SignatureError::BadEncoding)
        );
        assert_eq!(
            verifier.verify(None, Some(good.as_bytes()), body, now),
            Err(SignatureError::Missing)
        );
        let other = SigningKey::from_bytes(&[7u8; 32]);
        assert_eq!(
            check("1700000000", &sign(&other, "1700000000", body), body),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn envelope_parsing_normalises_event_types() {
        let event = WebhookEvent::parse(&json!({"data": {"id": "x", "event_type": "call_hangup",
            "occurred_at": "2025-11-23T03:30:00.076316Z", "payload": {"hangup_cause": "normal_clearing"}}})).unwrap();
        assert_eq!(event.event_type, "call.hangup");
        assert_eq!(event.field("hangup_cause"), Some("normal_clearing"));
        assert!(WebhookEvent::parse(&json!({"data": {"event_type": "call.hangup"}})).is_err());
    }

    #[test]
    fn speak_locales_follow_the_language_and_refuse_what_telnyx_cannot_speak() {
        assert_eq!(speak_locale("es"), Some("es-ES"));
        assert_eq!(speak_locale("es-MX"), Some("es-MX"));
        assert_eq!(speak_locale("pt-br"), Some("pt-BR"));
        assert_eq!(speak_locale("pt"), Some("pt-PT"));
        assert_eq!(speak_locale("en-NZ"), Some("en-US"));
        assert_eq!(speak_locale("tlh"), None);
        let id = CallId::new();
        let state = encode_prompt_client_state(id, "remote", "apology:1/2");
        assert_eq!(decode_client_state(&state), Some(id));
        assert_eq!(decode_client_state_leg(&state).as_deref(), Some("remote"));
        assert_eq!(
            decode_client_state_prompt(&state).as_deref(),
            Some("apology:1/2")
        );
    }

    #[test]
    fn client_state_round_trips() {
        let id = CallId::new();
        assert_eq!(decode_client_state(&encode_client_state(id)), Some(id));
        assert_eq!(decode_client_state("bm90IGpzb24="), None);
    }
}
