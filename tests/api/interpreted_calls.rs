//! Interpreted calls end to end through the simulators: two parties on two Telnyx legs,
//! each with its own media stream and language; each hears only the other, translated.
//! The agent is rung first and the remote party once the agent answers; either party
//! hanging up ends the other leg; a remote party who never answers fails the call.
#![cfg(feature = "sim")]

use crate::common;

use std::time::Duration;

use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx::RecordedCommand;
use callbridge::sim::telnyx_media::{self, PlayResult};
use callbridge::sim::translation::{self as sim, TranslationSim, spoken_texts};
use common::assert_problem;
use common::authjs::Session;
use common::telnyx::{TelnyxApp, party};
use reqwest::Method;
use serde_json::{Value, json};

const AGENT_SAYS: &str = "hello, this is the clinic calling";
const REMOTE_SAYS: &str = "hola, necesito una cita";

struct Interpreted {
    t: TelnyxApp,
    aai: AssemblyAiSim,
    _providers: TranslationSim,
    ada: Session,
}

async fn spawn() -> Interpreted {
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    // Each leg's session hears its own party: English on the agent's model, Spanish on
    // the multilingual model the `auto` remote party gets.
    aai.set_model_script("universal-streaming-english", "en", &[AGENT_SAYS]);
    aai.set_model_script("universal-streaming-multilingual", "es", &[REMOTE_SAYS]);
    let providers = TranslationSim::start(0).await.unwrap();
    let (aai_url, base) = (aai.streaming_url(), providers.base());
    let t = TelnyxApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", aai_url.as_str()),
        ("DEEPL_API_KEY", sim::DEEPL_KEY),
        ("DEEPL_API_BASE", base.as_str()),
        ("ELEVENLABS_API_KEY", sim::ELEVENLABS_KEY),
        ("ELEVENLABS_API_BASE", base.as_str()),
    ])
    .await;
    t.sim.send_hangup_webhooks(&t.webhook_url());
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    // The toll-fraud guard dials the organisation's own countries only until allowed more:
    // the remote parties here are in Spain and Japan.
    let me: Value = t.app.get_as(&ada, "/api/me").await.json().await.unwrap();
    let org = me["organisations"][0]["id"].as_str().unwrap().to_owned();
    let policy = t
        .app
        .request_as(
            Method::PUT,
            &ada,
            &format!("/api/orgs/{org}/dialing-policy"),
        )
        .json(&json!({"allowed_countries": ["US", "ES", "JP"], "min_role": "member"}))
        .send()
        .await
        .unwrap();
    assert_eq!(policy.status(), 200);
    Interpreted {
        t,
        aai,
        _providers: providers,
        ada,
    }
}

fn interpreted(remote_language: &str) -> Value {
    json!({
        "from": "+14155550100",
        "agent": {"number": "+14155550111", "language": "en", "voice_id": "voice-en"},
        "remote": {"number": "+34911222333", "language": remote_language, "voice_id": "voice-es"},
        "original_audio": "off",
    })
}

impl Interpreted {
    async fn place(&self, body: &Value) -> Value {
        let response = self
            .t
            .app
            .request_as(Method::POST, &self.ada, "/api/calls")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    async fn call(&self, id: &str) -> Value {
        self.t
            .app
            .get_as(&self.ada, &format!("/api/calls/{id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Telnyx's events for a leg (`range` of initiated, answered, streaming.started,
    /// hangup), delivered and processed.
    async fn deliver(&self, dial: &RecordedCommand, range: std::ops::Range<usize>, source: &str) {
        self.t.deliver_leg(dial, range, source).await;
    }

    fn dial_of(&self, leg: &str) -> RecordedCommand {
        self.t
            .sim
            .dial_of_leg(leg)
            .unwrap_or_else(|| panic!("no dial of the {leg} leg"))
    }

    /// The stream URL Telnyx was given, on the test server's port.
    fn stream_url(&self, dial: &RecordedCommand) -> String {
        let url = dial.body["stream_url"].as_str().unwrap();
        let token = url.rsplit('/').next().unwrap();
        format!("ws://127.0.0.1:{}/media/telnyx/{token}", self.t.app.port)
    }

    /// Both parties answer (agent first, which dials the remote party).
    async fn answer_both(&self, id: &str) -> (RecordedCommand, RecordedCommand) {
        let agent = self.dial_of("agent");
        assert!(
            self.t.sim.dial_of_leg("remote").is_none(),
            "remote rung before the agent answered"
        );
        self.deliver(&agent, 0..3, "caller").await;
        let remote = self.dial_of("remote");
        self.deliver(&remote, 0..3, "callee").await;
        assert_eq!(self.call(id).await["status"], "answered");
        (agent, remote)
    }

    async fn until_status(&self, id: &str, status: &str) -> Value {
        for _ in 0..100 {
            self.t.drain().await;
            let call = self.call(id).await;
            if call["status"] == status {
                return call;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("call never reached {status}: {}", self.call(id).await);
    }

    async fn utterances(&self, id: &str) -> Vec<Value> {
        for _ in 0..100 {
            let transcript: Value = self
                .t
                .app
                .get_as(&self.ada, &format!("/api/calls/{id}/transcript"))
                .await
                .json()
                .await
                .unwrap();
            let utterances = transcript["utterances"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !utterances.is_empty()
                && utterances
                    .iter()
                    .all(|u| u["status"] != "queued" && u["status"] != "playing")
            {
                return utterances;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("utterances did not settle");
    }
}

/// One party's media stream: their speech on the inbound track only, in real time.
fn heard(result: &PlayResult) -> Vec<String> {
    spoken_texts(&result.audio())
}

#[tokio::test]
async fn each_party_hears_only_the_other_translated_with_the_remote_language_detected() {
    let it = spawn().await;
    let call = it.place(&interpreted("auto")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    assert_eq!(call["interpreted"], true);
    assert_eq!(call["status"], "dialing");
    assert_eq!(call["legs"][0]["role"], "agent");
    assert_eq!(call["legs"][0]["status"], "dialing");
    assert_eq!(call["legs"][1]["role"], "remote");
    assert_eq!(call["legs"][1]["status"], "created");
    assert_eq!(call["legs"][1]["language"], "auto");

    let agent_dial = it.dial_of("agent");
    let body = &agent_dial.body;
    assert_eq!(body["to"], "+14155550111");
    assert_eq!(body["stream_track"], "inbound_track");
    assert_eq!(body["stream_bidirectional_mode"], "rtp");
    assert_eq!(
        body["command_id"],
        format!("dial:{}", call["legs"][0]["id"].as_str().unwrap())
    );

    let (agent, remote) = it.answer_both(&id).await;
    assert_eq!(remote.body["to"], "+34911222333");
    assert_eq!(remote.body["from"], "+14155550100");
    assert_eq!(
        remote.body["command_id"],
        format!("dial:{}", call["legs"][1]["id"].as_str().unwrap())
    );
    // A redelivered answer never rings the remote party twice.
    it.deliver(&agent, 1..2, "caller").await;
    assert_eq!(it.t.sim.commands_named("dial").len(), 2);

    // The agent speaks first; the remote party (language unknown yet) answers in Spanish.
    let agent_stream = party(it.stream_url(&agent), &[(1200, true), (5800, false)], 2500);
    let remote_stream = party(
        it.stream_url(&remote),
        &[(2500, false), (1200, true), (3300, false)],
        2500,
    );
    let (agent_heard, remote_heard) = tokio::join!(
        telnyx_media::play(agent_stream),
        telnyx_media::play(remote_stream)
    );
    let (agent_heard, remote_heard) = (agent_heard.unwrap(), remote_heard.unwrap());

    // What each leg's stream received: only the other party's words, in its own language.
    assert_eq!(
        heard(&agent_heard),
        vec!["[EN-US] Hola, necesito una cita."]
    );
    assert_eq!(
        heard(&remote_heard),
        vec!["[ES] Hello, this is the clinic calling."]
    );
    assert!(!heard(&agent_heard).iter().any(|t| t.contains("clinic")));
    assert!(!heard(&remote_heard).iter().any(|t| t.contains("cita")));
    assert_eq!(agent_heard.marks_echoed.len(), 1);
    assert_eq!(remote_heard.marks_echoed.len(), 1);
    // `original_audio: off`: nothing but the translation reaches either party.
    assert!(agent_heard.audio().starts_with(b"TTS:"));
    assert!(remote_heard.audio().starts_with(b"TTS:"));

    // Each party's session uses the model for their language; detection for `auto`.
    let sessions = it.aai.sessions();
    let query = |model: &str| {
        sessions
            .iter()
            .find(|s| {
                s.query
                    .iter()
                    .any(|(k, v)| k == "speech_model" && v == model)
            })
            .map(|s| s.query.clone())
            .unwrap_or_else(|| panic!("no {model} session"))
    };
    assert!(
        !query("universal-streaming-english")
            .iter()
            .any(|(k, _)| k == "language_detection")
    );
    assert!(
        query("universal-streaming-multilingual")
            .iter()
            .any(|(k, v)| k == "language_detection" && v == "true")
    );

    let utterances = it.utterances(&id).await;
    assert_eq!(utterances.len(), 2);
    let from = |who: &str| {
        utterances
            .iter()
            .find(|u| u["source_track"] == who)
            .unwrap_or_else(|| panic!("no utterance by {who}"))
    };
    assert_eq!(from("agent")["status"], "played");
    assert_eq!(
        from("agent")["target_language"],
        "es",
        "translation follows the detected language"
    );
    assert_eq!(from("remote")["status"], "played");
    assert_eq!(from("remote")["source_language"], "es");
    assert_eq!(from("remote")["target_language"], "en");

    let call = it.call(&id).await;
    assert_eq!(call["legs"][1]["detected_language"], "es");

    // The conversation as the frontend shows it: both parties in time order.
    let transcript: Value =
        it.t.app
            .get_as(&it.ada, &format!("/api/calls/{id}/transcript"))
            .await
            .json()
            .await
            .unwrap();
    let turns = transcript["conversation"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "{transcript}");
    assert_eq!(turns[0]["speaker"], "agent");
    assert_eq!(turns[0]["language"], "en");
    assert_eq!(turns[0]["text"], "Hello, this is the clinic calling.");
    assert_eq!(
        turns[0]["translation"],
        "[ES] Hello, this is the clinic calling."
    );
    assert_eq!(turns[0]["playout"], "played");
    assert_eq!(turns[1]["speaker"], "remote");
    assert_eq!(turns[1]["language"], "es");
    assert_eq!(turns[1]["translation"], "[EN-US] Hola, necesito una cita.");
    assert_eq!(turns[1]["playout"], "played");
    for turn in turns {
        let stages = &turn["interpretation"];
        for stage in [
            "translate_ms",
            "tts_first_byte_ms",
            "end_of_turn_to_first_frame_ms",
            "mark_ms",
        ] {
            assert!(stages[stage].as_f64().is_some(), "{stage} missing: {turn}");
        }
    }
}

#[tokio::test]
async fn either_party_hanging_up_ends_the_other_leg_and_then_the_call() {
    let it = spawn().await;
    let call = it.place(&interpreted("es")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let agent_leg = call["legs"][0]["id"].as_str().unwrap().to_owned();
    let (agent, remote) = it.answer_both(&id).await;

    // The remote party hangs up: we hang up the agent (Telnyx then reports it ended).
    it.deliver(&remote, 3..4, "callee").await;
    let hangups = it.t.sim.commands_named("hangup");
    assert_eq!(hangups.len(), 1);
    assert_eq!(hangups[0].call_control_id, agent.call_control_id);
    assert_eq!(hangups[0].body["command_id"], format!("hangup:{agent_leg}"));
    let call = it.until_status(&id, "ended").await;
    assert_eq!(call["legs"][0]["status"], "ended");
    assert_eq!(call["legs"][1]["status"], "ended");
    assert_eq!(call["legs"][1]["hangup_source"], "callee");
    assert_eq!(call["hangup_source"], "remote:callee");

    // Redelivered, in any order: nothing more happens.
    it.deliver(&remote, 0..4, "callee").await;
    it.deliver(&agent, 0..4, "caller").await;
    assert_eq!(it.t.sim.commands_named("hangup").len(), 1);
    assert_eq!(it.call(&id).await["status"], "ended");
}

#[tokio::test]
async fn a_remote_party_who_never_answers_fails_the_call_with_a_reason() {
    let it = spawn().await;
    let call = it.place(&interpreted("es")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let agent = it.dial_of("agent");
    it.deliver(&agent, 0..2, "caller").await;
    let remote = it.dial_of("remote");
    // Ringing, then no answer: Telnyx ends the leg without `call.answered`.
    it.deliver(&remote, 0..1, "callee").await;
    let mut no_answer = it.t.sim.leg_lifecycle(&remote, "callee").pop().unwrap();
    no_answer["data"]["payload"]["hangup_cause"] = json!("no_answer");
    it.t.sim
        .deliver(&it.t.webhook_url(), &no_answer)
        .await
        .unwrap();
    let call = it.until_status(&id, "failed").await;
    assert_eq!(
        call["failure_reason"],
        "the remote party did not connect (no_answer)"
    );
    assert_eq!(
        call["legs"][0]["status"], "ended",
        "the agent's leg was hung up"
    );
    assert_eq!(
        it.t.sim.commands_named("hangup")[0].call_control_id,
        agent.call_control_id
    );
}

#[tokio::test]
async fn the_agent_talking_over_a_translation_cuts_it_on_the_agents_leg_only() {
    let it = spawn().await;
    let call = it.place(&interpreted("es")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let (agent, remote) = it.answer_both(&id).await;
    // The remote party speaks; while its translation plays to the agent, the agent talks.
    let remote_stream = party(it.stream_url(&remote), &[(1200, true), (5800, false)], 2000);
    let agent_stream = party(
        it.stream_url(&agent),
        &[(2000, false), (1500, true), (3500, false)],
        2000,
    );
    let (agent_heard, remote_heard) = tokio::join!(
        telnyx_media::play(agent_stream),
        telnyx_media::play(remote_stream)
    );
    let (agent_heard, remote_heard) = (agent_heard.unwrap(), remote_heard.unwrap());
    assert!(agent_heard.clears >= 1, "clear sent on the agent's stream");
    assert_eq!(
        remote_heard.clears, 0,
        "nothing was playing to the remote party when it spoke"
    );
    let utterances = it.utterances(&id).await;
    let by_remote = utterances
        .iter()
        .find(|u| u["source_track"] == "remote")
        .unwrap();
    assert_eq!(by_remote["status"], "cut");
    assert!(by_remote["cut_at_ms"].as_i64().is_some());
}

#[tokio::test]
async fn a_language_no_model_transcribes_is_422_naming_it_and_each_language_gets_its_model() {
    let it = spawn().await;
    let response =
        it.t.app
            .request_as(Method::POST, &it.ada, "/api/calls")
            .json(&interpreted("tlh"))
            .send()
            .await
            .unwrap();
    let problem = assert_problem(response, 422).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("`tlh`"),
        "{problem}"
    );
    let mut agent_auto = interpreted("es");
    agent_auto["agent"]["language"] = json!("auto");
    let response =
        it.t.app
            .request_as(Method::POST, &it.ada, "/api/calls")
            .json(&agent_auto)
            .send()
            .await
            .unwrap();
    assert_problem(response, 422).await;
    assert!(it.t.sim.commands_named("dial").is_empty(), "nothing dialed");

    // Japanese is not one of the multilingual model's languages: whisper-rt transcribes it.
    // (And without `original_audio`, each party hears the other ducked under translations.)
    let mut body = interpreted("ja");
    body.as_object_mut().unwrap().remove("original_audio");
    let call = it.place(&body).await;
    assert_eq!(call["original_audio"], "ducked");
    let id = call["id"].as_str().unwrap().to_owned();
    let (_agent, remote) = it.answer_both(&id).await;
    let mut stream = party(it.stream_url(&remote), &[(600, false)], 0);
    stream.realtime = false;
    telnyx_media::play(stream).await.unwrap();
    assert!(it.aai.sessions().iter().any(|s| {
        s.query
            .iter()
            .any(|(k, v)| k == "speech_model" && v == "whisper-rt")
    }));
}

#[tokio::test]
async fn a_one_leg_call_written_before_the_migration_still_reads() {
    use sqlx::Connection as _;
    // A database at the schema before call legs existed, with a call in it.
    let name = format!("cbt_legacy_{}", uuid::Uuid::new_v4().simple());
    let admin = tokio_postgres::connect(&common::admin_database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(admin.1);
    let admin = admin.0;
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    let url = common::database_url(&name);
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            callbridge::db::MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < 20261206000700)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
    before.run(&mut connection).await.unwrap();
    connection.close().await.unwrap();
    let (db, task) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(task);
    let org = uuid::Uuid::now_v7();
    let call_id = uuid::Uuid::now_v7();
    db.execute(
        "insert into organisations (id, name) values ($1, 'Legacy')",
        &[&org],
    )
    .await
    .unwrap();
    db.execute(
        "insert into calls (id, organisation_id, direction, from_number, to_number, source_language,
                            target_language, voice_id, status, telnyx_call_control_id, answered_at, ended_at, hangup_cause)
         values ($1, $2, 'outbound', '+14155550100', '+14155550123', 'en', 'de', 'voice-1', 'ended', 'v3:old', now() - interval '5 minutes', now(), 'normal_clearing')",
        &[&call_id, &org],
    )
    .await
    .unwrap();
    drop(db);

    // The service migrates it on start.
    let app = common::TestApp::spawn_with(&[
        ("DATABASE_URL", url.as_str()),
        ("RUN_MIGRATIONS_ON_START", "true"),
    ])
    .await;
    let session = app.sign_in("Lee").await;
    let me: Value = app.get_as(&session, "/api/me").await.json().await.unwrap();
    let mine: uuid::Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    app.db()
        .await
        .execute(
            "update calls set organisation_id = $2 where id = $1",
            &[&call_id, &mine],
        )
        .await
        .unwrap();
    let response = app.get_as(&session, &format!("/api/calls/{call_id}")).await;
    assert_eq!(response.status(), 200);
    let call: Value = response.json().await.unwrap();
    assert_eq!(call["status"], "ended");
    assert_eq!(call["interpreted"], false);
    assert_eq!(call["source_language"], "en");
    assert_eq!(call["target_language"], "de");
    let legs = call["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 1);
    assert_eq!(legs[0]["role"], "remote");
    assert_eq!(legs[0]["number"], "+14155550123");
    assert_eq!(legs[0]["language"], "en");
    assert_eq!(legs[0]["status"], "ended");
    assert_eq!(legs[0]["hangup_cause"], "normal_clearing");
    drop(app);
    common::drop_database_blocking(&name);
}

#[tokio::test]
async fn with_ducked_original_audio_each_party_hears_the_other_at_the_configured_gain() {
    let it = spawn().await;
    let mut body = interpreted("es");
    body["original_audio"] = json!("ducked");
    let call = it.place(&body).await;
    assert_eq!(call["original_audio"], "ducked");
    let id = call["id"].as_str().unwrap().to_owned();
    let (agent, remote) = it.answer_both(&id).await;
    // The agent speaks (a 220 Hz tone at amplitude 8000); the remote party listens.
    let agent_stream = party(it.stream_url(&agent), &[(1500, true), (5500, false)], 2000);
    let remote_stream = party(it.stream_url(&remote), &[(7000, false)], 2000);
    let (_, remote_heard) = tokio::join!(
        telnyx_media::play(agent_stream),
        telnyx_media::play(remote_stream)
    );
    let remote_heard = remote_heard.unwrap();
    let audio = remote_heard.audio();
    let translation_at = audio
        .windows(4)
        .position(|w| w == b"TTS:")
        .expect("the translation was heard");
    assert!(
        translation_at >= 160 * 10,
        "the agent's own voice came first"
    );
    let peak = audio[..translation_at]
        .iter()
        .map(|&b| (callbridge::media::mix::to_linear(b) as i32).abs())
        .max()
        .unwrap();
    // −18 dB (the default ORIGINAL_AUDIO_DUCKED_DB) of 8000 is 1007; µ-law steps are ~3 %.
    let expected = 8000.0 * 10f64.powf(-18.0 / 20.0);
    assert!(
        (peak as f64 - expected).abs() / expected < 0.06,
        "peak {peak}, expected about {expected:.0}"
    );
    assert_eq!(
        heard(&remote_heard),
        vec!["[ES] Hello, this is the clinic calling."]
    );
    assert_eq!(
        remote_heard.marks_echoed.len(),
        1,
        "the translation played in full"
    );
    // Paced and carried 40 ms a message (base64 of 320 bytes); only a message that ends at
    // the translation's mark, or a lone frame, holds 20 ms (160 bytes).
    let lengths: Vec<usize> = remote_heard
        .received
        .iter()
        .filter(|v| v["event"] == "media")
        .map(|v| v["media"]["payload"].as_str().unwrap().len())
        .collect();
    assert!(
        lengths.iter().all(|&n| n == 428 || n == 216),
        "message lengths {lengths:?}"
    );
    let short = lengths.iter().filter(|&&n| n == 216).count();
    assert!(
        short * 10 <= lengths.len(),
        "{short} of {} messages held one frame",
        lengths.len()
    );
}

#[tokio::test]
async fn the_agent_hears_ringback_until_the_remote_party_is_on_the_line() {
    let it = spawn().await;
    let call = it.place(&interpreted("es")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let (agent, remote) = it.answer_both(&id).await;
    // The agent's stream is live; the remote party's only 2.5 s later.
    let agent_stream = party(it.stream_url(&agent), &[(4500, false)], 0);
    let remote_stream = party(it.stream_url(&remote), &[(1500, false)], 0);
    let (agent_heard, _) = tokio::join!(telnyx_media::play(agent_stream), async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        telnyx_media::play(remote_stream).await
    });
    let agent_heard = agent_heard.unwrap();
    let audio = agent_heard.audio();
    // Two seconds of the 440 + 480 Hz tone (a second at a time), then `clear`.
    assert_eq!(audio.len(), 16_000, "one second at 1 s and 2 s");
    let peak = audio
        .iter()
        .map(|&b| (callbridge::media::mix::to_linear(b) as i32).abs())
        .max()
        .unwrap();
    assert!((3000..4000).contains(&peak), "ringback level {peak}");
    assert_eq!(
        agent_heard.clears, 1,
        "the tone stops when the remote party is there"
    );
    let clear_at = agent_heard
        .received
        .iter()
        .position(|v| v["event"] == "clear")
        .unwrap();
    assert!(
        agent_heard.received[clear_at..]
            .iter()
            .all(|v| v["event"] != "media"),
        "no ringback after the remote party answered"
    );
}

#[tokio::test]
async fn a_refused_agent_dial_stores_the_call_failed_and_answers_502() {
    let it = spawn().await;
    it.t.sim.inject(callbridge::sim::telnyx::Fault::Status(422));
    let response =
        it.t.app
            .request_as(Method::POST, &it.ada, "/api/calls")
            .json(&interpreted("es"))
            .send()
            .await
            .unwrap();
    assert_problem(response, 502).await;
    let page: Value =
        it.t.app
            .get_as(&it.ada, "/api/calls")
            .await
            .json()
            .await
            .unwrap();
    let call = &page["calls"][0];
    assert_eq!(call["status"], "failed");
    assert!(
        call["failure_reason"]
            .as_str()
            .unwrap()
            .starts_with("the agent could not be dialed")
    );
    let detail = it.call(call["id"].as_str().unwrap()).await;
    assert_eq!(detail["legs"][0]["status"], "failed");
    assert_eq!(
        detail["legs"][1]["status"], "failed",
        "the remote party is never dialed"
    );
    assert_eq!(it.t.sim.commands_named("dial").len(), 1);
}
