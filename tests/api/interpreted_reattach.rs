//! An interpreted call survives a deploy: both legs' streams are on replica A, A shuts
//! down mid-call, and replica B's sweep restarts each leg's stream on that leg's own
//! `call_control_id` (inbound track, a stream token bound to the leg). Telnyx reconnects
//! both to B, and the conversation goes on there: each party hears the other, translated.
#![cfg(feature = "sim")]

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callbridge::calls::stream_token;
use callbridge::sim::telnyx::RecordedCommand;
use callbridge::sim::telnyx_media::{self, PlayOptions};
use callbridge::sim::translation::spoken_texts;
use common::TestApp;
use common::interpreted::{AnsweredCall, Vendors, place_answered, stream_url_on};
use serde_json::{Value, json};
use uuid::Uuid;

const AGENT_SAYS: &str = "hello, this is the clinic calling";
const REMOTE_SAYS: &str = "hola, necesito una cita";

fn party(url: String, pattern: &[(u64, bool)], linger_ms: u64, stop: bool) -> PlayOptions {
    PlayOptions {
        send_stop: stop,
        ..common::telnyx::party(url, pattern, linger_ms)
    }
}

async fn media_streams(app: &TestApp, call_id: Uuid) -> Vec<(String, String, bool)> {
    app.db()
        .await
        .query(
            "select leg, replica, ended_at is null as live from media_streams where call_id = $1 order by leg",
            &[&call_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("leg"), r.get("replica"), r.get("live")))
        .collect()
}

#[tokio::test]
async fn a_two_leg_call_is_re_attached_leg_by_leg_after_its_replica_goes_away() {
    let vendors = Vendors::start(&[AGENT_SAYS], &[REMOTE_SAYS]).await;
    let mut a = vendors.replica().await;
    let AnsweredCall {
        call_id,
        leg_ids,
        agent,
        remote,
        ..
    } = place_answered(&a, "off").await;

    // Both legs stream to A (silence for now, until A goes away: starting replica B can
    // take seconds on a loaded machine); A beats for each leg on its own.
    let port = a.app.port;
    let agent_on_a = tokio::spawn(telnyx_media::play(party(
        stream_url_on(agent.body["stream_url"].as_str().unwrap(), port),
        &[(20_000, false)],
        0,
        false,
    )));
    let remote_on_a = tokio::spawn(telnyx_media::play(party(
        stream_url_on(remote.body["stream_url"].as_str().unwrap(), port),
        &[(20_000, false)],
        0,
        false,
    )));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let streams = media_streams(&a.app, call_id).await;
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(streams.iter().all(|(_, _, live)| *live));
    assert_eq!(
        streams.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["agent", "remote"]
    );

    let b = vendors.second_replica(&a).await;
    assert_eq!(
        callbridge::media::reattach::sweep(&b.state).await.unwrap(),
        0,
        "live legs are left alone"
    );

    a.app.stop().await; // the deploy: SIGTERM on A, both legs' bridges detach
    let _ = agent_on_a.await;
    let _ = remote_on_a.await;
    assert!(
        media_streams(&b, call_id)
            .await
            .iter()
            .all(|(_, replica, live)| replica == "detached" && *live)
    );
    assert_eq!(
        callbridge::media::reattach::sweep(&b.state).await.unwrap(),
        2,
        "B restarts each leg's stream"
    );
    assert_eq!(
        callbridge::media::reattach::sweep(&b.state).await.unwrap(),
        0
    );

    let starts = a.sim.commands_named("streaming_start");
    assert_eq!(starts.len(), 2);
    let secret = b.state.config.auth.secret.expose().as_bytes();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start_of = |dial: &RecordedCommand| {
        starts
            .iter()
            .find(|s| s.call_control_id == dial.call_control_id)
            .cloned()
            .unwrap_or_else(|| panic!("no streaming_start on {:?}", dial.call_control_id))
    };
    let (agent_start, remote_start) = (start_of(&agent), start_of(&remote));
    for (start, leg_id) in [(&agent_start, leg_ids[0]), (&remote_start, leg_ids[1])] {
        assert_eq!(start.body["stream_track"], "inbound_track");
        let url = start.body["stream_url"].as_str().unwrap();
        let token = url.rsplit('/').next().unwrap();
        assert_eq!(
            stream_token::verify(secret, token, now),
            Ok(leg_id),
            "the new stream is bound to its leg"
        );
    }

    // Telnyx reconnects both legs to B: the conversation goes on, each hearing the other.
    let agent_on_b = party(
        stream_url_on(agent_start.body["stream_url"].as_str().unwrap(), b.port),
        &[(1200, true), (5800, false)],
        2500,
        true,
    );
    let remote_on_b = party(
        stream_url_on(remote_start.body["stream_url"].as_str().unwrap(), b.port),
        &[(2500, false), (1200, true), (3300, false)],
        2500,
        true,
    );
    let (agent_heard, remote_heard) = tokio::join!(
        telnyx_media::play(agent_on_b),
        telnyx_media::play(remote_on_b)
    );
    assert_eq!(
        spoken_texts(&agent_heard.unwrap().audio()),
        vec!["[EN-US] Hola, necesito una cita."]
    );
    assert_eq!(
        spoken_texts(&remote_heard.unwrap().audio()),
        vec!["[ES] Hello, this is the clinic calling."]
    );
    let kinds: Vec<Value> = b
        .db()
        .await
        .query(
            "select data from call_events where call_id = $1 and kind = 'media.reattached'",
            &[&call_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Value>("data")["leg"].clone())
        .collect();
    assert_eq!(kinds.len(), 2);
    assert!(kinds.contains(&json!("agent")) && kinds.contains(&json!("remote")));
}

/// A leg's stream that drops without Telnyx's `stop` (a network fault, not a hangup) is not
/// the end of the leg: it is left for the re-attach sweep, which restarts it on that leg's
/// own call control id, while the other leg streams on. A stream that drops after its leg's
/// call control reported the hangup is over.
#[tokio::test]
async fn a_leg_stream_dropped_without_stop_waits_for_re_attach_unless_the_leg_hung_up() {
    let vendors = Vendors::start(&[], &[]).await;
    let a = vendors.replica().await;
    let AnsweredCall {
        call_id,
        agent,
        remote,
        ..
    } = place_answered(&a, "ducked").await;
    let port = a.app.port;

    // The agent's stream drops after a second, no `stop`; the remote party's goes on.
    let remote_on_a = tokio::spawn(telnyx_media::play(party(
        stream_url_on(remote.body["stream_url"].as_str().unwrap(), port),
        &[(6_000, false)],
        0,
        false,
    )));
    telnyx_media::play(party(
        stream_url_on(agent.body["stream_url"].as_str().unwrap(), port),
        &[(1_000, false)],
        0,
        false,
    ))
    .await
    .unwrap();
    let detached = async {
        loop {
            let streams = media_streams(&a.app, call_id).await;
            if streams
                .iter()
                .any(|(leg, replica, _)| leg == "agent" && replica == "detached")
            {
                return streams;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let streams = tokio::time::timeout(Duration::from_secs(10), detached)
        .await
        .expect("the dropped stream is marked for re-attach");
    assert!(
        streams.iter().all(|(_, _, live)| *live),
        "neither stream is ended: {streams:?}"
    );
    let leg_status: String = a
        .app
        .db()
        .await
        .query_one(
            "select status from call_legs where call_id = $1 and role = 'agent'",
            &[&call_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leg_status, "answered", "the leg goes on");
    assert_eq!(
        callbridge::media::reattach::sweep(&a.app.state)
            .await
            .unwrap(),
        1,
        "the sweep restarts the dropped leg's stream"
    );
    let starts = a.sim.commands_named("streaming_start");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].call_control_id, agent.call_control_id);
    assert_eq!(starts[0].body["stream_track"], "inbound_track");

    // The remote party hangs up; their stream then drops without `stop`: that is the end.
    a.deliver_leg(&remote, 3..4, "callee").await;
    let _ = remote_on_a.await;
    let ended = async {
        loop {
            let streams = media_streams(&a.app, call_id).await;
            if streams
                .iter()
                .any(|(leg, _, live)| leg == "remote" && !live)
            {
                return streams;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let streams = tokio::time::timeout(Duration::from_secs(15), ended)
        .await
        .expect("the hung-up leg's stream ends");
    let remote_stream = streams.iter().find(|s| s.0 == "remote").unwrap();
    assert_ne!(remote_stream.1, "detached", "{streams:?}");
    assert_eq!(
        callbridge::media::reattach::sweep(&a.app.state)
            .await
            .unwrap(),
        0,
        "nothing more to restart"
    );
    assert_eq!(a.sim.commands_named("streaming_start").len(), 1);
}
