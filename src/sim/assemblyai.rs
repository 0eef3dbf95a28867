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
    /// Drop the TCP connection (no close frame) right after the first turn's unformatted
    /// end of turn, before its formatted version (with `format_turns`).
    DropBeforeFormatted,
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
    /// The `turn_order` of each of those finals.
    pub final_orders: Vec<u64>,
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
    /// Sessions come over `wss://`.
    tls: bool,
    api_key: String,
    inner: Arc<Mutex<Inner>>,
    max_turn_ms: u64,
    probe: Arc<Mutex<Option<ChunkProbe>>>,
    turn_probe: Arc<Mutex<Option<TurnProbe>>>,
    /// Keep per-session chunk sizes (tests) or not (benchmarks with thousands of sessions).
    record_chunks: Arc<std::sync::atomic::AtomicBool>,
    /// Sessions upgraded and not yet ended (benchmarks wait for 0 between phases).
    open: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether each session's first turn is cut at a length of its own (see
    /// [`AssemblyAiSim::spread_turn_ends`]), and how many sessions have begun.
    spread_turns: Arc<std::sync::atomic::AtomicBool>,
    begun: Arc<std::sync::atomic::AtomicU64>,
}

/// Counts a session as open from its upgrade until it ends (or the upgrade is abandoned).
struct OpenSession(Arc<std::sync::atomic::AtomicUsize>);

impl OpenSession {
    fn new(open: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Connections waiting to be accepted: a benchmark opens thousands of sessions at once, and
/// the default (1,024) made the kernel drop handshakes past it, each retried only after a
/// second or more.
const ACCEPT_BACKLOG: u32 = 8_192;

#[derive(Debug, Deserialize)]
struct TokenQuery {
    expires_in_seconds: Option<u32>,
}

impl AssemblyAiSim {
    /// Over plain `ws://`.
    pub async fn start(api_key: &str, port: u16) -> std::io::Result<Self> {
        Self::start_with(api_key, port, false).await
    }

    /// Over `wss://`, as AssemblyAI is reached in production (`sim::tls`; a `sim` build of
    /// the service trusts its certificate for WebSockets). For streaming only: `/v3/token`
    /// is then https too, which the service's HTTP client does not trust.
    pub async fn start_tls(api_key: &str, port: u16) -> std::io::Result<Self> {
        Self::start_with(api_key, port, true).await
    }

    async fn start_with(api_key: &str, port: u16, tls: bool) -> std::io::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
        let listener = socket.listen(ACCEPT_BACKLOG)?;
        let sim = Self {
            address: listener.local_addr()?,
            tls,
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
            open: Arc::default(),
            spread_turns: Arc::default(),
            begun: Arc::default(),
        };
        let router = Router::new()
            .route("/v3/ws", get(upgrade))
            .route("/v3/token", get(token))
            .with_state(sim.clone());
        if tls {
            let listener = super::tls::TlsListener::new(listener)?;
            tokio::spawn(async move { axum::serve(listener, router).await });
        } else {
            tokio::spawn(async move { axum::serve(listener, router).await });
        }
        Ok(sim)
    }

    /// `ASSEMBLYAI_STREAMING_URL` for the service under test.
    pub fn streaming_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/v3/ws", self.address)
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

    /// Benchmarks whose audio never pauses: each session's first turn is cut after a length
    /// of its own between 0 and `max_turn_ms` (evenly spread over the sessions), the next
    /// ones after `max_turn_ms` as usual. Without it every session that started within the
    /// same 20 ms ends its turns within the same 20 ms, every 4 s: a burst of thousands of
    /// finals no real set of conversations produces. The number of turns stays the same.
    pub fn spread_turn_ends(&self) {
        self.spread_turns
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sessions open now (upgraded, not yet ended): 0 once every client has closed its
    /// sessions and the simulator has seen them end.
    pub fn open_sessions(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
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
    let open = OpenSession::new(&sim.open);
    // 2 KiB reads, as the bridge's sockets have: with tungstenite's 128 KiB each of a
    // benchmark's thousands of sessions zero-filled 128 KiB per read on the generator's core.
    ws.read_buffer_size(2048)
        .on_upgrade(move |socket| async move {
            session(sim, socket, query, record).await;
            drop(open);
        })
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}

/// Each µ-law byte's magnitude: the simulator reads every chunk of every session, and
/// under the media benchmark it shares a core with the load generator.
static MULAW_MAGNITUDE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = mulaw_to_linear(i as u8).unsigned_abs();
        i += 1;
    }
    table
};

/// Mean absolute amplitude of a chunk, normalised to 0..1.
fn energy(chunk: &[u8], mulaw: bool) -> f64 {
    if mulaw {
        let sum: u64 = chunk
            .iter()
            .map(|&b| u64::from(MULAW_MAGNITUDE[b as usize]))
            .sum();
        sum as f64 / chunk.len().max(1) as f64 / 32_768.0
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
pub const fn mulaw_to_linear(byte: u8) -> i16 {
    let byte = !byte;
    let sign = byte & 0x80;
    let exponent = (byte >> 4) & 0x07;
    let mantissa = byte & 0x0F;
    let magnitude = (((mantissa as i32) << 3) + 0x84) << exponent;
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

#[derive(Default)]
struct TurnState {
    order: u64,
    speech_ms: u64,
    silence_ms: u64,
    start_ms: u64,
    words_shown: usize,
    /// The times of the words already sent as final (`word_is_final`): as AssemblyAI's,
    /// they never change in a later message of the turn.
    fixed: Vec<(u64, u64)>,
}

impl TurnState {
    /// Each of the first `shown` words' times at `audio_ms`: the final ones as they were
    /// sent, the rest sharing the speech since. `finals` of them are final (fixed from now
    /// on).
    fn word_times(&mut self, shown: usize, finals: usize, audio_ms: u64) -> Vec<(u64, u64)> {
        let mut times = self.fixed.clone();
        times.truncate(shown);
        for i in times.len()..shown {
            let start = times.last().map_or(self.start_ms, |&(_, end)| end);
            let per_word = (audio_ms.saturating_sub(start) / (shown - i) as u64).max(1);
            times.push((start, start + per_word));
        }
        if finals > self.fixed.len() {
            self.fixed = times[..finals].to_vec();
        }
        times
    }
}

/// What the query string asked for, once it passed the real service's checks.
struct Params {
    speech_model: String,
    /// `language_code` on final turns.
    detects: bool,
    mulaw: bool,
    bytes_per_ms: u64,
    format_turns: bool,
}

/// Whether the session goes on after a message.
enum Next {
    Continue,
    Stop,
}

async fn session(
    sim: AssemblyAiSim,
    mut socket: WebSocket,
    query: Vec<(String, String)>,
    record: Arc<Mutex<SessionRecord>>,
) {
    let started = Instant::now();
    let params = match Params::read(&query) {
        Ok(params) => params,
        Err((code, reason, error)) => {
            if let Some(error) = error {
                let _ = socket.send(error_message(code, &error)).await;
            }
            let _ = socket.send(close(code, reason)).await;
            set_closed(&record, code);
            return;
        }
    };
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
    let (script, detected) = script_for(&sim, &params, &session_id);
    let ordinal = sim.begun.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // A step coprime with 4,000 walks every length before repeating one.
    let turn_limit_ms = if sim.spread_turns.load(std::sync::atomic::Ordering::Relaxed) {
        1 + ordinal.wrapping_mul(2_473) % sim.max_turn_ms
    } else {
        sim.max_turn_ms
    };
    let mut session = Session {
        sim,
        socket,
        record,
        params,
        fault,
        session_id,
        script,
        detected,
        started,
        turn: TurnState::default(),
        turn_limit_ms,
        audio_ms: 0,
        chunks: 0,
    };
    while let Some(Ok(message)) = session.socket.recv().await {
        let next = match message {
            Message::Binary(chunk) => session.audio(&chunk).await,
            Message::Text(text) => session.control(&text).await,
            Message::Close(_) => Next::Stop,
            _ => Next::Continue,
        };
        if let Next::Stop = next {
            return;
        }
    }
}

impl Params {
    /// How many of a turn's `shown` words are final: all when it ends; while it is open,
    /// for the Universal-Streaming models every word but the newest while the speaker
    /// talks and all of them once they pause (a pause may or may not end the turn), none
    /// for Universal-3 Pro, whose partials are revised whole until the end of the turn.
    fn final_words(&self, shown: usize, end_of_turn: bool, pausing: bool) -> usize {
        if end_of_turn {
            shown
        } else if self.speech_model == "u3-rt-pro" {
            0
        } else if pausing {
            shown
        } else {
            shown.saturating_sub(1)
        }
    }

    /// The query string checked as the real service checks it; else the close code, its
    /// reason and the `Error` message sent before it (if any).
    fn read(query: &[(String, String)]) -> Result<Self, (u16, &'static str, Option<String>)> {
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let Some(speech_model) = param("speech_model") else {
            return Err((
                3006,
                "speech_model is required",
                Some("speech_model is required".into()),
            ));
        };
        if crate::config::speech::model_languages(&speech_model).is_none() {
            let error = format!("Invalid speech_model: {speech_model}");
            return Err((3006, "invalid speech_model", Some(error)));
        }
        // whisper-rt always detects; the multilingual model reports languages when asked.
        let detects = speech_model == "whisper-rt"
            || (speech_model == "universal-streaming-multilingual"
                && param("language_detection").as_deref() == Some("true"));
        let encoding = param("encoding").unwrap_or_else(|| "pcm_s16le".into());
        let mulaw = match encoding.as_str() {
            "pcm_mulaw" => true,
            "pcm_s16le" => false,
            _ => return Err((3006, "unsupported encoding", None)),
        };
        let sample_rate: u64 = param("sample_rate")
            .and_then(|s| s.parse().ok())
            .unwrap_or(16_000);
        Ok(Self {
            speech_model,
            detects,
            mulaw,
            bytes_per_ms: sample_rate / 1000 * if mulaw { 1 } else { 2 },
            format_turns: param("format_turns").as_deref() == Some("true"),
        })
    }
}

/// The lines this session transcribes (empty ones when the model does not understand the
/// scripted language) and the language it reports, when it detects one.
fn script_for(
    sim: &AssemblyAiSim,
    params: &Params,
    session_id: &str,
) -> (Vec<String>, Option<String>) {
    // `{session}` in a line becomes this session's id: every turn distinct (no cache hits).
    let (spoken_language, lines) = {
        let inner = sim.lock();
        match inner
            .model_scripts
            .iter()
            .find(|(model, _, _)| *model == params.speech_model)
        {
            Some((_, language, lines)) => (language.clone(), lines.clone()),
            None => ("en".to_owned(), inner.script.clone()),
        }
    };
    let understood = crate::config::speech::model_languages(&params.speech_model)
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
    let detected = params.detects.then_some(spoken_language);
    (script, detected)
}

fn error_message(code: u16, error: &str) -> Message {
    Message::Text(
        json!({"type": "Error", "error_code": code, "error": error})
            .to_string()
            .into(),
    )
}

fn set_closed(record: &Mutex<SessionRecord>, code: u16) {
    record.lock().unwrap_or_else(|p| p.into_inner()).closed_with = Some(code);
}

/// One open session after `Begin`.
struct Session {
    sim: AssemblyAiSim,
    socket: WebSocket,
    record: Arc<Mutex<SessionRecord>>,
    params: Params,
    fault: Option<StreamFault>,
    session_id: String,
    script: Vec<String>,
    detected: Option<String>,
    started: Instant,
    turn: TurnState,
    /// Speech after which the current turn ends without a pause: `max_turn_ms`, or for a
    /// spread session's first turn a length of its own.
    turn_limit_ms: u64,
    audio_ms: u64,
    chunks: usize,
}

impl Session {
    /// A binary audio chunk: checked (duration, injected faults), then fed to the turn.
    async fn audio(&mut self, chunk: &[u8]) -> Next {
        self.chunks += 1;
        if self
            .sim
            .record_chunks
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .chunk_bytes
                .push(chunk.len());
        }
        let probe = self
            .sim
            .probe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(probe) = probe {
            probe(chunk);
        }
        let duration = chunk.len() as u64 / self.params.bytes_per_ms.max(1);
        if !(50..=1000).contains(&duration) {
            let error =
                format!("Input Duration Violation: {duration} ms; chunks must be 50-1000 ms");
            let _ = self.socket.send(error_message(3007, &error)).await;
            let _ = self
                .socket
                .send(close(3007, "Input Duration Violation"))
                .await;
            set_closed(&self.record, 3007);
            return Next::Stop;
        }
        match &self.fault {
            Some(StreamFault::DropAfterChunks(n)) if self.chunks >= *n => {
                set_closed(&self.record, 1006);
                return Next::Stop; // dropping the socket without a close frame
            }
            Some(StreamFault::ErrorAfterChunks { chunks: n, code }) if self.chunks >= *n => {
                let code = *code;
                let _ = self
                    .socket
                    .send(error_message(code, "simulated server error"))
                    .await;
                let _ = self
                    .socket
                    .send(close(code, "simulated server error"))
                    .await;
                set_closed(&self.record, code);
                return Next::Stop;
            }
            _ => {}
        }
        self.advance_turn(energy(chunk, self.params.mulaw) > 0.02, duration);
        if self.turn.speech_ms == 0 {
            return Next::Continue;
        }
        self.report_turn().await
    }

    /// Counts `duration` ms of speech or silence into the current turn.
    fn advance_turn(&mut self, speaking: bool, duration: u64) {
        let turn = &mut self.turn;
        self.audio_ms += duration;
        if speaking {
            if turn.speech_ms == 0 {
                turn.start_ms = self.audio_ms - duration;
            }
            turn.speech_ms += duration;
            turn.silence_ms = 0;
        } else if turn.speech_ms > 0 {
            turn.silence_ms += duration;
        }
    }

    /// Sends the turn when it shows more words or ends (400 ms of silence or `max_turn_ms`
    /// of speech); an ended turn starts the next.
    async fn report_turn(&mut self) -> Next {
        let line = self.line().to_owned();
        let total_words = line.split_whitespace().count();
        let ends = self.turn.silence_ms >= 400 || self.turn.speech_ms >= self.turn_limit_ms;
        let shown = if ends {
            total_words
        } else {
            ((self.turn.speech_ms / 300) as usize + 1).min(total_words)
        };
        let finals = self
            .params
            .final_words(shown, ends, self.turn.silence_ms > 0);
        if shown > self.turn.words_shown || ends || finals > self.turn.fixed.len() {
            self.turn.words_shown = shown;
            let times = self.turn.word_times(shown, finals, self.audio_ms);
            for formatted in self.variants(ends) {
                let mut message =
                    turn_message(self.turn.order, &line, &times, finals, ends, formatted);
                if let Some(language) = self.detected.as_deref().filter(|_| ends) {
                    message["language_code"] = json!(language);
                    message["language_confidence"] = json!(0.97);
                }
                // The final message of the turn: formatted when asked for, else raw.
                if ends && formatted == self.params.format_turns {
                    let probe = self
                        .sim
                        .turn_probe
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    if let Some(probe) = probe {
                        probe(&self.session_id, self.turn.order);
                    }
                    let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
                    record.finals += 1;
                    record.final_orders.push(self.turn.order);
                }
                if self
                    .socket
                    .send(Message::Text(message.to_string().into()))
                    .await
                    .is_err()
                {
                    return Next::Stop;
                }
                if ends
                    && !formatted
                    && self.params.format_turns
                    && matches!(self.fault, Some(StreamFault::DropBeforeFormatted))
                {
                    set_closed(&self.record, 1006);
                    return Next::Stop;
                }
            }
        }
        if ends {
            self.turn = TurnState {
                order: self.turn.order + 1,
                ..TurnState::default()
            };
            self.turn_limit_ms = self.sim.max_turn_ms;
        }
        Next::Continue
    }

    /// A JSON control message: `Terminate` or `ForceEndpoint`; anything else is ignored.
    async fn control(&mut self, text: &str) -> Next {
        let value: Value = serde_json::from_str(text).unwrap_or_default();
        match value.get("type").and_then(Value::as_str) {
            Some("Terminate") => {
                self.terminate().await;
                Next::Stop
            }
            Some("ForceEndpoint") if self.turn.speech_ms > 0 => {
                self.turn.silence_ms = 400;
                Next::Continue
            }
            _ => Next::Continue,
        }
    }

    /// Flushes the turn in progress as final, reports what is billed in `Termination` and
    /// closes normally.
    async fn terminate(&mut self) {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .terminated_by_client = true;
        if self.turn.speech_ms > 0 {
            let line = self.line().to_owned();
            let words = line.split_whitespace().count();
            let times = self.turn.word_times(words, words, self.audio_ms);
            for formatted in self.variants(true) {
                let mut message =
                    turn_message(self.turn.order, &line, &times, words, true, formatted);
                if let Some(language) = &self.detected {
                    message["language_code"] = json!(language);
                    message["language_confidence"] = json!(0.97);
                }
                let sent = self
                    .socket
                    .send(Message::Text(message.to_string().into()))
                    .await
                    .is_ok();
                if sent && formatted == self.params.format_turns {
                    let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
                    record.finals += 1;
                    record.final_orders.push(self.turn.order);
                }
            }
        }
        let (audio_seconds, session_seconds) =
            (self.audio_ms / 1000, self.started.elapsed().as_secs());
        {
            let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
            record.billed_session_seconds = Some(session_seconds);
            record.billed_audio_seconds = Some(audio_seconds);
        }
        let termination = json!({
            "type": "Termination",
            "audio_duration_seconds": audio_seconds,
            "session_duration_seconds": session_seconds,
        });
        let _ = self
            .socket
            .send(Message::Text(termination.to_string().into()))
            .await;
        let _ = self.socket.send(close(1000, "")).await;
        set_closed(&self.record, 1000);
    }

    /// The script line of the current turn.
    fn line(&self) -> &str {
        &self.script[(self.turn.order as usize) % self.script.len().max(1)]
    }

    /// The messages a turn is sent as: raw, and formatted too when it ends and
    /// `format_turns` was asked for.
    fn variants(&self, ends: bool) -> Vec<bool> {
        if ends && self.params.format_turns {
            vec![false, true]
        } else {
            vec![false]
        }
    }
}

/// A `Turn` message showing the line's first `times.len()` words at those times, the first
/// `finals` of them final.
fn turn_message(
    order: u64,
    line: &str,
    times: &[(u64, u64)],
    finals: usize,
    end_of_turn: bool,
    formatted: bool,
) -> Value {
    let words: Vec<&str> = line.split_whitespace().take(times.len()).collect();
    let word_items: Vec<Value> = words
        .iter()
        .zip(times)
        .enumerate()
        .map(|(i, (w, &(start, end)))| {
            json!({"text": w, "start": start, "end": end, "confidence": 0.93, "word_is_final": i < finals})
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
        "turn_order": order,
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
    fn a_final_words_times_never_change_and_only_universal_streaming_finalises_early() {
        let mut turn = TurnState {
            start_ms: 500,
            ..TurnState::default()
        };
        let streaming = Params {
            speech_model: "universal-streaming-english".into(),
            detects: false,
            mulaw: true,
            bytes_per_ms: 8,
            format_turns: true,
        };
        let first = turn.word_times(2, streaming.final_words(2, false, false), 900);
        assert_eq!(first, vec![(500, 700), (700, 900)]);
        // Later, more speech: the final first word keeps its times, the open one stretches.
        let later = turn.word_times(2, streaming.final_words(2, false, false), 1300);
        assert_eq!(later, vec![(500, 700), (700, 1300)]);
        let message = turn_message(0, "one two", &later, 1, false, false);
        assert_eq!(message["words"][0]["word_is_final"], true);
        assert_eq!(message["words"][1]["word_is_final"], false);
        let pro = Params {
            speech_model: "u3-rt-pro".into(),
            ..streaming
        };
        assert_eq!(pro.final_words(5, false, true), 0);
        assert_eq!(pro.final_words(5, true, false), 5);
        assert_eq!(
            streaming.final_words(5, false, true),
            5,
            "a pause fixes them all"
        );
    }

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
