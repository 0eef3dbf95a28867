//! Interpreted calls under load: N concurrent two-leg calls through the release binary, an
//! English-speaking agent and a German-speaking remote party, each on their own media stream
//! (inbound track only, as Telnyx sends a leg), each saying two sentences in real time. Every
//! final turn is translated into the other party's language (DeepL simulator), spoken
//! (ElevenLabs simulator, µ-law) and streamed into the **other** leg. The run has two phases
//! with the same load, one after the other: `original_audio: off` (translations only) and
//! `ducked` (each party also hears the other's voice under the translation, mixed and paced
//! by the service every 20 ms), so the CPU of ducked mixing is measured against its floor in
//! the same run.
//!
//! Measured: end of turn (the moment the AssemblyAI simulator sends it, a probe in this
//! process) → the first frame of its translation at the listener's Telnyx client (this
//! process, same clock); the simulator's clip names its text in its first bytes, so each
//! frame is joined to its turn by text. Frames are due on a fixed 20 ms grid from a start
//! fixed before the run (ADR 0040): the client's own lag is reported beside the latency.
//! CPU of the service per call in each phase, and the extra CPU of `ducked` per extra frame
//! it sends.
//!
//! Invariants asserted (exit 1): every turn stored, every turn became exactly one utterance
//! for the other party, each played, each heard exactly once by the listener and never by
//! the speaker. Writes `interpreted_calls.json` (docs/BENCHMARKS.md). Calls per phase:
//! `BENCH_INTERPRETED_CALLS` (default 100). `BENCH_INTERPRETED_PHASES=off` or `=ducked` runs
//! one phase only (for a profiler; no result file is written).
//!
//! Pinning (as `media_bridge`): with `taskset` and two CPUs or more, unless `BENCH_PIN=0`,
//! this process (clients and simulators) runs on CPU 1 and the service on CPU 0, so the
//! load generator never takes the service's CPU; the output says whether it was pinned.
//! PostgreSQL is not pinned. `BENCH_SERVER_BIN` / `BENCH_SERVER_WRAPPER`: another build of
//! the service, or the same under a profiler (`common::translating::serve`). Under
//! `valgrind --tool=callgrind` each phase is its own dump (counters zeroed when the phase
//! starts, dumped when it ends: `callgrind_control`), so instructions per call compare off
//! and ducked without start-up in either; the service is stopped with SIGTERM so the last
//! dump is written.
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use common::measure::{self, ResultFile, cpu_seconds, rss_kib};
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
    frames: usize,
    /// How late the client sent its frames behind their due time, ns.
    lag: Vec<u64>,
}

fn media_frames(audio: &[u8]) -> Vec<String> {
    audio
        .chunks(FRAME_BYTES)
        .enumerate()
        .map(|(i, payload)| {
            let chunk = i + 1;
            format!(
                r#"{{"event":"media","sequence_number":"{}","stream_id":"bench","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{}","payload":"{}"}}}}"#,
                chunk + 1,
                chunk * 20,
                STANDARD.encode(payload)
            )
        })
        .collect()
}

/// One leg as Telnyx plays it: its party's frames due every 20 ms from `due`; marks echoed
/// once the audio before them has played.
async fn play_leg(url: String, frames: Arc<Vec<String>>, clock: Arc<Clock>, due: Instant) -> Heard {
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
                heard.frames += 1;
                played_until = played_until.max(tokio::time::Instant::now())
                    + Duration::from_millis(FRAME_BYTES as u64 / 8);
                let at = reader_clock.ns();
                let Some(payload) = text
                    .split(r#""payload":""#)
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                else {
                    continue;
                };
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
    for (index, frame) in frames.iter().enumerate() {
        let due_at = due + Duration::from_millis(index as u64 * 20);
        tokio::time::sleep_until(due_at.into()).await;
        lag.push(Instant::now().saturating_duration_since(due_at).as_nanos() as u64);
        if tx
            .lock()
            .await
            .send(Message::Text(frame.clone().into()))
            .await
            .is_err()
        {
            break;
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

/// One phase's calls: the call and its two legs (agent, remote).
struct Call {
    id: Uuid,
    agent: Uuid,
    remote: Uuid,
}

struct Phase {
    calls: Vec<Call>,
    /// Per (call, role): what that leg's client heard.
    heard: HashMap<(Uuid, &'static str), Heard>,
    cpu_seconds: f64,
    wall: Duration,
}

async fn create_calls(
    db: &tokio_postgres::Client,
    org: Uuid,
    n: usize,
    original_audio: &str,
) -> Vec<Call> {
    let mut calls = Vec::new();
    for _ in 0..n {
        let call = Call {
            id: Uuid::now_v7(),
            agent: Uuid::now_v7(),
            remote: Uuid::now_v7(),
        };
        db.execute(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status, interpreted, original_audio)
             values ($1, $2, 'outbound', '+14155550100', '+4930123456', 'answered', true, $3)",
            &[&call.id, &org, &original_audio],
        )
        .await
        .unwrap();
        for (leg, role, number, language) in [
            (call.agent, "agent", "+14155550111", "en"),
            (call.remote, "remote", "+4930123456", "de"),
        ] {
            db.execute(
                "insert into call_legs (id, call_id, role, number, language, voice_id, status, initiated_at, answered_at)
                 values ($1, $2, $3, $4, $5, 'bench-voice', 'answered', now(), now())",
                &[&leg, &call.id, &role, &number, &language],
            )
            .await
            .unwrap();
        }
        calls.push(call);
    }
    calls
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    db: &tokio_postgres::Client,
    org: Uuid,
    n: usize,
    original_audio: &str,
    port: u16,
    secret: &str,
    server_pid: u32,
    clock: &Arc<Clock>,
) -> Phase {
    let calls = create_calls(db, org, n, original_audio).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let agent_frames = Arc::new(media_frames(&speech_like(AGENT_SPEECH)));
    let remote_frames = Arc::new(media_frames(&speech_like(REMOTE_SPEECH)));
    // Calls start spread over two seconds, as real calls do not start in lockstep; every
    // frame's due time is fixed here, before the first is sent.
    let stagger = Duration::from_millis(2000) / n.max(1) as u32;
    let began = Instant::now() + Duration::from_millis(500);
    callgrind_control(server_pid, "-z");
    let cpu_before = cpu_seconds(server_pid);
    let mut tasks = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        let due = began + stagger * i as u32;
        for (leg, role, frames) in [
            (call.agent, "agent", &agent_frames),
            (call.remote, "remote", &remote_frames),
        ] {
            let token = callbridge::calls::stream_token::mint(secret.as_bytes(), leg, now + 3600);
            let url = format!("ws://127.0.0.1:{port}/media/telnyx/{token}");
            let task = tokio::spawn(play_leg(url, frames.clone(), clock.clone(), due));
            tasks.push(((call.id, role), task));
        }
    }
    let mut heard = HashMap::new();
    for (key, task) in tasks {
        heard.insert(key, task.await.unwrap_or_default());
    }
    let wall = began.elapsed();
    // The bridges store their last rows as the streams end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    callgrind_control(server_pid, "-d");
    Phase {
        calls,
        heard,
        cpu_seconds: cpu_seconds(server_pid) - cpu_before,
        wall,
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
        let listener = if source == "agent" { "remote" } else { "agent" };
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
        let to_speaker = matches(phase.heard.get(&(call_id, source.as_str())));
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
        failures,
        turns: turns as usize,
        utterances: rows.len(),
        played,
    }
}

async fn run(pinned: bool) -> bool {
    let calls: usize = std::env::var("BENCH_INTERPRETED_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let phases = std::env::var("BENCH_INTERPRETED_PHASES").unwrap_or_else(|_| "off,ducked".into());
    let runs = |name: &str| phases.split(',').any(|p| p.trim() == name);
    let (run_off, run_ducked) = (runs("off"), runs("ducked"));
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

    let port = free_port();
    let secret = common::translating::SECRET;
    let mut server = common::translating::serve(
        port,
        scratch.url.as_str(),
        &aai.streaming_url(),
        &speech.base(),
        pinned.then_some(SERVICE_CPU),
    );
    let server_pid = server.0.id();
    wait_for_port(port).await;

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

    // The floor first (translations only), then the same load with the other party's voice
    // mixed under every translation.
    let per_phase = |run: bool| if run { calls } else { 0 };
    let off = run_phase(
        &db,
        org,
        per_phase(run_off),
        "off",
        port,
        secret,
        server_pid,
        &clock,
    )
    .await;
    let rss_after_off = rss_kib(server_pid);
    let ducked = run_phase(
        &db,
        org,
        per_phase(run_ducked),
        "ducked",
        port,
        secret,
        server_pid,
        &clock,
    )
    .await;
    let rss_after_ducked = rss_kib(server_pid);
    let ends = turn_ends.lock().unwrap().clone();
    let mut off_checked = check(&db, &off, "off", &ends).await;
    let mut ducked_checked = check(&db, &ducked, "ducked", &ends).await;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let cpu_off = off.cpu_seconds / calls as f64;
    let cpu_ducked = ducked.cpu_seconds / calls as f64;
    let extra_frames = ducked_checked.frames.saturating_sub(off_checked.frames);
    let mix_us_per_frame = if extra_frames > 0 {
        (ducked.cpu_seconds - off.cpu_seconds).max(0.0) * 1e6 / extra_frames as f64
    } else {
        0.0
    };
    let mixing_share = if cpu_off > 0.0 {
        (cpu_ducked / cpu_off - 1.0) * 100.0
    } else {
        0.0
    };
    let placement = if pinned {
        "pinned: clients and simulators on CPU 1, the service on CPU 0, PostgreSQL unpinned"
    } else {
        "not pinned: clients, simulators, service and PostgreSQL share every CPU"
    };
    println!(
        "\nInterpreted calls: {calls} concurrent two-leg calls per phase ({phases}), both parties speaking in real time, both directions translated; simulators answer at once; one machine, {placement}\n"
    );
    println!(
        "| phase | turns | p50 | p95 | p99 | max | client lag p99 | CPU per call | frames to clients | wall |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, phase, checked, cpu) in [
        ("off (translations only)", &off, &mut off_checked, cpu_off),
        ("ducked", &ducked, &mut ducked_checked, cpu_ducked),
    ] {
        println!(
            "| {label} | {} of {} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.1} ms | {} | {:.1?} |",
            checked.latency.len(),
            phase.calls.len() * TURNS_PER_CALL,
            quantile(&mut checked.latency, 0.5),
            quantile(&mut checked.latency, 0.95),
            quantile(&mut checked.latency, 0.99),
            quantile(&mut checked.latency, 1.0),
            quantile(&mut checked.lag, 0.99),
            cpu * 1e3,
            checked.frames,
            phase.wall,
        );
    }
    println!(
        "\nducked original audio: +{mixing_share:.1} % CPU per call (goal < 10 %), {mix_us_per_frame:.2} µs per extra frame mixed, paced and sent ({extra_frames} frames)"
    );
    println!(
        "service RSS: {rss_after_off} KiB after the off phase, {rss_after_ducked} KiB after the ducked phase"
    );

    let mut failures = off_checked.failures.clone();
    failures.extend(ducked_checked.failures.clone());
    let mut result = ResultFile::new("interpreted_calls");
    result.set("calls_per_phase", calls);
    for (label, checked) in [("off", &mut off_checked), ("ducked", &mut ducked_checked)] {
        result.set(&format!("{label}_turns_expected"), calls * TURNS_PER_CALL);
        result.set(&format!("{label}_turns_stored"), checked.turns);
        result.set(&format!("{label}_utterances"), checked.utterances);
        result.set(&format!("{label}_utterances_played"), checked.played);
        result.set(&format!("{label}_turns_timed"), checked.latency.len());
        result.set(
            &format!("{label}_end_of_turn_to_first_frame_p50_ms"),
            ms(quantile(&mut checked.latency, 0.5)),
        );
        result.set(
            &format!("{label}_end_of_turn_to_first_frame_p99_ms"),
            ms(quantile(&mut checked.latency, 0.99)),
        );
        result.set(
            &format!("{label}_client_lag_p99_ms"),
            ms(quantile(&mut checked.lag, 0.99)),
        );
        result.set(&format!("{label}_frames_to_clients"), checked.frames);
    }
    result.set("off_cpu_ms_per_call", cpu_off * 1e3);
    result.set("ducked_cpu_ms_per_call", cpu_ducked * 1e3);
    result.set("ducked_extra_cpu_percent", mixing_share);
    result.set("ducked_cpu_us_per_extra_frame", mix_us_per_frame);
    result.set("service_rss_kib_after_off", rss_after_off);
    result.set("service_rss_kib_after_ducked", rss_after_ducked);
    result.row(
        &format!("{calls} interpreted calls, ducked: end of turn → first translated frame on the other leg, p99"),
        format!("{:.2} ms", ms(quantile(&mut ducked_checked.latency, 0.99))),
        format!(
            "{:.2} ms (same load, translations only)",
            ms(quantile(&mut off_checked.latency, 0.99))
        ),
        "< 20 ms",
    );
    result.row(
        "service CPU per interpreted call (off / ducked)",
        format!("{:.1} ms / {:.1} ms", cpu_off * 1e3, cpu_ducked * 1e3),
        String::new(),
        "",
    );
    result.row(
        "ducked original audio: extra CPU per call; per extra frame (mix + pace + send)",
        format!("+{mixing_share:.1} %; {mix_us_per_frame:.2} µs"),
        String::new(),
        "< 10 %",
    );
    result.row(
        "turns: stored / utterances / played / heard once by the other party (each phase)",
        format!(
            "off {} / {} / {} / {}; ducked {} / {} / {} / {}",
            off_checked.turns,
            off_checked.utterances,
            off_checked.played,
            off_checked.latency.len(),
            ducked_checked.turns,
            ducked_checked.utterances,
            ducked_checked.played,
            ducked_checked.latency.len()
        ),
        String::new(),
        "all equal (asserted)",
    );
    result.set("pinned", pinned);
    for failure in &failures {
        eprintln!("INVARIANT BROKEN: {failure}");
    }
    if run_off && run_ducked {
        result.write(failures.is_empty(), &failures);
    } else {
        println!("one phase only ({phases}): no result file written");
    }
    stop_gently(&mut server);
    drop(server);
    drop(db);
    scratch.drop_now().await;
    failures.is_empty()
}
