//! Live call events over SSE: written on instance A, seen by a subscriber on instance B
//! through LISTEN/NOTIFY, resumed after a reconnect with Last-Event-ID without loss or
//! duplicates.
#![cfg(feature = "sim")]

use crate::common;

use std::time::Duration;

use callbridge::sim::telnyx as sim;
use common::TestApp;
use common::sse::SseReader;
use common::telnyx::TelnyxApp;
use serde_json::{Value, json};

#[tokio::test]
async fn a_subscriber_on_another_replica_sees_every_event_and_resumes_exactly() {
    let a = TelnyxApp::spawn().await;
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
    let ada = a.app.sign_in("Ada").await;
    a.own_number(&ada, "+14155550100").await;
    let call: Value = a.app.request_as(reqwest::Method::POST, &ada, "/api/calls")
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send().await.unwrap().json().await.unwrap();
    let call_id = call["id"].as_str().unwrap().to_owned();
    let dial = a.sim.commands_named("dial")[0].clone();
    let ccid = dial.call_control_id.unwrap();
    let client_state = dial.body["client_state"].as_str().unwrap().to_owned();
    let lifecycle =
        sim::outbound_lifecycle(&a.sim, &ccid, &client_state, "+14155550100", "+14155550123");

    // Subscribe on B from the start: it replays call.created and call.dialing.
    let events_path = format!("/api/calls/{call_id}/events");
    let mut stream = SseReader::new(b.get_as(&ada, &events_path).await);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let event = stream
            .next(Duration::from_secs(5))
            .await
            .expect("replayed event");
        seen.push((event.id.clone().unwrap(), event.event.clone().unwrap()));
    }
    assert_eq!(
        seen.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
        ["call.created", "call.dialing"]
    );

    // Events written by A (webhook → job on A) arrive live on B. One drain per event: jobs
    // claimed in one batch run concurrently, and this part asserts their order.
    for event in &lifecycle[..2] {
        a.sim.deliver(&a.webhook_url(), event).await.unwrap();
        a.drain().await;
    }
    for expected in ["call.initiated", "call.answered"] {
        let event = stream
            .next(Duration::from_secs(5))
            .await
            .expect("live event from the other replica");
        assert_eq!(event.event.as_deref(), Some(expected));
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["kind"], expected);
        seen.push((event.id.unwrap(), expected.to_owned()));
    }
    drop(stream);

    // While disconnected, more happens.
    for event in &lifecycle[2..] {
        a.sim.deliver(&a.webhook_url(), event).await.unwrap();
    }
    a.drain().await;

    let last_id = seen.last().unwrap().0.clone();
    let resumed = b
        .client
        .get(b.url(&events_path))
        .header("cookie", format!("authjs.session-token={}", ada.token))
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let mut stream = SseReader::new(resumed);
    let mut after = Vec::new();
    while let Some(event) = stream.next(Duration::from_millis(1500)).await {
        after.push((event.id.unwrap(), event.event.unwrap()));
    }
    // Jobs of one batch run concurrently, so these two may be appended in either order.
    let mut missed: Vec<&str> = after.iter().map(|(_, k)| k.as_str()).collect();
    missed.sort_unstable();
    assert_eq!(
        missed,
        ["call.hangup", "streaming.started"],
        "exactly the missed events, none twice"
    );
    let sequence: Vec<i64> = seen
        .iter()
        .chain(&after)
        .map(|(id, _)| id.parse().unwrap())
        .collect();
    assert_eq!(
        sequence,
        (1..=6).collect::<Vec<i64>>(),
        "gap-free per-call sequence"
    );
}

/// Partials go out at most every 50 ms per replica (each batch is a commit that wakes every
/// listening backend), and the newest of a track is never held back: a track publishing
/// every 5 ms reaches LISTEN in a batch per 50 ms, and its last partial arrives.
#[tokio::test]
async fn partials_go_out_at_most_every_50_ms_and_the_newest_always_arrives() {
    let app = TestApp::spawn().await;
    let mut notices = app.state.listener.subscribe();
    tokio::time::sleep(Duration::from_millis(300)).await; // LISTENing
    let call_id = uuid::Uuid::new_v4();
    app.state
        .partials
        .publish(call_id.into(), "inbound", 0, "first");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), notices.recv()).await {
            Ok(Ok(callbridge::db::Notice::Notification { channel, payload }))
                if channel == callbridge::events::PARTIALS_CHANNEL
                    && payload.contains(&call_id.to_string()) =>
            {
                break;
            }
            Ok(Ok(_)) => continue,
            other => panic!("no partial arrived: {other:?}"),
        }
    }
    let publishing = std::time::Instant::now();
    for order in 1..=120u64 {
        app.state
            .partials
            .publish(call_id.into(), "inbound", order, &format!("word {order}"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let publishing = publishing.elapsed();
    let mut batches = 0u128;
    let mut last = 0;
    while let Ok(Ok(notice)) =
        tokio::time::timeout(Duration::from_millis(500), notices.recv()).await
    {
        if let callbridge::db::Notice::Notification { channel, payload } = notice
            && channel == callbridge::events::PARTIALS_CHANNEL
            && payload.contains(&call_id.to_string())
        {
            batches += 1;
            let partial: Value = serde_json::from_str(&payload).unwrap();
            last = partial["turn_order"].as_u64().unwrap();
        }
    }
    assert_eq!(last, 120, "the newest partial arrived");
    // One batch per 50 ms while they came, and one more at each edge.
    let most = publishing.as_millis() / 50 + 2;
    assert!(
        (2..=most).contains(&batches),
        "{batches} batches for 120 partials in {publishing:?} (at most {most})"
    );
}
