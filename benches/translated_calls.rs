//! Live translation under load: N concurrent calls through the release binary, each callee
//! saying three sentences in real time; every final turn is translated (DeepL simulator),
//! spoken (ElevenLabs simulator, µ-law) and streamed back into the call. Simulators answer
//! at once, so what is measured is our own share: from the moment the AssemblyAI simulator
//! sends a turn's end (a probe in this process) to the moment the first translated audio
//! frame reaches the Telnyx client (this process, same clock). Turns are joined to frames
//! through the rows the service stores (session id + turn index → utterance seq).
//!
//! Baseline in the same run and under the same load: the bare pipeline a bridge cannot
//! avoid — one DeepL request, one ElevenLabs request to its first byte, one WebSocket frame
//! over loopback — driven from this process while the calls run.
//!
//! Invariants asserted (exit 1): every turn became exactly one utterance, each played, and
//! every one was timed. Writes `translated_calls.json` (docs/BENCHMARKS.md).
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use common::measure::ResultFile;
use common::{ScratchDatabase, free_port, quantile, wait_for_port};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx_media::{FRAME_BYTES, speech_like};
use callbridge::sim::translation::{self as providers, TranslationSim};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// The callee: three one-second sentences, each followed by a second of silence, then
/// time for the translations (which queue behind each other) to finish playing.
const SPEECH: &[(u64, bool)] = &[
    (1000, true),
    (1000, false),
    (1000, true),
    (1000, false),
    (1000, true),
    (7000, false),
];

struct Clock(Instant);

impl Clock {
    fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

fn media_frames(stream_id: &str, inbound: &[u8], outbound: &[u8]) -> Vec<String> {
    let mut frames = Vec::new();
    let mut sequence = 2u64;
    for (i, (heard, said)) in inbound
        .chunks(FRAME_BYTES)
        .zip(outbound.chunks(FRAME_BYTES))
        .enumerate()
    {
        for (track, payload) in [("inbound", heard), ("outbound", said)] {
            let chunk = i + 1;
            frames.push(format!(
                r#"{{"event":"media","sequence_number":"{sequence}","stream_id":"{stream_id}","media":{{"track":"{track}","chunk":"{chunk}","timestamp":"{}","payload":"{}"}}}}"#,
                chunk * 20,
                STANDARD.encode(payload)
            ));
            sequence += 1;
        }
    }
    frames
}

/// One call as Telnyx plays it: frames in real time on both tracks; marks echoed once the
/// audio before them has played. Returns when each utterance's first frame arrived.
async fn play_call(url: String, frames: Arc<Vec<String>>, clock: Arc<Clock>) -> Vec<u64> {
    let Ok((socket, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        return Vec::new();
    };
    let (tx, mut rx) = socket.split();
    let tx = Arc::new(tokio::sync::Mutex::new(tx));
    let reader_tx = tx.clone();
    let reader_clock = clock.clone();
    let reader = tokio::spawn(async move {
        let mut first_frames = Vec::new();
        let mut in_utterance = false;
        let mut played_until = tokio::time::Instant::now();
        while let Some(Ok(message)) = rx.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if text.contains(r#""event":"media""#) {
                if !in_utterance {
                    first_frames.push(reader_clock.ns());
                    in_utterance = true;
                }
                played_until = played_until.max(tokio::time::Instant::now())
                    + Duration::from_millis(FRAME_BYTES as u64 / 8);
            } else if text.contains(r#""event":"mark""#) {
                in_utterance = false;
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
        first_frames
    });
    let start = r#"{"event":"start","sequence_number":"1","stream_id":"bench","start":{"call_control_id":"v3:bench","media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}"#;
    if tx
        .lock()
        .await
        .send(Message::Text(start.into()))
        .await
        .is_err()
    {
        return Vec::new();
    }
    let began = tokio::time::Instant::now();
    for (index, pair) in frames.chunks(2).enumerate() {
        tokio::time::sleep_until(began + Duration::from_millis(index as u64 * 20)).await;
        let mut sink = tx.lock().await;
        for frame in pair {
            if sink
                .send(Message::Text(frame.clone().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    }
    let _ = tx
        .lock()
        .await
        .send(Message::Text(
            r#"{"event":"stop","stream_id":"bench"}"#.into(),
        ))
        .await;
    tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// The floor: a DeepL request, an ElevenLabs request to its first byte, one frame over a
/// loopback WebSocket — repeated while the calls run, so under the same load.
async fn bare_pipeline(base: String, echo_url: String, until: Instant) -> Vec<u64> {
    let http = reqwest::Client::new();
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(echo_url.as_str()).await else {
        return Vec::new();
    };
    let mut samples = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let started = Instant::now();
        let text = format!("baseline sentence number {n}");
        let Ok(response) = http
            .post(format!("{base}/v2/translate"))
            .header(
                "Authorization",
                format!("DeepL-Auth-Key {}", providers::DEEPL_KEY),
            )
            .json(&serde_json::json!({"text": [text], "source_lang": "EN", "target_lang": "DE"}))
            .send()
            .await
        else {
            continue;
        };
        let translated: serde_json::Value = response.json().await.unwrap_or_default();
        let spoken = translated["translations"][0]["text"]
            .as_str()
            .unwrap_or("x")
            .to_owned();
        let Ok(response) = http
            .post(format!(
                "{base}/v1/text-to-speech/bench-voice/stream?output_format=ulaw_8000"
            ))
            .header("xi-api-key", providers::ELEVENLABS_KEY)
            .json(&serde_json::json!({"text": spoken, "model_id": "eleven_flash_v2_5"}))
            .send()
            .await
        else {
            continue;
        };
        let mut audio = response.bytes_stream();
        let Some(Ok(first)) = audio.next().await else {
            continue;
        };
        let frame = format!(
            r#"{{"event":"media","media":{{"payload":"{}"}}}}"#,
            STANDARD.encode(&first)
        );
        if socket.send(Message::Text(frame.into())).await.is_err() {
            break;
        }
        if socket.next().await.is_none() {
            break;
        }
        samples.push(started.elapsed().as_nanos() as u64);
        drop(audio);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples
}

/// Echoes every text frame back: the far end of the baseline's WebSocket hop.
async fn echo_server(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = socket.next().await {
                if message.is_text() && socket.send(message).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    callbridge::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if !runtime.block_on(run()) {
        std::process::exit(1);
    }
}

async fn run() -> bool {
    let calls: usize = std::env::var("BENCH_TRANSLATED_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let scratch = ScratchDatabase::create().await;
    let clock = Arc::new(Clock(Instant::now()));

    let aai = AssemblyAiSim::start("bench-aai-key", 0).await.unwrap();
    // Distinct text per session: every turn goes to DeepL, none is a cache hit.
    aai.set_script(&[
        "good morning this is {session} calling about the order",
        "could you tell {session} when it will arrive",
        "thank you {session} very much goodbye",
    ]);
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
    let server = common::translating::serve(
        port,
        scratch.url.as_str(),
        &aai.streaming_url(),
        &speech.base(),
        None,
    );
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut call_ids = Vec::new();
    for _ in 0..calls {
        let id = Uuid::now_v7();
        db.execute(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status, source_language, target_language, voice_id)
             values ($1, $2, 'outbound', '+14155550100', '+4930123456', 'answered', 'en', 'de', 'bench-voice')",
            &[&id, &org],
        )
        .await
        .unwrap();
        call_ids.push(id);
    }
    let total_ms: u64 = SPEECH.iter().map(|(ms, _)| ms).sum();
    let frames = Arc::new(media_frames(
        "bench",
        &speech_like(SPEECH),
        &speech_like(&[(total_ms, false)]),
    ));

    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_url = format!("ws://{}/", echo.local_addr().unwrap());
    tokio::spawn(echo_server(echo));
    let stagger = Duration::from_millis(2000) / calls.max(1) as u32;
    let baseline = tokio::spawn(bare_pipeline(
        speech.base(),
        echo_url,
        Instant::now() + Duration::from_millis(total_ms) + stagger * calls as u32,
    ));
    let mut tasks = Vec::new();
    for id in &call_ids {
        // Calls start spread over two seconds, as real calls do not start in lockstep.
        tokio::time::sleep(stagger).await;
        let token = callbridge::calls::stream_token::mint(secret.as_bytes(), *id, now + 3600);
        let url = format!("ws://127.0.0.1:{port}/media/telnyx/{token}");
        tasks.push(tokio::spawn(play_call(url, frames.clone(), clock.clone())));
    }
    let mut first_frames: HashMap<Uuid, Vec<u64>> = HashMap::new();
    for (id, task) in call_ids.iter().zip(tasks) {
        first_frames.insert(*id, task.await.unwrap_or_default());
    }
    let mut baseline = baseline.await.unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Join each turn's end (simulator clock) to its utterance's first frame (client clock).
    let cached: i64 = db
        .query_one(
            "select count(*) from utterances where engine = 'cache'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        cached, 0,
        "every turn must reach DeepL: the cache answered {cached}"
    );
    let rows = db
        .query(
            "select u.call_id, u.seq, t.session_id, t.turn_index, u.status,
                    (extract(epoch from u.first_frame_sent_at - u.end_of_turn_at) * 1e9)::int8
             from utterances u join transcript_turns t
               on t.call_id = u.call_id and t.track = u.source_track and t.turn_index = u.source_turn_index",
            &[],
        )
        .await
        .unwrap();
    let ends = turn_ends.lock().unwrap().clone();
    let mut measured = Vec::new();
    let mut server_side = Vec::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        let (call_id, seq, session, turn): (Uuid, i32, String, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        *statuses.entry(row.get(4)).or_default() += 1;
        if let Some(ns) = row.get::<_, Option<i64>>(5) {
            server_side.push(ns.max(0) as u64);
        }
        let end = ends.get(&(session, turn as u64));
        let first = first_frames
            .get(&call_id)
            .and_then(|frames| frames.get(seq as usize));
        if let (Some(end), Some(first)) = (end, first) {
            measured.push(first.saturating_sub(*end));
        }
    }
    let expected = calls * 3;
    let p99 = quantile(&mut measured, 0.99);
    let base_p99 = quantile(&mut baseline, 0.99);
    println!(
        "\nLive translation: {calls} concurrent calls, 3 turns each, both tracks in real time; simulators answer at once; clients, simulators, server and PostgreSQL share this 2-core machine\n"
    );
    println!(
        "| measure | turns | p50 | p95 | p99 | max | baseline p99 (DeepL + ElevenLabs first byte + 1 WS frame) | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| end of turn → first frame at Telnyx (goal p99 < 20 ms) | {} of {expected} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.2}x |",
        measured.len(),
        quantile(&mut measured, 0.5),
        quantile(&mut measured, 0.95),
        p99,
        quantile(&mut measured, 1.0),
        base_p99,
        p99.as_secs_f64() / base_p99.as_secs_f64().max(1e-9),
    );
    println!(
        "| same, as the service stamps it (end of turn received → first frame sent) | {} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.2?} ({} samples) | {:.2}x |",
        server_side.len(),
        quantile(&mut server_side, 0.5),
        quantile(&mut server_side, 0.95),
        quantile(&mut server_side, 0.99),
        quantile(&mut server_side, 1.0),
        base_p99,
        baseline.len(),
        quantile(&mut server_side, 0.99).as_secs_f64() / base_p99.as_secs_f64().max(1e-9),
    );
    // Invariants: one utterance per turn (none lost, none doubled), each played, each timed.
    let distinct: i64 = db
        .query_one(
            "select count(distinct (call_id, source_track, source_turn_index)) from utterances",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let played = statuses.get("played").copied().unwrap_or(0);
    let mut failures = Vec::new();
    if rows.len() != expected || distinct as usize != expected {
        failures.push(format!(
            "{expected} turns → {} utterances ({distinct} distinct turns)",
            rows.len()
        ));
    }
    if played != expected {
        failures.push(format!("{played} of {expected} utterances played"));
    }
    if measured.len() != expected {
        failures.push(format!("{} of {expected} utterances timed", measured.len()));
    }
    let mut result = ResultFile::new("translated_calls");
    result.set("calls", calls);
    result.set("turns_expected", expected);
    result.set("utterances", rows.len());
    result.set("utterances_played", played);
    result.set("turns_timed", measured.len());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    result.set(
        "end_of_turn_to_first_frame_p50_ms",
        ms(quantile(&mut measured, 0.5)),
    );
    result.set("end_of_turn_to_first_frame_p99_ms", ms(p99));
    result.set(
        "end_of_turn_to_first_frame_max_ms",
        ms(quantile(&mut measured, 1.0)),
    );
    result.set(
        "service_stamped_p99_ms",
        ms(quantile(&mut server_side, 0.99)),
    );
    result.set("floor_p99_ms", ms(base_p99));
    result.row(
        &format!("{calls} calls: end of turn → first translated frame at Telnyx, p99"),
        format!("{:.2} ms", ms(p99)),
        format!("{:.2} ms", ms(base_p99)),
        "< 20 ms",
    );
    result.row(
        "utterances: turns / utterances / played / timed",
        format!(
            "{expected} / {} / {played} / {}",
            rows.len(),
            measured.len()
        ),
        String::new(),
        "all equal (asserted)",
    );
    let mut statuses: Vec<_> = statuses.into_iter().collect();
    statuses.sort();
    println!("\nPlayout: {statuses:?}");
    println!(
        "Goal (p99 < 20 ms at {calls} calls): {}",
        if p99 < Duration::from_millis(20) && measured.len() == expected {
            "met"
        } else {
            "NOT met"
        }
    );
    for failure in &failures {
        eprintln!("INVARIANT BROKEN: {failure}");
    }
    result.write(failures.is_empty(), &failures);
    drop(server);
    drop(db);
    scratch.drop_now().await;
    failures.is_empty()
}
