//! `POST /webhooks/telnyx`: verified before anything is stored, deduplicated by event id,
//! processed exactly once through the queue, and applied correctly in any order.
#![cfg(feature = "sim")]

use crate::common;

use std::time::{SystemTime, UNIX_EPOCH};

use callbridge::sim::telnyx::{self as sim, Delivery};
use common::telnyx::TelnyxApp;
use common::{TestApp, assert_problem};
use serde_json::{Value, json};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn post_signed(
    t: &TelnyxApp,
    timestamp: Option<i64>,
    signature: Option<String>,
    body: &[u8],
) -> reqwest::Response {
    let mut request = t
        .app
        .client
        .post(t.webhook_url())
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(ts) = timestamp {
        request = request.header("telnyx-timestamp", ts.to_string());
    }
    if let Some(sig) = signature {
        request = request.header("telnyx-signature-ed25519", sig);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn bad_signatures_are_401_and_store_nothing() {
    let t = TelnyxApp::spawn().await;
    let envelope = t.sim.event(
        "call.initiated",
        sim::call_payload("v3:x", None, "+1", "+2", "outgoing"),
    );
    let body = serde_json::to_vec(&envelope).unwrap();
    // Signed by a key that is not the configured one.
    let wrong_key = {
        use base64::Engine as _;
        use ed25519_dalek::Signer as _;
        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let mut message = now().to_string().into_bytes();
        message.push(b'|');
        message.extend_from_slice(&body);
        base64::engine::general_purpose::STANDARD.encode(key.sign(&message).to_bytes())
    };
    let mut tampered = body.clone();
    let position = tampered.iter().position(|b| *b == b'+').unwrap();
    tampered[position + 1] = b'9';

    type Case = (Option<i64>, Option<String>, Vec<u8>, &'static str);
    let cases: Vec<Case> = vec![
        (Some(now()), Some(wrong_key), body.clone(), "wrong key"),
        (
            Some(now()),
            Some(t.sim.sign(now(), &body)),
            tampered,
            "tampered body",
        ),
        (
            Some(now() - 301),
            Some(t.sim.sign(now() - 301, &body)),
            body.clone(),
            "stale",
        ),
        // Well past the window: a loaded machine may take a second or two to deliver, which
        // would bring `now + 301` back inside it (stale timestamps only get staler).
        (
            Some(now() + 330),
            Some(t.sim.sign(now() + 330, &body)),
            body.clone(),
            "future",
        ),
        (
            None,
            Some(t.sim.sign(now(), &body)),
            body.clone(),
            "no timestamp",
        ),
        (Some(now()), None, body.clone(), "no signature"),
        (
            Some(now()),
            Some("AAAA".into()),
            body.clone(),
            "short signature",
        ),
    ];
    for (timestamp, signature, body, name) in cases {
        let response = post_signed(&t, timestamp, signature, &body).await;
        let problem = assert_problem(response, 401).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("signature"),
            "{name}: {problem}"
        );
    }
    assert_eq!(
        t.app.count("select count(*) from webhook_inbox", &[]).await,
        0
    );
    assert_eq!(t.app.count("select count(*) from jobs", &[]).await, 0);

    // Within the window, either side, is fine.
    let ts = now() - 290;
    let response = post_signed(&t, Some(ts), Some(t.sim.sign(ts, &body)), &body).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_duplicate_is_a_2xx_no_op_and_underscored_types_are_accepted() {
    let t = TelnyxApp::spawn().await;
    let mut envelope = t.sim.event(
        "call_initiated",
        sim::call_payload("v3:dup", None, "+15550001", "+15550002", "outgoing"),
    );
    envelope["data"]["event_type"] = json!("call_initiated");
    for attempt in 1..=3 {
        envelope["meta"]["attempt"] = json!(attempt);
        let response = t
            .app
            .client
            .post(t.webhook_url())
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "unsigned requests never count");
        assert_eq!(
            t.sim.deliver(&t.webhook_url(), &envelope).await.unwrap(),
            200
        );
    }
    assert_eq!(
        t.app.count("select count(*) from webhook_inbox", &[]).await,
        1
    );
    assert_eq!(t.app.count("select count(*) from jobs", &[]).await, 1);
    let row = t
        .app
        .db()
        .await
        .query_one("select event_type, received_via from webhook_inbox", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>("event_type"), "call.initiated");
    assert_eq!(row.get::<_, String>("received_via"), "origin");
    assert_eq!(t.drain().await, 1);
    assert_eq!(t.drain().await, 0, "processed exactly once");
}

#[tokio::test]
async fn telnyx_disabled_answers_503_naming_the_variables() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/webhooks/telnyx"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 503).await;
    assert_eq!(problem["type"], "urn:callbridge:problem:provider-disabled");
    assert!(
        problem["variables"]
            .as_array()
            .unwrap()
            .contains(&json!("TELNYX_PUBLIC_KEY"))
    );
}

/// Places a call through the API and returns (call id, call_control_id, client_state).
async fn place_call(t: &TelnyxApp, session: &common::authjs::Session) -> (String, String, String) {
    let response = t.app.request_as(reqwest::Method::POST, session, "/api/calls")
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send().await.unwrap();
    assert_eq!(response.status(), 201);
    let call: Value = response.json().await.unwrap();
    let dial = t.sim.commands_named("dial").into_iter().last().unwrap();
    (
        call["id"].as_str().unwrap().to_owned(),
        dial.call_control_id.unwrap(),
        dial.body["client_state"].as_str().unwrap().to_owned(),
    )
}

fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for (i, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, *first);
            all.push(tail);
        }
    }
    all
}

#[tokio::test]
async fn every_reordering_of_a_lifecycle_converges_on_the_same_state() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let orders = permutations(&[0, 1, 2, 3]);
    assert_eq!(orders.len(), 24);
    let mut finals = Vec::new();
    for order in orders {
        let (call_id, ccid, client_state) = place_call(&t, &ada).await;
        let events =
            sim::outbound_lifecycle(&t.sim, &ccid, &client_state, "+14155550100", "+14155550123");
        for index in order {
            // Each event delivered twice, processed as it arrives.
            assert_eq!(
                t.sim
                    .deliver(&t.webhook_url(), &events[index])
                    .await
                    .unwrap(),
                200
            );
            assert_eq!(
                t.sim
                    .deliver(&t.webhook_url(), &events[index])
                    .await
                    .unwrap(),
                200
            );
            t.drain().await;
        }
        let call: Value = t
            .app
            .get_as(&ada, &format!("/api/calls/{call_id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            call["status"], "ended",
            "hangup is terminal whatever came after it"
        );
        for field in ["initiated_at", "answered_at", "ended_at"] {
            assert!(call[field].is_string(), "{field} set: {call}");
        }
        finals.push((
            call["hangup_cause"].clone(),
            call["hangup_source"].clone(),
            call["sip_hangup_cause"].clone(),
            call["stream_state"].clone(),
        ));
    }
    assert!(finals.iter().all(|f| *f == finals[0]), "{finals:?}");
    assert_eq!(finals[0].0, "normal_clearing");
    assert_eq!(finals[0].1, "callee");
    assert_eq!(finals[0].2, "200");
}

#[tokio::test]
async fn shuffled_duplicated_retried_delivery_is_processed_exactly_once() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let (call_id, ccid, client_state) = place_call(&t, &ada).await;
    let events =
        sim::outbound_lifecycle(&t.sim, &ccid, &client_state, "+14155550100", "+14155550123");
    let delivery = Delivery {
        duplicate: true,
        shuffle: true,
        max_attempts: 3,
        ..Delivery::default()
    };
    let statuses = t
        .sim
        .deliver_scenario(&t.webhook_url(), &events, delivery)
        .await
        .unwrap();
    assert!(statuses.iter().all(|s| *s == 200));
    t.drain().await;
    let kinds: Vec<String> = t.app.db().await
        .query("select kind from call_events where call_id = $1::text::uuid and kind like 'call.%' or kind like 'streaming.%'", &[&call_id])
        .await.unwrap().iter().map(|r| r.get("kind")).collect();
    for kind in [
        "call.initiated",
        "call.answered",
        "streaming.started",
        "call.hangup",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| *k == kind).count(),
            1,
            "{kind} applied once: {kinds:?}"
        );
    }
    assert_eq!(
        t.app
            .count(
                "select count(*) from webhook_inbox where processed_at is not null",
                &[]
            )
            .await,
        4
    );
}

#[tokio::test]
async fn a_non_2xx_is_retried_by_telnyx_and_then_stored_once() {
    // The first delivery hits a database outage (503); Telnyx re-delivers; stored once.
    let database = common::fresh_database().await;
    let proxy = common::tcp_proxy::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = format!("postgres://postgres@{}/{database}", proxy.address);
    let t = TelnyxApp::spawn_with(&[
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_POOL_TIMEOUT_MS", "300"),
    ])
    .await;
    let envelope = t.sim.event(
        "call.initiated",
        sim::call_payload("v3:retry", None, "+1555", "+1666", "outgoing"),
    );
    proxy.take_down();
    let first = t.sim.deliver(&t.webhook_url(), &envelope).await.unwrap();
    assert!(
        first >= 500,
        "an outage is a 5xx, so Telnyx retries: {first}"
    );
    proxy.bring_up();
    let statuses = t
        .sim
        .deliver_scenario(
            &t.webhook_url(),
            &[envelope],
            Delivery {
                max_attempts: 20,
                retry_delay: std::time::Duration::from_millis(200),
                ..Delivery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(*statuses.last().unwrap(), 200);
    assert_eq!(
        t.app.count("select count(*) from webhook_inbox", &[]).await,
        1
    );
    assert_eq!(t.app.count("select count(*) from jobs", &[]).await, 1);
    common::drop_database_blocking(&database);
}

#[tokio::test]
async fn inbound_calls_to_owned_numbers_are_answered_once_and_others_rejected() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550199").await;

    let ccid = "v3:inbound-1";
    let initiated = t.sim.event(
        "call.initiated",
        sim::call_payload(ccid, None, "+4930123456", "+14155550199", "incoming"),
    );
    assert_eq!(
        t.sim.deliver(&t.webhook_url(), &initiated).await.unwrap(),
        200
    );
    t.drain().await;
    let answers = t.sim.commands_named("answer");
    assert_eq!(answers.len(), 1);
    let answer = &answers[0];
    assert_eq!(answer.call_control_id.as_deref(), Some(ccid));
    assert_eq!(answer.body["stream_track"], "both_tracks");
    assert_eq!(answer.body["stream_bidirectional_mode"], "rtp");
    assert_eq!(answer.body["stream_bidirectional_codec"], "PCMU");
    assert!(
        answer.body["stream_url"]
            .as_str()
            .unwrap()
            .starts_with("ws://127.0.0.1:8080/media/telnyx/")
    );
    let call_id = callbridge::providers::telnyx::decode_client_state(
        answer.body["client_state"].as_str().unwrap(),
    )
    .unwrap();

    let answered = t.sim.event(
        "call.answered",
        sim::call_payload(
            ccid,
            answer.body["client_state"].as_str(),
            "+4930123456",
            "+14155550199",
            "incoming",
        ),
    );
    t.sim.deliver(&t.webhook_url(), &answered).await.unwrap();
    t.drain().await;
    // A redelivery (same id) and a late copy with a new id: neither answers again nor resets.
    t.sim.deliver(&t.webhook_url(), &initiated).await.unwrap();
    let late_copy = t
        .sim
        .event("call.initiated", initiated["data"]["payload"].clone());
    t.sim.deliver(&t.webhook_url(), &late_copy).await.unwrap();
    t.drain().await;
    assert_eq!(
        t.sim.commands_named("answer").len(),
        1,
        "answered exactly once"
    );
    let call: Value = t
        .app
        .get_as(&ada, &format!("/api/calls/{call_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(call["status"], "answered");
    assert_eq!(call["direction"], "inbound");

    let stranger = t.sim.event(
        "call.initiated",
        sim::call_payload("v3:unknown", None, "+4930999", "+19995550000", "incoming"),
    );
    t.sim.deliver(&t.webhook_url(), &stranger).await.unwrap();
    t.drain().await;
    let hangups = t.sim.commands_named("hangup");
    assert_eq!(hangups.len(), 1);
    assert_eq!(hangups[0].call_control_id.as_deref(), Some("v3:unknown"));
    assert_eq!(
        t.app.count("select count(*) from calls", &[]).await,
        1,
        "no row for a call we do not own"
    );
}

#[tokio::test]
async fn a_stored_webhook_wakes_a_running_worker_without_waiting_for_its_poll() {
    // The receiver rings the job bell after its commit (no NOTIFY inside the transaction).
    let t = TelnyxApp::spawn().await;
    let done = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = done.clone();
    let registry = callbridge::jobs::Registry::default().register(
        "telnyx.event",
        move |_: callbridge::state::AppState, _: callbridge::queue::Job| {
            let signal = signal.clone();
            async move {
                signal.notify_one();
                Ok(())
            }
        },
    );
    let config = callbridge::jobs::WorkerConfig {
        poll_interval: std::time::Duration::from_secs(3600),
        ..callbridge::jobs::WorkerConfig::default()
    };
    let worker = callbridge::jobs::Worker::new(t.app.state.clone(), registry, config);
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(worker.run(t.app.state.listener.clone(), stop.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let envelope = t.sim.event(
        "call.initiated",
        sim::call_payload("v3:bell", None, "+15550001", "+15550002", "outgoing"),
    );
    assert_eq!(
        t.sim.deliver(&t.webhook_url(), &envelope).await.unwrap(),
        200
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), done.notified())
        .await
        .expect("the worker was woken by the bell");
    stop.cancel();
    handle.await.unwrap();
}
