//! One task per live call: Telnyx media frames in, one AssemblyAI v3 session per track,
//! transcripts out. Everything the task holds is bounded: the reorder window, one partial
//! batch, and a replay buffer of at most `MEDIA_REPLAY_BUFFER_SECS` per track.
//!
//! When AssemblyAI drops a session (not after our `Terminate`), the track reconnects with
//! backoff and replays the audio held since its last final turn, so the unfinished turn is
//! transcribed again. Audio that overflows the buffer while disconnected is dropped and
//! recorded as a *gap*. On `stop`, socket close or process shutdown every track flushes,
//! sends `Terminate`, and waits (bounded) for its last turns to be stored.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use base64::Engine as _;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as AaiMessage;
use uuid::Uuid;

use super::audio::{MULAW_BYTES_PER_MS, TrackAudio};
use super::frames::{self, Frame, Track};
use super::playout::{self, ClearedThrough, Languages, Outbound, Utterance};
use super::transcripts::{self, FinalTurn};
use crate::providers::assemblyai::{
    self, AssemblyAiClient, ServerMessage, Socket, StreamParams, Turn,
};
use crate::state::AppState;

type AaiSink = SplitSink<Socket, AaiMessage>;

/// How long a stopping call waits for its last turns.
const STOP_DEADLINE: Duration = Duration::from_secs(8);
const HEARTBEAT: Duration = Duration::from_secs(5);

enum AaiEvent {
    Connected {
        track: Track,
        generation: u64,
        sink: AaiSink,
        session_id: String,
    },
    ConnectFailed {
        track: Track,
        generation: u64,
        error: String,
    },
    Message {
        track: Track,
        generation: u64,
        message: ServerMessage,
    },
    Closed {
        track: Track,
        generation: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Live,
    Waiting(Instant),
    Terminating,
    Finished,
}

struct Batch {
    offset_ms: u64,
    bytes: Vec<u8>,
}

impl Batch {
    fn end_ms(&self) -> u64 {
        self.offset_ms + (self.bytes.len() / MULAW_BYTES_PER_MS) as u64
    }
}

struct TrackState {
    track: Track,
    audio: TrackAudio,
    sink: Option<AaiSink>,
    generation: u64,
    phase: Phase,
    attempts: u32,
    session_id: String,
    /// Audio since the last final turn (sent or not): what a new session replays.
    held: VecDeque<Batch>,
    held_bytes: usize,
    cap_bytes: usize,
    next_offset_ms: u64,
    /// Track offset at which the current session's audio begins (its word times start at 0).
    session_base_ms: u64,
    turn_index: i32,
    last_partial: String,
    /// AssemblyAI has reported words of a turn that has not ended yet.
    turn_open: bool,
    /// Not before this may a silent track trim its replay audio: a session that has just
    /// been sent held audio has not yet had time to report words in it.
    trim_after: Option<Instant>,
    /// What a live session keeps while no turn is open (`MEDIA_IDLE_REPLAY_MS`).
    idle_window: Duration,
    /// When each batch was sent, for AssemblyAI's end-of-turn latency; bounded.
    sent_at: VecDeque<(u64, Instant)>,
    open_gap: Option<(u64, u64)>,
}

impl TrackState {
    fn new(track: Track, config: &crate::config::MediaConfig) -> Self {
        Self {
            track,
            audio: TrackAudio::new(config.batch_ms, config.reorder_window),
            sink: None,
            generation: 0,
            phase: Phase::Connecting,
            attempts: 0,
            session_id: String::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            cap_bytes: config.replay_buffer_secs * 1000 * MULAW_BYTES_PER_MS,
            next_offset_ms: 0,
            session_base_ms: 0,
            turn_index: 0,
            last_partial: String::new(),
            turn_open: false,
            trim_after: None,
            idle_window: Duration::from_millis(config.idle_replay_ms as u64),
            sent_at: VecDeque::new(),
            open_gap: None,
        }
    }
}

pub struct Bridge {
    state: AppState,
    call_id: Uuid,
    client: AssemblyAiClient,
    params: StreamParams,
    tracks: HashMap<Track, TrackState>,
    events_tx: mpsc::Sender<AaiEvent>,
    storage: JoinSet<()>,
    stream_id: Option<String>,
    replica: String,
    stopping: Option<Instant>,
    /// The live translation loop, when the call has two languages and TTS is configured.
    speaker: Option<mpsc::Sender<Utterance>>,
    next_utterance: i32,
    /// Utterances sent into the call whose mark has not come back yet, oldest first.
    playing: VecDeque<Playing>,
    cleared: ClearedThrough,
    clear_requested: bool,
    meters: Meters,
}

/// Handles to the per-frame metrics, resolved once per call: looking a metric up by name
/// on every frame costs a registry lookup per frame.
struct Meters {
    frames_in: metrics::Counter,
    frames_out: metrics::Counter,
    batches_sent: metrics::Counter,
    frame_latency: metrics::Histogram,
}

impl Meters {
    fn new() -> Self {
        Self {
            frames_in: metrics::counter!("media_frames_in_total"),
            frames_out: metrics::counter!("media_frames_out_total"),
            batches_sent: metrics::counter!("assemblyai_batches_sent_total"),
            frame_latency: metrics::histogram!("media_bridge_latency_seconds"),
        }
    }
}

struct Playing {
    seq: i32,
    listener: Track,
    first_frame: Instant,
    audio_ms: u64,
    mark: Option<String>,
}

/// Runs the bridge for one Telnyx media WebSocket until the stream ends.
pub async fn run(state: AppState, call_id: Uuid, client: AssemblyAiClient, socket: WebSocket) {
    metrics::gauge!("media_live_calls").increment(1.0);
    let (events_tx, events_rx) = mpsc::channel(256);
    let params = StreamParams::telephony(&state.config.media.speech_model);
    let replica = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
        std::process::id()
    );
    let (outbound_tx, outbound_rx) = mpsc::channel(256);
    let cleared: ClearedThrough = playout::nothing_cleared();
    let (speaker, speaker_task) = match languages(&state, call_id).await {
        Some(languages) => {
            let (tx, task) = playout::spawn(
                state.clone(),
                call_id,
                languages,
                outbound_tx.clone(),
                cleared.clone(),
            );
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    drop(outbound_tx);
    let mut bridge = Bridge {
        state,
        call_id,
        client,
        params,
        tracks: HashMap::new(),
        events_tx,
        storage: JoinSet::new(),
        stream_id: None,
        replica,
        stopping: None,
        speaker,
        next_utterance: 0,
        playing: VecDeque::new(),
        cleared,
        clear_requested: false,
        meters: Meters::new(),
    };
    bridge.event_loop(socket, events_rx, outbound_rx).await;
    bridge.speaker = None;
    if let Some(task) = speaker_task {
        let _ = tokio::time::timeout(STOP_DEADLINE, task).await;
    }
    if let Err(error) = playout::never_played(&bridge.state.db, call_id).await {
        tracing::warn!(%error, "closing unplayed utterances failed");
    }
    for track in [Track::Inbound, Track::Outbound] {
        bridge.close_gap(track);
    }
    while bridge.storage.join_next().await.is_some() {}
    // A stream stopped by our own shutdown is not over: the call goes on and another replica
    // re-attaches it. Any other end (Telnyx stop, hangup) is final.
    let recorded = if bridge.state.shutdown.is_cancelled() {
        super::reattach::detach(&bridge.state, call_id).await
    } else {
        transcripts::stream_ended(&bridge.state.db, call_id).await
    };
    if let Err(error) = recorded {
        tracing::warn!(%error, %call_id, "recording the end of the media stream failed");
    }
    metrics::gauge!("media_live_calls").decrement(1.0);
    tracing::info!(%call_id, "media bridge finished");
}

/// The call's two languages, when translation can run (both set, differing, TTS configured).
async fn languages(state: &AppState, call_id: Uuid) -> Option<Languages> {
    state.tts.as_ref()?;
    let client = state.db.client().await.ok()?;
    let call = crate::calls::get_unscoped(&**client, call_id)
        .await
        .ok()??;
    Some(Languages {
        organisation_id: call.organisation_id,
        inbound: call.source_language?,
        outbound: call.target_language?,
        voice: call.voice_id,
    })
}

impl Bridge {
    async fn event_loop(
        &mut self,
        socket: WebSocket,
        mut events_rx: mpsc::Receiver<AaiEvent>,
        mut outbound_rx: mpsc::Receiver<Outbound>,
    ) {
        let (mut telnyx_tx, mut telnyx_rx) = socket.split();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let shutdown = self.state.shutdown.clone();
        // One waiter for the whole call: a fresh `cancelled()` per loop turn would register
        // and unregister on the token's shared lock for every frame of every call.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut telnyx_open = true;
        loop {
            if self.stopping.is_some() && self.tracks.values().all(|t| t.phase == Phase::Finished) {
                break;
            }
            let retry_at = self.next_retry();
            let deadline = self.stopping.map(|at| at + STOP_DEADLINE);
            tokio::select! {
                frame = telnyx_rx.next(), if telnyx_open => match frame {
                    Some(Ok(WsMessage::Text(text))) => self.on_frame(&text).await,
                    Some(Ok(WsMessage::Binary(_))) => count_bad("binary"),
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => {
                        telnyx_open = false;
                        self.begin_stop("media socket closed").await;
                    }
                    Some(Ok(_)) => {}
                },
                Some(event) = events_rx.recv() => self.on_aai_event(event).await,
                Some(out) = outbound_rx.recv(), if telnyx_open => {
                    let message = self.on_outbound(out);
                    if telnyx_tx.send(WsMessage::Text(message.into())).await.is_err() {
                        telnyx_open = false;
                    }
                }
                () = sleep_until(retry_at), if retry_at.is_some() => self.reconnect_due(),
                _ = heartbeat.tick() => self.heartbeat(),
                () = &mut cancelled, if self.stopping.is_none() => {
                    self.begin_stop("shutdown").await;
                    // Going away: Telnyx ends the stream; another replica can re-attach.
                    let _ = telnyx_tx.send(WsMessage::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }))).await;
                    telnyx_open = false;
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    tracing::warn!(call_id = %self.call_id, "stopping tracks did not finish in time");
                    for track in self.tracks.values_mut() {
                        track.phase = Phase::Finished;
                    }
                }
            }
            if std::mem::take(&mut self.clear_requested) && telnyx_open {
                // Barge-in: Telnyx drops the queued audio and flushes its marks.
                let _ = telnyx_tx
                    .send(WsMessage::Text(r#"{"event":"clear"}"#.into()))
                    .await;
                metrics::counter!("translation_barge_ins_total").increment(1);
            }
        }
        let _ = telnyx_tx.close().await;
    }

    fn next_retry(&self) -> Option<Instant> {
        self.tracks
            .values()
            .filter_map(|t| match t.phase {
                Phase::Waiting(at) => Some(at),
                _ => None,
            })
            .min()
    }

    async fn on_frame(&mut self, text: &str) {
        let received = Instant::now();
        let frame = match frames::parse(text) {
            Ok(frame) => frame,
            Err(error) => {
                count_bad(match error {
                    frames::FrameError::NotJson => "not_json",
                    frames::FrameError::UnknownEvent(_) => "unknown_event",
                    frames::FrameError::Field(_) => "field",
                    frames::FrameError::Payload => "payload",
                });
                tracing::debug!(%error, call_id = %self.call_id, "bad media frame skipped");
                return;
            }
        };
        match frame {
            Frame::Start(start) => {
                tracing::info!(call_id = %self.call_id, stream_id = %start.stream_id, "media stream started");
                if start.encoding != "PCMU" && start.encoding != "audio/x-mulaw" {
                    tracing::warn!(encoding = %start.encoding, "unexpected media encoding; expected PCMU");
                }
                self.stream_id = Some(start.stream_id);
                self.heartbeat();
                for track in [Track::Inbound, Track::Outbound] {
                    self.ensure_track(track);
                }
            }
            Frame::Media(media) => {
                self.meters.frames_in.increment(1);
                if self.stopping.is_some() {
                    return;
                }
                self.ensure_track(media.track);
                let batches = self
                    .tracks
                    .get_mut(&media.track)
                    .map(|t| t.audio.push(media.chunk, media.payload))
                    .unwrap_or_default();
                for batch in batches {
                    self.enqueue(media.track, batch).await;
                }
                self.meters
                    .frame_latency
                    .record(received.elapsed().as_secs_f64());
            }
            Frame::Stop => self.begin_stop("stop frame").await,
            Frame::Error { code, title } => {
                tracing::warn!(call_id = %self.call_id, %code, %title, "Telnyx reported a media stream error");
            }
            Frame::Mark { name } => self.on_mark(&name),
            Frame::Connected | Frame::Dtmf { .. } => {}
        }
    }

    fn ensure_track(&mut self, track: Track) {
        if self.tracks.contains_key(&track) {
            return;
        }
        self.tracks
            .insert(track, TrackState::new(track, &self.state.config.media));
        self.connect(track);
    }

    fn connect(&mut self, track: Track) {
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        state.generation += 1;
        state.phase = Phase::Connecting;
        let generation = state.generation;
        let (client, params, events) = (
            self.client.clone(),
            self.params.clone(),
            self.events_tx.clone(),
        );
        tokio::spawn(async move {
            match client.connect(&params).await {
                Ok((socket, session_id)) => {
                    let (sink, mut stream) = socket.split();
                    if events
                        .send(AaiEvent::Connected {
                            track,
                            generation,
                            sink,
                            session_id,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let reason = loop {
                        match stream.next().await {
                            Some(Ok(AaiMessage::Text(text))) => {
                                let message = assemblyai::parse_server_message(&text);
                                if events
                                    .send(AaiEvent::Message {
                                        track,
                                        generation,
                                        message,
                                    })
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                            Some(Ok(AaiMessage::Close(frame))) => {
                                break assemblyai::describe_close(frame.as_ref());
                            }
                            Some(Ok(_)) => {}
                            Some(Err(error)) => break error.to_string(),
                            None => break "connection lost".to_owned(),
                        }
                    };
                    let _ = events
                        .send(AaiEvent::Closed {
                            track,
                            generation,
                            reason,
                        })
                        .await;
                }
                Err(error) => {
                    let _ = events
                        .send(AaiEvent::ConnectFailed {
                            track,
                            generation,
                            error: error.to_string(),
                        })
                        .await;
                }
            }
        });
    }

    fn reconnect_due(&mut self) {
        let now = Instant::now();
        let due: Vec<Track> = self
            .tracks
            .values()
            .filter(|t| matches!(t.phase, Phase::Waiting(at) if at <= now))
            .map(|t| t.track)
            .collect();
        for track in due {
            self.connect(track);
        }
    }

    /// Holds a batch for replay and sends it if the session is live.
    async fn enqueue(&mut self, track: Track, bytes: Vec<u8>) {
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        let batch = Batch {
            offset_ms: state.next_offset_ms,
            bytes,
        };
        state.next_offset_ms = batch.end_ms();
        if state.phase == Phase::Live {
            send_batch(state, &batch, &self.meters.batches_sent).await;
        }
        state.held_bytes += batch.bytes.len();
        state.held.push_back(batch);
        if state.phase == Phase::Live
            && !state.turn_open
            && state.trim_after.is_none_or(|at| Instant::now() >= at)
        {
            // A live session has heard this and found no words in it: only the most recent
            // audio (a turn may be starting there) is worth replaying. Silent tracks so
            // hold seconds less audio per call.
            let keep = state.idle_window.as_millis() as usize * MULAW_BYTES_PER_MS;
            while state.held_bytes > keep && state.held.len() > 1 {
                let Some(oldest) = state.held.pop_front() else {
                    break;
                };
                state.held_bytes -= oldest.bytes.len();
            }
        }
        let mut dropped = Vec::new();
        while state.held_bytes > state.cap_bytes {
            let Some(oldest) = state.held.pop_front() else {
                break;
            };
            state.held_bytes -= oldest.bytes.len();
            // Audio a live session already has is not lost; anything else is a gap.
            if state.phase != Phase::Live {
                dropped.push((oldest.offset_ms, oldest.end_ms()));
            }
        }
        for (start, end) in dropped {
            let gap = state.open_gap.get_or_insert((start, start));
            gap.1 = end;
        }
    }

    async fn on_aai_event(&mut self, event: AaiEvent) {
        match event {
            AaiEvent::Connected {
                track,
                generation,
                sink,
                session_id,
            } => {
                let stopping = self.stopping.is_some();
                let Some(state) = self.tracks.get_mut(&track) else {
                    return;
                };
                if generation != state.generation {
                    return;
                }
                tracing::info!(call_id = %self.call_id, track = track.as_str(), %session_id, replayed_batches = state.held.len(), "AssemblyAI session open");
                state.sink = Some(sink);
                state.session_id = session_id;
                state.phase = Phase::Live;
                state.trim_after = Some(Instant::now() + state.idle_window);
                state.attempts = 0;
                state.session_base_ms = state
                    .held
                    .front()
                    .map_or(state.next_offset_ms, |b| b.offset_ms);
                // Replay what the last session never finished.
                let held: Vec<Batch> = state
                    .held
                    .iter()
                    .map(|b| Batch {
                        offset_ms: b.offset_ms,
                        bytes: b.bytes.clone(),
                    })
                    .collect();
                for batch in &held {
                    send_batch(state, batch, &self.meters.batches_sent).await;
                }
                self.close_gap(track);
                if stopping {
                    self.terminate(track).await;
                }
            }
            AaiEvent::ConnectFailed {
                track,
                generation,
                error,
            } => {
                let call_id = self.call_id;
                let Some(state) = self.tracks.get_mut(&track) else {
                    return;
                };
                if generation != state.generation {
                    return;
                }
                tracing::warn!(%call_id, track = track.as_str(), %error, "AssemblyAI connect failed");
                schedule_retry(state);
            }
            AaiEvent::Message {
                track,
                generation,
                message,
            } => {
                if self
                    .tracks
                    .get(&track)
                    .is_none_or(|t| t.generation != generation)
                {
                    return;
                }
                match message {
                    ServerMessage::Turn(turn) => self.on_turn(track, turn),
                    ServerMessage::Error { code, message } => {
                        tracing::warn!(call_id = %self.call_id, track = track.as_str(), code, %message, "AssemblyAI error");
                    }
                    ServerMessage::Termination => {
                        if let Some(state) = self.tracks.get_mut(&track) {
                            state.phase = Phase::Finished;
                            state.sink = None;
                        }
                    }
                    ServerMessage::Begin { .. } | ServerMessage::Other => {}
                }
            }
            AaiEvent::Closed {
                track,
                generation,
                reason,
            } => {
                let call_id = self.call_id;
                let Some(state) = self.tracks.get_mut(&track) else {
                    return;
                };
                if generation != state.generation {
                    return;
                }
                state.sink = None;
                match state.phase {
                    Phase::Terminating | Phase::Finished => state.phase = Phase::Finished,
                    _ => {
                        tracing::warn!(%call_id, track = track.as_str(), %reason, "AssemblyAI session dropped; reconnecting");
                        metrics::counter!("assemblyai_reconnects_total").increment(1);
                        schedule_retry(state);
                    }
                }
            }
        }
    }

    fn on_turn(&mut self, track: Track, turn: Turn) {
        let call_id = self.call_id;
        let final_turn = turn.end_of_turn && (turn.turn_is_formatted || !self.params.format_turns);
        if !turn.transcript.is_empty() {
            // The listener of whatever is playing started talking: barge-in.
            self.barge_in(track);
        }
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        if !final_turn {
            state.turn_open |= !turn.transcript.is_empty();
            if turn.transcript != state.last_partial && !turn.transcript.is_empty() {
                state.last_partial = turn.transcript.clone();
                let (db, text, order) = (
                    self.state.db.clone(),
                    turn.transcript.clone(),
                    turn.turn_order,
                );
                tokio::spawn(async move {
                    let _ =
                        transcripts::publish_partial(&db, call_id, track.as_str(), order, &text)
                            .await;
                });
            }
            return;
        }
        state.last_partial.clear();
        state.turn_open = false;
        let base = state.session_base_ms;
        let start_ms = turn.words.first().map(|w| base + w.start);
        let end_ms = turn.words.last().map(|w| base + w.end);
        if let Some(end) = end_ms {
            // Audio up to the end of this turn is transcribed: no need to replay it.
            while state.held.front().is_some_and(|b| b.end_ms() <= end) {
                let batch = state.held.pop_front().expect("checked");
                state.held_bytes -= batch.bytes.len();
            }
            if let Some(sent) = state.sent_at.iter().find(|(offset, _)| *offset >= end) {
                metrics::histogram!("assemblyai_end_of_turn_latency_seconds")
                    .record(sent.1.elapsed().as_secs_f64());
            }
        }
        let words = serde_json::to_value(
            turn.words.iter().map(|w| serde_json::json!({"text": w.text, "start_ms": base + w.start, "end_ms": base + w.end, "confidence": w.confidence})).collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        let confidence = (!turn.words.is_empty()).then(|| {
            turn.words.iter().map(|w| w.confidence).sum::<f64>() / turn.words.len() as f64
        });
        let stored = FinalTurn {
            call_id,
            track: track.as_str(),
            turn_index: state.turn_index,
            session_id: state.session_id.clone(),
            text: turn.transcript,
            words,
            confidence,
            start_ms: start_ms.map(|v| v as i64),
            end_ms: end_ms.map(|v| v as i64),
        };
        state.turn_index += 1;
        if let Some(speaker) = &self.speaker
            && !stored.text.trim().is_empty()
        {
            let utterance = Utterance {
                seq: self.next_utterance,
                source_track: track,
                turn_index: stored.turn_index,
                text: stored.text.clone(),
                end_of_turn_at: chrono::Utc::now(),
                end_of_turn: Instant::now(),
            };
            self.next_utterance += 1;
            if speaker.try_send(utterance).is_err() {
                tracing::warn!(call_id = %call_id, "translation queue full; utterance dropped");
            }
        }
        let db = self.state.db.clone();
        self.storage.spawn(async move {
            // Retry briefly: a final turn must not be lost to a transient database error.
            for attempt in 0..5u32 {
                match transcripts::store_final(&db, &stored).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(%error, attempt, "storing a final turn failed");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
        });
    }

    /// Turns a speaker request into the Telnyx message, keeping playout accounting.
    fn on_outbound(&mut self, out: Outbound) -> String {
        match out {
            Outbound::Media {
                seq,
                listener,
                bytes,
            } => {
                if !self.playing.iter().any(|p| p.seq == seq) {
                    self.playing.push_back(Playing {
                        seq,
                        listener,
                        first_frame: Instant::now(),
                        audio_ms: 0,
                        mark: None,
                    });
                }
                if let Some(playing) = self.playing.iter_mut().find(|p| p.seq == seq) {
                    playing.audio_ms += (bytes.len() / MULAW_BYTES_PER_MS) as u64;
                }
                self.meters.frames_out.increment(1);
                let payload = base64::engine::general_purpose::STANDARD.encode(&bytes);
                serde_json::json!({"event": "media", "media": {"payload": payload}}).to_string()
            }
            Outbound::Mark { seq, name } => {
                if let Some(playing) = self.playing.iter_mut().find(|p| p.seq == seq) {
                    playing.mark = Some(name.clone());
                }
                serde_json::json!({"event": "mark", "mark": {"name": name}}).to_string()
            }
        }
    }

    /// Telnyx echoes a mark when the audio before it has played: the utterance was heard.
    fn on_mark(&mut self, name: &str) {
        let Some(position) = self
            .playing
            .iter()
            .position(|p| p.mark.as_deref() == Some(name))
        else {
            return;
        };
        let playing = self.playing.remove(position).expect("found");
        metrics::histogram!("translation_stage_seconds", "stage" => "mark")
            .record(playing.first_frame.elapsed().as_secs_f64());
        let (db, call_id) = (self.state.db.clone(), self.call_id);
        self.storage.spawn(async move {
            if let Err(error) = playout::played(&db, call_id, playing.seq).await {
                tracing::warn!(%error, "recording a played utterance failed");
            }
        });
    }

    /// `track` is speaking: anything playing *to* it is cut off.
    fn barge_in(&mut self, track: Track) {
        let cut: Vec<Playing> = {
            let (cut, keep): (Vec<Playing>, Vec<Playing>) =
                self.playing.drain(..).partition(|p| p.listener == track);
            self.playing = keep.into();
            cut
        };
        if cut.is_empty() {
            return;
        }
        self.clear_requested = true;
        for playing in cut {
            self.cleared
                .fetch_max(playing.seq, std::sync::atomic::Ordering::SeqCst);
            let at_ms =
                (playing.first_frame.elapsed().as_millis() as u64).min(playing.audio_ms) as i32;
            let (db, call_id) = (self.state.db.clone(), self.call_id);
            self.storage.spawn(async move {
                if let Err(error) = playout::cut(&db, call_id, playing.seq, at_ms).await {
                    tracing::warn!(%error, "recording a cut utterance failed");
                }
            });
        }
    }

    /// Flushes every track and asks AssemblyAI to finish.
    async fn begin_stop(&mut self, why: &str) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!(call_id = %self.call_id, why, "media stream stopping");
        self.stopping = Some(Instant::now());
        let tracks: Vec<Track> = self.tracks.keys().copied().collect();
        for track in tracks {
            let tail = self
                .tracks
                .get_mut(&track)
                .map(|t| t.audio.flush())
                .unwrap_or_default();
            for batch in tail {
                self.enqueue(track, batch).await;
            }
            let live = self
                .tracks
                .get(&track)
                .is_some_and(|t| t.phase == Phase::Live);
            if live {
                self.terminate(track).await;
            } else if let Some(state) = self.tracks.get_mut(&track) {
                // Not connected: connect now (no waiting) so the held audio still gets sent.
                if matches!(state.phase, Phase::Waiting(_)) {
                    state.phase = Phase::Waiting(Instant::now());
                }
            }
        }
    }

    async fn terminate(&mut self, track: Track) {
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        if let Some(sink) = state.sink.as_mut() {
            if sink.send(assemblyai::terminate_message()).await.is_err() {
                state.phase = Phase::Finished;
                return;
            }
            state.phase = Phase::Terminating;
        } else {
            state.phase = Phase::Finished;
        }
    }

    /// Records a pending gap of `track`, if any.
    fn close_gap(&mut self, track: Track) {
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        let Some((start, end)) = state.open_gap.take() else {
            return;
        };
        let duration = end.saturating_sub(start);
        metrics::counter!("transcript_gap_seconds_total").increment(duration.div_ceil(1000));
        tracing::warn!(call_id = %self.call_id, track = track.as_str(), start_ms = start, duration_ms = duration, "transcript gap");
        let (db, call_id) = (self.state.db.clone(), self.call_id);
        self.storage.spawn(async move {
            if let Err(error) = transcripts::store_gap(
                &db,
                call_id,
                track.as_str(),
                start as i64,
                duration as i64,
                "assemblyai_unavailable",
            )
            .await
            {
                tracing::error!(%error, "storing a transcript gap failed");
            }
        });
    }

    fn heartbeat(&mut self) {
        let (db, call_id, replica, stream_id) = (
            self.state.db.clone(),
            self.call_id,
            self.replica.clone(),
            self.stream_id.clone(),
        );
        tokio::spawn(async move {
            if let Err(error) =
                transcripts::heartbeat(&db, call_id, &replica, stream_id.as_deref()).await
            {
                tracing::debug!(%error, "media heartbeat failed");
            }
        });
    }
}

async fn send_batch(state: &mut TrackState, batch: &Batch, sent: &metrics::Counter) {
    let Some(sink) = state.sink.as_mut() else {
        return;
    };
    if sink
        .send(AaiMessage::Binary(batch.bytes.clone().into()))
        .await
        .is_ok()
    {
        sent.increment(1);
        state.sent_at.push_back((batch.end_ms(), Instant::now()));
        while state.sent_at.len() > 64 {
            state.sent_at.pop_front();
        }
    }
}

fn schedule_retry(state: &mut TrackState) {
    state.attempts += 1;
    let delay = crate::providers::retry_delay(state.attempts.min(5)).min(Duration::from_secs(5));
    state.phase = Phase::Waiting(Instant::now() + delay);
}

fn count_bad(reason: &'static str) {
    metrics::counter!("media_frames_bad_total", "reason" => reason).increment(1);
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
