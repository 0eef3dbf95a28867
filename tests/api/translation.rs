//! Translation and speech against the DeepL, OpenAI and ElevenLabs simulators: DeepL success,
//! 429 then success, 456 → OpenAI with the circuit open then closing again, the cache, and
//! TTS streamed to the client as it arrives.
#![cfg(feature = "sim")]

use crate::common;

use std::time::{Duration, Instant};

use callbridge::sim::translation::{self as sim, Fault, TranslationSim, Vendor};
use common::{TestApp, assert_problem};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

async fn spawn(extra: &[(&str, &str)]) -> (TestApp, TranslationSim, common::authjs::Session) {
    let providers = TranslationSim::start(0).await.unwrap();
    let base = providers.base();
    let openai = format!("{base}/v1");
    let mut overrides = vec![
        ("DEEPL_API_KEY", sim::DEEPL_KEY),
        ("DEEPL_API_BASE", base.as_str()),
        ("OPENAI_API_KEY", sim::OPENAI_KEY),
        ("OPENAI_API_BASE", openai.as_str()),
        ("ELEVENLABS_API_KEY", sim::ELEVENLABS_KEY),
        ("ELEVENLABS_API_BASE", base.as_str()),
        ("TRANSLATION_BREAKER_COOLDOWN_SECS", "1"),
    ];
    overrides.extend_from_slice(extra);
    let app = TestApp::spawn_with(&overrides).await;
    let session = app.sign_in("Translator").await;
    (app, providers, session)
}

async fn translate(
    app: &TestApp,
    session: &common::authjs::Session,
    texts: &[&str],
    target: &str,
) -> reqwest::Response {
    app.request_as(reqwest::Method::POST, session, "/api/translate")
        .json(&json!({"texts": texts, "source_language": "en", "target_language": target}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn deepl_answers_with_regional_targets_and_the_cache_answers_next() {
    let (app, providers, ada) = spawn(&[]).await;
    let body: Value = translate(&app, &ada, &["Good morning", "How are you?"], "de")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"translations": ["[DE] Good morning", "[DE] How are you?"], "engine": "deepl"})
    );
    // Deprecated EN target is sent as EN-US (the simulator rejects bare EN, as DeepL warns).
    let body: Value = translate(&app, &ada, &["Guten Morgen"], "en")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["translations"][0], "[EN-US] Guten Morgen");
    let request = providers.requests(Vendor::DeepL).pop().unwrap();
    assert_eq!(request["target_lang"], "EN-US");
    assert_eq!(request["source_lang"], "EN");
    // The cache is written in the background (a listener never waits for it).
    let db = app.db().await;
    for _ in 0..100 {
        let cached: i64 = db
            .query_one(
                "select count(*) from translation_cache where target_language = 'de'",
                &[],
            )
            .await
            .unwrap()
            .get("count");
        if cached == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = providers.requests(Vendor::DeepL).len();
    let body: Value = translate(&app, &ada, &["Good morning"], "de")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["engine"], "cache");
    assert_eq!(
        providers.requests(Vendor::DeepL).len(),
        before,
        "no provider call for a cached text"
    );
}

#[tokio::test]
async fn a_429_is_retried_and_a_456_fails_over_to_openai_opening_the_circuit() {
    let (app, providers, ada) = spawn(&[]).await;
    providers.inject(Vendor::DeepL, Fault::Status(429));
    let body: Value = translate(&app, &ada, &["one"], "fr")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["engine"], "deepl", "retried after 429");
    assert_eq!(providers.requests(Vendor::DeepL).len(), 2);

    providers.inject(Vendor::DeepL, Fault::Status(456));
    let body: Value = translate(&app, &ada, &["two"], "fr")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"translations": ["[FR] two"], "engine": "openai"})
    );
    let openai = providers.requests(Vendor::OpenAi).pop().unwrap();
    assert_eq!(openai["model"], "gpt-4o-mini");
    assert_eq!(openai["temperature"], 0);
    let deepl_calls = providers.requests(Vendor::DeepL).len();
    let body: Value = translate(&app, &ada, &["three"], "fr")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["engine"], "openai");
    assert_eq!(
        providers.requests(Vendor::DeepL).len(),
        deepl_calls,
        "the open circuit skips DeepL"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body: Value = translate(&app, &ada, &["four"], "fr")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["engine"], "deepl",
        "half-open probe succeeded: closed again"
    );
}

#[tokio::test]
async fn repeated_deepl_failures_open_the_circuit_and_limits_are_enforced() {
    let (app, providers, ada) = spawn(&[]).await;
    for _ in 0..3 {
        for _ in 0..4 {
            providers.inject(Vendor::DeepL, Fault::Status(503));
        }
    }
    for text in ["a", "b", "c"] {
        let body: Value = translate(&app, &ada, &[text], "es")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["engine"], "openai");
    }
    let calls = providers.requests(Vendor::DeepL).len();
    let body: Value = translate(&app, &ada, &["d"], "es")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["engine"], "openai");
    assert_eq!(
        providers.requests(Vendor::DeepL).len(),
        calls,
        "three failed requests opened the circuit"
    );

    let many: Vec<&str> = vec!["x"; 51];
    assert_problem(translate(&app, &ada, &many, "es").await, 413).await;
    assert_problem(translate(&app, &ada, &["x"], "Spanish").await, 422).await;
    let plain = TestApp::spawn().await;
    let bob = plain.sign_in("Bob").await;
    let problem = assert_problem(translate(&plain, &bob, &["x"], "es").await, 503).await;
    assert!(
        problem["variables"]
            .as_array()
            .unwrap()
            .contains(&json!("DEEPL_API_KEY"))
    );
}

#[tokio::test]
async fn tts_streams_audio_to_the_client_as_it_arrives() {
    let (app, providers, ada) = spawn(&[]).await;
    let text = "This sentence takes a couple of seconds to speak out loud.";
    let started = Instant::now();
    let response = app
        .request_as(reqwest::Method::POST, &ada, "/api/tts")
        .json(&json!({"text": text}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/basic");
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_byte = started.elapsed();
    let mut total = first.len();
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len();
    }
    let whole = started.elapsed();
    assert_eq!(
        total,
        text.chars().count() * 60 / 20 * 160,
        "every µ-law byte arrived"
    );
    assert!(
        first_byte * 4 < whole,
        "the first byte came long before the end: {first_byte:?} of {whole:?}"
    );
    let request = providers.requests(Vendor::ElevenLabs).pop().unwrap();
    assert!(request["query"].to_string().contains("ulaw_8000"));

    let bad = app
        .request_as(reqwest::Method::POST, &ada, "/api/tts")
        .json(&json!({"text": "hi", "format": "wav_999"}))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 422).await;
    providers.inject(Vendor::ElevenLabs, Fault::Status(500));
    let failed = app
        .request_as(reqwest::Method::POST, &ada, "/api/tts")
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_problem(failed, 502).await;
}

/// Waits until `count` rows of the cache answer `target` (the cache is written in the background).
async fn cached_rows(app: &TestApp, target: &str, count: i64) {
    let db = app.db().await;
    for _ in 0..200 {
        let cached: i64 = db
            .query_one(
                "select count(*) from translation_cache where target_language = $1",
                &[&target],
            )
            .await
            .unwrap()
            .get("count");
        if cached >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the cache never held {count} rows for {target}");
}

async fn organisation_of(app: &TestApp, session: &common::authjs::Session) -> uuid::Uuid {
    let me: Value = app.get_as(session, "/api/me").await.json().await.unwrap();
    me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Issue 14 item 3: another tenant asking for the same sentence must not learn that it was
/// translated before (no `engine: "cache"`, a real provider call), while the tenant that
/// translated it still gets its own cache.
#[tokio::test]
async fn the_cache_is_per_organisation_and_never_reveals_another_tenants_sentence() {
    let (app, providers, victim) = spawn(&[]).await;
    let secret = "The merger with Initech closes on Friday";
    let body: Value = translate(&app, &victim, &[secret], "fr")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["engine"], "deepl");
    cached_rows(&app, "fr", 1).await;

    // The attacker: an ordinary self-service account, so its own personal organisation.
    let attacker = app.sign_in("Mallory").await;
    let before = providers.requests(Vendor::DeepL).len();
    let body: Value = translate(&app, &attacker, &[secret], "fr")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"translations": [format!("[FR] {secret}")], "engine": "deepl"}),
        "a cache hit across organisations would confirm the sentence was spoken elsewhere"
    );
    assert_eq!(providers.requests(Vendor::DeepL).len(), before + 1);
    cached_rows(&app, "fr", 2).await;

    let body: Value = translate(&app, &victim, &[secret], "fr")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["engine"], "cache",
        "the owner's own cache still answers"
    );
    let owners: i64 = app
        .db()
        .await
        .query_one(
            "select count(distinct organisation_id) from translation_cache where target_language = 'fr'",
            &[],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(owners, 2, "one row per organisation");
}

/// Issue 14 item 3: cached translations, live transcript turns and gaps, and utterances
/// go with the organisation's recording retention.
#[tokio::test]
async fn cached_text_transcripts_and_utterances_follow_the_recording_retention() {
    let (app, _providers, session) = spawn(&[("RECORDINGS_RETENTION_DAYS", "30")]).await;
    let org = organisation_of(&app, &session).await;
    let db = app.db().await;
    let call = uuid::Uuid::now_v7();
    db.execute(
        "insert into calls (id, organisation_id, direction, from_number, to_number, status)
         values ($1, $2, 'outbound', '+14155550100', '+14155550123', 'ended')",
        &[&call, &org],
    )
    .await
    .unwrap();
    // Two of each: one 40 days old (past retention), one fresh.
    for (index, age) in [(0, 40), (1, 0)] {
        let created = chrono::Utc::now() - chrono::Duration::days(age);
        db.execute(
            "insert into transcript_turns (call_id, track, turn_index, session_id, text, created_at)
             values ($1, 'inbound', $2, 's', 'my card number is 4111', $3)",
            &[&call, &index, &created],
        )
        .await
        .unwrap();
        db.execute(
            "insert into transcript_gaps (call_id, track, start_ms, duration_ms, reason, created_at)
             values ($1, 'inbound', 0, 10, 'test', $2)",
            &[&call, &created],
        )
        .await
        .unwrap();
        db.execute(
            "insert into utterances (call_id, seq, source_track, source_turn_index, original_text, end_of_turn_at, created_at)
             values ($1, $2, 'inbound', $2, 'my card number is 4111', $3, $3)",
            &[&call, &index, &created],
        )
        .await
        .unwrap();
        db.execute(
            "insert into translation_cache (organisation_id, text_sha256, source_language, target_language, translation, engine, created_at)
             values ($1, $2, 'en', 'de', 'meine Kartennummer', 'deepl', $3)",
            &[&org, &vec![index as u8; 32], &created],
        )
        .await
        .unwrap();
    }
    let purged = callbridge::cron::purge_expired_text(&app.state)
        .await
        .unwrap();
    assert_eq!(purged, 4, "one expired row in each of the four tables");
    for table in [
        "transcript_turns",
        "transcript_gaps",
        "utterances",
        "translation_cache",
    ] {
        let left: i64 = db
            .query_one(&format!("select count(*) from {table}"), &[])
            .await
            .unwrap()
            .get("count");
        assert_eq!(left, 1, "{table}: the fresh row stays");
    }
    // A longer retention for the organisation keeps everything the next time.
    db.execute(
        "update organisations set recording_retention_days = 3650 where id = $1",
        &[&org],
    )
    .await
    .unwrap();
    assert_eq!(
        callbridge::cron::purge_expired_text(&app.state)
            .await
            .unwrap(),
        0
    );
}
