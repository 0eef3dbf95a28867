//! Soak (a): a Telnyx webhook storm through a PostgreSQL outage.
//!
//! Signed deliveries for many calls — every event once, a fifth of them twice, all shuffled —
//! from concurrent senders that re-deliver like Telnyx (any non-2xx or no answer is sent
//! again, with backoff), while two job workers run and PostgreSQL goes away mid-run (through
//! a TCP proxy only this test uses, so other tests' database stays up). Asserts from the
//! database: every event stored once and applied exactly once (0 twice, 0 lost), every job
//! done, every call ended, the service ready again without a restart. Prints the figures.
//! One run also fails late on purpose (as a pool timeout would), so the storm only ends once
//! that job's retry has applied it: waiting only for jobs due *now* once made a pending retry
//! look like a lost event (docs/JOBS.md).
//!
//! `CALLBRIDGE_SOAK=long` runs the full storm (3,000 deliveries over 100 calls, 16 senders,
//! 5 s outage; `make soak`); otherwise a short form runs inside `make test`.
#![cfg(feature = "sim")]
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use callbridge::jobs::{self, Worker, WorkerConfig, handlers};
use callbridge::queue::Job;
use callbridge::sim::telnyx as sim;
use callbridge::state::AppState;
use common::tcp_proxy::TcpProxy;
use common::telnyx::TelnyxApp;
use rand::seq::SliceRandom as _;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

struct Scale {
    calls: usize,
    /// Distinct events per call (the lifecycle plus mid-call events).
    events_per_call: usize,
    senders: usize,
    outage: Duration,
}

fn scale() -> Scale {
    if std::env::var("CALLBRIDGE_SOAK").as_deref() == Ok("long") {
        // 100 × 25 = 2,500 events + 500 duplicates (20 %) = 3,000 deliveries.
        Scale {
            calls: 100,
            events_per_call: 25,
            senders: 16,
            outage: Duration::from_secs(5),
        }
    } else {
        Scale {
            calls: 10,
            events_per_call: 25,
            senders: 8,
            outage: Duration::from_secs(1),
        }
    }
}

/// One call's events: the lifecycle Telnyx sends, padded with mid-call events.
fn call_events(t: &TelnyxApp, ccid: &str, client_state: &str, count: usize) -> Vec<Value> {
    let mut events =
        sim::outbound_lifecycle(&t.sim, ccid, client_state, "+14155550100", "+14155550123");
    let base = sim::call_payload(
        ccid,
        Some(client_state),
        "+14155550100",
        "+14155550123",
        "outgoing",
    );
    let kinds = [
        "call.dtmf.received",
        "call.speak.started",
        "call.speak.ended",
        "call.playback.started",
        "call.playback.ended",
    ];
    let mut i = 0;
    while events.len() < count {
        let mut payload = base.clone();
        payload["digit"] = json!((i % 10).to_string());
        events.push(t.sim.event(kinds[i % kinds.len()], payload));
        i += 1;
    }
    events
}

/// Delivers until a 2xx, re-delivering like Telnyx: any other answer or none is retried
/// with backoff (`meta.attempt` counts). Returns the non-2xx answers seen.
async fn deliver_until_accepted(t: &TelnyxApp, mut envelope: Value) -> (u64, u64) {
    let (mut server_errors, mut other) = (0, 0);
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=60 {
        envelope["meta"]["attempt"] = json!(attempt);
        match t.sim.deliver(&t.webhook_url(), &envelope).await {
            Ok(status) if (200..300).contains(&status) => return (server_errors, other),
            Ok(status) if status >= 500 => server_errors += 1,
            Ok(status) => panic!("a signed delivery was refused with {status}"),
            Err(_) => other += 1,
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
    panic!("a delivery was never accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_storm_through_a_postgres_outage_applies_every_event_exactly_once() {
    let scale = scale();
    let database = common::fresh_database().await;
    let proxy = Arc::new(TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await);
    let url = format!("postgres://postgres@{}/{database}", proxy.address);
    let t = Arc::new(
        TelnyxApp::spawn_with(&[
            ("DATABASE_URL", url.as_str()),
            ("DATABASE_POOL_TIMEOUT_MS", "500"),
            ("DATABASE_POOL_MAX_SIZE", "24"),
        ])
        .await,
    );
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;

    // The calls, placed through the API.
    let mut unique = Vec::new();
    let mut call_ids = Vec::new();
    for _ in 0..scale.calls {
        let response = t.app.request_as(Method::POST, &ada, "/api/calls")
            .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
            .send().await.unwrap();
        assert_eq!(response.status(), 201);
        let call: Value = response.json().await.unwrap();
        call_ids.push(call["id"].as_str().unwrap().to_owned());
        let dial = t.sim.commands_named("dial").into_iter().last().unwrap();
        unique.extend(call_events(
            &t,
            dial.call_control_id.as_deref().unwrap(),
            dial.body["client_state"].as_str().unwrap(),
            scale.events_per_call,
        ));
    }
    let mut deliveries = unique.clone();
    let mut rng = rand::rng();
    // A fifth of the events delivered twice: 2,500 events make 3,000 deliveries.
    let mut duplicates = unique.clone();
    duplicates.shuffle(&mut rng);
    deliveries.extend(duplicates.into_iter().take(unique.len() / 5));
    deliveries.shuffle(&mut rng);
    let total = deliveries.len();

    // One run fails late, as a pool timeout or a deadlock would: the last delivery's first
    // run waits until every other event is applied, then fails. Its job then waits for its
    // retry (`run_at` ahead, 0.5–1 s) with nothing else left to do, and the storm is not
    // over until that retry has applied it.
    let late = deliveries.last().unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let delivered = Arc::new(AtomicBool::new(false));
    let all_delivered = delivered.clone();
    let registry =
        handlers::registry().register("telnyx.event", move |state: AppState, job: Job| {
            let (late, all_delivered) = (late.clone(), all_delivered.clone());
            async move {
                if job.attempt == 1 && job.payload["event_id"] == late.as_str() {
                    while !all_delivered.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    loop {
                        let others = match state.db.client().await {
                            Ok(client) => client
                                .query_one(
                                    "select count(*) from jobs where kind = 'telnyx.event'
                                 and status in ('pending', 'running') and id <> $1",
                                    &[&job.id],
                                )
                                .await
                                .map(|row| row.get::<_, i64>(0))
                                .unwrap_or(1),
                            Err(_) => 1,
                        };
                        if others == 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    anyhow::bail!("simulated transient failure of the storm's last event");
                }
                jobs::telnyx_event::run(state, job).await
            }
        });

    // Workers run throughout, with a short lease so runs cut by the outage are re-run soon.
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let worker = Worker::new(
            t.app.state.clone(),
            registry.clone(),
            WorkerConfig {
                lease: Duration::from_secs(3),
                poll_interval: Duration::from_millis(250),
                base_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(2),
                ..WorkerConfig::default()
            },
        );
        workers.push(tokio::spawn(
            worker.run(t.app.state.listener.clone(), stop.clone()),
        ));
    }

    let queue = Arc::new(Mutex::new(VecDeque::from(deliveries)));
    let accepted = Arc::new(AtomicUsize::new(0));
    let server_errors = Arc::new(AtomicU64::new(0));
    let no_answer = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..scale.senders {
        let (t, queue, accepted) = (t.clone(), queue.clone(), accepted.clone());
        let (server_errors, no_answer) = (server_errors.clone(), no_answer.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let Some(envelope) = queue.lock().await.pop_front() else {
                    return;
                };
                let (errors, none) = deliver_until_accepted(&t, envelope).await;
                server_errors.fetch_add(errors, Ordering::Relaxed);
                no_answer.fetch_add(none, Ordering::Relaxed);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // PostgreSQL goes away once a third of the deliveries are in.
    while accepted.load(Ordering::Relaxed) < total / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_outage = (accepted.load(Ordering::Relaxed), started.elapsed());
    proxy.take_down();
    tokio::time::sleep(scale.outage).await;
    proxy.bring_up();
    let after_outage = (accepted.load(Ordering::Relaxed), started.elapsed());
    for sender in senders {
        sender.await.unwrap();
    }
    delivered.store(true, Ordering::SeqCst);
    let delivered_in = started.elapsed();

    // Every job of the storm finishes, including one that waits for its retry.
    let db = t.app.db().await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let open = storm_jobs_open(&db).await;
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} jobs still open after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let processed_in = started.elapsed();
    stop.cancel();
    for worker in workers {
        worker.await.unwrap();
    }

    let one = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let stored = one("select count(*) from webhook_inbox").await;
    let unprocessed = one("select count(*) from webhook_inbox where processed_at is null").await;
    let dead = one("select count(*) from jobs where status = 'dead'").await;
    let applied = one(
        "select count(distinct data->>'telnyx_event_id') from call_events where data ? 'telnyx_event_id'",
    )
    .await;
    let twice = one(
        "select count(*) from (select data->>'telnyx_event_id' from call_events
         where data ? 'telnyx_event_id' group by 1 having count(*) > 1) as dup",
    )
    .await;
    let reruns =
        one("select coalesce(sum(attempts - 1), 0)::bigint from jobs where kind = 'telnyx.event'")
            .await;
    let ended = one("select count(*) from calls where status = 'ended'").await;
    let lost = unique.len() as i64 - applied;
    if lost != 0 {
        for row in db
            .query(
                "select i.event_type, i.processed_at is not null, j.status, j.attempts,
                        (j.run_at > now())::text, coalesce(j.last_error, '')
                 from webhook_inbox i left join jobs j on j.dedupe_key = 'webhook:telnyx:' || i.event_id
                 where not exists (select 1 from call_events e where e.data->>'telnyx_event_id' = i.event_id)",
                &[],
            )
            .await
            .unwrap()
        {
            println!(
                "not applied: {} (processed {}, job {} after {} attempts, waiting for a retry {}, last error {:?})",
                row.get::<_, String>(0),
                row.get::<_, bool>(1),
                row.get::<_, String>(2),
                row.get::<_, i32>(3),
                row.get::<_, String>(4),
                row.get::<_, String>(5)
            );
        }
    }

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "soak webhook_storm: {total} deliveries ({} events, {} duplicates) over {} calls, {} senders, \
         PostgreSQL down {:.1} s: {:.0} deliveries/s overall, {:.0}/s through the outage window \
         ({} accepted in {:.1} s from the cut to recovery), {} 5xx and {} unanswered re-delivered; \
         all processed in {:.1} s; unprocessed {unprocessed}, applied twice {twice}, lost {lost}, dead jobs {dead}, job re-runs {reruns}",
        unique.len(),
        total - unique.len(),
        scale.calls,
        scale.senders,
        scale.outage.as_secs_f64(),
        rate(total, delivered_in),
        rate(
            after_outage.0 - before_outage.0,
            after_outage.1 - before_outage.1
        ),
        after_outage.0 - before_outage.0,
        (after_outage.1 - before_outage.1).as_secs_f64(),
        server_errors.load(Ordering::Relaxed),
        no_answer.load(Ordering::Relaxed),
        processed_in.as_secs_f64(),
    );

    assert_eq!(stored, unique.len() as i64, "every event stored once");
    assert_eq!(unprocessed, 0, "every stored event processed");
    assert_eq!(dead, 0, "no job gave up");
    assert_eq!(twice, 0, "no event applied twice");
    assert_eq!(lost, 0, "no event lost");
    assert_eq!(ended, call_ids.len() as i64, "every call ended");
    assert!(reruns > 0, "the late failure was retried");
    assert!(
        server_errors.load(Ordering::Relaxed) > 0,
        "the outage was felt (5xx answered, so Telnyx re-delivers)"
    );
    // Healthy again without a restart.
    let ready = t.app.get("/readyz").await;
    assert_eq!(ready.status(), 200, "ready after the outage");
    drop(db);
    drop(t);
    common::drop_database_blocking(&database);
}

/// How many of the storm's jobs are not finished: every `telnyx.event` job still pending or
/// running, *including* one waiting for its retry (`run_at` ahead: a run that failed late, on a
/// pool timeout say). Jobs the calls schedule for later (a call's maximum-duration warning and
/// hang-up, hours ahead) are not the storm's. Counting only jobs due now made the storm stop
/// its workers while a retry was pending, and report that event as lost.
async fn storm_jobs_open(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "select count(*) from jobs
         where kind = 'telnyx.event' and status in ('pending', 'running')",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn the_storm_waits_for_a_job_waiting_for_its_retry_but_not_for_later_hang_ups() {
    let app = common::TestApp::spawn().await;
    let db = app.db().await;
    // A storm job whose run failed: pending, its retry two seconds ahead.
    db.execute(
        "insert into jobs (kind, payload, status, attempts, run_at, last_error)
         values ('telnyx.event', '{\"provider\": \"telnyx\", \"event_id\": \"late\"}', 'pending', 1,
                 now() + interval '2 seconds', 'pool timed out')",
        &[],
    )
    .await
    .unwrap();
    // A call's maximum-duration hang-up, hours ahead.
    db.execute(
        "insert into jobs (kind, payload, run_at)
         values ('call.max_duration', '{\"step\": \"hangup\"}', now() + interval '4 hours')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(storm_jobs_open(&db).await, 1, "the retry is still to come");
    db.execute(
        "update jobs set status = 'done' where kind = 'telnyx.event'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(storm_jobs_open(&db).await, 0, "the storm is over");
}
