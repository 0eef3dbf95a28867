//! A Telnyx media-stream client (PROVIDERS.md §1.6): connects to our `stream_url` the way
//! Telnyx does and plays µ-law audio on both tracks in 20 ms frames — in real time or as fast
//! as allowed — optionally shuffled within a small window (Telnyx does not guarantee order),
//! then sends `stop` and collects what the server sent back.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt as _, StreamExt as _};
use rand::seq::SliceRandom as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

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
        }
    }
}

#[derive(Debug, Default)]
pub struct PlayResult {
    pub frames_sent: usize,
    /// Text frames the server sent us (media, mark, clear), parsed.
    pub received: Vec<Value>,
    pub close_code: Option<u16>,
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
    let (socket, _) = tokio_tungstenite::connect_async(options.stream_url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, mut rx) = socket.split();
    let stream_id = uuid::Uuid::new_v4().to_string();
    let reader = tokio::spawn(async move {
        let mut result = PlayResult::default();
        while let Some(Ok(message)) = rx.next().await {
            match message {
                Message::Text(text) => result
                    .received
                    .push(serde_json::from_str(&text).unwrap_or(Value::Null)),
                Message::Close(frame) => {
                    result.close_code = frame.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
        result
    });
    let send = |text: String| Message::Text(text.into());
    tx.send(send(
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
    tx.send(send(start.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    for extra in &options.extra_frames {
        tx.send(send(extra.clone()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let outbound = options
        .outbound
        .clone()
        .unwrap_or_else(|| options.inbound.clone());
    let inbound_frames: Vec<&[u8]> = options.inbound.chunks(FRAME_BYTES).collect();
    let outbound_frames: Vec<&[u8]> = outbound.chunks(FRAME_BYTES).collect();
    let mut frames = Vec::new();
    let mut sequence = 2u64;
    for i in 0..inbound_frames.len().max(outbound_frames.len()) {
        for (track, list) in [("inbound", &inbound_frames), ("outbound", &outbound_frames)] {
            if let Some(payload) = list.get(i) {
                frames.push((
                    i,
                    media_frame(&stream_id, track, i as u64 + 1, sequence, payload),
                ));
                sequence += 1;
            }
        }
    }
    if options.shuffle_window > 1 {
        for window in frames.chunks_mut(options.shuffle_window * 2) {
            window.shuffle(&mut rand::rng());
        }
    }
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    for (index, frame) in frames {
        if options.realtime {
            tokio::time::sleep_until(started + Duration::from_millis(index as u64 * 20)).await;
        }
        // The server may end the stream first (shutdown): stop sending, report what it said.
        if tx.send(send(frame)).await.is_err() {
            break;
        }
        sent += 1;
    }
    if options.send_stop {
        let stop = json!({"event": "stop", "sequence_number": sequence.to_string(), "stream_id": stream_id,
                          "stop": {"user_id": "sim", "call_control_id": options.call_control_id}});
        let _ = tx.send(send(stop.to_string())).await;
    } else {
        let _ = tx.close().await;
    }
    let mut result = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .map_err(|_| "server never closed".to_string())?
        .map_err(|e| e.to_string())?;
    result.frames_sent = sent;
    Ok(result)
}
