//! One task per live media stream: Telnyx media frames in, one AssemblyAI v3 session per
//! track, transcripts out. A one-leg call's stream carries both tracks and its translations
//! play back into it; each leg of an interpreted call has its own stream (the party's
//! voice in), its party's speech model, and plays what the *other* party said, translated
//! (the other leg's bridge hands it over through [`super::hub`], across replicas through
//! PostgreSQL). Everything the task holds is bounded: the reorder window, one partial
//! batch, and a replay buffer of at most `MEDIA_REPLAY_BUFFER_SECS` per track.
//!
//! When AssemblyAI drops a session (not after our `Terminate`), the track reconnects with
//! backoff and replays the audio held since its last final turn, so the unfinished turn is
//! transcribed again. Audio that overflows the buffer while disconnected is dropped and
//! recorded as a *gap*. On `stop`, socket close or process shutdown every track flushes,
//! sends `Terminate`, and waits (bounded) for its last turns to be stored.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use base64::Engine as _;
use futures_util::stream::SplitSink;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::frames::{self, Frame, Track};
use super::hub::{self, Delivery};
use super::mix::{self, FRAME, FRAMES_PER_MESSAGE};
use super::open_turn::{OpenTurn, TurnWords};
use super::playout::{
    self, ClearedThrough, Languages, Listeners, Outbound, PartyLanguage, TurnId, Utterance,
};
use super::replay::{Batch, ReplayBuffer};
use super::resume::{Resume, TrackClock};
use super::shaping::{MULAW_BYTES_PER_MS, TrackAudio};
use super::transcripts;
use crate::calls::legs::{Leg, Role};
use crate::heartbeats::wall_clock;
use crate::ids::{CallId, LegId, OrgId};
use crate::providers::assemblyai::{
    self, AssemblyAiClient, Incoming, Outgoing, ServerMessage, Socket, StreamParams, Turn,
};
use crate::state::AppState;
use crate::turns::{self, FinalTurn};

type AaiSink = assemblyai::Writer;

/// How long a stopping call waits for its last turns.
const STOP_DEADLINE: Duration = Duration::from_secs(8);
const HEARTBEAT: Duration = Duration::from_secs(5);

/// What a track's session task tells the bridge. The large payloads are boxed: a call's
/// channel allocates its slots 32 at a time whatever it carries, so every byte of the
/// largest variant is held 32 times per call (ADR 0045).
enum AaiEvent {
    Connected {
        track: Track,
        generation: u64,
        sink: Box<AaiSink>,
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
        message: Box<ServerMessage>,
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

struct TrackState {
    track: Track,
    audio: TrackAudio,
    sink: Option<AaiSink>,
    generation: u64,
    phase: Phase,
    attempts: u32,
    session_id: String,
    /// Audio since the last final turn (sent or not): what a new session replays, and the
    /// account of audio no session was sent (gaps).
    replay: ReplayBuffer,
    next_offset_ms: u64,
    /// Where the track is on the call's clock, from its frames (set by the first frame).
    clock: Option<TrackClock>,
    /// Track offset at which the current session's audio begins (its word times start at 0):
    /// the offset of the first batch it was sent.
    session_base_ms: Option<u64>,
    /// The next final turn's proposed index, continued from the database.
    turn_index: i32,
    /// The current session's last final turn, to ignore a repeated one.
    last_final_order: Option<u64>,
    /// A stopping track waits for `Termination` until then.
    terminate_by: Option<Instant>,
    last_partial: String,
    /// AssemblyAI has reported words of a turn that has not ended yet.
    turn_open: bool,
    /// The current session has reported words (a turn's transcript not empty).
    session_reported_words: bool,
    /// That turn's final words, held instead of their audio, and words carried from a
    /// session that dropped mid-turn (ADR 0059).
    open_turn: OpenTurn,
    /// Not before this may a silent track trim its replay audio: a session that has just
    /// been sent held audio has not yet had time to report words in it.
    trim_after: Option<Instant>,
    /// What a live session keeps while no turn is open (`MEDIA_IDLE_REPLAY_MS`).
    idle_window: Duration,
    /// The current session's usage, counted here and written to the ledger once when the
    /// session ends (never per frame): when it opened and the audio bytes it was sent.
    session_opened: Option<Instant>,
    session_sent_bytes: u64,
}

impl TrackState {
    /// The current session is gone (dropped, or given up): what it heard of an open turn
    /// has no transcript unless a new session hears it again, and the open turn's final
    /// words wait for the next final turn.
    fn session_lost(&mut self) {
        self.replay.session_dropped(self.turn_open);
        self.open_turn.session_dropped(&self.session_id);
    }

    fn new(track: Track, config: &crate::config::MediaConfig, turn_index: i32) -> Self {
        Self {
            track,
            audio: TrackAudio::new(config.batch_ms, config.reorder_window),
            sink: None,
            generation: 0,
            phase: Phase::Connecting,
            attempts: 0,
            session_id: String::new(),
            replay: ReplayBuffer::new(config.replay_buffer_secs * 1000 * MULAW_BYTES_PER_MS),
            next_offset_ms: 0,
            clock: None,
            session_base_ms: None,
            turn_index,
            last_final_order: None,
            terminate_by: None,
            last_partial: String::new(),
            turn_open: false,
            session_reported_words: false,
            open_turn: OpenTurn::default(),
            trim_after: None,
            idle_window: Duration::from_millis(config.idle_replay_ms as u64),
            session_opened: None,
            session_sent_bytes: 0,
        }
    }
}

/// A stream's tracks, one slot per [`Track`]: looked up several times per frame, so an
/// index into two slots rather than a hash of the key each time.
#[derive(Default)]
struct Tracks([Option<TrackState>; 2]);

impl Tracks {
    fn slot(track: Track) -> usize {
        match track {
            Track::Inbound => 0,
            Track::Outbound => 1,
        }
    }

    fn get(&self, track: &Track) -> Option<&TrackState> {
        self.0[Self::slot(*track)].as_ref()
    }

    fn get_mut(&mut self, track: &Track) -> Option<&mut TrackState> {
        self.0[Self::slot(*track)].as_mut()
    }

    fn contains_key(&self, track: &Track) -> bool {
        self.get(track).is_some()
    }

    fn insert(&mut self, track: Track, state: TrackState) {
        self.0[Self::slot(track)] = Some(state);
    }

    fn values(&self) -> impl Iterator<Item = &TrackState> {
        self.0.iter().flatten()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut TrackState> {
        self.0.iter_mut().flatten()
    }

    fn keys(&self) -> impl Iterator<Item = &Track> {
        self.values().map(|state| &state.track)
    }
}

/// What a media stream carries.
pub enum Target {
    /// A one-leg call: one stream with both tracks.
    Call(CallId),
    /// One party of an interpreted call: their voice in (inbound track), the other party's
    /// words, translated, out.
    Leg(Box<Leg>, OriginalAudio),
}

/// Whether a party hears the other's own voice under the translation (the call's
/// `original_audio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginalAudio {
    Off,
    Ducked,
    Full,
}

impl OriginalAudio {
    pub fn parse(text: &str) -> Self {
        match text {
            "ducked" => OriginalAudio::Ducked,
            "full" => OriginalAudio::Full,
            _ => OriginalAudio::Off,
        }
    }
}

/// Paces what a party hears when the other's own voice is mixed under the translation:
/// Telnyx plays audio in arrival order, so mixing live audio with speech sent ahead of time
/// needs us to send each frame when it is due, [`FRAMES_PER_MESSAGE`] frames a message.
/// While nothing is queued the other party's frames go out as they arrive (their own stream
/// paces them) and no timer runs (docs/adr/0047-ducked-audio-only-when-audible.md,
/// docs/adr/0051-ducked-audio-in-40-ms-messages.md).
struct Mixer {
    gain: mix::Gain,
    /// Translation frames and marks, in order.
    queue: VecDeque<Paced>,
    /// The other party's newest frames (bounded: a little jitter, never a backlog).
    under: VecDeque<[u8; FRAME]>,
    /// When the next paced frame is due; `None` while idle (nothing queued, nothing held).
    next_due: Option<tokio::time::Instant>,
}

/// Telnyx's frame length: a paced message of `n` frames is followed by the next `n` of
/// these later.
const PACE: Duration = Duration::from_millis(20);

/// A party's voice keeps being shared this many frames after its last audible one, so a
/// word's soft tail and the short pauses inside a sentence are not chopped (200 ms).
const HANGOVER_FRAMES: u32 = 10;

enum Paced {
    Frame([u8; FRAME]),
    Mark(String),
}

/// What a paced tick sent: a translation (or ringback) frame, or the other party's voice
/// alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Speech,
    Original,
}

/// The other party's voice kept for mixing: 100 ms.
const UNDER_FRAMES: usize = 5;

/// The party an interpreted call's leg bridge serves.
struct Party {
    role: Role,
    /// BCP-47, or `auto`.
    language: String,
    /// The language AssemblyAI reported for this party's latest turn (`auto` parties).
    detected: watch::Sender<Option<String>>,
    /// While held, the other leg's bridge can hand this party utterances.
    _registration: Option<hub::Registration>,
    /// Whether the call shares each party's own voice with the other, at which gain (only
    /// frames the other would hear are shared).
    shares_original: Option<mix::Gain>,
    /// Frames since this party's voice was last audible under the gain.
    quiet_frames: u32,
    /// Shared frames waiting for the rest of their message (the next frames of this
    /// party's stream, whatever they hold, complete it).
    held: Vec<[u8; FRAME]>,
    /// Where this party's voice goes for the other to hear under the translation.
    peer_original: Option<mpsc::Sender<Outbound>>,
    peer_checked: Option<Instant>,
    /// The agent hears ringback until the remote party's stream is live (they answered).
    ringing: Option<Ringing>,
    /// This leg's turns were handed to another replica and its party's voice is not
    /// carried there (counted once).
    split_counted: bool,
}

struct Ringing {
    since: Instant,
    /// Set once the remote party's stream is live on any replica (read from the database
    /// while ringing: their stream may not reach this process).
    answered_elsewhere: Arc<std::sync::atomic::AtomicBool>,
    /// Where in the tone's cadence the next second starts.
    offset: usize,
}

/// The `media_streams.leg` of a one-leg call's single stream (a leg's stream: its role).
const CALL_STREAM: &str = "call";

/// Ringback stops by itself after this long (Telnyx's own ring timeout is shorter).
const RING_LIMIT: Duration = Duration::from_secs(90);

pub struct Bridge {
    state: AppState,
    /// This process's interpreted-call legs (one per process, from the router).
    hub: Arc<hub::Hub>,
    call_id: CallId,
    /// The leg this stream carries (an interpreted call's party), for the usage ledger.
    leg_id: Option<LegId>,
    /// An interpreted call's party and the mixer of the other party's original voice.
    /// Boxed: ~0.9 KiB each, and a one-leg call has neither; inline they doubled the size
    /// of `Bridge`, which every call's task holds (ADR 0053).
    party: Option<Box<Party>>,
    mixer: Option<Box<Mixer>>,
    client: AssemblyAiClient,
    params: StreamParams,
    tracks: Tracks,
    events_tx: mpsc::Sender<AaiEvent>,
    storage: JoinSet<()>,
    stream_id: Option<String>,
    replica: String,
    stopping: Option<Instant>,
    /// Why the stream stopped (the first reason): a `stop` frame, the socket closing, or
    /// our shutdown.
    stopped_by: Option<&'static str>,
    /// The live translation loop, when the call has two languages and TTS is configured.
    speaker: Option<mpsc::Sender<Utterance>>,
    next_utterance: i32,
    /// Utterances sent into the call whose mark has not come back yet, oldest first.
    playing: VecDeque<Playing>,
    cleared: ClearedThrough,
    clear_requested: bool,
    meters: Meters,
    /// Numbering and track positions continued from earlier streams of this call.
    resume: Resume,
    /// When Telnyx connected, and when this task began reading frames: where a re-attached
    /// stream's audio begins is measured from these (`audio_began`).
    connected_at: Instant,
    reading_since: Instant,
    /// After a hang-up, how long a track that is not connected keeps trying to deliver its
    /// held audio before it is recorded as a gap (`MEDIA_TAIL_DELIVERY_SECS`).
    tail_bound: Duration,
    /// Fires once the last turn announced to another replica has been announced: the next
    /// announcement waits for it, so the listener is told in the order the turns were said.
    announced: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The last frame's decoded payload, cleared and decoded into again (`frames::parse_reusing`):
    /// one allocation per call instead of one per frame.
    spare_payload: Vec<u8>,
    /// Outgoing `media` messages are written here (see [`Envelope`]).
    envelope: Envelope,
    /// What this turn of the event loop sends into the stream, written with one flush.
    outbox: Vec<WsMessage>,
}

/// Telnyx `media` messages built into one buffer: the JSON around the payload is constant,
/// the base64 is encoded straight into the buffer, and the buffer's memory is used again
/// once the socket has copied the previous messages out — no allocation per frame. The
/// buffer is made by the first message: most streams never play anything into the call
/// (no second language, no TTS), and 4 KiB held by each of them was 3 % of a live call's
/// memory.
#[derive(Default)]
struct Envelope {
    buf: Option<bytes::BytesMut>,
}

impl Envelope {
    const HEAD: &'static [u8] = br#"{"event":"media","media":{"payload":""#;
    const TAIL: &'static [u8] = br#""}}"#;
    /// Room for several 20 ms messages (~250 bytes each) between two flushes; kept as the
    /// buffer's original capacity, so later allocations are this size too.
    const CAPACITY: usize = 4096;

    fn media(&mut self, audio: &[u8]) -> WsMessage {
        let buf = self
            .buf
            .get_or_insert_with(|| bytes::BytesMut::with_capacity(Self::CAPACITY));
        let encoded = audio.len().div_ceil(3) * 4;
        buf.reserve(Self::HEAD.len() + encoded + Self::TAIL.len());
        buf.extend_from_slice(Self::HEAD);
        let start = buf.len();
        buf.resize(start + encoded, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(audio, &mut buf[start..])
            .unwrap_or(0);
        buf.truncate(start + written);
        buf.extend_from_slice(Self::TAIL);
        let message = buf.split().freeze();
        // ASCII by construction; the check is a pass over ~250 bytes.
        match axum::extract::ws::Utf8Bytes::try_from(message) {
            Ok(text) => WsMessage::Text(text),
            Err(_) => WsMessage::Text(axum::extract::ws::Utf8Bytes::from_static("")),
        }
    }
}

/// Handles to the per-frame metrics, resolved once per call: looking a metric up by name
/// on every frame costs a registry lookup per frame.
struct Meters {
    frames_in: metrics::Counter,
    frames_out: metrics::Counter,
    batches_sent: metrics::Counter,
    batch_latency: metrics::Histogram,
}

impl Meters {
    fn new() -> Self {
        Self {
            frames_in: metrics::counter!("media_frames_in_total"),
            frames_out: metrics::counter!("media_frames_out_total"),
            batches_sent: metrics::counter!("assemblyai_batches_sent_total"),
            batch_latency: metrics::histogram!("media_bridge_latency_seconds"),
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

/// Runs the bridge for one Telnyx media WebSocket, connected at `connected_at`, until the
/// stream ends.
pub async fn run(
    state: AppState,
    hub: Arc<hub::Hub>,
    target: Target,
    client: AssemblyAiClient,
    socket: WebSocket,
    connected_at: Instant,
) {
    metrics::gauge!("media_live_calls").increment(1.0);
    let (events_tx, events_rx) = mpsc::channel(256);
    let (call_id, leg_id) = match &target {
        Target::Call(id) => (*id, None),
        Target::Leg(leg, _) => (leg.call_id, Some(leg.id)),
    };
    let replica = crate::heartbeats::replica_name(state.config.hostname.as_deref());
    let tail_bound = state.config.media.tail_delivery;
    let leg = match &target {
        Target::Call(_) => CALL_STREAM,
        Target::Leg(leg, _) => leg.role.as_str(),
    };
    // The futures of the start and of the end are boxed: a call's task is as large as the
    // largest future it awaits, for the whole call, and these (database round trips, 1.7-3.8
    // KiB each) are larger than the event loop's; boxed, they hold memory only while they run.
    let resume = Box::pin(Resume::load(&state.db, call_id, leg))
        .await
        .unwrap_or_else(|error| {
            // Numbering then starts at 0 and the database renumbers any collision (counted).
            tracing::warn!(%error, %call_id, "loading where the call's stream left off failed");
            Resume::default()
        });
    let (outbound_tx, outbound_rx) = mpsc::channel(256);
    let cleared: ClearedThrough = playout::nothing_cleared();
    let mut mixer = None;
    let (params, party, speaker, speaker_task) = match target {
        Target::Call(_) => {
            let params = StreamParams::telephony(&state.config.media.speech_model);
            match Box::pin(languages(&state, call_id)).await {
                Some(languages) => {
                    let (tx, task) = playout::spawn(
                        state.clone(),
                        call_id,
                        Listeners::Tracks(languages),
                        outbound_tx.clone(),
                        cleared.clone(),
                    );
                    (params, None, Some(tx), Some(task))
                }
                None => (params, None, None, None),
            }
        }
        Target::Leg(leg, original) => {
            let gain = match original {
                OriginalAudio::Off => None,
                OriginalAudio::Ducked => Some(mix::gain_q15(state.config.media.ducked_db)),
                OriginalAudio::Full => Some(mix::gain_q15(0.0)),
            };
            // The other party's voice comes in on this leg's own outbound channel.
            let tx = gain.map(|_| outbound_tx.clone());
            mixer = gain.map(|gain_q15| {
                Box::new(Mixer {
                    gain: mix::Gain::new(gain_q15),
                    queue: VecDeque::new(),
                    under: VecDeque::with_capacity(UNDER_FRAMES + 1),
                    next_due: None,
                })
            });
            let (params, party, task) = Box::pin(join_leg(
                &state,
                &hub,
                *leg,
                tx,
                outbound_tx.clone(),
                cleared.clone(),
            ))
            .await;
            (
                params,
                Some(Box::new(Party {
                    shares_original: gain.map(mix::Gain::new),
                    ..party
                })),
                None,
                task,
            )
        }
    };
    drop(outbound_tx);
    let mut bridge = Bridge {
        state,
        hub,
        call_id,
        leg_id,
        party,
        mixer,
        client,
        params,
        tracks: Tracks::default(),
        events_tx,
        storage: JoinSet::new(),
        stream_id: None,
        replica,
        stopping: None,
        stopped_by: None,
        speaker,
        next_utterance: resume.next_utterance,
        playing: VecDeque::new(),
        cleared,
        clear_requested: false,
        meters: Meters::new(),
        tail_bound,
        resume,
        connected_at,
        reading_since: connected_at,
        announced: None,
        spare_payload: Vec::new(),
        envelope: Envelope::default(),
        outbox: Vec::new(),
    };
    bridge.event_loop(socket, events_rx, outbound_rx).await;
    bridge.speaker = None;
    // No more utterances for this party: the speaker's queue closes once the hub lets go.
    // The party itself stays: the tracks are finished (gaps, positions) under its name.
    let role = bridge.party.as_mut().map(|party| {
        party._registration = None;
        party.role
    });
    if let Some(task) = speaker_task {
        let _ = tokio::time::timeout(STOP_DEADLINE, task).await;
    }
    if let Err(error) = Box::pin(playout::never_played(
        &bridge.state.db,
        call_id,
        role.map(Role::as_str),
    ))
    .await
    {
        tracing::warn!(%error, "closing unplayed utterances failed");
    }
    Box::pin(bridge.finish_tracks()).await;
    // A session still open here (its close never reached us) is billed on our own clock.
    for track in [Track::Inbound, Track::Outbound] {
        bridge.record_session(track, None, None);
    }
    while bridge.storage.join_next().await.is_some() {}
    // A stream stopped by our own shutdown is not over: the call goes on and another replica
    // re-attaches it. So is a leg's stream that dropped without Telnyx's `stop` while its
    // leg is still up (a network fault, a proxy restart): the re-attach sweep restarts it on
    // the leg's call control id, and the new stream continues numbering and clock
    // (`resume`). Any other end (Telnyx stop, the leg hung up) is final.
    let leg = role.map_or(CALL_STREAM, Role::as_str);
    bridge.state.heartbeats.forget(call_id, leg);
    let dropped = bridge.stopped_by == Some(SOCKET_CLOSED)
        && match leg_id {
            Some(leg_id) => Box::pin(leg_still_up(&bridge.state, leg_id)).await,
            None => false,
        };
    if dropped {
        metrics::counter!("media_leg_streams_dropped_total").increment(1);
        tracing::warn!(%call_id, leg, "the leg's media stream dropped without stop; waiting for it to be re-attached");
    }
    let recorded = if bridge.state.shutdown.is_cancelled() || dropped {
        Box::pin(super::reattach::detach(&bridge.state, call_id, leg)).await
    } else {
        Box::pin(transcripts::stream_ended(&bridge.state.db, call_id, leg)).await
    };
    if let Err(error) = recorded {
        tracing::warn!(%error, %call_id, "recording the end of the media stream failed");
    }
    metrics::gauge!("media_live_calls").decrement(1.0);
    tracing::info!(%call_id, "media bridge finished");
}

/// `begin_stop`'s reason when the Telnyx socket closed (or failed) without a `stop` frame.
const SOCKET_CLOSED: &str = "media socket closed";

/// Whether the leg's call control still has the party on the line: answered, not ended, and
/// not being hung up by us. Unknown (the database unreachable) counts as up: a re-attach
/// of a leg that has since ended is refused by the sweep, which reads the leg again.
async fn leg_still_up(state: &AppState, leg_id: LegId) -> bool {
    let Ok(client) = state.db.client().await else {
        return true;
    };
    match client
        .query_opt(
            "select status = 'answered' and hangup_requested_at is null as up
             from call_legs where id = $1",
            &[&leg_id],
        )
        .await
    {
        Ok(row) => row.is_some_and(|row| row.get::<_, bool>("up")),
        Err(_) => true,
    }
}

/// An interpreted call's leg: the session for the party's language, and a speaker for what
/// the other party says, registered with the hub (when TTS is configured).
async fn join_leg(
    state: &AppState,
    hub: &Arc<hub::Hub>,
    leg: Leg,
    original: Option<mpsc::Sender<Outbound>>,
    outbound: mpsc::Sender<Outbound>,
    cleared: ClearedThrough,
) -> (StreamParams, Party, Option<tokio::task::JoinHandle<()>>) {
    let language = leg.language.clone().unwrap_or_else(|| "auto".into());
    let params = match state.config.media.speech_models.choose(&language) {
        Ok(choice) => StreamParams::telephony_for(&choice.model, choice.language_detection),
        Err(why) => {
            // Refused at dial time; only a table changed since then gets here.
            tracing::warn!(call_id = %leg.call_id, role = leg.role.as_str(), %why, "no speech model for the leg's language; using the default");
            StreamParams::telephony(&state.config.media.speech_model)
        }
    };
    let (detected, detected_rx) = watch::channel(None);
    let mut party = Party {
        role: leg.role,
        language: language.clone(),
        detected,
        _registration: None,
        shares_original: None,
        quiet_frames: HANGOVER_FRAMES,
        held: Vec::with_capacity(FRAMES_PER_MESSAGE),
        peer_original: None,
        peer_checked: None,
        ringing: None,
        split_counted: false,
    };
    if state.tts.is_none() {
        return (params, party, None);
    }
    let Some(organisation_id) = organisation_of(state, leg.call_id).await else {
        tracing::warn!(call_id = %leg.call_id, "the leg's call could not be read; it hears no translations");
        return (params, party, None);
    };
    let listens_in = if language == "auto" {
        PartyLanguage::Detected(detected_rx)
    } else {
        PartyLanguage::Fixed(language)
    };
    let (queue, task) = playout::spawn(
        state.clone(),
        leg.call_id,
        Listeners::Party {
            organisation_id,
            language: listens_in,
            voice: leg.voice_id.clone(),
        },
        outbound,
        cleared,
    );
    let first_seq = match playout::next_seq(&state.db, leg.call_id).await {
        Ok(seq) => seq,
        Err(error) => {
            tracing::warn!(%error, "reading the call's utterance numbers failed");
            0
        }
    };
    let registration = hub.register(leg.call_id, leg.role, queue, original, first_seq);
    // What the other party said before this stream registered (a leg re-attached mid-call,
    // a turn announced before the stream reached this replica) is queued first.
    registration.catch_up(&state.db).await;
    party._registration = Some(registration);
    if leg.role == Role::Agent {
        let answered_elsewhere = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn(watch_remote_stream(
            state.db.clone(),
            leg.call_id,
            Arc::downgrade(&answered_elsewhere),
        ));
        party.ringing = Some(Ringing {
            since: Instant::now(),
            answered_elsewhere,
            offset: 0,
        });
    }
    (params, party, Some(task))
}

/// Sets `live` once the call's remote leg has a live stream on any replica; gives up when
/// the agent's bridge has dropped it (ringing over) or after [`RING_LIMIT`].
async fn watch_remote_stream(
    db: crate::db::Db,
    call_id: CallId,
    live: std::sync::Weak<std::sync::atomic::AtomicBool>,
) {
    let since = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while since.elapsed() < RING_LIMIT {
        tick.tick().await;
        let Some(flag) = live.upgrade() else {
            return;
        };
        let found = match db.client().await {
            Ok(client) => client
                .query_one(
                    "select exists (select 1 from media_streams
                                    where call_id = $1 and leg = 'remote' and ended_at is null)
                     as remote_live",
                    &[&call_id],
                )
                .await
                .map(|row| row.get::<_, bool>("remote_live"))
                .unwrap_or(false),
            Err(_) => false,
        };
        if found {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
    }
}

/// The tenant a call belongs to (the translation cache is scoped by it).
async fn organisation_of(state: &AppState, call_id: CallId) -> Option<OrgId> {
    let client = state.db.client().await.ok()?;
    let call = crate::calls::get_unscoped(&client, call_id).await.ok()??;
    Some(call.organisation_id)
}

/// The call's two languages, when translation can run (both set, differing, TTS configured).
async fn languages(state: &AppState, call_id: CallId) -> Option<Languages> {
    state.tts.as_ref()?;
    let client = state.db.client().await.ok()?;
    let call = crate::calls::get_unscoped(&client, call_id).await.ok()??;
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
        // Ringback a second at a time; the first after a second, by when a remote party who
        // is already on the line has registered.
        let mut ring = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let shutdown = self.state.shutdown.clone();
        // One waiter for the whole call (a fresh `cancelled()` per loop turn would register
        // and unregister on the token's shared lock for every frame of every call), polled
        // through `Quiet`: lock-free on the turns it did not wake.
        let mut cancelled = Quiet::new(shutdown.cancelled());
        let mut telnyx_open = true;
        let mut outbound_open = true;
        self.reading_since = Instant::now();
        // The pacer's one timer, moved rather than made anew: a fresh sleep on every turn of
        // the loop while frames are paced inserted and removed a timer-wheel entry each
        // time (a tenth of what ducked audio cost in the bench's instruction counts).
        let pacer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(pacer);
        loop {
            if self.stopping.is_some() && self.tracks.values().all(|t| t.phase == Phase::Finished) {
                break;
            }
            let retry_at = self.next_retry();
            let deadline = self.stop_deadline();
            // Telnyx's frame pacing while mixing: armed only while frames are queued.
            let pace_at = self.mixer.as_ref().and_then(|m| m.next_due);
            if let Some(at) = pace_at
                && pacer.deadline() != at
            {
                pacer.as_mut().reset(at);
            }
            tokio::select! {
                frame = telnyx_rx.next(), if telnyx_open => {
                    telnyx_open = self.on_telnyx_message(frame).await;
                    // Frames that came together (both tracks of a tick share a segment;
                    // a burst after a stall) are read on here, not each after a turn of
                    // the select that polls every branch again. A few at most, so the
                    // other branches are never starved by a flood.
                    for _ in 0..FRAMES_READ_ON {
                        if !telnyx_open {
                            break;
                        }
                        let Some(frame) = telnyx_rx.next().now_or_never() else {
                            break;
                        };
                        telnyx_open = self.on_telnyx_message(frame).await;
                    }
                }
                Some(event) = events_rx.recv() => self.on_aai_event(event).await,
                out = outbound_rx.recv(), if telnyx_open && outbound_open => match out {
                    Some(out) => self.on_outbound(out),
                    // Nothing can send any more (no translation, no original audio from a
                    // peer), and a tokio channel never reopens: it is not polled again.
                    // Polling the two channels was 3.8 % of the service's CPU at 250 calls
                    // in `perf`, each call's channel cold by its next frame (ADR 0058).
                    None => outbound_open = false,
                },
                _ = ring.tick(), if telnyx_open && self.party.as_ref().is_some_and(|p| p.ringing.is_some()) => self.ring(),
                () = &mut pacer, if pace_at.is_some() && telnyx_open => self.paced(),
                () = sleep_until(retry_at), if retry_at.is_some() => self.reconnect_due(),
                _ = heartbeat.tick() => self.heartbeat(),
                () = &mut cancelled, if self.stopping.is_none() => {
                    self.begin_stop("shutdown").await;
                    // Going away: Telnyx ends the stream; another replica can re-attach.
                    let _ = telnyx_tx.send(WsMessage::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }))).await;
                    telnyx_open = false;
                }
                () = sleep_until(deadline), if deadline.is_some() => self.give_up_overdue(),
            }
            if self.clear_requested
                && let Some(mixer) = self.mixer.as_mut()
            {
                // Barge-in: what we had not sent yet is dropped here.
                mixer.queue.clear();
            }
            if std::mem::take(&mut self.clear_requested) && telnyx_open {
                // Barge-in: Telnyx drops the queued audio and flushes its marks.
                self.outbox.push(clear_message());
                metrics::counter!("translation_barge_ins_total").increment(1);
            }
            if telnyx_open {
                self.pace_if_idle();
            }
            if !self.outbox.is_empty() {
                if telnyx_open && send_all(&mut telnyx_tx, &mut self.outbox).await.is_err() {
                    telnyx_open = false;
                }
                self.outbox.clear();
            }
        }
        let _ = telnyx_tx.close().await;
    }

    /// One message from Telnyx; whether the socket is still open after it.
    async fn on_telnyx_message(&mut self, message: Option<Result<WsMessage, axum::Error>>) -> bool {
        match message {
            Some(Ok(WsMessage::Text(text))) => self.on_frame(&text).await,
            Some(Ok(WsMessage::Binary(_))) => count_bad("binary"),
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => {
                self.begin_stop(SOCKET_CLOSED).await;
                return false;
            }
            Some(Ok(_)) => {}
        }
        true
    }

    /// When a stopping track stops waiting: for `Termination`, `STOP_DEADLINE` after its
    /// `Terminate`; to deliver held audio while AssemblyAI is unreachable, `tail_bound`
    /// after the stop. The earliest over the unfinished tracks.
    fn stop_deadline(&self) -> Option<Instant> {
        let stopping = self.stopping?;
        self.tracks
            .values()
            .filter_map(|t| match t.phase {
                Phase::Finished => None,
                Phase::Terminating => Some(t.terminate_by.unwrap_or(stopping + STOP_DEADLINE)),
                Phase::Live => Some(stopping + STOP_DEADLINE),
                Phase::Connecting | Phase::Waiting(_) => Some(stopping + self.tail_bound),
            })
            .min()
    }

    /// Finishes the tracks whose stop deadline passed; what they never sent becomes a gap
    /// (`finish_tracks`).
    fn give_up_overdue(&mut self) {
        let now = Instant::now();
        let Some(stopping) = self.stopping else {
            return;
        };
        let tail_bound = self.tail_bound;
        for track in self.tracks.values_mut() {
            let overdue = match track.phase {
                Phase::Finished => false,
                Phase::Terminating => track.terminate_by.unwrap_or(stopping + STOP_DEADLINE) <= now,
                Phase::Live => stopping + STOP_DEADLINE <= now,
                Phase::Connecting | Phase::Waiting(_) => stopping + tail_bound <= now,
            };
            if overdue {
                tracing::warn!(call_id = %self.call_id, track = track.track.as_str(), phase = ?track.phase, "stopping track did not finish in time");
                if matches!(track.phase, Phase::Live | Phase::Terminating) {
                    // Given up as if it dropped.
                    track.session_lost();
                }
                track.phase = Phase::Finished;
                track.sink = None;
            }
        }
        for track in [Track::Inbound, Track::Outbound] {
            self.store_ended(track);
        }
    }

    /// Stores the whole turns `track`'s dropped sessions ended but never sent formatted
    /// (`OpenTurn::take_ended`): at once, not when the party next speaks.
    fn store_ended(&mut self, track: Track) {
        let ended = match self.tracks.get_mut(&track) {
            Some(state) => state.open_turn.take_ended(),
            None => return,
        };
        for turn in ended {
            self.store_turn(track, turn, None);
        }
    }

    /// The stream is over: final words no final turn took are stored as a turn, held
    /// audio no session was sent is lost (the replay buffer reports it), each track's gaps
    /// are recorded, and where the tracks got to is saved
    /// for a stream that continues the call.
    async fn finish_tracks(&mut self) {
        for track in [Track::Inbound, Track::Outbound] {
            // A stream shorter than the settling second: its estimate is what we have.
            let unsettled = self
                .tracks
                .get(&track)
                .and_then(|t| t.clock)
                .filter(|c| !c.settled())
                .map(|c| c.began());
            if let Some(began) = unsettled {
                self.settle_origin(track, began);
            }
            if let Some(state) = self.tracks.get_mut(&track) {
                // Final words no final turn took are turns of their own, not gaps.
                let leftovers = state.open_turn.leftovers(&state.session_id);
                state.replay.abandon();
                for leftover in leftovers {
                    self.store_turn(track, leftover, None);
                }
            }
            self.close_gap(track);
        }
        if let Err(error) =
            super::resume::save_positions(&self.state.db, self.call_id, &self.positions()).await
        {
            tracing::warn!(%error, call_id = %self.call_id, "saving the stream's track positions failed");
        }
    }

    /// Each track's position on the call's clock and when the audio there ended (from the
    /// frames), by the track's label (a leg's stream: its party, so the two legs never mix).
    fn positions(&self) -> Vec<(&'static str, u64, Instant)> {
        self.tracks
            .values()
            .filter_map(|t| {
                t.clock
                    .map(|c| (self.label(t.track), c.end_ms(), c.ended_at()))
            })
            .collect()
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
        let frame = match frames::parse_reusing(text, &mut self.spare_payload) {
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
                self.heartbeat_now();
                for &track in self.tracks_carried() {
                    self.ensure_track(track);
                }
            }
            Frame::Media(mut media) => {
                self.meters.frames_in.increment(1);
                if self.stopping.is_some() {
                    return;
                }
                if !self.tracks_carried().contains(&media.track) {
                    // A leg's stream carries its party only (`inbound_track`).
                    return count_bad("unexpected_track");
                }
                self.ensure_track(media.track);
                self.share_original(&media.payload);
                self.observe_frame(media.track, media.chunk, media.payload.len(), received);
                let batches = self
                    .tracks
                    .get_mut(&media.track)
                    .map(|t| t.audio.push(media.chunk, &mut media.payload))
                    .unwrap_or_default();
                // Empty when the reorder buffer kept it: the next frame allocates afresh. An
                // oversized frame's buffer is not kept: thousands of calls each hold theirs.
                if media.payload.capacity() <= SPARE_PAYLOAD_MAX {
                    self.spare_payload = media.payload;
                }
                // Timed: the frames that complete a batch (one in five at 100 ms batches),
                // whose handling includes handing the batch on. Timing every frame (a clock
                // read, a sample recorded and later drained) was about 3 % of the service's
                // instructions (ADR 0058).
                let completes_batch = !batches.is_empty();
                for batch in batches {
                    self.enqueue(media.track, batch, 0).await;
                }
                if completes_batch {
                    self.meters
                        .batch_latency
                        .record(received.elapsed().as_secs_f64());
                }
            }
            Frame::Stop => self.begin_stop("stop frame").await,
            Frame::Error { code, title } => {
                tracing::warn!(call_id = %self.call_id, %code, %title, "Telnyx reported a media stream error");
            }
            Frame::Mark { name } => self.on_mark(&name),
            Frame::Connected | Frame::Dtmf { .. } => {}
        }
    }

    /// A one-leg call's stream carries both tracks; a leg's stream its party's voice only.
    fn tracks_carried(&self) -> &'static [Track] {
        if self.party.is_some() {
            &[Track::Inbound]
        } else {
            &[Track::Inbound, Track::Outbound]
        }
    }

    /// How a track's turns, gaps and partials are stored: the party on a leg's stream.
    fn label(&self, track: Track) -> &'static str {
        match &self.party {
            Some(party) => party.role.as_str(),
            None => track.as_str(),
        }
    }

    fn ensure_track(&mut self, track: Track) {
        if self.tracks.contains_key(&track) {
            return;
        }
        let turn_index = self.resume.next_turn_index(self.label(track));
        self.tracks.insert(
            track,
            TrackState::new(track, &self.state.config.media, turn_index),
        );
        self.connect(track);
    }

    /// Moves the track's clock to this frame. The first frame places the track on the
    /// call's clock: at 0 on a new call, or where an earlier stream left off plus the time
    /// no stream carried audio, which a re-attach records as a `bridge_lost` gap.
    fn observe_frame(&mut self, track: Track, chunk: u64, payload_bytes: usize, at: Instant) {
        let frame_ms = match (payload_bytes / MULAW_BYTES_PER_MS) as u64 {
            0 => 20,
            ms => ms,
        };
        let began = self.audio_began(frame_ms, at);
        let label = self.label(track);
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        if let Some(clock) = state.clock.as_mut() {
            if let Some(began) = clock.observe(chunk, frame_ms, at) {
                self.settle_origin(track, began);
            }
            return;
        }
        // Provisional (settled a second later); the clock itself estimates from arrivals
        // only, so a connection time earlier than the audio never stands for its start.
        let origin = self.resume.origin(label, wall_clock(began));
        let arrived = at
            .checked_sub(Duration::from_millis(frame_ms))
            .unwrap_or(at);
        state.clock = Some(TrackClock::start(origin.start_ms, chunk, frame_ms, arrived));
        state.next_offset_ms = origin.start_ms;
    }

    /// Once a second of frames has shown when the stream's audio really began (frames
    /// waiting unread at first arrive in real time after), moves the track's clock there and
    /// records the re-attach gap, if any.
    fn settle_origin(&mut self, track: Track, began: Instant) {
        let origin = self
            .resume
            .origin(self.label(track), wall_clock(began.max(self.connected_at)));
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        let Some(clock) = state.clock.as_mut() else {
            return;
        };
        let delta = origin.start_ms as i64 - clock.origin_ms() as i64;
        if delta != 0 {
            clock.shift(delta);
            state.next_offset_ms = state.next_offset_ms.saturating_add_signed(delta);
            state.replay.shift(delta);
            state.open_turn.shift(delta);
            if let Some(base) = state.session_base_ms.as_mut() {
                *base = base.saturating_add_signed(delta);
            }
        }
        if let Some((start, end)) = origin.gap {
            self.record_gap(track, start, end - start, "bridge_lost");
        }
    }

    /// When the audio of a stream's first frame (received at `at`) began. Telnyx streams
    /// from the moment it connects, so a frame that arrives while we are reading began a
    /// frame before it arrived; one that was already waiting when this task began reading
    /// (a busy replica) arrived earlier than we saw it, and the connection time is the
    /// better measure.
    fn audio_began(&self, frame_ms: u64, at: Instant) -> Instant {
        const WAITING: Duration = Duration::from_millis(5);
        if at.saturating_duration_since(self.reading_since) < WAITING {
            return self.connected_at;
        }
        at.checked_sub(Duration::from_millis(frame_ms))
            .unwrap_or(at)
            .max(self.connected_at)
    }

    fn connect(&mut self, track: Track) {
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        state.generation += 1;
        state.phase = Phase::Connecting;
        let generation = state.generation;
        // The session's pongs go to the replay buffer directly, not through the call's task.
        let pongs = state.replay.listen();
        let (client, params, events) = (
            self.client.clone(),
            self.params.clone(),
            self.events_tx.clone(),
        );
        tokio::spawn(async move {
            // Boxed: a task's future keeps the size of its largest state for as long as it
            // runs, and the handshake's (~12 KiB) would stay allocated beside the small
            // reading loop for the whole session (two per call, thousands of calls).
            let connected = Box::pin(client.connect(&params)).await;
            match connected {
                Ok((socket, session_id)) => {
                    let Socket {
                        reader: mut stream,
                        writer: sink,
                        ..
                    } = socket;
                    if events
                        .send(AaiEvent::Connected {
                            track,
                            generation,
                            sink: Box::new(sink),
                            session_id,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let reason = loop {
                        match stream.next().await {
                            Ok(Incoming::Text(text)) => {
                                let message = Box::new(assemblyai::parse_server_message(text));
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
                            Ok(Incoming::Pong(payload)) => {
                                let Ok(through) = <[u8; 8]>::try_from(payload) else {
                                    continue;
                                };
                                pongs.record(u64::from_be_bytes(through));
                            }
                            Ok(Incoming::Close(frame)) => {
                                break assemblyai::describe_close(frame);
                            }
                            Ok(Incoming::Binary(_)) => {}
                            Err(error) => break error.to_string(),
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

    /// Holds a batch for replay and sends it if the session is live. `padding` bytes at its
    /// end are silence added to meet AssemblyAI's minimum, not audio of the call.
    async fn enqueue(&mut self, track: Track, bytes: Vec<u8>, padding: usize) {
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        let mut batch = Batch::new(state.next_offset_ms, bytes);
        batch.audio_ms = batch
            .audio_ms
            .saturating_sub((padding / MULAW_BYTES_PER_MS) as u64);
        state.next_offset_ms = batch.end_ms();
        if state.phase == Phase::Live {
            let bytes = batch.bytes.clone();
            batch.sent_at = send_batch(
                state,
                batch.offset_ms,
                batch.end_ms(),
                bytes,
                &self.meters.batches_sent,
            )
            .await;
        }
        state.replay.push(batch);
        if state.phase == Phase::Live
            && state.turn_open
            && !state.session_reported_words
            && state.open_turn.carries_words()
            && state.trim_after.is_some_and(|at| Instant::now() >= at)
            && state.replay.heard_all_but_newest()
        {
            // A session that followed a drop mid-turn has heard what was replayed and
            // found no words in the idle window since: the turn ended in the pause the drop
            // fell in. Its carried final words are that turn, and the track goes back to
            // trimming. (Without carried words, as with Universal-3 Pro, whose words are
            // final only at the end, the turn stays open until its final.)
            state.turn_open = false;
            if let Some(turn) = state.open_turn.flush_carried() {
                self.store_turn(track, turn, None);
            }
            return;
        }
        if state.phase == Phase::Live
            && !state.turn_open
            && state.trim_after.is_none_or(|at| Instant::now() >= at)
        {
            // A live session has heard this and found no words in it: only the most recent
            // audio (a turn may be starting there) is worth replaying. Silent tracks so
            // hold seconds less audio per call.
            state
                .replay
                .trim_to(state.idle_window.as_millis() as usize * MULAW_BYTES_PER_MS);
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
                tracing::info!(call_id = %self.call_id, track = track.as_str(), %session_id, replayed_batches = state.replay.len(), "AssemblyAI session open");
                state.sink = Some(*sink);
                state.session_id = session_id;
                state.session_opened = Some(Instant::now());
                state.session_sent_bytes = 0;
                state.phase = Phase::Live;
                state.trim_after = Some(Instant::now() + state.idle_window);
                state.attempts = 0;
                state.session_base_ms = None;
                state.last_final_order = None;
                state.session_reported_words = false;
                // Replay what the last session never finished.
                for index in 0..state.replay.len() {
                    let Some((offset_ms, end_ms, bytes)) = state
                        .replay
                        .get(index)
                        .map(|b| (b.offset_ms, b.end_ms(), b.bytes.clone()))
                    else {
                        break;
                    };
                    let sent =
                        send_batch(state, offset_ms, end_ms, bytes, &self.meters.batches_sent)
                            .await;
                    if let Some(at) = sent {
                        state.replay.sent(index, at);
                    }
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
                match *message {
                    ServerMessage::Turn(turn) => self.on_turn(track, turn),
                    ServerMessage::Error { code, message } => {
                        tracing::warn!(call_id = %self.call_id, track = track.as_str(), code, %message, "AssemblyAI error");
                    }
                    ServerMessage::Termination {
                        audio_seconds,
                        session_seconds,
                    } => {
                        self.record_session(track, session_seconds, audio_seconds);
                        if let Some(state) = self.tracks.get_mut(&track) {
                            // After `Terminate`: the session processed all it was sent.
                            state.replay.all_heard();
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
                // Closed without `Termination`: AssemblyAI reported nothing; bill our clock.
                self.record_session(track, None, None);
                let Some(state) = self.tracks.get_mut(&track) else {
                    return;
                };
                match state.phase {
                    Phase::Finished => {}
                    Phase::Terminating => {
                        // Closed without `Termination`: its last turn may never come.
                        state.session_lost();
                        state.phase = Phase::Finished;
                    }
                    _ => {
                        state.session_lost();
                        tracing::warn!(%call_id, track = track.as_str(), %reason, "AssemblyAI session dropped; reconnecting");
                        metrics::counter!("assemblyai_reconnects_total").increment(1);
                        schedule_retry(state);
                    }
                }
                self.store_ended(track);
            }
        }
    }

    fn on_turn(&mut self, track: Track, turn: Turn) {
        let call_id = self.call_id;
        let label = self.label(track);
        let final_turn = turn.end_of_turn && (turn.turn_is_formatted || !self.params.format_turns);
        if !turn.transcript.is_empty() {
            // The listener of whatever is playing started talking: barge-in.
            self.barge_in(track);
        }
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        let base = state.session_base_ms.unwrap_or(state.next_offset_ms);
        if !state.session_reported_words && !turn.transcript.is_empty() {
            // This session's first words: if they start a pause long enough to end a turn
            // after the words carried from a drop, those were a turn of their own.
            state.session_reported_words = true;
            let first = turn.words.first().map(|w| base + w.start);
            if let Some(alone) = first.and_then(|at| state.open_turn.split_if_paused(at)) {
                self.store_turn(track, alone, None);
            }
        }
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        if turn.end_of_turn && state.last_final_order == Some(turn.turn_order) {
            // A stored turn's end again (its unformatted version after the formatted one).
            metrics::counter!("transcript_turns_duplicate_total").increment(1);
            return;
        }
        if !final_turn {
            state.turn_open |= !turn.transcript.is_empty();
            let (order, ended) = (turn.turn_order, turn.end_of_turn);
            let partial =
                state
                    .open_turn
                    .partial(&state.session_id, order, turn.words, base, ended);
            if let Some(end) = partial {
                // Its final words are kept: a new session need not hear their audio again.
                state.replay.transcribed_through(end);
            }
            if turn.transcript != state.last_partial && !turn.transcript.is_empty() {
                // Batched per replica: a checkout per partial swamped the pool under load.
                let shown = match state.open_turn.carried_text() {
                    Some(carried) => Cow::Owned(format!("{carried} {}", turn.transcript)),
                    None => Cow::Borrowed(turn.transcript.as_str()),
                };
                self.state
                    .partials
                    .publish(call_id, label, turn.turn_order, &shown);
                state.last_partial = turn.transcript;
            }
            return;
        }
        state.last_partial.clear();
        state.turn_open = false;
        if state.last_final_order == Some(turn.turn_order) {
            metrics::counter!("transcript_turns_duplicate_total").increment(1);
            return;
        }
        state.last_final_order = Some(turn.turn_order);
        if let Some(end) = turn.words.last().map(|w| base + w.end) {
            if let Some(sent) = state.replay.sent_at(end) {
                metrics::histogram!("assemblyai_end_of_turn_latency_seconds")
                    .record(sent.elapsed().as_secs_f64());
            }
            // Audio up to the end of this turn is transcribed: no need to replay it.
            state.replay.transcribed_through(end);
        }
        let words = turn.words.into_iter().map(|mut w| {
            w.start += base;
            w.end += base;
            w
        });
        let (words, text) =
            state
                .open_turn
                .finish(turn.turn_order, words.collect(), turn.transcript);
        let session_id = state.session_id.clone();
        // A dropped session's whole turns that never came formatted go first.
        for ended in state.open_turn.take_ended() {
            self.store_turn(track, ended, None);
        }
        self.store_turn(
            track,
            TurnWords {
                session_id,
                turn_order: turn.turn_order,
                text,
                words,
            },
            turn.language_code,
        );
    }

    /// Stores a track's finished turn (words on the track's clock) and hands it to whoever
    /// hears it: a final turn, or final words no final turn took (`OpenTurn::leftover`).
    fn store_turn(&mut self, track: Track, turn: TurnWords, language_code: Option<String>) {
        let call_id = self.call_id;
        let label = self.label(track);
        let start_ms = turn.words.first().map(|w| w.start);
        let end_ms = turn.words.last().map(|w| w.end);
        let confidence = (!turn.words.is_empty()).then(|| {
            turn.words.iter().map(|w| w.confidence).sum::<f64>() / turn.words.len() as f64
        });
        let words = turn.words.into_iter().map(turns::Word::from).collect();
        // An `auto` party: AssemblyAI names the language of each turn; it drives what the
        // turn is translated from, and what this party hears.
        let language = match &self.party {
            Some(party) if party.language == "auto" => {
                if let Some(code) = &language_code {
                    party.detected.send_replace(Some(code.clone()));
                }
                language_code.or_else(|| party.detected.borrow().clone())
            }
            Some(party) => Some(party.language.clone()),
            None => None,
        };
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        let turn_index = state.turn_index;
        let stored = FinalTurn {
            call_id,
            track: label,
            language: language.clone(),
            turn_index: Some(turn_index),
            session_id: turn.session_id,
            turn_order: turn.turn_order as i64,
            text: turn.text,
            words,
            confidence,
            start_ms: start_ms.map(|v| v as i64),
            end_ms: end_ms.map(|v| v as i64),
        };
        state.turn_index += 1;
        let mut hand_over = None;
        if !stored.text.trim().is_empty() {
            let utterance = Utterance {
                seq: self.next_utterance,
                source_track: track,
                source: label,
                source_language: language,
                turn_index,
                turn: Some(TurnId {
                    session_id: stored.session_id.clone(),
                    turn_order: stored.turn_order,
                }),
                text: stored.text.clone(),
                end_of_turn_at: chrono::Utc::now(),
                end_of_turn: Instant::now(),
            };
            let end_of_turn_at = utterance.end_of_turn_at;
            if self.hand_over(utterance) {
                hand_over = Some(end_of_turn_at);
            }
        }
        let writer = self.state.turns.clone();
        let Some(end_of_turn_at) = hand_over else {
            self.storage.spawn(async move {
                writer.store(stored).await;
            });
            return;
        };
        // The listener is on another replica: announce the turn once it is stored, after
        // the turns announced before it (their stores may finish in any order).
        let (done, finished) = tokio::sync::oneshot::channel();
        let previous = self.announced.replace(finished);
        let db = self.state.db.clone();
        self.storage.spawn(async move {
            let call_id = stored.call_id;
            let speaker = stored.track.to_owned();
            let stored_as = writer.store(stored).await;
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let turn_index = match stored_as {
                Some(turns::Stored::New { turn_index })
                | Some(turns::Stored::Renumbered { turn_index, .. }) => turn_index,
                // Already stored (and announced) by an earlier session, or lost (counted).
                Some(turns::Stored::Duplicate) | None => return,
            };
            let announcement = hub::HandOver {
                call_id,
                speaker,
                turn_index,
                end_of_turn_at,
            };
            match hub::announce(&db, &announcement).await {
                Ok(()) => metrics::counter!("translation_handovers_sent_total").increment(1),
                Err(error) => {
                    // Its listener reads it when it next (re)registers or its LISTEN reconnects.
                    tracing::warn!(%error, %call_id, turn_index, "announcing a turn to the other replica failed");
                }
            }
            let _ = done.send(());
        });
    }

    /// A final turn goes to whoever hears it: the other track's speaker on a one-leg call,
    /// the other party's leg on an interpreted call — never back to the one who said it.
    /// True when the other party's stream is not in this process: the turn is to be
    /// announced to the other replicas once stored (docs/adr/0035-cross-replica-legs.md).
    fn hand_over(&mut self, utterance: Utterance) -> bool {
        let call_id = self.call_id;
        if let Some(party) = self.party.as_mut() {
            match self.hub.deliver(call_id, party.role.other(), utterance) {
                Delivery::Queued | Delivery::Duplicate => return false,
                Delivery::NoListener => {
                    if party.shares_original.is_some() && !party.split_counted {
                        // The other party's voice cannot reach them under the translation
                        // from here: NOTIFY carries turns, not 50 frames a second.
                        party.split_counted = true;
                        metrics::counter!("original_audio_not_carried_legs_total").increment(1);
                        tracing::info!(%call_id, from = party.role.as_str(), "the legs stream to different replicas: original audio is not carried");
                    }
                    return true;
                }
                Delivery::Full => {
                    tracing::warn!(%call_id, "translation queue full; utterance dropped");
                    return false;
                }
            }
        }
        if let Some(speaker) = &self.speaker {
            self.next_utterance += 1;
            if speaker.try_send(utterance).is_err() {
                tracing::warn!(%call_id, "translation queue full; utterance dropped");
            }
        }
        false
    }

    /// Turns a speaker request into the Telnyx message (into the outbox, or the mixer's
    /// queue when paced), keeping playout accounting.
    fn on_outbound(&mut self, out: Outbound) {
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
                if let Some(mixer) = self.mixer.as_mut() {
                    // Sent when due, with the other party's voice under it.
                    mixer
                        .queue
                        .extend(bytes.chunks(FRAME).map(|c| Paced::Frame(mix::frame_of(c))));
                    return;
                }
                let message = self.media(&bytes);
                self.outbox.push(message);
            }
            Outbound::Original(frames) => self.on_original(*frames),
            Outbound::Mark { seq, name } => {
                if let Some(playing) = self.playing.iter_mut().find(|p| p.seq == seq) {
                    playing.mark = Some(name.clone());
                }
                if let Some(mixer) = self.mixer.as_mut() {
                    mixer.queue.push_back(Paced::Mark(name));
                    return;
                }
                self.outbox.push(mark_message(&name));
            }
        }
    }

    /// The next second of ringback for the agent, or — once the remote party's stream is
    /// live — the end of it (`clear` drops what Telnyx still holds of the tone).
    fn ring(&mut self) {
        let call_id = self.call_id;
        let Some(party) = self.party.as_mut() else {
            return;
        };
        let Some(ringing) = party.ringing.as_mut() else {
            return;
        };
        if self.hub.is_live(call_id, party.role.other())
            || ringing
                .answered_elsewhere
                .load(std::sync::atomic::Ordering::Relaxed)
            || ringing.since.elapsed() > RING_LIMIT
        {
            party.ringing = None;
            if let Some(mixer) = self.mixer.as_mut() {
                mixer.queue.clear();
            }
            self.outbox.push(clear_message());
            return;
        }
        let cadence = mix::ringback_cadence();
        let second: Vec<u8> = cadence
            .iter()
            .cycle()
            .skip(ringing.offset)
            .take(8000)
            .copied()
            .collect();
        ringing.offset = (ringing.offset + second.len()) % cadence.len();
        if let Some(mixer) = self.mixer.as_mut() {
            mixer
                .queue
                .extend(second.chunks(FRAME).map(|c| Paced::Frame(mix::frame_of(c))));
            return;
        }
        let message = self.media(&second);
        self.outbox.push(message);
    }

    /// A `media` message of `audio` (counted).
    fn media(&mut self, audio: &[u8]) -> WsMessage {
        self.meters.frames_out.increment(1);
        self.envelope.media(audio)
    }

    /// Frames of the other party's own voice, to mix under what this party hears. With
    /// nothing queued they are sent at once, in one message at the gain: the other party's
    /// stream paces them. Otherwise they wait for their paced frames.
    fn on_original(&mut self, frames: [[u8; FRAME]; FRAMES_PER_MESSAGE]) {
        let Some(mixer) = self.mixer.as_mut() else {
            return;
        };
        if mixer.next_due.is_none() && mixer.queue.is_empty() && mixer.under.is_empty() {
            let mut out = [[mix::SILENCE; FRAME]; FRAMES_PER_MESSAGE];
            for (out, frame) in out.iter_mut().zip(&frames) {
                mixer.gain.alone_into(out, frame);
            }
            let message = self.media(out.as_flattened());
            self.outbox.push(message);
            return;
        }
        for frame in frames {
            if mixer.under.len() >= UNDER_FRAMES {
                mixer.under.pop_front();
            }
            mixer.under.push_back(frame);
        }
    }

    /// A paced message is due: the next translation frames (or silence) with the other
    /// party's voice under them, then the marks that follow. The pacer stays armed while
    /// anything is queued or held, and for one message after translation audio (so the
    /// next, still on its way from ElevenLabs, keeps the spacing); then it stops.
    fn paced(&mut self) {
        let sent = self.pace_one();
        let speech = sent.is_some_and(|(kind, _)| kind == Sent::Speech);
        // What went out plays for this long; nothing went: the next look is a frame away.
        let played = PACE * sent.map_or(1, |(_, frames)| frames);
        let Some(mixer) = self.mixer.as_mut() else {
            return;
        };
        let now = tokio::time::Instant::now();
        mixer.next_due = match mixer.next_due {
            _ if !speech && mixer.queue.is_empty() && mixer.under.is_empty() => None,
            // Late ticks catch up (Telnyx must not run dry mid-utterance), within reason.
            Some(due) if due + PACE * 5 > now => Some(due + played),
            _ => Some(now + played),
        };
    }

    /// With the pacer idle, what was just queued starts at once (no wait for a tick): the
    /// first frame of a translation is not delayed; the pacer takes it from there.
    fn pace_if_idle(&mut self) {
        let idle_with_work = self
            .mixer
            .as_ref()
            .is_some_and(|m| m.next_due.is_none() && !(m.queue.is_empty() && m.under.is_empty()));
        if !idle_with_work {
            return;
        }
        let sent = self.pace_one();
        if let Some(mixer) = self.mixer.as_mut()
            && let Some((kind, frames)) = sent
            && (kind == Sent::Speech || !mixer.under.is_empty())
        {
            mixer.next_due = Some(tokio::time::Instant::now() + PACE * frames);
        }
    }

    /// Writes one paced message (up to [`FRAMES_PER_MESSAGE`] frames) and the marks after
    /// it into the outbox; what kind of audio went and how many frames, if any.
    fn pace_one(&mut self) -> Option<(Sent, u32)> {
        let mixer = self.mixer.as_mut()?;
        let mut out = [[mix::SILENCE; FRAME]; FRAMES_PER_MESSAGE];
        let (mut frames, mut speaking) = (0, false);
        while frames < FRAMES_PER_MESSAGE {
            let speech = match mixer.queue.front() {
                Some(Paced::Frame(_)) => match mixer.queue.pop_front() {
                    Some(Paced::Frame(frame)) => Some(frame),
                    _ => None,
                },
                _ => None,
            };
            let under = mixer.under.pop_front();
            let slot = &mut out[frames];
            match (speech, under) {
                (Some(speech), Some(under)) => {
                    *slot = speech;
                    mixer.gain.mix_into(slot, &under);
                }
                (Some(speech), None) => *slot = speech,
                (None, Some(under)) => mixer.gain.alone_into(slot, &under),
                (None, None) => break,
            }
            speaking |= speech.is_some();
            frames += 1;
            // A mark goes right after the audio it follows: it says an utterance was heard.
            if matches!(mixer.queue.front(), Some(Paced::Mark(_))) {
                break;
            }
        }
        if frames > 0 {
            let message = self.media(out[..frames].as_flattened());
            self.outbox.push(message);
        }
        let mixer = self.mixer.as_mut()?;
        while let Some(Paced::Mark(_)) = mixer.queue.front() {
            if let Some(Paced::Mark(name)) = mixer.queue.pop_front() {
                self.outbox.push(mark_message(&name));
            }
        }
        let kind = if speaking {
            Sent::Speech
        } else {
            Sent::Original
        };
        (frames > 0).then_some((kind, frames as u32))
    }

    /// This party's own voice, for the other party to hear under their translations, a
    /// message's worth at a time. The other leg's queue is looked up at most once a second
    /// until it is live.
    fn share_original(&mut self, payload: &[u8]) {
        let Some(party) = self.party.as_mut() else {
            return;
        };
        let Some(gain) = &party.shares_original else {
            return;
        };
        // Only what the other would hear is shared: silence (and line noise below
        // audibility at the gain) costs neither leg anything (ADR 0047). Frames that complete
        // a message already begun go whatever they hold.
        if gain.audible(payload) {
            party.quiet_frames = 0;
        } else if party.quiet_frames >= HANGOVER_FRAMES && party.held.is_empty() {
            return;
        } else {
            party.quiet_frames = party.quiet_frames.saturating_add(1);
        }
        party.held.push(mix::frame_of(payload));
        if party.held.len() < FRAMES_PER_MESSAGE {
            return;
        }
        let mut frames = [[mix::SILENCE; FRAME]; FRAMES_PER_MESSAGE];
        for (frame, held) in frames.iter_mut().zip(party.held.drain(..)) {
            *frame = held;
        }
        if party.peer_original.as_ref().is_none_or(|tx| tx.is_closed()) {
            if party
                .peer_checked
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            party.peer_checked = Some(Instant::now());
            party.peer_original = self.hub.original_for(self.call_id, party.role.other());
        }
        if let Some(peer) = &party.peer_original {
            // A full queue means the other leg is behind: these frames are not worth waiting
            // for.
            let _ = peer.try_send(Outbound::Original(Box::new(frames)));
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
        let (db, call_id, listener) = (
            self.state.db.clone(),
            self.call_id,
            self.label(playing.listener),
        );
        self.storage.spawn(async move {
            if let Err(error) = playout::played(&db, call_id, playing.seq, listener).await {
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
            let (db, call_id, listener) = (
                self.state.db.clone(),
                self.call_id,
                self.label(playing.listener),
            );
            self.storage.spawn(async move {
                if let Err(error) = playout::cut(&db, call_id, playing.seq, at_ms, listener).await {
                    tracing::warn!(%error, "recording a cut utterance failed");
                }
            });
        }
    }

    /// Flushes every track and asks AssemblyAI to finish.
    async fn begin_stop(&mut self, why: &'static str) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!(call_id = %self.call_id, why, "media stream stopping");
        self.stopping = Some(Instant::now());
        self.stopped_by = Some(why);
        if self.state.shutdown.is_cancelled() {
            // The process is going away: give up in time to record what is lost.
            self.tail_bound = self
                .tail_bound
                .min(self.state.config.http.shutdown_grace / 2);
        }
        let tracks: Vec<Track> = self.tracks.keys().copied().collect();
        for track in tracks {
            let (audio_bytes, tail) = self
                .tracks
                .get_mut(&track)
                .map(|t| (t.audio.pending_bytes(), t.audio.flush()))
                .unwrap_or_default();
            let mut audio_left = audio_bytes;
            for batch in tail {
                let padding = batch.len().saturating_sub(audio_left);
                audio_left = audio_left.saturating_sub(batch.len());
                self.enqueue(track, batch, padding).await;
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
            if sink.send(&[assemblyai::TERMINATE]).await.is_err() {
                // The session is gone.
                state.session_lost();
                state.phase = Phase::Finished;
                self.store_ended(track);
                return;
            }
            state.phase = Phase::Terminating;
            state.terminate_by = Some(Instant::now() + STOP_DEADLINE);
        } else {
            state.phase = Phase::Finished;
        }
    }

    /// Writes `track`'s current session to the usage ledger, once (the session is then
    /// forgotten): AssemblyAI's reported seconds when it sent `Termination`, else our own
    /// measure of the connection. Both figures go in the metadata for reconciliation.
    fn record_session(
        &mut self,
        track: Track,
        reported_seconds: Option<f64>,
        audio_seconds: Option<f64>,
    ) {
        let (call_id, leg_id) = (self.call_id, self.leg_id);
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        let Some(opened) = state.session_opened.take() else {
            return;
        };
        let measured = opened.elapsed().as_secs_f64();
        let session_id = if state.session_id.is_empty() {
            format!("{call_id}:{}:{}", track.as_str(), state.generation)
        } else {
            state.session_id.clone()
        };
        let sent_audio_seconds =
            (state.session_sent_bytes / MULAW_BYTES_PER_MS as u64) as f64 / 1000.0;
        let entry = crate::usage::Entry {
            owner: crate::usage::Owner::Call { call_id, leg_id },
            vendor: crate::usage::unit::ASSEMBLYAI,
            unit: crate::usage::unit::STREAMING_SECONDS,
            quantity: reported_seconds.unwrap_or(measured),
            source_key: format!("assemblyai:session:{session_id}"),
            occurred_at: chrono::Utc::now(),
            metadata: serde_json::json!({
                "session_id": session_id,
                "track": track.as_str(),
                "model": self.params.speech_model,
                "reported_seconds": reported_seconds,
                "audio_seconds": audio_seconds,
                "measured_seconds": measured,
                "sent_audio_seconds": sent_audio_seconds,
            }),
        };
        self.state.ledger.record(vec![entry]);
    }

    /// Records the gaps `track`'s replay buffer has counted (audio no session was sent).
    fn close_gap(&mut self, track: Track) {
        let gaps = self
            .tracks
            .get_mut(&track)
            .map(|t| t.replay.take_gaps())
            .unwrap_or_default();
        for gap in gaps {
            let duration = gap.end_ms - gap.start_ms;
            self.record_gap(track, gap.start_ms, duration, gap.kind.reason());
        }
    }

    /// Stores one gap (row, `transcript.gap` event, metric) in the background.
    fn record_gap(&mut self, track: Track, start_ms: u64, duration_ms: u64, reason: &'static str) {
        metrics::counter!("transcript_gap_seconds_total").increment(duration_ms.div_ceil(1000));
        let label = self.label(track);
        tracing::warn!(call_id = %self.call_id, track = label, start_ms, duration_ms, reason, "transcript gap");
        let (db, call_id) = (self.state.db.clone(), self.call_id);
        self.storage.spawn(async move {
            if let Err(error) = transcripts::store_gap(
                &db,
                call_id,
                label,
                start_ms as i64,
                duration_ms as i64,
                reason,
            )
            .await
            {
                tracing::error!(%error, "storing a transcript gap failed");
            }
        });
    }

    /// The periodic beat: batched with every other stream of this replica
    /// (`heartbeats`), so live calls cost PostgreSQL a constant, not a statement each.
    fn heartbeat(&mut self) {
        let leg = self.party.as_ref().map_or(CALL_STREAM, |p| p.role.as_str());
        self.state.heartbeats.beat(
            self.call_id,
            leg,
            self.stream_id.as_deref(),
            &self.positions(),
        );
    }

    /// The beat when the stream starts, written at once: the stream is claimed for this
    /// replica before any sweep could think it abandoned.
    fn heartbeat_now(&mut self) {
        let (db, call_id, replica, stream_id, positions) = (
            self.state.db.clone(),
            self.call_id,
            self.replica.clone(),
            self.stream_id.clone(),
            self.positions(),
        );
        let leg = self.party.as_ref().map_or(CALL_STREAM, |p| p.role.as_str());
        tokio::spawn(async move {
            if let Err(error) =
                transcripts::heartbeat(&db, call_id, leg, &replica, stream_id.as_deref()).await
            {
                tracing::debug!(%error, "media heartbeat failed");
            }
            if let Err(error) = super::resume::save_positions(&db, call_id, &positions).await {
                tracing::debug!(%error, "saving track positions failed");
            }
        });
    }
}

/// Sends a batch to the track's session, followed by a ping carrying the batch's end: the
/// pong tells which audio the session has read (`replay::PongMark`). One flush for both.
/// When it was sent, if it was: the batch keeps that for AssemblyAI's end-of-turn latency.
async fn send_batch(
    state: &mut TrackState,
    offset_ms: u64,
    end_ms: u64,
    bytes: bytes::Bytes,
    sent: &metrics::Counter,
) -> Option<Instant> {
    let sink = state.sink.as_mut()?;
    let bytes_len = bytes.len();
    let ping_payload = state.replay.ping_payload(end_ms);
    let ping = ping_payload.to_be_bytes();
    let frames = [Outgoing::Binary(&bytes), Outgoing::Ping(&ping)];
    if sink.send(&frames).await.is_err() {
        return None;
    }
    sent.increment(1);
    state.session_sent_bytes += bytes_len as u64;
    state.session_base_ms.get_or_insert(offset_ms);
    Some(Instant::now())
}

/// Telnyx frames read on after one that woke the call's task, before the select again: a
/// one-leg call's two tracks arrive together, so one more is the common case.
const FRAMES_READ_ON: usize = 3;

fn schedule_retry(state: &mut TrackState) {
    state.attempts += 1;
    // AssemblyAI reconnects: the shared backoff (`crate::retry`), ceiling 200 ms doubling to
    // 3.2 s from the fifth attempt on; never given up while the call lasts.
    let delay = crate::retry::backoff(
        Duration::from_millis(200),
        Duration::from_secs(5),
        state.attempts.min(5),
    );
    state.phase = Phase::Waiting(Instant::now() + delay);
}

/// The largest decode buffer a call keeps between frames: 20 ms of µ-law is 160 bytes,
/// 60 ms 480; 4 KiB covers any sane frame.
const SPARE_PAYLOAD_MAX: usize = 4096;

fn count_bad(reason: &'static str) {
    metrics::counter!("media_frames_bad_total", "reason" => reason).increment(1);
}

fn mark_message(name: &str) -> WsMessage {
    WsMessage::Text(
        serde_json::json!({"event": "mark", "mark": {"name": name}})
            .to_string()
            .into(),
    )
}

fn clear_message() -> WsMessage {
    WsMessage::Text(axum::extract::ws::Utf8Bytes::from_static(
        r#"{"event":"clear"}"#,
    ))
}

/// Writes the messages and flushes once: one write to the socket for all of them.
async fn send_all(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    messages: &mut Vec<WsMessage>,
) -> Result<(), axum::Error> {
    for message in messages.drain(..) {
        sink.feed(message).await?;
    }
    sink.flush().await
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What `Quiet` hands the future it wraps as its waker: records that the future was woken,
/// then wakes the task.
struct WakeFlag {
    woken: std::sync::atomic::AtomicBool,
    task: std::task::Waker,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake_by_ref();
    }
}

/// A future polled on every turn of a busy loop but rarely ready (the process's shutdown):
/// polled for real only when it woke the task (or the task's waker changed), otherwise
/// `Pending` after one atomic load. Polling a `CancellationToken`'s future locks the token's
/// mutex and its `Notify`'s, both shared by every call in the process: on each frame of each
/// call that was two contended locks for a signal that fires once in the process's life.
struct Quiet<F> {
    inner: std::pin::Pin<Box<F>>,
    flag: Option<Arc<WakeFlag>>,
}

impl<F: Future> Quiet<F> {
    fn new(inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
            flag: None,
        }
    }
}

impl<F: Future> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        use std::sync::atomic::Ordering;
        let this = self.get_mut();
        let flag = match &this.flag {
            Some(flag) if flag.task.will_wake(cx.waker()) => {
                // Cleared before polling: a wake while we poll sets it again for next time.
                if !flag.woken.swap(false, Ordering::AcqRel) {
                    return std::task::Poll::Pending;
                }
                flag.clone()
            }
            // First poll, or a different task waker: the inner future must hold a waker
            // that reaches this task.
            _ => Arc::new(WakeFlag {
                woken: std::sync::atomic::AtomicBool::new(false),
                task: cx.waker().clone(),
            }),
        };
        let waker = std::task::Waker::from(flag.clone());
        this.flag = Some(flag);
        this.inner
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_quiet_shutdown_is_seen_once_the_token_fires_whichever_waker_polled_it() {
        let token = tokio_util::sync::CancellationToken::new();
        let mut quiet = std::pin::pin!(Quiet::new(token.cancelled()));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(quiet.as_mut().poll(&mut cx).is_pending());
        }
        // Another task's waker re-registers: that one is woken, not the first.
        let other = Arc::new(Count(AtomicUsize::new(0)));
        let other_waker = Waker::from(other.clone());
        assert!(
            quiet
                .as_mut()
                .poll(&mut Context::from_waker(&other_waker))
                .is_pending()
        );
        token.cancel();
        assert_eq!(
            other.0.load(Ordering::SeqCst),
            1,
            "the cancel wakes the task"
        );
        assert!(
            quiet
                .as_mut()
                .poll(&mut Context::from_waker(&other_waker))
                .is_ready()
        );
        // Already cancelled before the first poll: ready at once.
        let mut late = std::pin::pin!(Quiet::new(token.cancelled()));
        assert_eq!(late.as_mut().poll(&mut cx), Poll::Ready(()));
    }
}
