//! Calls survive a deploy: a live call whose bridge died (crash: stale heartbeat) or was shut
//! down (deploy: detached) gets its media stream restarted via Telnyx `streaming_start` from
//! a healthy replica, and the lost audio is recorded as a gap.
#![cfg(feature = "sim")]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callbridge::calls::stream_token;
use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx_media::{self, PlayOptions};
use common::TestApp;
use common::telnyx::TelnyxApp;
use uuid::Uuid;

async fn answered_call(t: &TelnyxApp) -> (Uuid, String) {
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let call: serde_json::Value = t.app.request_as(reqwest::Method::POST, &ada, "/api/calls")
        .json(&serde_json::json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send().await.unwrap().json().await.unwrap();
    let id: Uuid = call["id"].as_str().unwrap().parse().unwrap();
    t.app
        .db()
        .await
        .execute(
            "update calls set status = 'answered', answered_at = now() where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let ccid = t.sim.commands_named("dial")[0]
        .call_control_id
        .clone()
        .unwrap();
    (id, ccid)
}

async fn gaps(app: &TestApp, call_id: Uuid) -> Vec<(String, String)> {
    app.db()
        .await
        .query(
            "select track, reason from transcript_gaps where call_id = $1 order by track",
            &[&call_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_bridge_that_stopped_heart_beating_is_re_attached_once() {
    let t = TelnyxApp::spawn().await;
    let (call_id, ccid) = answered_call(&t).await;
    // The replica that held this call's bridge died a minute ago.
    t.app.db().await.execute(
        "insert into media_streams (call_id, replica, stream_id, heartbeat_at) values ($1, 'dead-replica', 's-1', now() - interval '60 seconds')",
        &[&call_id]).await.unwrap();
    assert_eq!(
        callbridge::media::reattach::sweep(&t.app.state)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        callbridge::media::reattach::sweep(&t.app.state)
            .await
            .unwrap(),
        0,
        "claimed: not restarted twice"
    );
    let starts = t.sim.commands_named("streaming_start");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].call_control_id.as_deref(), Some(ccid.as_str()));
    assert_eq!(starts[0].body["stream_track"], "both_tracks");
    let url = starts[0].body["stream_url"].as_str().unwrap();
    let token = url.rsplit('/').next().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        stream_token::verify(
            t.app.state.config.auth.secret.expose().as_bytes(),
            token,
            now
        ),
        Ok(call_id)
    );
    assert_eq!(
        gaps(&t.app, call_id).await,
        vec![
            ("inbound".into(), "bridge_lost".into()),
            ("outbound".into(), "bridge_lost".into())
        ]
    );
    let kinds: Vec<String> = t
        .app
        .db()
        .await
        .query(
            "select kind from call_events where call_id = $1",
            &[&call_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(kinds.contains(&"media.reattached".to_string()));
}

#[tokio::test]
async fn a_deploy_detaches_live_streams_and_another_replica_restarts_them_at_once() {
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    let aai_url = aai.streaming_url();
    let mut a = TelnyxApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", aai_url.as_str()),
    ])
    .await;
    let (call_id, ccid) = answered_call(&a).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = stream_token::mint(
        a.app.state.config.auth.secret.expose().as_bytes(),
        call_id,
        now + 600,
    );
    let mut options = PlayOptions::new(
        format!("ws://127.0.0.1:{}/media/telnyx/{token}", a.app.port),
        telnyx_media::speech_like(&[(4000, true)]),
    );
    options.realtime = true;
    options.send_stop = false;
    let playing = tokio::spawn(telnyx_media::play(options));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let key = a.sim.public_key_base64();
    let base = a.sim.api_base();
    let b = TestApp::spawn_on(
        &a.app.database,
        &[
            ("TELNYX_API_KEY", "sim-api-key"),
            ("TELNYX_PUBLIC_KEY", key.as_str()),
            ("TELNYX_CONNECTION_ID", "sim-connection"),
            ("TELNYX_API_BASE", base.as_str()),
        ],
    )
    .await;
    assert_eq!(
        callbridge::media::reattach::sweep(&b.state).await.unwrap(),
        0,
        "a live bridge is left alone"
    );

    a.app.stop().await; // the deploy: SIGTERM on A
    let _ = playing.await;
    assert_eq!(
        callbridge::media::reattach::sweep(&b.state).await.unwrap(),
        1,
        "B restarts the stream at once"
    );
    let starts = a.sim.commands_named("streaming_start");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].call_control_id.as_deref(), Some(ccid.as_str()));
    assert_eq!(gaps(&b, call_id).await.len(), 2);
    let turns: i64 = b
        .db()
        .await
        .query_one(
            "select count(*) from transcript_turns where call_id = $1",
            &[&call_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(turns, 2, "A stored each track's last turn before leaving");
}
