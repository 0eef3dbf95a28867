//! `make demo`: the service with every simulator, one interpreted call placed through the
//! real API — an English-speaking agent and a Spanish-speaking remote party (`auto`
//! detection), each on their own leg and stream — and the conversation printed in two
//! columns, with each direction's stage latencies.

use std::time::Duration;

use serde_json::json;

use super::assemblyai::AssemblyAiSim;
use super::telnyx::TelnyxSim;
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
    let user: i32 = db.query_one("insert into authjs.users (name, email) values ('Demo', 'demo@example.com') returning id", &[]).await?.get("id");
    let token = uuid::Uuid::new_v4().to_string();
    db.execute(r#"insert into authjs.sessions ("userId", expires, "sessionToken") values ($1, now() + interval '1 hour', $2)"#, &[&user, &token]).await?;
    let http = reqwest::Client::new();
    let authed = |request: reqwest::RequestBuilder| request.bearer_auth(&token);
    // The operator put +14155550100 in the platform's Telnyx pool; the user claims it and,
    // as owner, allows calls to Spain, where the remote party is (by default only the
    // numbers' own country: the toll-fraud guard answers 403 to anything else).
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
        .json(&json!({"allowed_countries": ["US", "ES"], "min_role": "member"}))
        .send()
        .await?
        .error_for_status()?;

    let webhook = format!("{base}{}", crate::paths::TELNYX_WEBHOOK);
    carrier.send_hangup_webhooks(&webhook);
    aai.set_model_script(
        "universal-streaming-english",
        "en",
        &[
            "hello, this is doctor smith's office",
            "tuesday at ten works for us",
        ],
    );
    aai.set_model_script(
        "universal-streaming-multilingual",
        "es",
        &["hola, quería pedir una cita", "perfecto, muchas gracias"],
    );

    println!("▶ POST /api/calls  agent +14155550111 (en) · remote +34911222333 (auto)");
    let call: serde_json::Value = authed(http.post(format!("{base}/api/calls")))
        .json(&json!({"from": "+14155550100",
                      "agent": {"number": "+14155550111", "language": "en", "voice_id": "demo-voice-en"},
                      "remote": {"number": "+34911222333", "language": "auto", "voice_id": "demo-voice-es"}}))
        .send().await?.error_for_status()?.json().await?;
    let call_id = call["id"].as_str().unwrap_or_default().to_owned();
    let agent = carrier
        .dial_of_leg("agent")
        .ok_or_else(|| anyhow::anyhow!("the agent was not dialed"))?;
    println!("▶ Telnyx rings the agent; the agent answers");
    for event in &carrier.leg_lifecycle(&agent, "caller")[..3] {
        carrier.deliver(&webhook, event).await?;
    }
    let remote = wait_for(|| carrier.dial_of_leg("remote")).await?;
    println!("▶ the service rings the remote party; they answer");
    for event in &carrier.leg_lifecycle(&remote, "callee")[..3] {
        carrier.deliver(&webhook, event).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("▶ both parties talk on their own media streams (real time, ~14 s)\n");
    let stream = |dial: &super::telnyx::RecordedCommand, pattern: &[(u64, bool)]| {
        let mut play = PlayOptions::new(
            dial.body["stream_url"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            telnyx_media::speech_like(pattern),
        );
        play.inbound_only = true;
        play.realtime = true;
        play.linger = Duration::from_millis(3000);
        play
    };
    // Turns take turns, as people do: nobody talks over a translation (that would cut it).
    let agent_talks = stream(
        &agent,
        &[(1500, true), (5500, false), (1500, true), (5500, false)],
    );
    let remote_talks = stream(
        &remote,
        &[
            (2000, false),
            (1500, true),
            (8000, false),
            (1200, true),
            (1300, false),
        ],
    );
    let (agent_heard, remote_heard) = tokio::join!(
        telnyx_media::play(agent_talks),
        telnyx_media::play(remote_talks)
    );
    let (agent_heard, remote_heard) = (
        agent_heard.map_err(|e| anyhow::anyhow!(e))?,
        remote_heard.map_err(|e| anyhow::anyhow!(e))?,
    );
    // The remote party hangs up; the service hangs up the agent's leg.
    carrier
        .deliver(&webhook, &carrier.leg_lifecycle(&remote, "callee")[3])
        .await?;
    let mut detail = serde_json::Value::Null;
    for _ in 0..50 {
        detail = authed(http.get(format!("{base}/api/calls/{call_id}")))
            .send()
            .await?
            .json()
            .await?;
        if detail["status"] == "ended" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let transcript: serde_json::Value =
        authed(http.get(format!("{base}/api/calls/{call_id}/transcript")))
            .send()
            .await?
            .json()
            .await?;
    print_conversation(&transcript);
    print_latencies(&transcript);
    let leg = |i: usize| {
        format!(
            "{} {} ({})",
            detail["legs"][i]["role"].as_str().unwrap_or_default(),
            detail["legs"][i]["status"].as_str().unwrap_or_default(),
            detail["legs"][i]["detected_language"]
                .as_str()
                .or(detail["legs"][i]["language"].as_str())
                .unwrap_or_default()
        )
    };
    println!(
        "\nCall {call_id}: {} · legs: {}, {} · hang-up: {}",
        detail["status"].as_str().unwrap_or_default(),
        leg(0),
        leg(1),
        detail["hangup_source"].as_str().unwrap_or_default()
    );
    println!(
        "Heard on each leg (µ-law bytes streamed, original audio {}): agent {} · remote {}",
        detail["original_audio"].as_str().unwrap_or_default(),
        agent_heard.media_bytes,
        remote_heard.media_bytes
    );
    shutdown.cancel();
    let _ = server.await;
    drop(db);
    admin
        .batch_execute(&format!("drop database {database} with (force)"))
        .await?;
    whole(&detail, &transcript)
}

/// The demo fails unless the call went as scripted: it ended, each party's two turns were
/// translated and played to the other, and the remote party's language was detected.
fn whole(detail: &serde_json::Value, transcript: &serde_json::Value) -> anyhow::Result<()> {
    let turns = transcript["conversation"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let played = |speaker: &str| {
        turns
            .iter()
            .filter(|t| t["speaker"] == speaker && t["playout"] == "played")
            .count()
    };
    let mut wrong = Vec::new();
    if detail["status"] != "ended" {
        wrong.push(format!("the call is {}, not ended", detail["status"]));
    }
    for speaker in ["agent", "remote"] {
        if played(speaker) != 2 {
            wrong.push(format!(
                "{} of the {speaker}'s 2 turns were translated and played",
                played(speaker)
            ));
        }
    }
    if detail["legs"][1]["detected_language"] != "es" {
        wrong.push(format!(
            "the remote party's language was detected as {}",
            detail["legs"][1]["detected_language"]
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "the demo call went wrong: {}",
            wrong.join("; ")
        ))
    }
}

/// Polls until `probe` finds something (a webhook's job runs in the worker).
async fn wait_for<T>(probe: impl Fn() -> Option<T>) -> anyhow::Result<T> {
    for _ in 0..100 {
        if let Some(found) = probe() {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("timed out waiting for the service")
}

const COLUMN: usize = 46;

fn wrap(text: &str) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > COLUMN {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// Agent on the left, remote party on the right: what each said (and in which language),
/// and under it, on the other side, what the other heard and how it played.
fn print_conversation(transcript: &serde_json::Value) {
    println!("{:<w$} │ REMOTE (auto)", "AGENT (en)", w = COLUMN);
    println!("{}┼{}", "─".repeat(COLUMN + 1), "─".repeat(COLUMN + 1));
    let turns = transcript["conversation"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for turn in turns {
        let agent_spoke = turn["speaker"] == "agent";
        let said = format!(
            "[{}] {}",
            turn["language"].as_str().unwrap_or("?"),
            turn["text"].as_str().unwrap_or_default()
        );
        let heard = match turn["translation"].as_str() {
            Some(translation) => format!(
                "hears: {translation}  ({}, {} ms to first audio)",
                turn["playout"].as_str().unwrap_or("-"),
                turn["interpretation"]["end_of_turn_to_first_frame_ms"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.0}"))
            ),
            None => "(nothing spoken)".into(),
        };
        let (left, right) = if agent_spoke {
            (wrap(&said), wrap(&heard))
        } else {
            (wrap(&heard), wrap(&said))
        };
        for i in 0..left.len().max(right.len()) {
            println!(
                "{:<w$} │ {}",
                left.get(i).map_or("", String::as_str),
                right.get(i).map_or("", String::as_str),
                w = COLUMN
            );
        }
        println!("{:<w$} │", "", w = COLUMN);
    }
}

fn print_latencies(transcript: &serde_json::Value) {
    let turns = transcript["conversation"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!("Stage latencies per direction (ms, p50 / max over the direction's turns):");
    println!(
        "  {:<18} {:>13} {:>13} {:>13} {:>13} {:>13}",
        "direction", "translate", "tts 1st byte", "1st frame", "turn→frame", "mark"
    );
    for (speaker, label) in [("agent", "agent → remote"), ("remote", "remote → agent")] {
        let stage = |name: &str| {
            let mut values: Vec<f64> = turns
                .iter()
                .filter(|t| t["speaker"] == speaker)
                .filter_map(|t| t["interpretation"][name].as_f64())
                .collect();
            values.sort_by(f64::total_cmp);
            match (
                values.get(values.len().saturating_sub(1) / 2),
                values.last(),
            ) {
                (Some(p50), Some(max)) => format!("{p50:.1} / {max:.1}"),
                _ => "-".into(),
            }
        };
        println!(
            "  {:<18} {:>13} {:>13} {:>13} {:>13} {:>13}",
            label,
            stage("translate_ms"),
            stage("tts_first_byte_ms"),
            stage("first_frame_ms"),
            stage("end_of_turn_to_first_frame_ms"),
            stage("mark_ms")
        );
    }
}
