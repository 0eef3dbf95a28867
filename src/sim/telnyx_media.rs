//! A Telnyx media-stream client (docs/PROVIDERS.md §1.6): connects to our `stream_url` the way
//! Telnyx does and plays µ-law audio on both tracks in 20 ms frames — in real time or as fast
//! as allowed — optionally shuffled within a small window (Telnyx does not guarantee order),
//! then sends `stop` and collects what the server sent back. An upgrade answered with a 5xx,
//! 408 or 429, or a connection that fails, is tried again with backoff (at least
//! `Retry-After`) for up to `RECONNECT_FOR` while the call's audio runs on (ADR 0026).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt as _, StreamExt as _};
use rand::seq::SliceRandom as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::assemblyai::linear_to_mulaw;

/// 20 ms of µ-law at 8 kHz.
pub const FRAME_BYTES: usize = 160;

#[derive(Debug, Clone)]
pub struct PlayOptions {
    pub stream_url: String,
    pub call_control_id: String,
    /// µ-law audio for the inbound track (and, unless `outbound` is set, the outbound one).
    pub inbound: Vec<u8>,
    pub outbound: Option<Vec<u8>>,
    /// Pace frames at 20 ms like a live call; otherwise as fast as the socket takes them.
    pub realtime: bool,
    /// Shuffle frames within windows of this many (0 = in order).
    pub shuffle_window: usize,
    /// Send `stop` at the end (a hangup closes without it).
    pub send_stop: bool,
    /// Extra raw text frames sent right after `start` (malformed-frame tests).
    pub extra_frames: Vec<String>,
    /// Wait this long after the audio before `stop` (translated speech still playing).
    pub linger: Duration,
    /// Send the inbound track only, as Telnyx does for `stream_track=inbound_track` (one
    /// leg of an interpreted call).
    pub inbound_only: bool,
    /// The call began then and its audio has been running since (a stream re-attached to a
    /// live call): the stream starts with the audio of the moment it is connected, paced on
    /// the call's clock, as Telnyx's would. Implies `realtime`.
    pub call_started: Option<tokio::time::Instant>,
    /// From frame `.0` (of the call's audio) on, every frame reaches the server `.1` late: a
    /// congested network, or a server too busy to read on time. Implies `realtime`.
    pub late_from: Option<(usize, Duration)>,
}

impl PlayOptions {
    pub fn new(stream_url: String, audio: Vec<u8>) -> Self {
        Self {
            stream_url,
            call_control_id: format!("v3:media-sim-{}", uuid::Uuid::new_v4().simple()),
            inbound: audio,
            outbound: None,
            realtime: false,
            shuffle_window: 0,
            send_stop: true,
            extra_frames: Vec::new(),
            linger: Duration::ZERO,
            inbound_only: false,
            call_started: None,
            late_from: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct PlayResult {
    /// Upgrades refused before the stream connected (their HTTP status, 0 when no answer).
    pub refused: Vec<u16>,
    pub frames_sent: usize,
    /// The moment the first frame's audio began: the call's clock (see `call_started`).
    pub started: Option<tokio::time::Instant>,
    /// Text frames the server sent us (media, mark, clear), parsed.
    pub received: Vec<Value>,
    pub close_code: Option<u16>,
    /// µ-law bytes the server streamed into the call.
    pub media_bytes: usize,
    /// Marks we echoed, in order (as Telnyx does once the audio before them has played).
    pub marks_echoed: Vec<String>,
    pub clears: usize,
}

impl PlayResult {
    /// The µ-law audio the server streamed into the call, in order.
    pub fn audio(&self) -> Vec<u8> {
        self.received
            .iter()
            .filter(|v| v["event"] == "media")
            .filter_map(|v| v["media"]["payload"].as_str())
            .filter_map(|p| STANDARD.decode(p).ok())
            .flatten()
            .collect()
    }
}

/// Speech-like µ-law: a 220 Hz tone while `speaking`, silence otherwise.
pub fn speech_like(pattern: &[(u64, bool)]) -> Vec<u8> {
    let mut audio = Vec::new();
    let mut n: u64 = 0;
    for (ms, speaking) in pattern {
        for _ in 0..ms * 8 {
            let sample = if *speaking {
                let t = n as f64 / 8000.0;
                (8000.0 * (2.0 * std::f64::consts::PI * 220.0 * t).sin()) as i16
            } else {
                0
            };
            audio.push(linear_to_mulaw(sample));
            n += 1;
        }
    }
    audio
}

/// The first bytes of a tagged frame; tag bytes are µ-law values within ±120 of silence, so
/// a tag does not change whether a frame sounds like speech.
const TAG_MAGIC: [u8; 2] = [0xF3, 0xFC];
const TAG_BYTES: usize = 9;

/// Marks every 20 ms frame of `audio` with `stream` and the frame's index from
/// `first_frame`, in its first nine samples, so a test can tell exactly which frames of
/// which call and track reached AssemblyAI (`frame_tags`): the truth that gaps are checked
/// against.
pub fn tag_frames(audio: &mut [u8], stream: u8, first_frame: u32) {
    for (index, frame) in audio.chunks_mut(FRAME_BYTES).enumerate() {
        if frame.len() < TAG_BYTES {
            continue;
        }
        let value = (u64::from(stream) << 20) | u64::from(first_frame + index as u32);
        frame[..2].copy_from_slice(&TAG_MAGIC);
        for (n, byte) in frame[2..TAG_BYTES].iter_mut().enumerate() {
            *byte = 0xF0 | ((value >> (4 * (6 - n))) & 0x0F) as u8;
        }
    }
}

/// The `(stream, frame)` tags of the frames in an AssemblyAI chunk (untagged frames, such
/// as silence the bridge filled in or padded with, are skipped).
pub fn frame_tags(chunk: &[u8]) -> Vec<(u8, u32)> {
    chunk
        .chunks(FRAME_BYTES)
        .filter(|f| f.len() >= TAG_BYTES && f[..2] == TAG_MAGIC)
        .filter(|f| f[2..TAG_BYTES].iter().all(|b| b & 0xF0 == 0xF0))
        .map(|f| {
            let value = f[2..TAG_BYTES]
                .iter()
                .fold(0u64, |v, b| (v << 4) | u64::from(b & 0x0F));
            ((value >> 20) as u8, (value & 0xF_FFFF) as u32)
        })
        .collect()
}

fn media_frame(stream_id: &str, track: &str, chunk: u64, sequence: u64, payload: &[u8]) -> String {
    json!({
        "event": "media",
        "sequence_number": sequence.to_string(),
        "stream_id": stream_id,
        "media": {"track": track, "chunk": chunk.to_string(), "timestamp": (chunk * 20).to_string(), "payload": STANDARD.encode(payload)},
    })
    .to_string()
}

pub async fn play(options: PlayOptions) -> Result<PlayResult, String> {
    crate::tls::install_crypto_provider();
    // Frames are built before connecting: once connected, Telnyx streams at once.
    let stream_id = uuid::Uuid::new_v4().to_string();
    let outbound = options
        .outbound
        .clone()
        .unwrap_or_else(|| options.inbound.clone());
    let inbound_frames: Vec<&[u8]> = options.inbound.chunks(FRAME_BYTES).collect();
    let outbound_frames: Vec<&[u8]> = outbound.chunks(FRAME_BYTES).collect();
    let mut frames = Vec::new();
    let mut sequence = 2u64;
    for i in 0..inbound_frames.len().max(outbound_frames.len()) {
        let tracks: &[(&str, &Vec<&[u8]>)] = if options.inbound_only {
            &[("inbound", &inbound_frames)]
        } else {
            &[("inbound", &inbound_frames), ("outbound", &outbound_frames)]
        };
        for &(track, list) in tracks {
            if let Some(payload) = list.get(i) {
                frames.push((
                    i,
                    media_frame(&stream_id, track, i as u64 + 1, sequence, payload),
                ));
                sequence += 1;
            }
        }
    }
    // The call's audio runs from the first attempt (or from when the call began): a stream
    // that connects late starts with the audio of that moment.
    let call_started = options
        .call_started
        .unwrap_or_else(tokio::time::Instant::now);
    let (socket, refused) = connect(&options.stream_url).await?;
    let (tx, rx) = socket.split();
    let tx = Arc::new(tokio::sync::Mutex::new(tx));
    let reader = tokio::spawn(listen(rx, tx.clone(), stream_id.clone()));
    let send = |text: String| Message::Text(text.into());
    tx.lock()
        .await
        .send(send(
            json!({"event": "connected", "version": "1.0.0"}).to_string(),
        ))
        .await
        .map_err(|e| e.to_string())?;
    let start = json!({
        "event": "start", "sequence_number": "1", "stream_id": stream_id,
        "start": {"user_id": "sim", "call_control_id": options.call_control_id, "call_session_id": "sim-session",
                  "from": "+15550000001", "to": "+15550000002", "tags": [], "client_state": null, "custom_parameters": {},
                  "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
    });
    tx.lock()
        .await
        .send(send(start.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    for extra in &options.extra_frames {
        tx.lock()
            .await
            .send(send(extra.clone()))
            .await
            .map_err(|e| e.to_string())?;
    }
    if options.shuffle_window > 1 {
        for window in frames.chunks_mut(options.shuffle_window * 2) {
            window.shuffle(&mut rand::rng());
        }
    }
    let late_start = options.call_started.is_some() || !refused.is_empty();
    let (started, skip) = if late_start {
        (
            call_started,
            call_started.elapsed().as_millis() as usize / 20,
        )
    } else {
        (tokio::time::Instant::now(), 0)
    };
    let realtime = options.realtime || late_start || options.late_from.is_some();
    let mut sent = 0;
    for (index, frame) in frames.into_iter().filter(|(index, _)| *index >= skip) {
        if realtime {
            let late = match options.late_from {
                Some((from, late)) if index >= from => late,
                _ => Duration::ZERO,
            };
            tokio::time::sleep_until(started + Duration::from_millis(index as u64 * 20) + late)
                .await;
        }
        // The server may end the stream first (shutdown): stop sending, report what it said.
        if tx.lock().await.send(send(frame)).await.is_err() {
            break;
        }
        sent += 1;
    }
    if options.send_stop {
        // Like a real call, translated speech may still be playing when the audio ends.
        tokio::time::sleep(options.linger).await;
        let stop = json!({"event": "stop", "sequence_number": sequence.to_string(), "stream_id": stream_id,
                          "stop": {"user_id": "sim", "call_control_id": options.call_control_id}});
        let _ = tx.lock().await.send(send(stop.to_string())).await;
    } else {
        let _ = tx.lock().await.close().await;
    }
    let mut result = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .map_err(|_| "server never closed".to_string())?
        .map_err(|e| e.to_string())?;
    result.frames_sent = sent;
    result.started = Some(started);
    result.refused = refused;
    Ok(result)
}

/// How long the simulated Telnyx keeps trying to open a stream whose upgrade failed.
pub const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// Backoff between attempts: equal jitter from 250 ms doubling to 4 s (`retry::backoff`).
const RECONNECT_BASE: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(4);

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the stream as Telnyx would retry it (ADR 0026): a 5xx, 408 or 429 answer or no
/// answer at all is tried again after the backoff, or after `Retry-After` when that is
/// longer; any other refusal (401, 404: a wrong URL or an ended call) is final. Returns the
/// socket and the statuses of the refused attempts.
async fn connect(url: &str) -> Result<(Socket, Vec<u16>), String> {
    use tokio_tungstenite::tungstenite::Error;
    let first = tokio::time::Instant::now();
    let mut refused = Vec::new();
    loop {
        let error = match tokio_tungstenite::connect_async(url).await {
            Ok((socket, _)) => return Ok((socket, refused)),
            Err(error) => error,
        };
        let (status, retry_after) = match &error {
            Error::Http(response) => (
                response.status().as_u16(),
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
            ),
            _ => (0, None),
        };
        let retryable = status == 0 || status >= 500 || status == 408 || status == 429;
        refused.push(status);
        if !retryable || first.elapsed() >= RECONNECT_FOR {
            return Err(format!(
                "the stream upgrade failed {} times (last: {error})",
                refused.len()
            ));
        }
        let backoff = crate::retry::backoff(RECONNECT_BASE, RECONNECT_MAX, refused.len() as u32);
        tokio::time::sleep(backoff.max(retry_after.unwrap_or_default())).await;
    }
}

type Sink = Arc<
    tokio::sync::Mutex<
        futures_util::stream::SplitSink<
            WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
            Message,
        >,
    >,
>;

/// Plays what the server sends in real time, like Telnyx: a mark is echoed once the audio
/// queued before it has played; `clear` drops the queue and flushes pending marks at once.
async fn listen(
    mut rx: futures_util::stream::SplitStream<
        WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    >,
    tx: Sink,
    stream_id: String,
) -> PlayResult {
    let mut result = PlayResult::default();
    let mut queue_end = tokio::time::Instant::now();
    let mut pending: VecDeque<(tokio::time::Instant, String)> = VecDeque::new();
    let echo = |name: String| {
        let (tx, stream_id) = (tx.clone(), stream_id.clone());
        async move {
            let message = json!({"event": "mark", "sequence_number": "0", "stream_id": stream_id, "mark": {"name": name}});
            let _ = tx
                .lock()
                .await
                .send(Message::Text(message.to_string().into()))
                .await;
        }
    };
    loop {
        let due = pending.front().map(|(at, _)| *at);
        tokio::select! {
            message = rx.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match value["event"].as_str() {
                        Some("media") => {
                            let bytes = value["media"]["payload"].as_str().and_then(|p| STANDARD.decode(p).ok()).map_or(0, |b| b.len());
                            result.media_bytes += bytes;
                            queue_end = queue_end.max(tokio::time::Instant::now()) + Duration::from_millis(bytes as u64 / 8);
                        }
                        Some("mark") => {
                            let name = value["mark"]["name"].as_str().unwrap_or_default().to_owned();
                            pending.push_back((queue_end.max(tokio::time::Instant::now()), name));
                        }
                        Some("clear") => {
                            result.clears += 1;
                            queue_end = tokio::time::Instant::now();
                            for (_, name) in pending.drain(..) {
                                echo(name.clone()).await;
                                result.marks_echoed.push(name);
                            }
                        }
                        _ => {}
                    }
                    result.received.push(value);
                }
                Some(Ok(Message::Close(frame))) => {
                    result.close_code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            },
            () = sleep_until(due), if due.is_some() => {
                if let Some((_, name)) = pending.pop_front() {
                    echo(name.clone()).await;
                    result.marks_echoed.push(name);
                }
            }
        }
    }
    result
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_tags_round_trip_and_stay_near_silence() {
        let mut audio = speech_like(&[(100, true), (100, false)]);
        tag_frames(&mut audio, 19, 1_000);
        let tags = frame_tags(&audio);
        assert_eq!(tags, (1_000..1_010).map(|f| (19, f)).collect::<Vec<_>>());
        let silent = &audio[5 * FRAME_BYTES..6 * FRAME_BYTES];
        let loudest = silent
            .iter()
            .map(|b| super::super::assemblyai::mulaw_to_linear(*b).unsigned_abs())
            .max();
        assert!(loudest <= Some(120), "{loudest:?}");
        assert!(
            frame_tags(&[0xFF; 800]).is_empty(),
            "filled silence has no tag"
        );
    }
}
