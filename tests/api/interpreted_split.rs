//! An interpreted call whose two legs stream to two replicas (docs/adr/0035): the agent's
//! stream on replica A, the remote party's on replica B, one database. Each party's turns
//! are handed over through PostgreSQL `NOTIFY` and played into the other leg, in order,
//! exactly once. Then B goes away mid-call: the agent speaks while the remote leg has no
//! stream, A re-attaches the remote leg, and the remote party hears that turn too.
#![cfg(feature = "sim")]

use crate::common;

use std::time::Duration;

use callbridge::sim::telnyx_media::{self, PlayOptions};
use callbridge::sim::translation::spoken_texts;
use common::TestApp;
use common::interpreted::{AnsweredCall, Vendors, place_answered, stream_url_on};
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

const AGENT_SAYS: [&str; 4] = [
    "hello, this is the clinic calling",
    "your appointment is on monday",
    "please bring your insurance card",
    "see you then",
];
const REMOTE_SAYS: [&str; 2] = ["hola, necesito una cita", "muy bien, gracias"];

/// One party's stream, ended with Telnyx's `stop`.
fn party(url: String, pattern: &[(u64, bool)], linger_ms: u64) -> PlayOptions {
    PlayOptions {
        send_stop: true,
        ..common::telnyx::party(url, pattern, linger_ms)
    }
}

/// The party's stored turns, in order: what the other party must hear, each once.
async fn turns(app: &TestApp, call_id: Uuid, track: &str) -> Vec<String> {
    app.db()
        .await
        .query(
            "select text from transcript_turns where call_id = $1 and track = $2 order by turn_index",
            &[&call_id, &track],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn legs_on_two_replicas_hear_each_other_in_order_exactly_once_across_a_re_attach() {
    let vendors = Vendors::start(&AGENT_SAYS, &REMOTE_SAYS).await;
    let a = vendors.replica().await;
    let mut b = vendors.second_replica(&a).await;
    let AnsweredCall {
        call_id,
        agent,
        remote,
        ..
    } = place_answered(&a, "off").await;

    // t = 0: the agent's stream reaches A, the remote party's B. They take turns.
    let t0 = Instant::now();
    let agent_on_a = tokio::spawn(telnyx_media::play(party(
        stream_url_on(agent.body["stream_url"].as_str().unwrap(), a.app.port),
        &[
            (300, false),
            (1200, true), // 0.3 s: turn 0, handed to B
            (9200, false),
            (1200, true), // 10.7 s: turn 1, handed to B
            (9600, false),
            (1200, true), // 21.5 s: turn 2, while the remote leg has no stream
            (5300, false),
            (1200, true), // 28 s: turn 3, in process on A (the remote leg re-attached there)
            (2800, false),
        ],
        4000,
    )));
    // The remote party's audio for the whole call (32 s); each stream carries what is said
    // while it is connected. Nobody speaks while a translation plays to them (no barge-in).
    let remote_pattern = [
        (5500, false),
        (1200, true), // 5.5 s: turn 0, handed to A
        (9200, false),
        (1200, true), // 15.9 s: turn 1, handed to A
        (14_900, false),
    ];
    let remote_on_b = tokio::spawn(telnyx_media::play(party(
        stream_url_on(remote.body["stream_url"].as_str().unwrap(), b.port),
        &remote_pattern,
        0,
    )));

    // 20.5 s: B goes away (a deploy): the remote leg's bridge detaches.
    tokio::time::sleep_until(t0 + Duration::from_millis(20_500)).await;
    b.stop().await;
    let remote_heard_on_b = remote_on_b.await.unwrap().unwrap();

    // 24.5 s: A's sweep restarts the remote leg's stream, and Telnyx connects it to A.
    tokio::time::sleep_until(t0 + Duration::from_millis(24_500)).await;
    assert_eq!(
        callbridge::media::reattach::sweep(&a.app.state)
            .await
            .unwrap(),
        1,
        "only the remote leg lost its stream"
    );
    let start = a
        .sim
        .commands_named("streaming_start")
        .into_iter()
        .find(|s| s.call_control_id == remote.call_control_id)
        .expect("the remote leg's stream is restarted");
    let mut remote_on_a = party(
        stream_url_on(start.body["stream_url"].as_str().unwrap(), a.app.port),
        &remote_pattern,
        4000,
    );
    // Telnyx's new stream carries the call's audio from the moment it connects.
    remote_on_a.call_started = remote_heard_on_b.started;
    let (remote_heard_on_a, agent_heard) =
        tokio::join!(telnyx_media::play(remote_on_a), agent_on_a);
    let remote_heard_on_a = remote_heard_on_a.unwrap();
    let agent_heard = agent_heard.unwrap().unwrap();

    let agent_turns = turns(&a.app, call_id, "agent").await;
    let remote_turns = turns(&a.app, call_id, "remote").await;
    assert_eq!(agent_turns.len(), 4, "{agent_turns:?}");
    assert_eq!(remote_turns.len(), 2, "{remote_turns:?}");
    // The agent heard each of the remote party's turns once, in order, through B → A.
    assert_eq!(
        spoken_texts(&agent_heard.audio()),
        remote_turns
            .iter()
            .map(|t| format!("[EN-US] {t}"))
            .collect::<Vec<_>>()
    );
    // The remote party heard turns 0 and 1 on B, and on A both the turn said while their
    // leg had no stream and the one after: each once, in order, none of their own.
    let expected: Vec<String> = agent_turns.iter().map(|t| format!("[ES] {t}")).collect();
    assert_eq!(spoken_texts(&remote_heard_on_b.audio()), expected[..2]);
    assert_eq!(spoken_texts(&remote_heard_on_a.audio()), expected[2..]);

    // One utterance per turn and listener, numbers unique across the two hubs.
    let rows = a
        .app
        .db()
        .await
        .query(
            "select seq, source_track, source_turn_index, status from utterances
             where call_id = $1 order by source_track, source_turn_index",
            &[&call_id],
        )
        .await
        .unwrap();
    let summary: Vec<(String, i32, String)> = rows
        .iter()
        .map(|r| (r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        summary,
        [
            ("agent".into(), 0, "played".into()),
            ("agent".into(), 1, "played".into()),
            ("agent".into(), 2, "played".into()),
            ("agent".into(), 3, "played".into()),
            ("remote".into(), 0, "played".into()),
            ("remote".into(), 1, "played".into()),
        ]
    );
    for row in &rows {
        let (seq, source): (i32, String) = (row.get(0), row.get(1));
        // The remote party hears the agent's turns (odd numbers), the agent even ones.
        assert_eq!(seq % 2, if source == "agent" { 1 } else { 0 }, "{seq}");
    }

    // The remote leg's stream was away from where B's left off until A's began: that is
    // the remote party's gap, and the agent, whose stream never moved, has none.
    let total_frames = 32_000 / 20;
    let left_off = remote_heard_on_b.frames_sent as i64 * 20;
    let came_back = (total_frames - remote_heard_on_a.frames_sent as i64) * 20;
    let gaps: Vec<(String, i64, i64, String)> = a
        .app
        .db()
        .await
        .query(
            "select track, start_ms, duration_ms, reason from transcript_gaps where call_id = $1",
            &[&call_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (track, start, duration, reason) = gaps[0].clone();
    assert_eq!((track.as_str(), reason.as_str()), ("remote", "bridge_lost"));
    assert!(
        (start - left_off).abs() <= 100,
        "starts where B's stream left off: {start} vs {left_off}"
    );
    assert!(
        (duration - (came_back - left_off)).abs() <= 100,
        "lasts while the leg had no stream: {duration} vs {}",
        came_back - left_off
    );
}

/// SIGTERM with a two-leg call in flight, both parties mid-sentence: each leg's bridge
/// flushes its party's unfinished turn (stored under that party), ends its AssemblyAI
/// session with `Terminate`, records where its party's track stopped (what the re-attached
/// stream continues from) and leaves its stream `detached` for another replica.
#[tokio::test]
async fn shutdown_flushes_both_legs_unfinished_turns() {
    let vendors = Vendors::start(&AGENT_SAYS, &REMOTE_SAYS).await;
    let mut a = vendors.replica().await;
    let AnsweredCall {
        call_id,
        agent,
        remote,
        ..
    } = place_answered(&a, "ducked").await;

    let port = a.app.port;
    let mut agent_stream = party(
        stream_url_on(agent.body["stream_url"].as_str().unwrap(), port),
        &[(3000, true), (2000, false)],
        0,
    );
    agent_stream.send_stop = false;
    let mut remote_stream = party(
        stream_url_on(remote.body["stream_url"].as_str().unwrap(), port),
        &[(500, false), (3000, true), (1500, false)],
        0,
    );
    remote_stream.send_stop = false;
    let agent_playing = tokio::spawn(telnyx_media::play(agent_stream));
    let remote_playing = tokio::spawn(telnyx_media::play(remote_stream));
    tokio::time::sleep(Duration::from_millis(1800)).await; // both mid-sentence
    assert!(turns(&a.app, call_id, "agent").await.is_empty());
    a.app.stop().await; // SIGTERM: drains HTTP and waits for the bridges
    for playing in [agent_playing, remote_playing] {
        assert_eq!(
            playing
                .await
                .unwrap()
                .map(|r| r.close_code)
                .unwrap_or_default(),
            Some(1001),
            "going away"
        );
    }
    assert_eq!(
        turns(&a.app, call_id, "agent").await.len(),
        1,
        "agent's turn flushed"
    );
    assert_eq!(
        turns(&a.app, call_id, "remote").await.len(),
        1,
        "remote's turn flushed"
    );
    let positions: Vec<(String, i64)> = a
        .app
        .db()
        .await
        .query(
            "select track, end_ms from media_stream_positions where call_id = $1 order by track",
            &[&call_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        positions.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        ["agent", "remote"],
        "each leg's position under its party, never a one-leg track: {positions:?}"
    );
    for (track, end_ms) in &positions {
        assert!(
            (1500..2600).contains(end_ms),
            "{track}: where its stream stopped, at SIGTERM: {end_ms}"
        );
    }
    let sessions = vendors.aai.sessions();
    assert_eq!(sessions.len(), 2, "one session per leg");
    assert!(sessions.iter().all(|s| s.terminated_by_client));
    let streams: Vec<(String, String)> = a
        .app
        .db()
        .await
        .query(
            "select leg, replica from media_streams where call_id = $1 and ended_at is null order by leg",
            &[&call_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        streams,
        [
            ("agent".to_owned(), "detached".to_owned()),
            ("remote".to_owned(), "detached".to_owned())
        ]
    );
}

/// ADR 0017 with two writers of the agent's track (a restarted stream whose old bridge still
/// runs): the new bridge's turn, handed to the listener under the index it proposed (0),
/// is stored as 1 because the old bridge's turn holds 0. Its utterance, written before the
/// store, follows it to 1; and a listener that registers later (a re-attach) never hears
/// it again — not even when the utterance still names the proposed index (both writes at
/// the same moment) — while a newer turn it does hear.
#[tokio::test]
async fn a_renumbered_turn_is_relinked_and_never_heard_twice_by_a_late_listener() {
    use callbridge::calls::legs::Role;
    use callbridge::media::hub::Hub;
    use callbridge::turns::{FinalTurn, Stored, store_final};
    let app = TestApp::spawn().await;
    let session = app.sign_in("Ada").await;
    let me: Value = app.get_as(&session, "/api/me").await.json().await.unwrap();
    let org: Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let call_id = Uuid::now_v7();
    let db = app.db().await;
    db.execute(
        "insert into calls (id, organisation_id, direction, from_number, to_number, status, interpreted)
         values ($1, $2, 'outbound', '+14155550100', '+14155550123', 'answered', true)",
        &[&call_id, &org],
    )
    .await
    .unwrap();
    let turn = |session: &str, order: i64, index: i32, text: &str| FinalTurn {
        call_id: call_id.into(),
        track: "agent",
        turn_index: Some(index),
        session_id: session.to_owned(),
        turn_order: order,
        text: text.to_owned(),
        words: Vec::new(),
        confidence: None,
        start_ms: None,
        end_ms: None,
        language: Some("en".into()),
    };
    let store = &app.state.db;
    assert_eq!(
        store_final(store, &turn("old", 3, 0, "first"))
            .await
            .unwrap(),
        Stored::New { turn_index: 0 }
    );
    // The new bridge's turn reached the remote party under index 0: its utterance...
    db.execute(
        "insert into utterances (call_id, seq, source_track, source_turn_index, original_text, end_of_turn_at,
                                 source_session_id, source_turn_order)
         values ($1, 1, 'agent', 0, 'second', now(), 'new', 0)",
        &[&call_id],
    )
    .await
    .unwrap();
    // ...then the turn is stored, under the next free index, and the utterance follows it.
    assert_eq!(
        store_final(store, &turn("new", 0, 0, "second"))
            .await
            .unwrap(),
        Stored::Renumbered {
            proposed: 0,
            turn_index: 1
        }
    );
    let linked: i32 = db
        .query_one(
            "select source_turn_index from utterances where call_id = $1 and seq = 1",
            &[&call_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        linked, 1,
        "the utterance names the index the turn was stored under"
    );

    // Worst case: the link still names the proposed index. A newer turn is said.
    db.execute(
        "update utterances set source_turn_index = 0 where call_id = $1 and seq = 1",
        &[&call_id],
    )
    .await
    .unwrap();
    assert_eq!(
        store_final(store, &turn("new", 1, 2, "third"))
            .await
            .unwrap(),
        Stored::New { turn_index: 2 }
    );
    // The remote party's stream re-attaches and reads what it missed.
    let hub = std::sync::Arc::new(Hub::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let registration = hub.register(call_id.into(), Role::Remote, tx, None, 3);
    registration.catch_up(store).await;
    let mut heard = Vec::new();
    while let Ok(utterance) = rx.try_recv() {
        heard.push(utterance.text);
    }
    assert_eq!(heard, ["third"], "the renumbered turn is not heard twice");
}
