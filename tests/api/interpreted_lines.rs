//! Inbound interpreted lines end to end through the simulators: a caller dials one of the
//! organisation's numbers configured as a line; the line answers, greets them in their
//! language (each candidate language when `auto`), rings the agent, and the call is
//! interpreted both ways. An agent who does not answer in time leaves the caller an apology
//! in their language, then both legs end and the outcome is recorded. A number that is not
//! a line keeps the one-leg answer.
#![cfg(feature = "sim")]

use crate::common;

use std::time::{Duration, Instant};

use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx::{Autopilot, RecordedCommand};
use callbridge::sim::telnyx_media;
use callbridge::sim::translation::{self as sim, TranslationSim, spoken_texts};
use common::assert_problem;
use common::authjs::Session;
use common::telnyx::{TelnyxApp, party};
use reqwest::Method;
use serde_json::{Value, json};

const LINE: &str = "+14155550100";
const AGENT: &str = "+14155550111";
const CALLER: &str = "+34911222333";
const AGENT_SAYS: &str = "hello, this is the clinic";
const CALLER_SAYS: &str = "hola, necesito una cita";
const GREETING: &str = "Thank you for calling the clinic.";

struct Lines {
    t: TelnyxApp,
    _aai: AssemblyAiSim,
    _providers: TranslationSim,
    ada: Session,
    org: String,
    number_id: String,
}

async fn spawn(answer_after: Duration) -> Lines {
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    aai.set_model_script("universal-streaming-english", "en", &[AGENT_SAYS]);
    aai.set_model_script("universal-streaming-multilingual", "es", &[CALLER_SAYS]);
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
    // Telnyx plays both parties: the agent answers after `answer_after`, each prompt
    // speaks for 100 ms, hang-ups are reported.
    t.sim.set_autopilot(Some(Autopilot {
        answer_after,
        hangup_after: None,
    }));
    t.sim.speak_for(Duration::from_millis(100));
    t.sim.deliver_webhooks_to(&t.webhook_url());
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, LINE).await;
    let me: Value = t.app.get_as(&ada, "/api/me").await.json().await.unwrap();
    let org = me["organisations"][0]["id"].as_str().unwrap().to_owned();
    let numbers: Value = t
        .app
        .get_as(&ada, "/api/phone-numbers")
        .await
        .json()
        .await
        .unwrap();
    let number_id = numbers[0]["id"].as_str().unwrap().to_owned();
    Lines {
        t,
        _aai: aai,
        _providers: providers,
        ada,
        org,
        number_id,
    }
}

fn auto_line() -> Value {
    json!({
        "forward_to": AGENT,
        "caller_language": "auto",
        "caller_languages": ["es", "en"],
        "agent_language": "en",
        "caller_voice_id": "voice-es",
        "agent_voice_id": "voice-en",
        "greeting": GREETING,
        "agent_timeout_secs": 20,
        "original_audio": "off",
    })
}

impl Lines {
    fn line_path(&self) -> String {
        format!("/api/phone-numbers/{}/line", self.number_id)
    }

    async fn put_line(&self, body: &Value) -> reqwest::Response {
        self.t
            .app
            .request_as(Method::PUT, &self.ada, &self.line_path())
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Drains the job queue until `check` finds what it waits for (webhooks from the
    /// simulated parties arrive on their own).
    async fn until<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            self.t.drain().await;
            if let Some(found) = check().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn only_call(&self) -> Value {
        self.until("the inbound call", async || {
            let page: Value = self
                .t
                .app
                .get_as(&self.ada, "/api/calls")
                .await
                .json()
                .await
                .ok()?;
            let id = page["calls"].as_array()?.first()?["id"]
                .as_str()?
                .to_owned();
            Some(self.call(&id).await)
        })
        .await
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

    async fn until_status(&self, id: &str, status: &str) -> Value {
        self.until(&format!("status {status}"), async || {
            let call = self.call(id).await;
            (call["status"] == status).then_some(call)
        })
        .await
    }

    async fn commands(&self, action: &str, at_least: usize) -> Vec<RecordedCommand> {
        self.until(&format!("{at_least} {action} commands"), async || {
            let found = self.t.sim.commands_named(action);
            (found.len() >= at_least).then_some(found)
        })
        .await
    }

    async fn events(&self, id: &str) -> Vec<String> {
        let rows = self
            .t
            .app
            .db()
            .await
            .query(
                "select kind from call_events where call_id = $1::text::uuid order by seq",
                &[&id],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get("kind")).collect()
    }

    fn stream_url(&self, command: &RecordedCommand) -> String {
        let url = command.body["stream_url"].as_str().unwrap();
        let token = url.rsplit('/').next().unwrap();
        format!("ws://127.0.0.1:{}/media/telnyx/{token}", self.t.app.port)
    }
}

#[tokio::test]
async fn a_caller_to_a_line_is_greeted_in_each_candidate_language_then_talks_with_the_agent() {
    let it = spawn(Duration::from_millis(1500)).await;
    let saved = it.put_line(&auto_line()).await;
    assert_eq!(saved.status(), 200);
    let line: Value = saved.json().await.unwrap();
    assert_eq!(line["number"], LINE);
    assert_eq!(line["caller_language"], "auto");
    // The greeting is translated when the line is saved: the admin sees what callers hear.
    assert_eq!(line["prompts"][0]["language"], "es");
    assert_eq!(line["prompts"][0]["greeting"], format!("[ES] {GREETING}"));
    assert!(
        line["prompts"][0]["apology"]
            .as_str()
            .unwrap()
            .starts_with("[ES] We are sorry")
    );
    assert_eq!(line["prompts"][1]["language"], "en");
    assert_eq!(line["prompts"][1]["greeting"], GREETING);
    let fetched: Value =
        it.t.app
            .get_as(&it.ada, &it.line_path())
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(fetched, line);

    let caller_ccid =
        it.t.sim
            .inbound_call(&it.t.webhook_url(), CALLER, LINE)
            .await;
    let call = it.only_call().await;
    let id = call["id"].as_str().unwrap().to_owned();
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["interpreted"], true);
    assert_eq!(call["line_number_id"], it.number_id);
    assert_eq!(call["legs"][1]["role"], "remote");
    assert_eq!(call["legs"][1]["number"], CALLER);
    assert_eq!(call["legs"][1]["language"], "auto");
    assert_eq!(call["legs"][0]["number"], AGENT);

    // The caller's leg is answered with its own stream (their voice in, translations out).
    let answer = &it.commands("answer", 1).await[0];
    assert_eq!(
        answer.call_control_id.as_deref(),
        Some(caller_ccid.as_str())
    );
    assert_eq!(answer.body["stream_track"], "inbound_track");
    assert_eq!(answer.body["stream_bidirectional_mode"], "rtp");

    // Once answered: the agent is rung from the line's number for the line's timeout, and
    // the caller hears the greeting in Spanish, then in English.
    let dial = &it.commands("dial", 1).await[0];
    assert_eq!(dial.body["to"], AGENT);
    assert_eq!(dial.body["from"], LINE);
    assert_eq!(dial.body["timeout_secs"], 20);
    assert_eq!(dial.body["stream_track"], "inbound_track");
    let speaks = it.commands("speak", 2).await;
    assert!(
        speaks
            .iter()
            .all(|s| s.call_control_id.as_deref() == Some(caller_ccid.as_str()))
    );
    assert_eq!(speaks[0].body["language"], "es-ES");
    assert_eq!(speaks[0].body["payload"], format!("[ES] {GREETING}"));
    assert_eq!(speaks[1].body["language"], "en-US");
    assert_eq!(speaks[1].body["payload"], GREETING);

    // The agent answers: the conversation starts.
    let call = it.until_status(&id, "answered").await;
    assert_eq!(call["line_outcome"], "connected");
    assert_eq!(call["legs"][0]["status"], "answered");
    assert_eq!(
        it.t.sim.commands_named("speak").len(),
        2,
        "nothing more is spoken"
    );

    // Each party hears only the other, translated; the caller's language is detected.
    let agent_stream = party(it.stream_url(dial), &[(1200, true), (5800, false)], 2500);
    let caller_stream = party(
        it.stream_url(answer),
        &[(2500, false), (1200, true), (3300, false)],
        2500,
    );
    let (agent_heard, caller_heard) = tokio::join!(
        telnyx_media::play(agent_stream),
        telnyx_media::play(caller_stream)
    );
    let (agent_heard, caller_heard) = (agent_heard.unwrap(), caller_heard.unwrap());
    assert_eq!(
        spoken_texts(&agent_heard.audio()),
        vec!["[EN-US] Hola, necesito una cita."]
    );
    assert_eq!(
        spoken_texts(&caller_heard.audio()),
        vec!["[ES] Hello, this is the clinic."]
    );

    // The caller hangs up: the agent's leg is hung up, the call ends.
    it.t.sim.party_hangs_up(&caller_ccid).await;
    let call = it.until_status(&id, "ended").await;
    assert_eq!(call["hangup_source"], "remote:caller");
    assert_eq!(call["legs"][0]["status"], "ended");
    assert_eq!(call["line_outcome"], "connected");
    let hangups = it.t.sim.commands_named("hangup");
    assert_eq!(hangups.len(), 1);
    assert_eq!(hangups[0].call_control_id, dial.call_control_id);
    let events = it.events(&id).await;
    assert!(events.contains(&"line.greeting".to_owned()), "{events:?}");
}

#[tokio::test]
async fn an_agent_who_does_not_answer_leaves_the_caller_an_apology_and_both_legs_end() {
    let it = spawn(Duration::from_millis(200)).await;
    it.t.sim.never_answer(AGENT);
    let mut line = auto_line();
    line["caller_language"] = json!("es");
    line["caller_languages"] = json!([]);
    line["agent_timeout_secs"] = json!(5);
    line["apology"] = json!("Nobody is free right now, sorry.");
    assert_eq!(it.put_line(&line).await.status(), 200);

    let caller_ccid =
        it.t.sim
            .inbound_call(&it.t.webhook_url(), CALLER, LINE)
            .await;
    let call = it.only_call().await;
    let id = call["id"].as_str().unwrap().to_owned();
    let dial = &it.commands("dial", 1).await[0];
    assert_eq!(dial.body["timeout_secs"], 5);

    // Telnyx gives up on the agent after 5 s; the caller hears the apology in Spanish and
    // is hung up once it has been spoken.
    let call = it.until_status(&id, "failed").await;
    assert_eq!(
        call["failure_reason"],
        "the agent did not connect (no answer within 5 s)"
    );
    assert_eq!(call["line_outcome"], "agent_no_answer");
    assert_eq!(call["legs"][0]["status"], "ended");
    assert_eq!(call["legs"][0]["hangup_cause"], "timeout");
    assert_eq!(call["legs"][1]["status"], "ended");
    assert!(
        call["answered_at"].is_null(),
        "the conversation never began"
    );

    let commands = it.t.sim.commands();
    let speaks: Vec<&RecordedCommand> = commands.iter().filter(|c| c.action == "speak").collect();
    assert_eq!(speaks.len(), 2, "greeting and apology");
    assert_eq!(speaks[0].body["payload"], format!("[ES] {GREETING}"));
    assert_eq!(
        speaks[1].body["payload"],
        "[ES] Nobody is free right now, sorry."
    );
    assert_eq!(speaks[1].body["language"], "es-ES");
    let apology_at = commands
        .iter()
        .position(|c| c.action == "speak" && c.body["payload"] == speaks[1].body["payload"])
        .unwrap();
    let hangup_at = commands
        .iter()
        .position(|c| c.action == "hangup")
        .expect("the caller was hung up");
    assert!(hangup_at > apology_at, "hung up only after the apology");
    assert_eq!(
        commands[hangup_at].call_control_id.as_deref(),
        Some(caller_ccid.as_str())
    );
    assert_eq!(
        commands.iter().filter(|c| c.action == "hangup").count(),
        1,
        "the agent's leg had already ended"
    );
    let events = it.events(&id).await;
    assert!(
        events.contains(&"line.agent_no_answer".to_owned()),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_number_that_is_no_longer_a_line_answers_one_leg_calls_again() {
    let it = spawn(Duration::from_millis(200)).await;
    assert_eq!(it.put_line(&auto_line()).await.status(), 200);
    let deleted =
        it.t.app
            .request_as(Method::DELETE, &it.ada, &it.line_path())
            .send()
            .await
            .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_problem(it.t.app.get_as(&it.ada, &it.line_path()).await, 404).await;

    it.t.sim
        .inbound_call(&it.t.webhook_url(), CALLER, LINE)
        .await;
    let call = it.only_call().await;
    assert_eq!(call["interpreted"], false);
    assert!(call["line_number_id"].is_null());
    let answer = &it.commands("answer", 1).await[0];
    assert_eq!(answer.body["stream_track"], "both_tracks");
    assert!(
        answer.body.get("record").is_none(),
        "not recorded unless asked"
    );
    assert!(it.t.sim.commands_named("dial").is_empty());
    assert!(it.t.sim.commands_named("speak").is_empty());
}

/// ADR 0036: a recorded line records each party on its own leg — the caller from the answer
/// command (they are answered, not dialed), the agent from the dial — and the caller's
/// `call.recording.saved` becomes the call's `remote` recording.
#[tokio::test]
async fn a_recorded_line_records_the_caller_from_the_answer_and_the_agent_from_the_dial() {
    use callbridge::sim::recordings::{self as rec_sim, RecordingServerSim};
    use callbridge::sim::telnyx as telnyx_sim;

    let it = spawn(Duration::from_millis(200)).await;
    let mut line = auto_line();
    line["record"] = json!(true);
    let saved: Value = it.put_line(&line).await.json().await.unwrap();
    assert_eq!(saved["record"], true);
    let read: Value =
        it.t.app
            .get_as(&it.ada, &it.line_path())
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(read["record"], true);

    it.t.sim
        .inbound_call(&it.t.webhook_url(), CALLER, LINE)
        .await;
    let call = it.only_call().await;
    let id = call["id"].as_str().unwrap().to_owned();
    assert_eq!(call["record"], true);
    let answer = it.commands("answer", 1).await.remove(0);
    let dial = it.commands("dial", 1).await.remove(0);
    for command in [&answer, &dial] {
        assert_eq!(
            command.body["record"], "record-from-answer",
            "{}",
            command.body
        );
        assert_eq!(command.body["record_channels"], "dual");
        assert_eq!(command.body["record_format"], "wav");
    }

    // The caller's leg's recording is saved on the caller's call_control_id.
    let server = RecordingServerSim::start(0).await.unwrap();
    server.add("caller.wav", rec_sim::wav(1_000, 2, 8_000));
    let link = server.link("caller.wav", Duration::from_secs(600));
    let base = telnyx_sim::call_payload(
        answer.call_control_id.as_deref().unwrap(),
        answer.body["client_state"].as_str(),
        CALLER,
        LINE,
        "incoming",
    );
    let payload = rec_sim::recording_saved_payload(&base, "rec-caller", &link, None, "dual");
    let event = it.t.sim.event("call.recording.saved", payload);
    assert_eq!(
        it.t.sim.deliver(&it.t.webhook_url(), &event).await.unwrap(),
        200
    );
    let listed = it
        .until("the caller's recording", async || {
            let listed: Value =
                it.t.app
                    .get_as(&it.ada, &format!("/api/calls/{id}/recordings"))
                    .await
                    .json()
                    .await
                    .ok()?;
            let recordings = listed["recordings"].as_array()?.clone();
            (!recordings.is_empty()).then_some(recordings)
        })
        .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["leg"], "remote");
    assert_eq!(listed[0]["channels"], "dual");
}

#[tokio::test]
async fn line_settings_are_checked_and_kept_to_the_organisation() {
    let it = spawn(Duration::from_millis(200)).await;
    let refused = |body: Value, status: u16, needle: &'static str| {
        let it = &it;
        async move {
            let problem = assert_problem(it.put_line(&body).await, status).await;
            let detail = problem["detail"].as_str().unwrap_or_default().to_owned();
            assert!(detail.contains(needle), "{needle:?} not in {detail:?}");
        }
    };
    let with = |key: &str, value: Value| {
        let mut body = auto_line();
        body[key] = value;
        body
    };
    refused(with("caller_languages", json!([])), 422, "caller_languages").await;
    refused(with("caller_language", json!("ES")), 422, "caller_language").await;
    refused(with("agent_language", json!("auto")), 422, "agent_language").await;
    refused(with("forward_to", json!("4155550111")), 422, "forward_to").await;
    refused(with("forward_to", json!(LINE)), 422, "platform").await;
    refused(with("greeting", json!("x".repeat(301))), 422, "greeting").await;
    refused(
        with("agent_timeout_secs", json!(2)),
        422,
        "agent_timeout_secs",
    )
    .await;
    refused(with("original_audio", json!("loud")), 422, "original_audio").await;
    // A language no speech model transcribes, named.
    refused(with("caller_languages", json!(["es", "tlh"])), 422, "tlh").await;
    // The agent is dialed for every caller: the organisation's dialing countries apply.
    refused(with("forward_to", json!("+81312345678")), 403, "JP").await;
    assert_eq!(
        it.t.app
            .request_as(Method::PUT, &it.ada, &it.line_path())
            .json(&with("colour", json!("blue")))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
            / 100,
        4
    );

    // Not a line yet; another organisation's number does not exist; members cannot
    // configure lines.
    assert_problem(it.t.app.get_as(&it.ada, &it.line_path()).await, 404).await;
    let cy = it.t.app.sign_in("Cy").await;
    let others =
        it.t.app
            .request_as(Method::PUT, &cy, &it.line_path())
            .json(&auto_line())
            .send()
            .await
            .unwrap();
    assert_problem(others, 404).await;
    let bob = it.t.app.sign_in("Bob").await;
    let org: uuid::Uuid = it.org.parse().unwrap();
    it.t.app
        .db()
        .await
        .execute(
            "insert into memberships (organisation_id, user_id, role) values ($1, $2, 'member')",
            &[&org, &bob.user_id],
        )
        .await
        .unwrap();
    let member =
        it.t.app
            .request_as(Method::PUT, &bob, &it.line_path())
            .header("x-org-id", &it.org)
            .json(&auto_line())
            .send()
            .await
            .unwrap();
    assert_problem(member, 403).await;
    let read =
        it.t.app
            .request_as(Method::GET, &bob, &it.line_path())
            .header("x-org-id", &it.org)
            .send()
            .await
            .unwrap();
    assert_problem(read, 404).await;
    // Saved, then replaced in place.
    assert_eq!(it.put_line(&auto_line()).await.status(), 200);
    let replaced: Value = it
        .put_line(&with("agent_timeout_secs", json!(45)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(replaced["agent_timeout_secs"], 45);
}
