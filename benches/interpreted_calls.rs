//! Interpreted calls under load: N concurrent two-leg calls through the release binary, an
//! English-speaking agent and a German-speaking remote party, each on their own media stream
//! (inbound track only, as Telnyx sends a leg), each saying two sentences in real time. Every
//! final turn is translated into the other party's language (DeepL simulator), spoken
//! (ElevenLabs simulator, µ-law) and streamed into the **other** leg.
//!
//! Each round runs every kind of call at once, each kind on a service of its own (started
//! for the round, stopped after it), `BENCH_INTERPRETED_CALLS` calls of each, the same
//! conversation in all: `one-leg` (a one-leg call: one stream carries both voices and every
//! translation plays into it, the product before two legs), `off` (two legs, translations
//! only) and `ducked` (each party also hears the other's voice under the translation, mixed
//! and paced by the service every 20 ms). The machine's CPU per unit of work drifts by
//! ±15 % between minutes, so kinds are compared within a round, at the same moment under the
//! same load (all services on the service's CPU), never across rounds: CPU and RSS of an
//! interpreted call beside a one-leg call's, and the cost of ducked mixing beside its floor.
//! `BENCH_INTERPRETED_ROUNDS` (default 2) repeats the comparison.
//!
//! Measured: end of turn (the moment the AssemblyAI simulator sends it, a probe in this
//! process) → the first frame of its translation at the listener's Telnyx client (this
//! process, same clock); the simulator's clip names its text in its first bytes, so each
//! frame is joined to its turn by text. Frames are due on a fixed 20 ms grid from a start
//! fixed before the run (ADR 0040): the client's own lag is reported beside the latency.
//! Service CPU per call of each kind (connecting and the last rows included); RSS per call
//! as its service's growth from idle to the middle of the round (every call live); the extra
//! CPU of `ducked` within each pair, and per extra frame it sends.
//!
//! Invariants asserted (exit 1): every turn stored, every turn became exactly one utterance
//! for the other party (the one-leg stream), each played, each heard exactly once by the
//! listener and never by the speaker. Writes `interpreted_calls.json` (docs/BENCHMARKS.md).
//! Calls of each kind per round: `BENCH_INTERPRETED_CALLS` (default 100).
//! `BENCH_INTERPRETED_PHASES` (the kinds, default `one-leg,off,ducked`): e.g. `ducked` alone
//! for a profiler; the result file is written only when every kind ran.
//!
//! Pinning (as `media_bridge`): with `taskset` and two CPUs or more, unless `BENCH_PIN=0`,
//! this process (clients and simulators) runs on CPU 1 and the service on CPU 0, so the
//! load generator never takes the service's CPU; the output says whether it was pinned.
//! PostgreSQL is not pinned. `BENCH_SERVER_BIN` / `BENCH_SERVER_WRAPPER`: another build of
//! the service, or the same under a profiler (`common::translating::serve`). Under
//! `valgrind --tool=callgrind` each kind's service is its own profile, its counters zeroed
//! when the round starts and dumped when it ends (`callgrind_control`), so instructions per
//! call compare kinds without start-up; each service is stopped with SIGTERM so its last
//! dump is written.
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use common::measure::{self, ResultFile, cpu_user_system, rss_kib};
use common::{ScratchDatabase, free_port, quantile, wait_for_port};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx_media::{FRAME_BYTES, speech_like};
use callbridge::sim::translation::{TranslationSim, spoken_texts};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// The agent: a sentence at 0.5 s and at 9.5 s; 20 s in all. Each party only speaks once
/// the other's translation has finished playing to them (no barge-in).
const AGENT_SPEECH: &[(u64, bool)] = &[
    (500, false),
    (1000, true),
    (8000, false),
    (1000, true),
    (9500, false),
];
/// The remote party: a sentence at 4.5 s and at 14 s.
const REMOTE_SPEECH: &[(u64, bool)] = &[
    (4500, false),
    (1000, true),
    (8500, false),
    (1000, true),
    (5000, false),
];
const TURNS_PER_CALL: usize = 4;
/// How long a client keeps listening after its audio (the last translation, marks).
const LINGER: Duration = Duration::from_secs(4);
/// base64 of the simulator's clip watermark's first three bytes (`TTS`): a frame that
/// starts a translated clip starts with it.
const CLIP_START: &str = "VFRT";

/// Where the clients and simulators run, and the service, when pinned.
const GENERATOR_CPU: usize = 1;
const SERVICE_CPU: usize = 0;

struct Clock(Instant);

impl Clock {
    fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// What one leg's client saw.
#[derive(Default)]
struct Heard {
    /// (when, text) of each translated clip's first frame.
    clips: Vec<(u64, String)>,
    /// Audio received, in 20 ms frames (a `media` message may hold several).
    frames: usize,
    /// `media` messages received.
    messages: usize,
    /// How late the client sent its frames behind their due time, ns.
    lag: Vec<u64>,
}

/// What a client sends every 20 ms: one leg's frame (its party's voice, inbound track), or
/// a one-leg call's two (the far end's voice inbound, the near end's outbound).
type Slots = Vec<Vec<String>>;

/// Telnyx `media` messages for `tracks` (name and audio), one slot per 20 ms.
fn media_frames(tracks: &[(&str, &[u8])]) -> Slots {
    let mut sequence = 2u64;
    let slots = tracks
        .iter()
        .map(|(_, audio)| audio.len().div_ceil(FRAME_BYTES))
        .max()
        .unwrap_or(0);
    (0..slots)
        .map(|i| {
            let chunk = i + 1;
            tracks
                .iter()
                .filter_map(|(track, audio)| {
                    let payload = audio.chunks(FRAME_BYTES).nth(i)?;
                    let message = format!(
                        r#"{{"event":"media","sequence_number":"{sequence}","stream_id":"bench","media":{{"track":"{track}","chunk":"{chunk}","timestamp":"{}","payload":"{}"}}}}"#,
                        chunk * 20,
                        STANDARD.encode(payload)
                    );
                    sequence += 1;
                    Some(message)
                })
                .collect()
        })
        .collect()
}

/// One leg as Telnyx plays it: its party's frames due every 20 ms from `due`; marks echoed
/// once the audio before them has played.
async fn play_leg(url: String, frames: Arc<Slots>, clock: Arc<Clock>, due: Instant) -> Heard {
    let Ok((socket, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        return Heard::default();
    };
    let (tx, mut rx) = socket.split();
    let tx = Arc::new(tokio::sync::Mutex::new(tx));
    let reader_tx = tx.clone();
    let reader_clock = clock.clone();
    let reader = tokio::spawn(async move {
        let mut heard = Heard::default();
        let mut played_until = tokio::time::Instant::now();
        while let Some(Ok(message)) = rx.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if text.contains(r#""event":"media""#) {
                let at = reader_clock.ns();
                let Some(payload) = text
                    .split(r#""payload":""#)
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                else {
                    continue;
                };
                // µ-law at 8 kHz: a byte a sample, 8 bytes a millisecond.
                let bytes = payload.len() / 4 * 3
                    - payload.bytes().rev().take_while(|&b| b == b'=').count();
                heard.messages += 1;
                heard.frames += bytes.div_ceil(FRAME_BYTES);
                played_until = played_until.max(tokio::time::Instant::now())
                    + Duration::from_millis(bytes as u64 / 8);
                if payload.starts_with(CLIP_START)
                    && let Ok(bytes) = STANDARD.decode(payload)
                    && let Some(said) = spoken_texts(&bytes).into_iter().next()
                {
                    heard.clips.push((at, said));
                }
            } else if text.contains(r#""event":"mark""#) {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let echo = serde_json::json!({"event": "mark", "sequence_number": "0", "stream_id": "bench",
                                              "mark": {"name": value["mark"]["name"]}})
                .to_string();
                let (tx, at) = (reader_tx.clone(), played_until);
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let _ = tx.lock().await.send(Message::Text(echo.into())).await;
                });
            }
        }
        heard
    });
    let start = r#"{"event":"start","sequence_number":"1","stream_id":"bench","start":{"call_control_id":"v3:bench","media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}"#;
    if tx
        .lock()
        .await
        .send(Message::Text(start.into()))
        .await
        .is_err()
    {
        return Heard::default();
    }
    let mut lag = Vec::with_capacity(frames.len());
    'slots: for (index, slot) in frames.iter().enumerate() {
        let due_at = due + Duration::from_millis(index as u64 * 20);
        tokio::time::sleep_until(due_at.into()).await;
        lag.push(Instant::now().saturating_duration_since(due_at).as_nanos() as u64);
        let mut tx = tx.lock().await;
        for frame in slot {
            if tx.send(Message::Text(frame.clone().into())).await.is_err() {
                break 'slots;
            }
        }
    }
    tokio::time::sleep(LINGER).await;
    let _ = tx
        .lock()
        .await
        .send(Message::Text(
            r#"{"event":"stop","stream_id":"bench"}"#.into(),
        ))
        .await;
    let mut heard = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    heard.lag = lag;
    heard
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    // Before the runtime: its threads inherit the CPU.
    let pinned = measure::pinning() && measure::pin_self(GENERATOR_CPU);
    callbridge::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if !runtime.block_on(run(pinned)) {
        std::process::exit(1);
    }
}

/// What a phase runs: the same conversation (the agent's and the remote party's two
/// sentences each, both directions translated) carried by one leg, or by two legs with the
/// other party's voice off or ducked under the translations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A one-leg call (no `interpreted`): one stream carries both voices (the remote party
    /// inbound, the agent outbound) and every translation plays into it.
    OneLeg,
    Off,
    Ducked,
}

impl Kind {
    fn parse(name: &str) -> Option<Self> {
        match name.trim() {
            "one-leg" => Some(Kind::OneLeg),
            "off" => Some(Kind::Off),
            "ducked" => Some(Kind::Ducked),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::OneLeg => "one-leg",
            Kind::Off => "off",
            Kind::Ducked => "ducked",
        }
    }
}

/// One phase's calls: the call and its streams, each with the key its client's heard audio
/// is kept under (`agent` and `remote` legs, or the one-leg call's single `stream`).
struct Call {
    id: Uuid,
    streams: Vec<(Uuid, &'static str)>,
}

struct Phase {
    kind: Kind,
    calls: Vec<Call>,
    /// Per (call, stream key): what that stream's client heard.
    heard: HashMap<(Uuid, &'static str), Heard>,
    cpu_seconds: f64,
    /// The kernel's part of `cpu_seconds` (system calls, loopback sockets, wake-ups).
    system_seconds: f64,
    /// Service CPU in the [`LINGER_WINDOW`] after the phase (its calls all ended): should be
    /// next to nothing; reported so that work a phase leaves behind cannot hide.
    lingering_seconds: f64,
    /// Service RSS growth from idle to the middle of the phase (every call live), per call.
    rss_kib_per_call: f64,
    wall: Duration,
}

async fn create_calls(db: &tokio_postgres::Client, org: Uuid, n: usize, kind: Kind) -> Vec<Call> {
    let mut calls = Vec::new();
    for _ in 0..n {
        let id = Uuid::now_v7();
        if kind == Kind::OneLeg {
            db.execute(
                "insert into calls (id, organisation_id, direction, from_number, to_number, status, source_language, target_language, voice_id)
                 values ($1, $2, 'outbound', '+14155550100', '+4930123456', 'answered', 'de', 'en', 'bench-voice')",
                &[&id, &org],
            )
            .await
            .unwrap();
            calls.push(Call {
                id,
                streams: vec![(id, "stream")],
            });
            continue;
        }
        let call = Call {
            id,
            streams: vec![(Uuid::now_v7(), "agent"), (Uuid::now_v7(), "remote")],
        };
        db.execute(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status, interpreted, original_audio)
             values ($1, $2, 'outbound', '+14155550100', '+4930123456', 'answered', true, $3)",
            &[&call.id, &org, &kind.label()],
        )
        .await
        .unwrap();
        for ((leg, role), (number, language)) in call
            .streams
            .iter()
            .zip([("+14155550111", "en"), ("+4930123456", "de")])
        {
            db.execute(
                "insert into call_legs (id, call_id, role, number, language, voice_id, status, initiated_at, answered_at)
                 values ($1, $2, $3, $4, $5, 'bench-voice', 'answered', now(), now())",
                &[leg, &call.id, role, &number, &language],
            )
            .await
            .unwrap();
        }
        calls.push(call);
    }
    calls
}

/// How long after a phase its service's leftover CPU is read.
const LINGER_WINDOW: Duration = Duration::from_secs(3);

fn cpu_seconds_of((user, system): (f64, f64)) -> f64 {
    user + system
}

/// What every phase shares: the database, the simulators, the clock and the pinning.
struct Bench {
    db: tokio_postgres::Client,
    database_url: String,
    org: Uuid,
    streaming_url: String,
    speech_base: String,
    clock: Arc<Clock>,
    pinned: bool,
}

impl Bench {
    /// One round: every kind at once, each on a service of its own (started for the round,
    /// stopped after it), `n` calls each, their starts interleaved. The machine's CPU per
    /// unit of work drifts by ±15 % from one minute to the next here (the same phase run
    /// twice in a row moved that much), so kinds are compared within a round, under the
    /// same load at the same moment, never across rounds.
    async fn run_round(&self, kinds: &[Kind], n: usize) -> Vec<Phase> {
        let secret = common::translating::SECRET;
        let mut services = Vec::new();
        for _ in kinds {
            let port = free_port();
            let server = common::translating::serve(
                port,
                &self.database_url,
                &self.streaming_url,
                &self.speech_base,
                self.pinned.then_some(SERVICE_CPU),
            );
            services.push((port, server));
        }
        for (port, _) in &services {
            wait_for_port(*port).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pids: Vec<u32> = services.iter().map(|(_, s)| s.0.id()).collect();
        let idle_rss: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();
        let mut calls = Vec::new();
        for &kind in kinds {
            calls.push(create_calls(&self.db, self.org, n, kind).await);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (agent, remote) = (speech_like(AGENT_SPEECH), speech_like(REMOTE_SPEECH));
        let (agent, remote) = (agent.as_slice(), remote.as_slice());
        let agent_frames = Arc::new(media_frames(&[("inbound", agent)]));
        let remote_frames = Arc::new(media_frames(&[("inbound", remote)]));
        let one_leg_frames = Arc::new(media_frames(&[("inbound", remote), ("outbound", agent)]));
        // Calls start spread over two seconds, as real calls do not start in lockstep, the
        // kinds' calls interleaved; every frame's due time is fixed here, before the first
        // is sent.
        let stagger = Duration::from_millis(2000) / (n * kinds.len()).max(1) as u32;
        let began = Instant::now() + Duration::from_millis(500);
        // RSS with every call live: past the stagger, before the first stream ends.
        let rss_sampler = {
            let pids = pids.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((began + Duration::from_secs(10)).into()).await;
                pids.iter().map(|&pid| rss_kib(pid)).collect::<Vec<_>>()
            })
        };
        for &pid in &pids {
            callgrind_control(pid, "-z");
        }
        let cpu_before: Vec<(f64, f64)> = pids.iter().map(|&pid| cpu_user_system(pid)).collect();
        let mut tasks = Vec::new();
        // Call i of every kind in turn, so no kind's calls all start first.
        for i in 0..n {
            for (k, ((port, _), kind_calls)) in services.iter().zip(&calls).enumerate() {
                let call = &kind_calls[i];
                let due = began + stagger * (i * kinds.len() + k) as u32;
                for &(stream, key) in &call.streams {
                    let frames = match key {
                        "agent" => &agent_frames,
                        "remote" => &remote_frames,
                        _ => &one_leg_frames,
                    };
                    let token = callbridge::calls::stream_token::mint(
                        secret.as_bytes(),
                        stream,
                        now + 3600,
                    );
                    let url = format!("ws://127.0.0.1:{port}/media/telnyx/{token}");
                    let task = tokio::spawn(play_leg(url, frames.clone(), self.clock.clone(), due));
                    tasks.push((k, (call.id, key), task));
                }
            }
        }
        let mut heard: Vec<HashMap<(Uuid, &'static str), Heard>> =
            kinds.iter().map(|_| HashMap::new()).collect();
        for (k, key, task) in tasks {
            heard[k].insert(key, task.await.unwrap_or_default());
        }
        let wall = began.elapsed();
        // The bridges store their last rows as the streams end.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for &pid in &pids {
            callgrind_control(pid, "-d");
        }
        let cpu_after: Vec<(f64, f64)> = pids.iter().map(|&pid| cpu_user_system(pid)).collect();
        // What the calls leave running once they have ended (timers, tasks, retries) would
        // fall in the next round on a shared service; here it is measured on its own.
        tokio::time::sleep(LINGER_WINDOW).await;
        let lingering: Vec<f64> = pids
            .iter()
            .zip(&cpu_after)
            .map(|(&pid, after)| cpu_seconds_of(cpu_user_system(pid)) - cpu_seconds_of(*after))
            .collect();
        let live_rss = rss_sampler.await.unwrap_or_else(|_| idle_rss.clone());
        for (_, mut server) in services {
            stop_gently(&mut server);
        }
        kinds
            .iter()
            .zip(calls)
            .zip(heard)
            .enumerate()
            .map(|(k, ((&kind, calls), heard))| {
                let system_seconds = cpu_after[k].1 - cpu_before[k].1;
                Phase {
                    kind,
                    calls,
                    heard,
                    cpu_seconds: cpu_seconds_of(cpu_after[k]) - cpu_seconds_of(cpu_before[k]),
                    system_seconds,
                    lingering_seconds: lingering[k],
                    rss_kib_per_call: live_rss[k].saturating_sub(idle_rss[k]) as f64
                        / n.max(1) as f64,
                    wall,
                }
            })
            .collect()
    }
}

/// Whether the service runs under callgrind (`BENCH_SERVER_WRAPPER`).
fn under_callgrind() -> bool {
    std::env::var("BENCH_SERVER_WRAPPER").is_ok_and(|w| w.contains("callgrind"))
}

/// `callgrind_control <flag> <pid>` when the service runs under callgrind: `-z` zeroes the
/// counters, `-d` dumps them (one file per phase).
fn callgrind_control(pid: u32, flag: &str) {
    if under_callgrind() {
        let _ = std::process::Command::new("callgrind_control")
            .args([flag, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// A profiler writes its results when the service exits: SIGTERM and time to finish, before
/// the guard's kill.
fn stop_gently(server: &mut common::ChildGuard) {
    if std::env::var("BENCH_SERVER_WRAPPER").is_err() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status();
    for _ in 0..600 {
        if let Ok(Some(_)) = server.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Checked {
    latency: Vec<u64>,
    lag: Vec<u64>,
    frames: usize,
    messages: usize,
    failures: Vec<String>,
    turns: usize,
    utterances: usize,
    played: usize,
}

/// Joins each turn's end (simulator clock) to the first frame of its translation at the
/// listener's client (client clock), and checks the invariants.
async fn check(
    db: &tokio_postgres::Client,
    phase: &Phase,
    label: &str,
    ends: &HashMap<(String, u64), u64>,
) -> Checked {
    let ids: Vec<Uuid> = phase.calls.iter().map(|c| c.id).collect();
    let expected = phase.calls.len() * TURNS_PER_CALL;
    let turns: i64 = db
        .query_one(
            "select count(*) from transcript_turns where call_id = any($1) and btrim(text) <> ''",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    let rows = db
        .query(
            "select u.call_id, u.source_track, u.source_turn_index, u.status, t.session_id, t.turn_order, t.text
             from utterances u join transcript_turns t
               on t.call_id = u.call_id and t.track = u.source_track and t.turn_index = u.source_turn_index
             where u.call_id = any($1)",
            &[&ids],
        )
        .await
        .unwrap();
    let mut failures = Vec::new();
    let mut latency = Vec::new();
    let mut played = 0;
    let mut distinct = std::collections::HashSet::new();
    let mut heard_once = 0;
    for row in &rows {
        let (call_id, source, index, status): (Uuid, String, i32, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let (session, order, text): (String, Option<i64>, String) =
            (row.get(4), row.get(5), row.get(6));
        distinct.insert((call_id, source.clone(), index));
        if status == "played" {
            played += 1;
        }
        // Who must hear the turn, and who must not: the other leg and never the speaker's
        // own; a one-leg call's single stream hears every translation.
        let (listener, speaker) = match (phase.kind, source.as_str()) {
            (Kind::OneLeg, _) => ("stream", None),
            (_, "agent") => ("remote", Some("agent")),
            _ => ("agent", Some("remote")),
        };
        let matches = |heard: Option<&Heard>| -> Vec<u64> {
            heard
                .map(|h| {
                    h.clips
                        .iter()
                        .filter(|(_, said)| {
                            said.split_once("] ")
                                .is_some_and(|(_, rest)| !rest.is_empty() && text.starts_with(rest))
                        })
                        .map(|(at, _)| *at)
                        .collect()
                })
                .unwrap_or_default()
        };
        let to_listener = matches(phase.heard.get(&(call_id, listener)));
        let to_speaker = speaker
            .map(|speaker| matches(phase.heard.get(&(call_id, speaker))))
            .unwrap_or_default();
        if !to_speaker.is_empty() {
            failures.push(format!(
                "{label}: {call_id} {source} heard their own turn {index}"
            ));
        }
        match to_listener.as_slice() {
            [first] => {
                heard_once += 1;
                if let Some(end) = order.and_then(|o| ends.get(&(session.clone(), o as u64))) {
                    latency.push(first.saturating_sub(*end));
                }
            }
            [] => failures.push(format!(
                "{label}: {call_id} {listener} never heard turn {index}"
            )),
            many => failures.push(format!(
                "{label}: {call_id} {listener} heard turn {index} {} times",
                many.len()
            )),
        }
    }
    if turns as usize != expected {
        failures.push(format!("{label}: {expected} turns said, {turns} stored"));
    }
    if rows.len() != expected || distinct.len() != expected {
        failures.push(format!(
            "{label}: {expected} turns → {} utterances ({} distinct turns)",
            rows.len(),
            distinct.len()
        ));
    }
    if played != expected {
        failures.push(format!("{label}: {played} of {expected} utterances played"));
    }
    let clips: usize = phase.heard.values().map(|h| h.clips.len()).sum();
    if clips != heard_once {
        failures.push(format!(
            "{label}: {clips} translated clips reached the clients, {heard_once} turns heard once"
        ));
    }
    if latency.len() != expected {
        failures.push(format!(
            "{label}: {} of {expected} turns timed",
            latency.len()
        ));
    }
    Checked {
        latency,
        lag: phase
            .heard
            .values()
            .flat_map(|h| h.lag.iter().copied())
            .collect(),
        frames: phase.heard.values().map(|h| h.frames).sum(),
        messages: phase.heard.values().map(|h| h.messages).sum(),
        failures,
        turns: turns as usize,
        utterances: rows.len(),
        played,
    }
}

async fn run(pinned: bool) -> bool {
    let setting = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    // Latency: this many interpreted calls alone on the machine, ducked, then off.
    let latency_calls = setting("BENCH_INTERPRETED_CALLS", 100);
    // CPU and memory: this many calls of each kind per round, the kinds at once.
    let calls = setting("BENCH_INTERPRETED_COMPARE_CALLS", 50);
    // Every kind in every round, at once; rounds repeat the comparison.
    let phases =
        std::env::var("BENCH_INTERPRETED_PHASES").unwrap_or_else(|_| "one-leg,off,ducked".into());
    let kinds: Vec<Kind> = phases.split(',').filter_map(Kind::parse).collect();
    let rounds = setting("BENCH_INTERPRETED_ROUNDS", 2);
    let scratch = ScratchDatabase::create().await;
    let clock = Arc::new(Clock(Instant::now()));

    let aai = AssemblyAiSim::start("bench-aai-key", 0).await.unwrap();
    // Distinct text per session: every turn goes to DeepL, none is a cache hit.
    aai.set_model_script(
        "universal-streaming-english",
        "en",
        &["hello {session} here", "bye from {session}"],
    );
    aai.set_model_script(
        "universal-streaming-multilingual",
        "de",
        &["guten tag {session}", "danke {session}"],
    );
    let turn_ends: Arc<Mutex<HashMap<(String, u64), u64>>> = Arc::default();
    let (ends, probe_clock) = (turn_ends.clone(), clock.clone());
    aai.set_turn_probe(Arc::new(move |session, order| {
        ends.lock()
            .unwrap()
            .insert((session.to_owned(), order), probe_clock.ns());
    }));
    let speech = TranslationSim::start(0).await.unwrap();

    // Each phase starts a service of its own (which would migrate too): the schema first,
    // for the bench's own rows.
    callbridge::db::migrate(scratch.url.as_str()).await.unwrap();
    let db = callbridge::db::connect_direct(scratch.url.as_str())
        .await
        .unwrap();
    let org = Uuid::now_v7();
    db.execute(
        "insert into organisations (id, name) values ($1, 'bench')",
        &[&org],
    )
    .await
    .unwrap();
    let bench = Bench {
        db,
        database_url: scratch.url.to_string(),
        org,
        streaming_url: aai.streaming_url(),
        speech_base: speech.base(),
        clock,
        pinned,
    };

    let report = |label: String, phase: &Phase| {
        println!(
            "{label}: {}: {:.1} ms CPU per call ({:.0} % in the kernel; {:.0} ms in all in the {:?} after), {:.0} KiB RSS per call, {:.1?}",
            phase.kind.label(),
            phase.cpu_seconds / phase.calls.len().max(1) as f64 * 1e3,
            phase.system_seconds / phase.cpu_seconds.max(1e-9) * 100.0,
            phase.lingering_seconds * 1e3,
            LINGER_WINDOW,
            phase.rss_kib_per_call,
            phase.wall
        );
    };
    // The latency goal's load: interpreted calls alone on the machine, with ducked audio,
    // then off (the same load, translations only: its floor).
    let mut alone = Vec::new();
    if latency_calls > 0 {
        for kind in [Kind::Ducked, Kind::Off] {
            let phase = bench.run_round(&[kind], latency_calls).await.remove(0);
            report("alone".into(), &phase);
            alone.push(phase);
        }
    }
    let mut done = Vec::new();
    for round in 0..rounds {
        for phase in bench.run_round(&kinds, calls).await {
            report(format!("round {}", round + 1), &phase);
            done.push(phase);
        }
    }
    let ends = turn_ends.lock().unwrap().clone();
    let mut checked = Vec::new();
    for phase in &done {
        checked.push(check(&bench.db, phase, phase.kind.label(), &ends).await);
    }
    let mut alone_checked = Vec::new();
    for phase in &alone {
        let label = format!("{} alone", phase.kind.label());
        alone_checked.push(check(&bench.db, phase, &label, &ends).await);
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let per_call = |phase: &Phase| phase.cpu_seconds / phase.calls.len().max(1) as f64;
    let mean = |values: &[f64]| {
        if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        }
    };
    let of_kind = |kind: Kind, figure: &dyn Fn(usize) -> f64| -> Vec<f64> {
        (0..done.len())
            .filter(|&i| done[i].kind == kind)
            .map(figure)
            .collect()
    };
    let cpu_ms = |kind: Kind| mean(&of_kind(kind, &|i| per_call(&done[i]) * 1e3));
    let rss_kib = |kind: Kind| mean(&of_kind(kind, &|i| done[i].rss_kib_per_call));
    let latencies = |kind: Kind| -> Vec<u64> {
        (0..done.len())
            .filter(|&i| done[i].kind == kind)
            .flat_map(|i| checked[i].latency.iter().copied())
            .collect()
    };
    // Each round's off and ducked phases: the cost of mixing, under the same load at the
    // same moment.
    let pairs: Vec<(usize, usize)> = (0..rounds)
        .filter_map(|round| {
            let at = |kind: Kind| {
                kinds
                    .iter()
                    .position(|k| *k == kind)
                    .map(|k| round * kinds.len() + k)
            };
            Some((at(Kind::Off)?, at(Kind::Ducked)?))
        })
        .filter(|&(off, ducked)| off < done.len() && ducked < done.len())
        .collect();
    let pair_percent: Vec<f64> = pairs
        .iter()
        .map(|&(off, ducked)| {
            (per_call(&done[ducked]) / per_call(&done[off]).max(1e-12) - 1.0) * 100.0
        })
        .collect();
    let (off_cpu, ducked_cpu, one_leg_cpu) = (
        cpu_ms(Kind::Off),
        cpu_ms(Kind::Ducked),
        cpu_ms(Kind::OneLeg),
    );
    let mixing_share = if off_cpu > 0.0 {
        (ducked_cpu / off_cpu - 1.0) * 100.0
    } else {
        0.0
    };
    let extra_frames: i64 = pairs
        .iter()
        .map(|&(off, ducked)| checked[ducked].frames as i64 - checked[off].frames as i64)
        .sum();
    let extra_cpu: f64 = pairs
        .iter()
        .map(|&(off, ducked)| done[ducked].cpu_seconds - done[off].cpu_seconds)
        .sum();
    let mix_us_per_frame = if extra_frames > 0 {
        extra_cpu.max(0.0) * 1e6 / extra_frames as f64
    } else {
        0.0
    };
    let extra_messages: i64 = pairs
        .iter()
        .map(|&(off, ducked)| checked[ducked].messages as i64 - checked[off].messages as i64)
        .sum();
    let placement = if pinned {
        "pinned: clients and simulators on CPU 1, the service on CPU 0, PostgreSQL unpinned"
    } else {
        "not pinned: clients, simulators, service and PostgreSQL share every CPU"
    };
    println!(
        "\nInterpreted calls: {rounds} round(s), each running {calls} calls of every kind ({phases}) at once, each kind on a service of its own; the same conversation in every call (both parties speaking in real time, both directions translated); simulators answer at once; one machine, {placement}\n"
    );
    println!(
        "| phase | turns | p50 | p95 | p99 | max | client lag p99 | CPU per call (kernel) | RSS per call | audio to clients, 20 ms frames (messages) | wall |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (phase, checked)) in done.iter().zip(&checked).enumerate() {
        let (mut latency, mut lag) = (checked.latency.clone(), checked.lag.clone());
        println!(
            "| {} (round {}) | {} of {} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.1} ms ({:.0} %) | {:.0} KiB | {} ({}) | {:.1?} |",
            phase.kind.label(),
            i / kinds.len().max(1) + 1,
            checked.latency.len(),
            phase.calls.len() * TURNS_PER_CALL,
            quantile(&mut latency, 0.5),
            quantile(&mut latency, 0.95),
            quantile(&mut latency, 0.99),
            quantile(&mut latency, 1.0),
            quantile(&mut lag, 0.99),
            per_call(phase) * 1e3,
            phase.system_seconds / phase.cpu_seconds.max(1e-9) * 100.0,
            phase.rss_kib_per_call,
            checked.frames,
            checked.messages,
            phase.wall,
        );
    }
    let pair_list = pair_percent
        .iter()
        .map(|p| format!("{p:+.1} %"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "\nducked original audio: {mixing_share:+.1} % CPU per call (rounds: {pair_list}; goal < 10 %), {mix_us_per_frame:.2} µs per extra 20 ms frame mixed, paced and sent ({extra_frames} frames in {extra_messages} more messages)"
    );

    let failures: Vec<String> = checked
        .iter()
        .chain(&alone_checked)
        .flat_map(|c| c.failures.clone())
        .collect();
    let mut result = ResultFile::new("interpreted_calls");
    result.set("calls_per_kind_per_round", calls);
    result.set("latency_calls", latency_calls);
    let alone_of = |kind: Kind| alone.iter().position(|p| p.kind == kind);
    let alone_p99 = |kind: Kind| {
        alone_of(kind)
            .map(|i| ms(quantile(&mut alone_checked[i].latency.clone(), 0.99)))
            .unwrap_or(0.0)
    };
    let alone_lag = |kind: Kind| {
        alone_of(kind)
            .map(|i| ms(quantile(&mut alone_checked[i].lag.clone(), 0.99)))
            .unwrap_or(0.0)
    };
    for kind in [Kind::Ducked, Kind::Off] {
        let label = kind.label();
        result.set(
            &format!("alone_{label}_end_of_turn_to_first_frame_p99_ms"),
            alone_p99(kind),
        );
        result.set(&format!("alone_{label}_client_lag_p99_ms"), alone_lag(kind));
        if let Some(i) = alone_of(kind) {
            result.set(
                &format!("alone_{label}_turns_timed"),
                alone_checked[i].latency.len(),
            );
            result.set(
                &format!("alone_{label}_cpu_ms_per_call"),
                per_call(&alone[i]) * 1e3,
            );
        }
    }
    result.set("phases", &phases);
    for kind in [Kind::OneLeg, Kind::Off, Kind::Ducked] {
        let label = kind.label().replace('-', "_");
        let mut latency = latencies(kind);
        let runs: Vec<&Checked> = (0..done.len())
            .filter(|&i| done[i].kind == kind)
            .map(|i| &checked[i])
            .collect();
        let mut lag: Vec<u64> = runs.iter().flat_map(|c| c.lag.iter().copied()).collect();
        result.set(&format!("{label}_phases"), runs.len());
        result.set(
            &format!("{label}_turns_expected"),
            runs.len() * calls * TURNS_PER_CALL,
        );
        result.set(
            &format!("{label}_turns_stored"),
            runs.iter().map(|c| c.turns).sum::<usize>(),
        );
        result.set(
            &format!("{label}_utterances"),
            runs.iter().map(|c| c.utterances).sum::<usize>(),
        );
        result.set(
            &format!("{label}_utterances_played"),
            runs.iter().map(|c| c.played).sum::<usize>(),
        );
        result.set(&format!("{label}_turns_timed"), latency.len());
        result.set(
            &format!("{label}_end_of_turn_to_first_frame_p50_ms"),
            ms(quantile(&mut latency, 0.5)),
        );
        result.set(
            &format!("{label}_end_of_turn_to_first_frame_p99_ms"),
            ms(quantile(&mut latency, 0.99)),
        );
        result.set(
            &format!("{label}_client_lag_p99_ms"),
            ms(quantile(&mut lag, 0.99)),
        );
        result.set(
            &format!("{label}_frames_to_clients"),
            runs.iter().map(|c| c.frames).sum::<usize>(),
        );
        result.set(
            &format!("{label}_messages_to_clients"),
            runs.iter().map(|c| c.messages).sum::<usize>(),
        );
        result.set(&format!("{label}_cpu_ms_per_call"), cpu_ms(kind));
        result.set(&format!("{label}_rss_kib_per_call"), rss_kib(kind));
        result.set(
            &format!("{label}_cpu_ms_after_calls_ended"),
            mean(&of_kind(kind, &|i| done[i].lingering_seconds * 1e3)),
        );
        result.set(
            &format!("{label}_kernel_cpu_percent"),
            mean(&of_kind(kind, &|i| {
                done[i].system_seconds / done[i].cpu_seconds.max(1e-9) * 100.0
            })),
        );
    }
    result.set("ducked_extra_cpu_percent", mixing_share);
    result.set("ducked_extra_cpu_percent_rounds", &pair_percent);
    result.set("rounds", rounds);
    result.set("ducked_cpu_us_per_extra_frame", mix_us_per_frame);
    result.set("ducked_extra_frames", extra_frames);
    result.set("ducked_extra_messages", extra_messages);
    result.row(
        &format!("{latency_calls} interpreted calls alone, ducked: end of turn → first translated frame on the other leg, p99 (client lag p99)"),
        format!(
            "{:.2} ms ({:.2} ms)",
            alone_p99(Kind::Ducked),
            alone_lag(Kind::Ducked)
        ),
        format!(
            "{:.2} ms ({:.2} ms): the same load, translations only",
            alone_p99(Kind::Off),
            alone_lag(Kind::Off)
        ),
        "< 20 ms",
    );
    result.row(
        &format!("per call, the same conversation, {calls} calls of each kind at once (service CPU / RSS): interpreted off, interpreted ducked"),
        format!(
            "off {off_cpu:.1} ms / {:.0} KiB; ducked {ducked_cpu:.1} ms / {:.0} KiB",
            rss_kib(Kind::Off),
            rss_kib(Kind::Ducked)
        ),
        format!(
            "one-leg call {one_leg_cpu:.1} ms / {:.0} KiB",
            rss_kib(Kind::OneLeg)
        ),
        "",
    );
    result.row(
        "ducked original audio: extra CPU per call (each round's off and ducked, at once); per extra 20 ms frame of audio (mix + pace + send); extra messages",
        format!("{mixing_share:+.1} % (rounds {pair_list}); {mix_us_per_frame:.2} µs; {extra_frames} frames in {extra_messages} messages"),
        String::new(),
        "< 10 %",
    );
    result.row(
        "turns: stored / utterances / played / heard once by the listener (each phase)",
        alone
            .iter()
            .zip(&alone_checked)
            .chain(done.iter().zip(&checked))
            .map(|(phase, c)| {
                format!(
                    "{} {} / {} / {} / {}",
                    phase.kind.label(),
                    c.turns,
                    c.utterances,
                    c.played,
                    c.latency.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        String::new(),
        "all equal (asserted)",
    );
    result.set("pinned", pinned);
    for failure in &failures {
        eprintln!("INVARIANT BROKEN: {failure}");
    }
    let complete_set = [Kind::OneLeg, Kind::Off, Kind::Ducked]
        .iter()
        .all(|kind| kinds.contains(kind))
        && !pairs.is_empty()
        && alone.len() == 2;
    if complete_set {
        result.write(failures.is_empty(), &failures);
    } else {
        println!("not every kind of phase ran ({phases}): no result file written");
    }
    drop(bench);
    scratch.drop_now().await;
    failures.is_empty()
}
