//! The live loop end to end with simulators: a final turn of one party is translated
//! (DeepL), spoken (ElevenLabs µ-law) back into the call with a mark; Telnyx's mark echo makes
//! it *played*; the listener talking over it makes us send `clear` and record it *cut*.
#![cfg(feature = "sim")]

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callbridge::calls::stream_token;
use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx_media::{self, PlayOptions};
use callbridge::sim::translation::{self as sim, TranslationSim};
use common::TestApp;
use uuid::Uuid;

struct Live {
    app: TestApp,
    _aai: AssemblyAiSim,
    _providers: TranslationSim,
}

async fn spawn() -> Live {
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    let providers = TranslationSim::start(0).await.unwrap();
    let (aai_url, base) = (aai.streaming_url(), providers.base());
    let app = TestApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", aai_url.as_str()),
        ("DEEPL_API_KEY", sim::DEEPL_KEY),
        ("DEEPL_API_BASE", base.as_str()),
        ("ELEVENLABS_API_KEY", sim::ELEVENLABS_KEY),
        ("ELEVENLABS_API_BASE", base.as_str()),
    ])
    .await;
    Live {
        app,
        _aai: aai,
        _providers: providers,
    }
}

/// A live call in the caller's organisation, and the caller's session.
async fn call(app: &TestApp) -> (Uuid, common::authjs::Session) {
    let session = app.sign_in("Caller").await;
    let me: serde_json::Value = app.get_as(&session, "/api/me").await.json().await.unwrap();
    let org: Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let id = Uuid::now_v7();
    app.db().await.execute(
        "insert into calls (id, organisation_id, direction, from_number, to_number, status, source_language, target_language, voice_id)
         values ($1, $2, 'outbound', '+14155550100', '+14155550123', 'answered', 'en', 'de', 'voice-1')", &[&id, &org]).await.unwrap();
    (id, session)
}

fn url(app: &TestApp, call_id: Uuid) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = stream_token::mint(
        app.state.config.auth.secret.expose().as_bytes(),
        call_id,
        now + 600,
    );
    format!("ws://127.0.0.1:{}/media/telnyx/{token}", app.port)
}

async fn get_json(
    app: &TestApp,
    session: &common::authjs::Session,
    path: &str,
) -> serde_json::Value {
    app.get_as(session, path).await.json().await.unwrap()
}

type Row = (
    String,
    String,
    Option<String>,
    String,
    Option<i32>,
    Option<i32>,
    bool,
);

async fn utterances(app: &TestApp, call_id: Uuid) -> Vec<Row> {
    for _ in 0..50 {
        let rows: Vec<Row> = app.db().await.query(
            "select source_track, original_text, translated_text, status, audio_ms, cut_at_ms,
                    coalesce(end_of_turn_at <= translated_at and translated_at <= first_tts_byte_at
                             and first_tts_byte_at <= first_frame_sent_at
                             and first_frame_sent_at <= coalesce(mark_echoed_at, first_frame_sent_at), false) as in_order
             from utterances where call_id = $1 order by seq", &[&call_id]).await.unwrap()
            .iter().map(|r| (r.get("source_track"), r.get("original_text"), r.get("translated_text"), r.get("status"), r.get("audio_ms"), r.get("cut_at_ms"), r.get("in_order"))).collect();
        if rows.iter().all(|r| r.3 != "queued" && r.3 != "playing") && !rows.is_empty() {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("utterances did not settle");
}

#[tokio::test]
async fn a_final_turn_is_translated_spoken_into_the_call_and_heard_in_full() {
    let live = spawn().await;
    let (call_id, session) = call(&live.app).await;
    let mut options = PlayOptions::new(
        url(&live.app, call_id),
        telnyx_media::speech_like(&[(1200, true), (2700, false)]),
    );
    options.outbound = Some(telnyx_media::speech_like(&[(3900, false)]));
    options.realtime = true;
    options.linger = Duration::from_millis(1500);
    let result = telnyx_media::play(options).await.unwrap();
    assert_eq!(
        result.marks_echoed,
        vec!["utt-0"],
        "Telnyx echoed our mark after playing the audio"
    );
    assert_eq!(result.clears, 0);
    // The simulator speaks 60 ms per character of the translated text.
    let spoken_ms = "[DE] Hello, this is a test call.".chars().count() * 60;
    assert_eq!(
        result.media_bytes,
        spoken_ms * 8,
        "the whole µ-law utterance was streamed back"
    );
    let rows = utterances(&live.app, call_id).await;
    assert_eq!(rows.len(), 1);
    let (track, original, translated, status, audio_ms, cut_at, stages) = rows[0].clone();
    assert_eq!(track, "inbound");
    assert_eq!(original, "Hello, this is a test call.");
    assert_eq!(
        translated.as_deref(),
        Some("[DE] Hello, this is a test call.")
    );
    assert_eq!(status, "played");
    assert_eq!(audio_ms, Some(spoken_ms as i32));
    assert_eq!(cut_at, None);
    assert!(stages, "every stage timestamp recorded, in order");
    let metrics = live.app.get("/metrics").await.text().await.unwrap();
    for stage in ["translate", "tts_first_byte", "first_frame", "mark"] {
        assert!(
            metrics.contains(&format!(
                "translation_stage_seconds_count{{stage=\"{stage}\"}}"
            )),
            "{stage}"
        );
    }
    assert!(metrics.contains("translation_end_of_turn_to_first_frame_seconds"));

    // The call shows its stage-latency summary; the transcript shows how it played.
    let detail = get_json(&live.app, &session, &format!("/api/calls/{call_id}")).await;
    assert_eq!(detail["id"], call_id.to_string());
    let summary = &detail["translation"];
    assert_eq!(
        (summary["utterances"].as_i64(), summary["played"].as_i64()),
        (Some(1), Some(1))
    );
    let stages: Vec<&str> = summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "translate",
            "tts_first_byte",
            "first_frame",
            "end_of_turn_to_first_frame",
            "mark"
        ]
    );
    for stage in summary["stages"].as_array().unwrap() {
        assert_eq!(stage["count"], 1);
        let (p50, max) = (
            stage["p50_ms"].as_f64().unwrap(),
            stage["max_ms"].as_f64().unwrap(),
        );
        assert!(p50 >= 0.0 && p50 == max, "{stage}");
    }
    // Spoken 1,920 ms of audio: the mark echoes after it has played.
    let mark = summary["stages"][4]["p50_ms"].as_f64().unwrap();
    assert!(
        mark >= 1_800.0,
        "mark echoed after the audio played: {mark} ms"
    );
    let transcript = get_json(
        &live.app,
        &session,
        &format!("/api/calls/{call_id}/transcript"),
    )
    .await;
    let utterance = &transcript["utterances"][0];
    assert_eq!(utterance["status"], "played");
    assert_eq!(utterance["source_track"], "inbound");
    assert_eq!(
        utterance["source_turn_index"],
        transcript["live"][0]["turn_index"]
    );
    assert_eq!(
        utterance["translated_text"],
        "[DE] Hello, this is a test call."
    );
    assert_eq!(utterance["engine"], "deepl");
    assert_eq!(utterance["audio_ms"], spoken_ms);
    assert!(utterance["end_of_turn_to_first_frame_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn the_listener_talking_over_a_translation_clears_it_and_it_is_recorded_cut() {
    let live = spawn().await;
    let (call_id, session) = call(&live.app).await;
    let mut options = PlayOptions::new(
        url(&live.app, call_id),
        telnyx_media::speech_like(&[(1200, true), (3300, false)]),
    );
    // The listener starts talking while the 1.6 s translation is playing.
    options.outbound = Some(telnyx_media::speech_like(&[
        (2200, false),
        (1500, true),
        (800, false),
    ]));
    options.realtime = true;
    options.linger = Duration::from_millis(500);
    let result = telnyx_media::play(options).await.unwrap();
    assert_eq!(result.clears, 1, "barge-in sent clear");
    let rows = utterances(&live.app, call_id).await;
    let cut = rows
        .iter()
        .find(|r| r.1 == "Hello, this is a test call.")
        .unwrap();
    assert_eq!(cut.3, "cut");
    let (audio_ms, cut_at) = (cut.4.unwrap(), cut.5.unwrap());
    assert!(
        cut_at > 0 && cut_at < 1920,
        "cut partway: {cut_at} of {audio_ms} ms"
    );
    let transcript = get_json(
        &live.app,
        &session,
        &format!("/api/calls/{call_id}/transcript"),
    )
    .await;
    let shown = transcript["utterances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["original_text"] == "Hello, this is a test call.")
        .unwrap();
    assert_eq!(
        (shown["status"].as_str(), shown["cut_at_ms"].as_i64()),
        (Some("cut"), Some(cut_at as i64))
    );
    let detail = get_json(&live.app, &session, &format!("/api/calls/{call_id}")).await;
    assert!(detail["translation"]["cut"].as_i64().unwrap() >= 1);
    // Another organisation sees neither.
    let stranger = live.app.sign_in("Stranger").await;
    let hidden = live
        .app
        .get_as(&stranger, &format!("/api/calls/{call_id}/transcript"))
        .await;
    assert_eq!(hidden.status(), 404);
}

#[tokio::test]
async fn an_utterance_still_playing_when_the_call_ends_was_never_heard_in_full() {
    let live = spawn().await;
    let (call_id, _) = call(&live.app).await;
    let mut options = PlayOptions::new(
        url(&live.app, call_id),
        telnyx_media::speech_like(&[(1200, true), (700, false)]),
    );
    options.outbound = Some(telnyx_media::speech_like(&[(1900, false)]));
    options.realtime = true;
    telnyx_media::play(options).await.unwrap();
    let rows = utterances(&live.app, call_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].3, "never_played");
}
