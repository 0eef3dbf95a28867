//! Translation and speech against the DeepL, OpenAI and ElevenLabs simulators: DeepL success,
//! 429 then success, 456 → OpenAI with the circuit open then closing again, the cache, and
//! TTS streamed to the client as it arrives.
#![cfg(feature = "sim")]

mod common;

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
            .get(0);
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
