//! An AssemblyAI Universal Streaming v3 simulator (docs/PROVIDERS.md §2.1) that enforces the
//! rules the real service enforces: the bare-key `Authorization` header (or a single-use
//! `?token=` from `GET /v3/token`), `speech_model` required and one of the real models
//! (each transcribing only its languages; `language_code` on final turns when detection is
//! on), binary chunks of 50–1000 ms
//! (else an `Error` 3007 and close 3007), `Begin` / `Turn` / `Termination`, `Terminate`
//! flushing the last turn. Turns end on 400 ms of silence after speech (energy over µ-law or
//! S16LE samples) or after `max_turn_ms`; their text comes from a script. Faults on demand.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub enum StreamFault {
    /// Drop the TCP connection (no close frame) after this many audio chunks.
    DropAfterChunks(usize),
    /// Send `Error` with this code and close with it after this many chunks.
    ErrorAfterChunks { chunks: usize, code: u16 },
    /// Wait this long before `Begin`.
    DelayBegin(Duration),
    /// Refuse the handshake with HTTP 503.
    RefuseConnect,
}

/// One session as the simulator saw it (for assertions).
#[derive(Debug, Clone, Default)]
pub struct SessionRecord {
    pub id: String,
    pub query: Vec<(String, String)>,
    pub chunk_bytes: Vec<usize>,
    pub terminated_by_client: bool,
    pub closed_with: Option<u16>,
    /// Final turns sent (end of turn, formatted when asked for), including at `Terminate`.
    pub finals: usize,
    /// What the session's `Termination` reported, which is what AssemblyAI bills: session
    /// (wall-clock) seconds and audio seconds. `None` when it ended without one.
    pub billed_session_seconds: Option<u64>,
    pub billed_audio_seconds: Option<u64>,
}

struct Inner {
    faults: VecDeque<StreamFault>,
    sessions: Vec<Arc<Mutex<SessionRecord>>>,
    tokens: HashSet<String>,
    script: Vec<String>,
    /// Per speech model: what a session of that model hears, and in which language.
    model_scripts: Vec<(String, String, Vec<String>)>,
}

/// Called with every audio chunk a session receives (benchmarks attribute bytes to frames).
pub type ChunkProbe = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Called with (session id, turn order) just before a session sends a turn's final
/// end-of-turn message (benchmarks time what happens after the end of a turn).
pub type TurnProbe = Arc<dyn Fn(&str, u64) + Send + Sync>;

#[derive(Clone)]
pub struct AssemblyAiSim {
    pub address: SocketAddr,
    api_key: String,
    inner: Arc<Mutex<Inner>>,
    max_turn_ms: u64,
    probe: Arc<Mutex<Option<ChunkProbe>>>,
    turn_probe: Arc<Mutex<Option<TurnProbe>>>,
    /// Keep per-session chunk sizes (tests) or not (benchmarks with thousands of sessions).
    record_chunks: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    expires_in_seconds: Option<u32>,
}

impl AssemblyAiSim {
    pub async fn start(api_key: &str, port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let sim = Self {
            address: listener.local_addr()?,
            api_key: api_key.to_owned(),
            inner: Arc::new(Mutex::new(Inner {
                faults: VecDeque::new(),
                sessions: Vec::new(),
                tokens: HashSet::new(),
                script: vec![
                    "hello, this is a test call".into(),
                    "can you hear me clearly".into(),
                    "thank you, goodbye".into(),
                ],
                model_scripts: Vec::new(),
            })),
            max_turn_ms: 4_000,
            probe: Arc::new(Mutex::new(None)),
            turn_probe: Arc::new(Mutex::new(None)),
            record_chunks: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let router = Router::new()
            .route("/v3/ws", get(upgrade))
            .route("/v3/token", get(token))
            .with_state(sim.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(sim)
    }

    /// `ASSEMBLYAI_STREAMING_URL` for the service under test.
    pub fn streaming_url(&self) -> String {
        format!("ws://{}/v3/ws", self.address)
    }

    pub fn inject(&self, fault: StreamFault) {
        self.lock().faults.push_back(fault);
    }

    /// Faults injected and not yet used.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Forgets the faults not yet used: from now on sessions are accepted and kept.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Final turns sent over all sessions so far.
    pub fn finals_sent(&self) -> usize {
        self.sessions().iter().map(|s| s.finals).sum()
    }

    /// Benchmarks: observe every chunk, and stop keeping per-chunk records.
    pub fn set_probe(&self, probe: ChunkProbe) {
        *self.probe.lock().unwrap_or_else(|p| p.into_inner()) = Some(probe);
        self.record_chunks
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Benchmarks: observe the moment each turn ends.
    pub fn set_turn_probe(&self, probe: TurnProbe) {
        *self.turn_probe.lock().unwrap_or_else(|p| p.into_inner()) = Some(probe);
    }

    /// The lines turns say, in order, round-robin; `{session}` in a line is replaced by the
    /// session's id.
    pub fn set_script(&self, lines: &[&str]) {
        self.lock().script = lines.iter().map(|l| l.to_string()).collect();
    }

    /// Sessions of `speech_model` hear these lines spoken in `language` (an interpreted
    /// call's two parties use different models: each leg hears its own party). A model
    /// that does not support `language` transcribes nothing of it, as the real one would
    /// return nothing usable.
    pub fn set_model_script(&self, speech_model: &str, language: &str, lines: &[&str]) {
        let mut inner = self.lock();
        inner
            .model_scripts
            .retain(|(model, _, _)| model != speech_model);
        inner.model_scripts.push((
            speech_model.to_owned(),
            language.to_owned(),
            lines.iter().map(|l| l.to_string()).collect(),
        ));
    }

    /// For tests: the streaming seconds AssemblyAI would bill, per session id (the
    /// `session_duration_seconds` each `Termination` reported).
    pub fn billed_session_seconds(&self) -> Vec<(String, u64)> {
        self.sessions()
            .into_iter()
            .filter_map(|s| Some((s.id.clone(), s.billed_session_seconds?)))
            .collect()
    }

    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.lock()
            .sessions
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn token(
    State(sim): State<AssemblyAiSim>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(sim.api_key.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "Invalid API key"})),
        )
            .into_response();
    }
    let expires = query.expires_in_seconds.unwrap_or(60);
    if !(1..=600).contains(&expires) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expires_in_seconds must be 1..600"})),
        )
            .into_response();
    }
    let token = format!("sim-token-{}", uuid::Uuid::new_v4().simple());
    sim.lock().tokens.insert(token.clone());
    Json(json!({"token": token, "expires_in_seconds": expires})).into_response()
}

async fn upgrade(
    State(sim): State<AssemblyAiSim>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
    ws: WebSocketUpgrade,
) -> Response {
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let by_header =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(sim.api_key.as_str());
    // Temporary tokens are single-use.
    let by_token = param("token").is_some_and(|t| sim.lock().tokens.remove(&t));
    if !by_header && !by_token {
        return (StatusCode::UNAUTHORIZED, "Invalid or missing credentials").into_response();
    }
    if matches!(sim.lock().faults.front(), Some(StreamFault::RefuseConnect)) {
        sim.lock().faults.pop_front();
        return (StatusCode::SERVICE_UNAVAILABLE, "simulated outage").into_response();
    }
    let record = Arc::new(Mutex::new(SessionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        query: query.clone(),
        ..SessionRecord::default()
    }));
    sim.lock().sessions.push(record.clone());
    ws.on_upgrade(move |socket| session(sim, socket, query, record))
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}

/// Mean absolute amplitude of a chunk, normalised to 0..1.
fn energy(chunk: &[u8], mulaw: bool) -> f64 {
    if mulaw {
        let sum: f64 = chunk
            .iter()
            .map(|b| f64::from(mulaw_to_linear(*b).unsigned_abs()))
            .sum();
        sum / chunk.len().max(1) as f64 / 32_768.0
    } else {
        let samples = chunk
            .chunks_exact(2)
            .map(|s| i16::from_le_bytes([s[0], s[1]]));
        let (sum, n) = samples.fold((0f64, 0usize), |(s, n), v| {
            (s + f64::from(v.unsigned_abs()), n + 1)
        });
        sum / n.max(1) as f64 / 32_768.0
    }
}

/// G.711 µ-law to 16-bit linear.
pub fn mulaw_to_linear(byte: u8) -> i16 {
    let byte = !byte;
    let sign = byte & 0x80;
    let exponent = (byte >> 4) & 0x07;
    let mantissa = byte & 0x0F;
    let magnitude = ((i32::from(mantissa) << 3) + 0x84) << exponent;
    let value = magnitude - 0x84;
    (if sign != 0 { -value } else { value }) as i16
}

/// G.711 µ-law from 16-bit linear (for generating test audio).
pub fn linear_to_mulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut value = i32::from(sample);
    let sign: i32 = if value < 0 {
        value = -value;
        0x80
    } else {
        0
    };
    value = value.min(CLIP) + BIAS;
    // value >= 0x84, so value >> 7 is in 1..=255 and the exponent in 0..=7.
    let exponent = 7 - ((value >> 7) as u8).leading_zeros() as i32;
    let mantissa = (value >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

struct TurnState {
    order: u64,
    speech_ms: u64,
    silence_ms: u64,
    start_ms: u64,
    words_shown: usize,
}

async fn session(
    sim: AssemblyAiSim,
    mut socket: WebSocket,
    query: Vec<(String, String)>,
    record: Arc<Mutex<SessionRecord>>,
) {
    let started = Instant::now();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let set_closed =
        |code: u16| record.lock().unwrap_or_else(|p| p.into_inner()).closed_with = Some(code);
    if param("speech_model").is_none() {
        let _ = socket
            .send(Message::Text(
                json!({"type": "Error", "error_code": 3006, "error": "speech_model is required"})
                    .to_string()
                    .into(),
            ))
            .await;
        let _ = socket.send(close(3006, "speech_model is required")).await;
        set_closed(3006);
        return;
    }
    let speech_model = param("speech_model").unwrap_or_default();
    if crate::config::speech::model_languages(&speech_model).is_none() {
        let error = format!("Invalid speech_model: {speech_model}");
        let _ = socket
            .send(Message::Text(
                json!({"type": "Error", "error_code": 3006, "error": error})
                    .to_string()
                    .into(),
            ))
            .await;
        let _ = socket.send(close(3006, "invalid speech_model")).await;
        set_closed(3006);
        return;
    }
    // whisper-rt always detects; the multilingual model reports languages when asked.
    let detects = speech_model == "whisper-rt"
        || (speech_model == "universal-streaming-multilingual"
            && param("language_detection").as_deref() == Some("true"));
    let encoding = param("encoding").unwrap_or_else(|| "pcm_s16le".into());
    let mulaw = match encoding.as_str() {
        "pcm_mulaw" => true,
        "pcm_s16le" => false,
        _ => {
            let _ = socket.send(close(3006, "unsupported encoding")).await;
            set_closed(3006);
            return;
        }
    };
    let sample_rate: u64 = param("sample_rate")
        .and_then(|s| s.parse().ok())
        .unwrap_or(16_000);
    let format_turns = param("format_turns").as_deref() == Some("true");
    let bytes_per_ms = sample_rate / 1000 * if mulaw { 1 } else { 2 };
    let fault = sim.lock().faults.pop_front();
    if let Some(StreamFault::DelayBegin(delay)) = &fault {
        tokio::time::sleep(*delay).await;
    }
    let session_id = record.lock().unwrap_or_else(|p| p.into_inner()).id.clone();
    let expires_at = chrono::Utc::now().timestamp() + 10_800;
    if socket
        .send(Message::Text(
            json!({"type": "Begin", "id": session_id, "expires_at": expires_at})
                .to_string()
                .into(),
        ))
        .await
        .is_err()
    {
        return;
    }
    // `{session}` in a line becomes this session's id: every turn distinct (no cache hits).
    let (spoken_language, lines) = {
        let inner = sim.lock();
        match inner
            .model_scripts
            .iter()
            .find(|(model, _, _)| *model == speech_model)
        {
            Some((_, language, lines)) => (language.clone(), lines.clone()),
            None => ("en".to_owned(), inner.script.clone()),
        }
    };
    let understood = crate::config::speech::model_languages(&speech_model)
        .is_some_and(|languages| languages.contains(&spoken_language.as_str()));
    let script: Vec<String> = lines
        .iter()
        .map(|line| {
            if understood {
                line.replace("{session}", &session_id[..8])
            } else {
                String::new()
            }
        })
        .collect();
    let detected = detects.then(|| spoken_language.clone());
    let mut turn = TurnState {
        order: 0,
        speech_ms: 0,
        silence_ms: 0,
        start_ms: 0,
        words_shown: 0,
    };
    let mut audio_ms: u64 = 0;
    let mut chunks = 0usize;

    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Binary(chunk) => {
                chunks += 1;
                if sim.record_chunks.load(std::sync::atomic::Ordering::Relaxed) {
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .chunk_bytes
                        .push(chunk.len());
                }
                let probe = sim.probe.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(probe) = probe {
                    probe(&chunk);
                }
                let duration = chunk.len() as u64 / bytes_per_ms.max(1);
                if !(50..=1000).contains(&duration) {
                    let error = format!(
                        "Input Duration Violation: {duration} ms; chunks must be 50-1000 ms"
                    );
                    let _ = socket
                        .send(Message::Text(
                            json!({"type": "Error", "error_code": 3007, "error": error})
                                .to_string()
                                .into(),
                        ))
                        .await;
                    let _ = socket.send(close(3007, "Input Duration Violation")).await;
                    set_closed(3007);
                    return;
                }
                match &fault {
                    Some(StreamFault::DropAfterChunks(n)) if chunks >= *n => {
                        set_closed(1006);
                        return; // dropping the socket without a close frame
                    }
                    Some(StreamFault::ErrorAfterChunks { chunks: n, code }) if chunks >= *n => {
                        let _ = socket.send(Message::Text(json!({"type": "Error", "error_code": code, "error": "simulated server error"}).to_string().into())).await;
                        let _ = socket.send(close(*code, "simulated server error")).await;
                        set_closed(*code);
                        return;
                    }
                    _ => {}
                }
                let speaking = energy(&chunk, mulaw) > 0.02;
                audio_ms += duration;
                if speaking {
                    if turn.speech_ms == 0 {
                        turn.start_ms = audio_ms - duration;
                    }
                    turn.speech_ms += duration;
                    turn.silence_ms = 0;
                } else if turn.speech_ms > 0 {
                    turn.silence_ms += duration;
                }
                if turn.speech_ms == 0 {
                    continue;
                }
                let line = &script[(turn.order as usize) % script.len().max(1)];
                let total_words = line.split_whitespace().count();
                let ends = turn.silence_ms >= 400 || turn.speech_ms >= sim.max_turn_ms;
                let shown = if ends {
                    total_words
                } else {
                    ((turn.speech_ms / 300) as usize + 1).min(total_words)
                };
                if shown > turn.words_shown || ends {
                    turn.words_shown = shown;
                    for formatted in if ends && format_turns {
                        vec![false, true]
                    } else {
                        vec![false]
                    } {
                        let mut message =
                            turn_message(&turn, line, shown, ends, formatted, audio_ms);
                        if let Some(language) = detected.as_deref().filter(|_| ends) {
                            message["language_code"] = json!(language);
                            message["language_confidence"] = json!(0.97);
                        }
                        // The final message of the turn: formatted when asked for, else raw.
                        if ends && formatted == format_turns {
                            let probe = sim
                                .turn_probe
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .clone();
                            if let Some(probe) = probe {
                                probe(&session_id, turn.order);
                            }
                            record.lock().unwrap_or_else(|p| p.into_inner()).finals += 1;
                        }
                        if socket
                            .send(Message::Text(message.to_string().into()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                if ends {
                    turn = TurnState {
                        order: turn.order + 1,
                        speech_ms: 0,
                        silence_ms: 0,
                        start_ms: 0,
                        words_shown: 0,
                    };
                }
            }
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap_or_default();
                match value.get("type").and_then(Value::as_str) {
                    Some("Terminate") => {
                        record
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .terminated_by_client = true;
                        if turn.speech_ms > 0 {
                            let line = &script[(turn.order as usize) % script.len().max(1)];
                            let words = line.split_whitespace().count();
                            for formatted in if format_turns {
                                vec![false, true]
                            } else {
                                vec![false]
                            } {
                                let mut message =
                                    turn_message(&turn, line, words, true, formatted, audio_ms);
                                if let Some(language) = &detected {
                                    message["language_code"] = json!(language);
                                    message["language_confidence"] = json!(0.97);
                                }
                                let sent = socket
                                    .send(Message::Text(message.to_string().into()))
                                    .await
                                    .is_ok();
                                if sent && formatted == format_turns {
                                    record.lock().unwrap_or_else(|p| p.into_inner()).finals += 1;
                                }
                            }
                        }
                        let (audio_seconds, session_seconds) =
                            (audio_ms / 1000, started.elapsed().as_secs());
                        {
                            let mut record = record.lock().unwrap_or_else(|p| p.into_inner());
                            record.billed_session_seconds = Some(session_seconds);
                            record.billed_audio_seconds = Some(audio_seconds);
                        }
                        let termination = json!({
                            "type": "Termination",
                            "audio_duration_seconds": audio_seconds,
                            "session_duration_seconds": session_seconds,
                        });
                        let _ = socket
                            .send(Message::Text(termination.to_string().into()))
                            .await;
                        let _ = socket.send(close(1000, "")).await;
                        set_closed(1000);
                        return;
                    }
                    Some("ForceEndpoint") if turn.speech_ms > 0 => {
                        turn.silence_ms = 400;
                    }
                    _ => {}
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

fn turn_message(
    turn: &TurnState,
    line: &str,
    shown: usize,
    end_of_turn: bool,
    formatted: bool,
    audio_ms: u64,
) -> Value {
    let words: Vec<&str> = line.split_whitespace().take(shown).collect();
    let span = audio_ms.saturating_sub(turn.start_ms).max(1);
    let per_word = span / words.len().max(1) as u64;
    let word_items: Vec<Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let start = turn.start_ms + per_word * i as u64;
            json!({"text": w, "start": start, "end": start + per_word, "confidence": 0.93, "word_is_final": end_of_turn || i + 1 < words.len()})
        })
        .collect();
    let mut transcript = words.join(" ");
    if formatted {
        let mut chars = transcript.chars();
        transcript = match chars.next() {
            Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
            None => String::new(),
        };
        if !transcript.ends_with(['.', '?', '!']) {
            transcript.push('.');
        }
    }
    json!({
        "type": "Turn",
        "turn_order": turn.order,
        "turn_is_formatted": formatted,
        "end_of_turn": end_of_turn,
        "transcript": transcript,
        "end_of_turn_confidence": if end_of_turn { 0.91 } else { 0.12 },
        "words": word_items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_round_trips_within_quantisation() {
        for sample in [-30_000i16, -1_000, -10, 0, 10, 1_000, 30_000] {
            let back = mulaw_to_linear(linear_to_mulaw(sample));
            let tolerance = (i32::from(sample).abs() / 16).max(8);
            assert!(
                (i32::from(back) - i32::from(sample)).abs() <= tolerance,
                "{sample} → {back}"
            );
        }
        assert_eq!(mulaw_to_linear(0xFF), 0, "0xFF is µ-law silence");
    }
}
