//! Recordings of interpreted calls (issue 13 item 9, ADR 0036), end to end through the
//! Telnyx, recording-server and AssemblyAI async simulators: each leg is dialed recording,
//! each leg's `call.recording.saved` becomes its own recording of the call tagged with the
//! leg's role, each gets its own post-call transcript, and each agreement compares that
//! party's channel with that party's live turns only.
#![cfg(feature = "sim")]

use crate::common;

use std::time::Duration;

use callbridge::sim::assemblyai_async::AssemblyAiAsyncSim;
use callbridge::sim::recordings::{self as rec_sim, RecordingServerSim};
use callbridge::sim::telnyx::{self as telnyx_sim, RecordedCommand};
use common::telnyx::TelnyxApp;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const WEBHOOK_SECRET: &str = "aai-webhook-secret-for-tests";
const AGENT_SAYS: &str = "hello this is the clinic calling";
const REMOTE_SAYS: &str = "hola necesito una cita";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `call.recording.saved` on `dial`'s leg for a stored dual-channel WAV.
async fn recording_saved(
    t: &TelnyxApp,
    server: &RecordingServerSim,
    dial: &RecordedCommand,
    name: &str,
) {
    server.add(&format!("{name}.wav"), rec_sim::wav(2_000, 2, 8_000));
    let link = server.link(&format!("{name}.wav"), Duration::from_secs(600));
    let base = telnyx_sim::call_payload(
        dial.call_control_id.as_deref().unwrap(),
        dial.body["client_state"].as_str(),
        dial.body["from"].as_str().unwrap(),
        dial.body["to"].as_str().unwrap(),
        "outgoing",
    );
    let payload = rec_sim::recording_saved_payload(&base, name, &link, None, "dual");
    let event = t.sim.event("call.recording.saved", payload);
    t.deliver_all(&[event]).await;
}

#[tokio::test]
async fn each_leg_is_its_own_recording_with_its_own_transcript_and_agreement() {
    let server = RecordingServerSim::start(0).await.unwrap();
    let aai = AssemblyAiAsyncSim::start("aai-test-key", 0).await.unwrap();
    // AssemblyAI must reach our webhook on PUBLIC_BASE_URL, so the port is chosen first.
    let port = free_port();
    let (port_text, public, base) = (
        port.to_string(),
        format!("http://127.0.0.1:{port}"),
        aai.api_base(),
    );
    let t = TelnyxApp::spawn_with(&[
        ("PORT", port_text.as_str()),
        ("PUBLIC_BASE_URL", public.as_str()),
        ("ASSEMBLYAI_API_KEY", "aai-test-key"),
        ("ASSEMBLYAI_API_BASE", base.as_str()),
        ("ASSEMBLYAI_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ])
    .await;
    let app = &t.app;
    let ada = app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let response = app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&json!({
            "from": "+14155550100",
            "agent": {"number": "+14155550111", "language": "en"},
            "remote": {"number": "+14155550123", "language": "es"},
            "original_audio": "off",
            "record": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let call: Value = response.json().await.unwrap();
    let id = call["id"].as_str().unwrap().to_owned();

    // Both legs are dialed recording from answer, dual-channel.
    let agent = t.sim.dial_of_leg("agent").unwrap();
    t.deliver_leg(&agent, 0..3, "caller").await;
    let remote = t.sim.dial_of_leg("remote").unwrap();
    t.deliver_leg(&remote, 0..3, "callee").await;
    for dial in [&agent, &remote] {
        assert_eq!(dial.body["record"], "record-from-answer", "{}", dial.body);
        assert_eq!(dial.body["record_channels"], "dual");
    }

    // Live turns of both parties, as the bridge stores them (one turn each).
    let db = app.db().await;
    let call_uuid: Uuid = id.parse().unwrap();
    for (track, text, start) in [("agent", AGENT_SAYS, 0i64), ("remote", REMOTE_SAYS, 3000)] {
        db.execute(
            "insert into transcript_turns (call_id, track, turn_index, session_id, text, start_ms, end_ms)
             values ($1, $2, 0, 's', $3, $4::bigint, $4::bigint + 1500)",
            &[&call_uuid, &track, &text, &start],
        )
        .await
        .unwrap();
    }

    // Each leg's file: the party on channel 1, what they heard (translated) on channel 2.
    // The agent's post-call transcript matches the agent's turn exactly; the remote party's
    // has one word the live transcript missed.
    aai.set_script(&[AGENT_SAYS, "hello I need an appointment"]);
    recording_saved(&t, &server, &agent, "rec-agent").await;
    assert!(aai.wait_for_webhooks(1, Duration::from_secs(20)).await);
    t.drain().await;
    aai.set_script(&["hola necesito una cita urgente", "hola aquí la clínica"]);
    recording_saved(&t, &server, &remote, "rec-remote").await;
    assert!(aai.wait_for_webhooks(2, Duration::from_secs(20)).await);
    t.drain().await;

    let submissions = aai.submissions();
    assert_eq!(submissions.len(), 2);
    assert!(submissions.iter().all(|s| s["multichannel"] == true));

    let listed: Value = app
        .get_as(&ada, &format!("/api/calls/{id}/recordings"))
        .await
        .json()
        .await
        .unwrap();
    let listed = listed["recordings"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let of = |leg: &str| {
        listed
            .iter()
            .find(|r| r["leg"] == leg)
            .unwrap_or_else(|| panic!("no {leg} recording: {listed:?}"))
    };
    let (agent_rec, remote_rec) = (of("agent"), of("remote"));
    assert_ne!(
        agent_rec["id"], remote_rec["id"],
        "two recordings, not two versions"
    );
    for recording in [agent_rec, remote_rec] {
        assert_eq!(recording["source"], "telnyx");
        assert_eq!(recording["channels"], "dual");
        assert_eq!(recording["versions"].as_array().unwrap().len(), 1);
        assert_eq!(recording["post_call_status"], "completed");
        assert_eq!(recording["agreement"]["method"], "lcs_dice");
    }
    // Agent: the agent's 6 live words against channel 1's 6 words; neither the remote
    // party's turn nor the translation on channel 2 counts.
    let agreement = &agent_rec["agreement"];
    assert_eq!(agreement["live_words"], 6, "{agreement}");
    assert_eq!(agreement["post_call_words"], 6);
    assert_eq!(agreement["common_words"], 6);
    assert_eq!(agreement["score"], 1.0);
    // Remote: 4 live words against 5 post-call words, 4 in common: 8/9.
    let agreement = &remote_rec["agreement"];
    assert_eq!(agreement["live_words"], 4, "{agreement}");
    assert_eq!(agreement["post_call_words"], 5);
    assert_eq!(agreement["common_words"], 4);
    assert!((agreement["score"].as_f64().unwrap() - 8.0 / 9.0).abs() < 1e-9);

    // The call's transcript view compares its latest post-call transcript (the remote
    // party's) with that party's turns too.
    let transcript: Value = app
        .get_as(&ada, &format!("/api/calls/{id}/transcript"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(transcript["post_call"]["recording_id"], remote_rec["id"]);
    assert_eq!(transcript["agreement"], remote_rec["agreement"]);

    // Redelivered: nothing new.
    recording_saved(&t, &server, &agent, "rec-agent").await;
    let again: Value = app
        .get_as(&ada, &format!("/api/calls/{id}/recordings"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["recordings"].as_array().unwrap().len(), 2);
    let dead: i64 = db
        .query_one("select count(*) from jobs where status = 'dead'", &[])
        .await
        .unwrap()
        .get("count");
    assert_eq!(dead, 0);
}
