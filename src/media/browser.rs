//! Browser transcription through us: the browser streams audio over a WebSocket, we batch it
//! to AssemblyAI's 50–1000 ms rule and relay AssemblyAI's messages back verbatim. When bound
//! to a call, final turns are stored as that call's `browser` track. Each session's seconds go
//! to the usage ledger when it ends, like a call track's (docs/USAGE.md).

use axum::extract::ws::CloseFrame;
use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use std::time::Instant;
use tokio::sync::oneshot;

use super::shaping::ByteBatcher;
use crate::auth::recheck::Revoked;
use crate::ids::CallId;
use crate::providers::assemblyai::{
    self, AssemblyAiClient, Incoming, Outgoing, ServerMessage, Socket, StreamParams,
};
use crate::state::AppState;
use crate::turns::{self, FinalTurn};
use crate::usage::{self, Owner, Recorder};

/// Client messages we pass on; anything else from the browser is ignored.
fn allowed_control(text: &str) -> bool {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    matches!(
        value.get("type").and_then(|t| t.as_str()),
        Some("Terminate" | "ForceEndpoint")
    )
}

/// One browser session's bill: written to the ledger once, when the session is dropped, whichever
/// way it ended (the browser left, AssemblyAI closed, authorisation ended, shutdown). AssemblyAI
/// bills wall-clock session time: its `Termination`'s `session_duration_seconds` when it sent
/// one, else our own measure of the connection (as `media::bridge` does for call tracks).
struct SessionMeter {
    ledger: Recorder,
    owner: Owner,
    session_id: String,
    model: String,
    opened: Instant,
    reported_seconds: Option<f64>,
    audio_seconds: Option<f64>,
}

impl SessionMeter {
    fn entry(&self) -> usage::Entry {
        let measured = self.opened.elapsed().as_secs_f64();
        usage::Entry {
            owner: self.owner.clone(),
            vendor: usage::unit::ASSEMBLYAI,
            unit: usage::unit::STREAMING_SECONDS,
            quantity: self.reported_seconds.unwrap_or(measured),
            source_key: format!("assemblyai:session:{}", self.session_id),
            occurred_at: chrono::Utc::now(),
            metadata: serde_json::json!({
                "session_id": self.session_id,
                "track": "browser",
                "model": self.model,
                "reported_seconds": self.reported_seconds,
                "audio_seconds": self.audio_seconds,
                "measured_seconds": measured,
            }),
        }
    }
}

impl Drop for SessionMeter {
    fn drop(&mut self) {
        self.ledger.record(vec![self.entry()]);
    }
}

/// `owner` is whom the session's seconds are billed to: the call's organisation when the
/// session is bound to a call, else the caller's.
pub async fn run(
    state: AppState,
    client: AssemblyAiClient,
    params: StreamParams,
    call_id: Option<CallId>,
    owner: Owner,
    socket: WebSocket,
    mut revoked: oneshot::Receiver<Revoked>,
) {
    let (mut browser_tx, mut browser_rx) = socket.split();
    let (aai, session_id) = match client.connect(&params).await {
        Ok(connected) => connected,
        Err(error) => {
            let message = serde_json::json!({"type": "Error", "error_code": 1011, "error": error.to_string()});
            let _ = browser_tx
                .send(WsMessage::Text(message.to_string().into()))
                .await;
            let _ = browser_tx.close().await;
            return;
        }
    };
    let mut meter = SessionMeter {
        ledger: state.ledger.clone(),
        owner,
        session_id: session_id.clone(),
        model: params.speech_model.clone(),
        // From `Begin`: what AssemblyAI counts as the session.
        opened: Instant::now(),
        reported_seconds: None,
        audio_seconds: None,
    };
    let Socket {
        reader: mut aai_rx,
        writer: mut aai_tx,
        ..
    } = aai;
    let begin = serde_json::json!({"type": "Begin", "id": session_id});
    let _ = browser_tx
        .send(WsMessage::Text(begin.to_string().into()))
        .await;
    let sample_bytes = if params.encoding == "pcm_mulaw" { 1 } else { 2 };
    let silence = if params.encoding == "pcm_mulaw" {
        0xFF
    } else {
        0
    };
    let mut batcher = ByteBatcher::new(
        state.config.media.batch_ms,
        params.bytes_per_ms(),
        sample_bytes,
        silence,
    );
    let mut terminating = false;
    let mut watching = true;
    loop {
        tokio::select! {
            incoming = browser_rx.next(), if !terminating => match incoming {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    for chunk in batcher.push(&bytes) {
                        if aai_tx.send(&[Outgoing::Binary(&chunk)]).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(WsMessage::Text(text))) if allowed_control(&text) => {
                    if text.contains("Terminate") {
                        if let Some(tail) = batcher.flush() {
                            let _ = aai_tx.send(&[Outgoing::Binary(&tail)]).await;
                        }
                        terminating = true;
                    }
                    let _ = aai_tx.send(&[Outgoing::Text(text.as_str())]).await;
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => {
                    // The browser left: finish the session so nothing is billed or lost.
                    if let Some(tail) = batcher.flush() {
                        let _ = aai_tx.send(&[Outgoing::Binary(&tail)]).await;
                    }
                    let _ = aai_tx.send(&[assemblyai::TERMINATE]).await;
                    terminating = true;
                }
                Some(Ok(_)) => {}
            },
            message = aai_rx.next() => match message {
                Ok(Incoming::Text(text)) => {
                    let message = assemblyai::parse_server_message(text);
                    if let ServerMessage::Termination { audio_seconds, session_seconds } = &message {
                        meter.reported_seconds = *session_seconds;
                        meter.audio_seconds = *audio_seconds;
                    }
                    if let (Some(call_id), ServerMessage::Turn(turn)) = (call_id, &message)
                        && turn.end_of_turn && turn.turn_is_formatted
                    {
                        let stored = FinalTurn {
                            call_id,
                            track: "browser",
                            // A browser session's turns follow whatever the call has.
                            turn_index: None,
                            session_id: session_id.clone(),
                            turn_order: turn.turn_order as i64,
                            text: turn.transcript.clone(),
                            words: turn.words.iter().cloned().map(turns::Word::from).collect(),
                            confidence: None,
                            start_ms: turn.words.first().map(|w| w.start as i64),
                            end_ms: turn.words.last().map(|w| w.end as i64),
                            language: turn.language_code.clone(),
                        };
                        state.turns.store(stored).await;
                    }
                    if browser_tx.send(WsMessage::Text(text.into())).await.is_err() && !terminating {
                        let _ = aai_tx.send(&[assemblyai::TERMINATE]).await;
                        terminating = true;
                    }
                }
                Ok(Incoming::Close(_)) | Err(_) => break,
                Ok(Incoming::Pong(_) | Incoming::Binary(_)) => {}
            },
            verdict = &mut revoked, if watching => {
                let Ok(reason) = verdict else {
                    watching = false; // the watcher is gone without a verdict
                    continue;
                };
                // Authorisation ended: stop transcribing (nothing more is billed) and tell the
                // browser why, without relaying anything further to it.
                let _ = aai_tx.send(&[assemblyai::TERMINATE]).await;
                let _ = browser_tx
                    .send(WsMessage::Close(Some(CloseFrame {
                        code: reason.close_code(),
                        reason: reason.detail().into(),
                    })))
                    .await;
                return;
            }
            () = state.shutdown.cancelled(), if !terminating => {
                let _ = aai_tx.send(&[assemblyai::TERMINATE]).await;
                terminating = true;
            }
        }
    }
    let _ = browser_tx.close().await;
}
