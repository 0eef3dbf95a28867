//! A job's effect and its completion commit together: PostgreSQL going away after a
//! `telnyx.event` run applied its event, but before the worker marked the job done, must not
//! make the re-run (after the lease expires) apply the event a second time.
//!
//! The fault is injected deterministically: the test's registry wraps the production handler
//! and takes the database down (through a TCP proxy only this test uses) the moment the
//! handler returns, i.e. between the job's effect and the worker's `done` update.
#![cfg(feature = "sim")]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use callbridge::jobs::{self, Registry, Worker, WorkerConfig, handlers};
use callbridge::queue::{self, Job};
use callbridge::sim::telnyx as sim;
use callbridge::state::AppState;
use common::tcp_proxy::TcpProxy;
use common::telnyx::TelnyxApp;
use reqwest::Method;
use serde_json::{Value, json};

fn config() -> WorkerConfig {
    WorkerConfig {
        lease: Duration::from_secs(1),
        base_backoff: Duration::from_millis(5),
        ..WorkerConfig::default()
    }
}

/// The production registry with `kind`'s handler followed by the database going down.
fn cut_after(kind: &'static str, proxy: Arc<TcpProxy>) -> Registry {
    handlers::registry().register(kind, move |state: AppState, job: Job| {
        let proxy = proxy.clone();
        async move {
            let result = jobs::telnyx_event::run(state, job).await;
            proxy.take_down();
            result
        }
    })
}

#[tokio::test]
async fn an_event_applied_just_before_the_database_stopped_is_not_applied_again() {
    let database = common::fresh_database().await;
    let proxy = Arc::new(TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await);
    let url = format!("postgres://postgres@{}/{database}", proxy.address);
    let t = TelnyxApp::spawn_with(&[
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_POOL_TIMEOUT_MS", "300"),
    ])
    .await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let response = t.app.request_as(Method::POST, &ada, "/api/calls")
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send().await.unwrap();
    assert_eq!(response.status(), 201);
    let call: Value = response.json().await.unwrap();
    let call_id = call["id"].as_str().unwrap().to_owned();
    let dial = t.sim.commands_named("dial").into_iter().last().unwrap();
    let ccid = dial.call_control_id.unwrap();
    let client_state = dial.body["client_state"].as_str().unwrap().to_owned();

    let answered = t.sim.event(
        "call.answered",
        sim::call_payload(
            &ccid,
            Some(&client_state),
            "+14155550100",
            "+14155550123",
            "outgoing",
        ),
    );
    let event_id = answered["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        t.sim.deliver(&t.webhook_url(), &answered).await.unwrap(),
        200
    );

    let faulty = Worker::new(
        t.app.state.clone(),
        cut_after("telnyx.event", proxy.clone()),
        config(),
    );
    assert!(
        faulty.drain().await.is_err(),
        "the worker could not record the outcome: the database was down"
    );
    proxy.bring_up();
    // Past the lease: a job still `running` would be claimed again now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let worker = Worker::new(t.app.state.clone(), handlers::registry(), config());
    let reran = worker.drain().await.expect("the database is back");

    let db = t.app.db().await;
    let applied: i64 = db
        .query_one(
            "select count(*) from call_events
             where call_id = $1::text::uuid and data->>'telnyx_event_id' = $2",
            &[&call_id, &event_id],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(applied, 1, "the event was applied exactly once");
    let job = db
        .query_one(
            "select status, attempts from jobs where dedupe_key = $1",
            &[&format!("webhook:telnyx:{event_id}")],
        )
        .await
        .unwrap();
    assert_eq!(job.get::<_, String>("status"), "done");
    assert_eq!(
        (job.get::<_, i32>("attempts"), reran),
        (1, 0),
        "completed with its effect"
    );
    let processed: bool = db
        .query_one(
            "select processed_at is not null as processed from webhook_inbox where event_id = $1",
            &[&event_id],
        )
        .await
        .unwrap()
        .get("processed");
    assert!(processed);
    let status: String = db
        .query_one(
            "select status from calls where id = $1::text::uuid",
            &[&call_id],
        )
        .await
        .unwrap()
        .get("status");
    assert_eq!(status, "answered");
    drop(t);
    common::drop_database_blocking(&database);
}

#[tokio::test]
async fn a_run_whose_lease_was_taken_over_commits_nothing() {
    // Worker A's run is slow and its lease lapses (it could not extend it); worker B claims
    // the job and applies the event. A's commit must fail, not apply the event again.
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let response = t.app.request_as(Method::POST, &ada, "/api/calls")
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send().await.unwrap();
    let call: Value = response.json().await.unwrap();
    let call_id = call["id"].as_str().unwrap().to_owned();
    let dial = t.sim.commands_named("dial").into_iter().last().unwrap();
    let answered = t.sim.event(
        "call.answered",
        sim::call_payload(
            dial.call_control_id.as_deref().unwrap(),
            dial.body["client_state"].as_str(),
            "+14155550100",
            "+14155550123",
            "outgoing",
        ),
    );
    let event_id = answered["data"]["id"].as_str().unwrap().to_owned();
    t.sim.deliver(&t.webhook_url(), &answered).await.unwrap();

    let db = t.app.db().await;
    // Worker A claims the job; its lease then lapses (backdated, as if it had stalled).
    let job_id: i64 = db
        .query_one(
            "update jobs set status = 'running', attempts = 1, locked_by = 'worker-a',
                    locked_until = now() - interval '1 second'
             where dedupe_key = $1 returning id",
            &[&format!("webhook:telnyx:{event_id}")],
        )
        .await
        .unwrap()
        .get("id");
    let stalled = Job {
        id: job_id,
        kind: "telnyx.event".into(),
        payload: json!({"provider": "telnyx", "event_id": event_id}),
        attempt: 1,
        max_attempts: 10,
        worker: "worker-a".into(),
    };
    // Worker B takes it over and applies the event.
    let worker_b = Worker::new(t.app.state.clone(), handlers::registry(), config());
    assert_eq!(worker_b.drain().await.unwrap(), 1);
    // A resumes: its run must roll back.
    let error = jobs::telnyx_event::run(t.app.state.clone(), stalled)
        .await
        .expect_err("A's lease was lost");
    assert!(
        error.downcast_ref::<queue::LeaseLost>().is_some()
            || error.to_string().contains("claimed by another worker"),
        "{error:#}"
    );
    let applied: i64 = db
        .query_one(
            "select count(*) from call_events
             where call_id = $1::text::uuid and data->>'telnyx_event_id' = $2",
            &[&call_id, &event_id],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(applied, 1);
}

/// Worker A's run of an interpreted call's leg event stalls past its lease; worker B
/// applies the event (the agent answered: the remote party is dialed). A's run must roll
/// back everything it wrote — the leg, the derived call, its event log entry — not only the
/// inbox and done marks: the leg path writes with the job's transaction like the one-leg
/// path does.
#[tokio::test]
async fn an_interpreted_leg_event_whose_lease_was_taken_over_commits_nothing() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let response = t
        .app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&json!({
            "from": "+14155550100",
            "agent": {"number": "+14155550111", "language": "en"},
            "remote": {"number": "+14155550122", "language": "es"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let call: Value = response.json().await.unwrap();
    let call_id = call["id"].as_str().unwrap().to_owned();
    let agent = t.sim.dial_of_leg("agent").expect("the agent was dialed");
    let lifecycle = t.sim.leg_lifecycle(&agent, "caller");
    let (initiated, answered) = (&lifecycle[0], &lifecycle[1]);
    assert_eq!(
        t.sim.deliver(&t.webhook_url(), initiated).await.unwrap(),
        200
    );
    t.drain().await;
    let event_id = answered["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        t.sim.deliver(&t.webhook_url(), answered).await.unwrap(),
        200
    );

    let db = t.app.db().await;
    // Worker A claims the job; its lease then lapses (backdated, as if it had stalled).
    let job_id: i64 = db
        .query_one(
            "update jobs set status = 'running', attempts = 1, locked_by = 'worker-a',
                    locked_until = now() - interval '1 second'
             where dedupe_key = $1 returning id",
            &[&format!("webhook:telnyx:{event_id}")],
        )
        .await
        .unwrap()
        .get("id");
    let stalled = Job {
        id: job_id,
        kind: "telnyx.event".into(),
        payload: json!({"provider": "telnyx", "event_id": event_id}),
        attempt: 1,
        max_attempts: 10,
        worker: "worker-a".into(),
    };
    // Worker B takes it over: the agent's leg is answered and the remote party dialed.
    let worker_b = Worker::new(t.app.state.clone(), handlers::registry(), config());
    assert_eq!(worker_b.drain().await.unwrap(), 1);
    assert!(
        t.sim.dial_of_leg("remote").is_some(),
        "the remote party was dialed"
    );
    // A resumes: its run must roll back, all of it.
    let error = jobs::telnyx_event::run(t.app.state.clone(), stalled)
        .await
        .expect_err("A's lease was lost");
    assert!(
        error.downcast_ref::<queue::LeaseLost>().is_some(),
        "{error:#}"
    );
    let applied: i64 = db
        .query_one(
            "select count(*) from call_events
             where call_id = $1::text::uuid and data->>'telnyx_event_id' = $2",
            &[&call_id, &event_id],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(applied, 1, "the agent's answer is in the call's log once");
    let dialing: i64 = db
        .query_one(
            "select count(*) from call_events where call_id = $1::text::uuid and kind = 'call.dialing'",
            &[&call_id],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(dialing, 2, "one dialing entry per leg");
    assert_eq!(
        t.sim.commands_named("dial").len(),
        2,
        "each party dialed once"
    );
}

/// The database goes away right after an interpreted call's leg event was applied (the
/// agent answered, the remote party was dialed): the re-run after the lease applies nothing
/// and dials no one again.
#[tokio::test]
async fn an_interpreted_leg_event_applied_just_before_the_database_stopped_is_not_applied_again() {
    let database = common::fresh_database().await;
    let proxy = Arc::new(TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await);
    let url = format!("postgres://postgres@{}/{database}", proxy.address);
    let t = TelnyxApp::spawn_with(&[
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_POOL_TIMEOUT_MS", "300"),
    ])
    .await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let response = t
        .app
        .request_as(Method::POST, &ada, "/api/calls")
        .json(&json!({
            "from": "+14155550100",
            "agent": {"number": "+14155550111", "language": "en"},
            "remote": {"number": "+14155550122", "language": "es"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let call: Value = response.json().await.unwrap();
    let call_id = call["id"].as_str().unwrap().to_owned();
    let agent = t.sim.dial_of_leg("agent").expect("the agent was dialed");
    let lifecycle = t.sim.leg_lifecycle(&agent, "caller");
    assert_eq!(
        t.sim
            .deliver(&t.webhook_url(), &lifecycle[0])
            .await
            .unwrap(),
        200
    );
    t.drain().await;
    let answered = &lifecycle[1];
    let event_id = answered["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        t.sim.deliver(&t.webhook_url(), answered).await.unwrap(),
        200
    );

    let faulty = Worker::new(
        t.app.state.clone(),
        cut_after("telnyx.event", proxy.clone()),
        config(),
    );
    assert!(faulty.drain().await.is_err(), "the database was down");
    proxy.bring_up();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let worker = Worker::new(t.app.state.clone(), handlers::registry(), config());
    let reran = worker.drain().await.expect("the database is back");

    let db = t.app.db().await;
    let applied: i64 = db
        .query_one(
            "select count(*) from call_events
             where call_id = $1::text::uuid and data->>'telnyx_event_id' = $2",
            &[&call_id, &event_id],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(
        (applied, reran),
        (1, 0),
        "applied once, with its completion"
    );
    assert_eq!(
        t.sim.commands_named("dial").len(),
        2,
        "each party dialed once"
    );
    let remote_ccid: Option<String> = db
        .query_one(
            "select telnyx_call_control_id from call_legs
             where call_id = $1::text::uuid and role = 'remote'",
            &[&call_id],
        )
        .await
        .unwrap()
        .get("telnyx_call_control_id");
    assert!(remote_ccid.is_some(), "the remote dial is recorded");
    drop(t);
    common::drop_database_blocking(&database);
}
