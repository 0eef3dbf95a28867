//! `make demo`: the service with every simulator, one translated call placed through the real
//! API, and what happened printed: the transcript, the translations spoken back, whether
//! they were heard, and each stage's latency.

use std::time::Duration;

use serde_json::json;

use super::assemblyai::AssemblyAiSim;
use super::telnyx::{self, TelnyxSim};
use super::telnyx_media::{self, PlayOptions};
use super::translation::{self as providers, TranslationSim};
use crate::app::{Application, Role};
use crate::config::Config;

pub async fn run(admin_url: &str) -> anyhow::Result<()> {
    let aai = AssemblyAiSim::start("demo-aai-key", 0).await?;
    let speech = TranslationSim::start(0).await?;
    let carrier = TelnyxSim::start("demo-telnyx-key", 0).await?;
    let database = format!("callbridge_demo_{}", uuid::Uuid::new_v4().simple());
    let admin = crate::db::connect_direct(admin_url).await?;
    admin
        .batch_execute(&format!("create database {database}"))
        .await?;
    let mut url = url::Url::parse(admin_url)?;
    url.set_path(&format!("/{database}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let env: Vec<(String, String)> = [
        ("APP_ENV", "development"),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("PORT", &port.to_string()),
        ("PUBLIC_BASE_URL", &base),
        ("DATABASE_URL", url.as_str()),
        ("RUN_MIGRATIONS_ON_START", "true"),
        ("R2_ENDPOINT", "http://127.0.0.1:9"),
        ("R2_CREATE_BUCKET", "false"),
        ("LOG_LEVEL", "warn"),
        ("TELNYX_API_KEY", "demo-telnyx-key"),
        ("TELNYX_PUBLIC_KEY", &carrier.public_key_base64()),
        ("TELNYX_CONNECTION_ID", "demo-connection"),
        ("TELNYX_API_BASE", &carrier.api_base()),
        ("ASSEMBLYAI_API_KEY", "demo-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", &aai.streaming_url()),
        ("DEEPL_API_KEY", providers::DEEPL_KEY),
        ("DEEPL_API_BASE", &speech.base()),
        ("ELEVENLABS_API_KEY", providers::ELEVENLABS_KEY),
        ("ELEVENLABS_API_BASE", &speech.base()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::load_from(None, env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = Application::build_role(config, Role::All).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));

    // A signed-in user (as Auth.js would create them) with a number.
    let db = crate::db::connect_direct(url.as_str()).await?;
    let user: i32 = db.query_one("insert into authjs.users (name, email) values ('Demo', 'demo@example.com') returning id", &[]).await?.get(0);
    let token = uuid::Uuid::new_v4().to_string();
    db.execute(r#"insert into authjs.sessions ("userId", expires, "sessionToken") values ($1, now() + interval '1 hour', $2)"#, &[&user, &token]).await?;
    let http = reqwest::Client::new();
    let authed = |request: reqwest::RequestBuilder| request.bearer_auth(&token);
    // The operator put +14155550100 in the platform's Telnyx pool; the user claims it and,
    // as owner, allows calls to Germany (by default only the numbers' own country).
    carrier.hold_number("+14155550100", Some("demo-connection"));
    authed(http.post(format!("{base}/api/phone-numbers")))
        .json(&json!({"number": "+14155550100"}))
        .send()
        .await?
        .error_for_status()?;
    let me: serde_json::Value = authed(http.get(format!("{base}/api/me")))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let org = me["organisations"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    authed(http.put(format!("{base}/api/orgs/{org}/dialing-policy")))
        .json(&json!({"allowed_countries": ["US", "DE"], "min_role": "member"}))
        .send()
        .await?
        .error_for_status()?;

    println!("▶ POST /api/calls  (+14155550100 → +4930123456, en → de)");
    let call: serde_json::Value = authed(http.post(format!("{base}/api/calls")))
        .json(&json!({"from": "+14155550100", "to": "+4930123456", "source_language": "en", "target_language": "de", "voice_id": "demo-voice"}))
        .send().await?.error_for_status()?.json().await?;
    let call_id = call["id"].as_str().unwrap_or_default().to_owned();
    let dial = carrier
        .commands_named("dial")
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no dial reached Telnyx"))?;
    let ccid = dial.call_control_id.clone().unwrap_or_default();
    let client_state = dial.body["client_state"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let lifecycle = telnyx::outbound_lifecycle(
        &carrier,
        &ccid,
        &client_state,
        "+14155550100",
        "+4930123456",
    );
    for event in &lifecycle[..2] {
        carrier
            .deliver(&format!("{base}/webhooks/telnyx"), event)
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("▶ Telnyx connects the media stream and the callee speaks (two sentences, real time)");
    let mut play = PlayOptions::new(
        dial.body["stream_url"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        telnyx_media::speech_like(&[(1200, true), (700, false), (1000, true), (700, false)]),
    );
    play.outbound = Some(telnyx_media::speech_like(&[(3600, false)]));
    play.realtime = true;
    play.linger = Duration::from_millis(2500);
    let played = telnyx_media::play(play)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    carrier
        .deliver(&format!("{base}/webhooks/telnyx"), &lifecycle[3])
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    println!("\nTranscript (live, AssemblyAI v3 per track):");
    for row in db.query("select track, turn_index, text, start_ms, end_ms from transcript_turns where call_id = $1::text::uuid order by start_ms, track", &[&call_id]).await? {
        println!("  [{:>8}] #{} {:>5}–{:<5} ms  {}", row.get::<_, String>(0), row.get::<_, i32>(1), row.get::<_, Option<i64>>(3).unwrap_or(0), row.get::<_, Option<i64>>(4).unwrap_or(0), row.get::<_, String>(2));
    }
    println!("\nTranslations spoken back (DeepL → ElevenLabs µ-law → Telnyx):");
    println!(
        "  {:<4} {:<30} {:<36} {:<8} {:>9} {:>8} {:>9} {:>9}",
        "seq", "original", "translation", "heard", "translate", "tts 1st", "1st frame", "mark"
    );
    for row in db
        .query(
            "select seq, original_text, coalesce(translated_text, ''), status,
                (extract(epoch from translated_at - end_of_turn_at) * 1000)::float8,
                (extract(epoch from first_tts_byte_at - translated_at) * 1000)::float8,
                (extract(epoch from first_frame_sent_at - first_tts_byte_at) * 1000)::float8,
                (extract(epoch from mark_echoed_at - first_frame_sent_at) * 1000)::float8
         from utterances where call_id = $1::text::uuid order by seq",
            &[&call_id],
        )
        .await?
    {
        let ms = |i: usize| {
            row.get::<_, Option<f64>>(i)
                .map_or("-".into(), |v| format!("{v:.1} ms"))
        };
        println!(
            "  {:<4} {:<30} {:<36} {:<8} {:>9} {:>8} {:>9} {:>9}",
            row.get::<_, i32>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            ms(4),
            ms(5),
            ms(6),
            ms(7)
        );
    }
    let status: String = db
        .query_one(
            "select status from calls where id = $1::text::uuid",
            &[&call_id],
        )
        .await?
        .get(0);
    println!(
        "\nCall {call_id}: {status}; {} µ-law bytes played into the call, marks echoed {:?}",
        played.media_bytes, played.marks_echoed
    );
    shutdown.cancel();
    let _ = server.await;
    drop(db);
    admin
        .batch_execute(&format!("drop database {database} with (force)"))
        .await?;
    Ok(())
}
