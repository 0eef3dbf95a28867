//! DeepL, OpenAI and ElevenLabs simulators (docs/PROVIDERS.md §3, §4), one server with three
//! route sets, each enforcing its vendor's auth header and request rules, with faults on
//! demand: 429, 456, 5xx, a slow first byte, a dropped stream. Translations are deterministic
//! (`[DE] text`), speech is paced µ-law (or the requested format's bytes) in 20 ms chunks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub enum Vendor {
    DeepL,
    OpenAi,
    ElevenLabs,
}

#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    /// Wait before the first byte.
    SlowFirstByte(Duration),
    /// ElevenLabs: send this many chunks, then cut the connection.
    DropStreamAfter(usize),
}

#[derive(Default)]
struct Inner {
    faults: Vec<(Vendor, VecDeque<Fault>)>,
    requests: Vec<(Vendor, Value)>,
    billed: Billed,
}

/// What the three vendors would bill for the requests they served (for tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Billed {
    /// DeepL: characters of the source texts it translated.
    pub deepl_characters: u64,
    /// OpenAI: the `usage` it answered with.
    pub openai_prompt_tokens: u64,
    pub openai_completion_tokens: u64,
    /// ElevenLabs: characters of the texts it accepted for synthesis.
    pub elevenlabs_characters: u64,
}

#[derive(Clone)]
pub struct TranslationSim {
    pub address: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    /// Audio per character of text, so longer sentences take longer to speak.
    pub ms_per_char: u64,
    /// Real-time factor of the stream: 1.0 paces like speech, 0 sends at once.
    pub pace: f64,
}

pub const DEEPL_KEY: &str = "sim-deepl-key:fx";
pub const OPENAI_KEY: &str = "sim-openai-key";
pub const ELEVENLABS_KEY: &str = "sim-elevenlabs-key";

impl TranslationSim {
    pub async fn start(port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let sim = Self {
            address: listener.local_addr()?,
            inner: Arc::default(),
            ms_per_char: 60,
            pace: 0.25,
        };
        let router = Router::new()
            .route("/v2/translate", post(deepl))
            .route("/v1/chat/completions", post(openai))
            .route("/v1/text-to-speech/{voice}/stream", post(elevenlabs))
            .with_state(sim.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(sim)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn inject(&self, vendor: Vendor, fault: Fault) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.faults.iter_mut().find(|(v, _)| *v == vendor) {
            Some((_, queue)) => queue.push_back(fault),
            None => inner.faults.push((vendor, VecDeque::from([fault]))),
        }
    }

    /// For tests: the units the vendors would bill so far.
    pub fn billed(&self) -> Billed {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).billed
    }

    fn bill(&self, add: impl FnOnce(&mut Billed)) {
        add(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()).billed);
    }

    pub fn requests(&self, vendor: Vendor) -> Vec<Value> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .requests
            .iter()
            .filter(|(v, _)| *v == vendor)
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn next_fault(&self, vendor: Vendor, body: Value) -> Option<Fault> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.requests.push((vendor.clone(), body));
        inner
            .faults
            .iter_mut()
            .find(|(v, _)| *v == vendor)
            .and_then(|(_, q)| q.pop_front())
    }
}

fn error(status: u16, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(json!({"message": message})),
    )
        .into_response()
}

async fn apply(fault: &Option<Fault>) -> Option<Response> {
    match fault {
        Some(Fault::Status(status)) => Some(error(*status, "simulated failure")),
        Some(Fault::SlowFirstByte(delay)) => {
            tokio::time::sleep(*delay).await;
            None
        }
        _ => None,
    }
}

async fn deepl(State(sim): State<TranslationSim>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("DeepL-Auth-Key {DEEPL_KEY}"))
    {
        return error(403, "Authorization failure");
    }
    if body.len() > 128 * 1024 {
        return error(413, "Request Entity Too Large");
    }
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "Bad request");
    };
    let fault = sim.next_fault(Vendor::DeepL, value.clone());
    if let Some(response) = apply(&fault).await {
        return response;
    }
    let texts = value["text"].as_array().cloned().unwrap_or_default();
    if texts.is_empty() || texts.len() > 50 {
        return error(400, "text must hold 1 to 50 entries");
    }
    let target = value["target_lang"].as_str().unwrap_or_default();
    if target.is_empty() || target == "EN" || target == "PT" {
        return error(400, "Value for 'target_lang' not supported.");
    }
    let characters: u64 = texts
        .iter()
        .map(|t| t.as_str().unwrap_or_default().chars().count() as u64)
        .sum();
    sim.bill(|b| b.deepl_characters += characters);
    let translations: Vec<Value> = texts
        .iter()
        .map(|t| json!({"detected_source_language": value["source_lang"].as_str().unwrap_or("EN"), "text": format!("[{target}] {}", t.as_str().unwrap_or_default())}))
        .collect();
    Json(json!({"translations": translations})).into_response()
}

async fn openai(
    State(sim): State<TranslationSim>,
    headers: HeaderMap,
    Json(value): Json<Value>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {OPENAI_KEY}"))
    {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}}))).into_response();
    }
    let fault = sim.next_fault(Vendor::OpenAi, value.clone());
    if let Some(response) = apply(&fault).await {
        return response;
    }
    if value["model"].as_str().is_none()
        || value["messages"].as_array().is_none_or(|m| m.is_empty())
    {
        return error(400, "model and messages are required");
    }
    let system = value["messages"][0]["content"].as_str().unwrap_or_default();
    let target = system
        .split(" to ")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .unwrap_or("?")
        .to_uppercase();
    let user = value["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    // Roughly a token per four characters, as OpenAI's tokenisers average for Latin text.
    let content = format!("[{target}] {user}");
    let tokens = |chars: usize| chars.div_ceil(4) as u64;
    let prompt_tokens = tokens(system.chars().count() + user.chars().count()) + 7;
    let completion_tokens = tokens(content.chars().count());
    sim.bill(|b| {
        b.openai_prompt_tokens += prompt_tokens;
        b.openai_completion_tokens += completion_tokens;
    });
    Json(json!({
        "id": "chatcmpl-sim", "object": "chat.completion", "created": 0, "model": value["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    }))
    .into_response()
}

const WATERMARK: &[u8] = b"TTS:";

fn watermark(text: &str) -> Vec<u8> {
    let mut mark = WATERMARK.to_vec();
    mark.extend(text.bytes().take(150));
    mark.push(0);
    mark
}

/// The texts whose simulated speech is in `audio` (a call's received µ-law), in order: the
/// first 20 ms of each clip carries its text (up to 150 bytes).
pub fn spoken_texts(audio: &[u8]) -> Vec<String> {
    let mut texts = Vec::new();
    let mut rest = audio;
    while let Some(at) = rest.windows(WATERMARK.len()).position(|w| w == WATERMARK) {
        let after = &rest[at + WATERMARK.len()..];
        let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
        texts.push(String::from_utf8_lossy(&after[..end]).into_owned());
        rest = &after[end..];
    }
    texts
}

async fn elevenlabs(
    State(sim): State<TranslationSim>,
    Path(_voice): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    Json(value): Json<Value>,
) -> Response {
    if headers.get("xi-api-key").and_then(|v| v.to_str().ok()) != Some(ELEVENLABS_KEY) {
        return error(401, "invalid api key");
    }
    let fault = sim.next_fault(Vendor::ElevenLabs, json!({"body": value, "query": query}));
    if let Some(response) = apply(&fault).await {
        return response;
    }
    let Some(text) = value["text"].as_str().filter(|t| !t.is_empty()) else {
        return error(422, "text is required");
    };
    sim.bill(|b| b.elevenlabs_characters += text.chars().count() as u64);
    let format = query
        .iter()
        .find(|(k, _)| k == "output_format")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "mp3_44100_128".into());
    // 20 ms of audio per chunk, as the real service streams: µ-law silence-free tone bytes.
    let bytes_per_chunk = match format.as_str() {
        "ulaw_8000" | "alaw_8000" => 160,
        "pcm_16000" => 640,
        "pcm_24000" => 960,
        _ => 320,
    };
    let total_ms = text.chars().count() as u64 * sim.ms_per_char;
    let chunks = (total_ms / 20).max(1) as usize;
    let drop_after = match fault {
        Some(Fault::DropStreamAfter(n)) => Some(n),
        _ => None,
    };
    let pace = sim.pace;
    let mark = watermark(text);
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let mark = mark.clone();
        async move {
            if i >= chunks {
                return None;
            }
            if drop_after.is_some_and(|n| i >= n) {
                return Some((
                    Err::<Bytes, std::io::Error>(std::io::Error::other("simulated drop")),
                    chunks,
                ));
            }
            if i > 0 && pace > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(0.020 * pace)).await;
            }
            let mut chunk: Vec<u8> = (0..bytes_per_chunk)
                .map(|n| if n % 16 < 8 { 0x10 } else { 0x90 })
                .collect();
            if i == 0 {
                // Which text this audio speaks, readable from what a call received.
                let n = mark.len().min(chunk.len());
                chunk[..n].copy_from_slice(&mark[..n]);
            }
            Some((Ok(Bytes::from(chunk)), i + 1))
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "audio/basic")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(500, "stream"))
}
