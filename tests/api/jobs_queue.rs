//! The job queue: retries with backoff, the dead state, lease expiry after a crashed worker,
//! panics recorded, dedupe keys, unknown kinds, and NOTIFY wake-ups.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use callbridge::jobs::{self, Registry, Worker, WorkerConfig};
use callbridge::queue::{self, Job, NewJob};
use callbridge::state::AppState;
use common::TestApp;
use serde_json::json;

fn fast() -> WorkerConfig {
    WorkerConfig {
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        lease: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

async fn enqueue(app: &TestApp, job: NewJob) -> Option<i64> {
    queue::enqueue(&app.db().await, &job).await.unwrap()
}

async fn job_row(app: &TestApp, id: i64) -> (String, i32, Option<String>) {
    let row = app
        .db()
        .await
        .query_one(
            "select status, attempts, last_error from jobs where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (
        row.get("status"),
        row.get("attempts"),
        row.get("last_error"),
    )
}

/// Drains until the job leaves `pending`/`running` (retries wait out their backoff).
async fn settle(worker: &Worker, app: &TestApp, id: i64) -> (String, i32, Option<String>) {
    for _ in 0..200 {
        worker.drain().await.unwrap();
        let row = job_row(app, id).await;
        if row.0 == "done" || row.0 == "dead" {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not settle");
}

#[tokio::test]
async fn a_failing_job_is_retried_with_backoff_until_it_succeeds() {
    let app = TestApp::spawn().await;
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let registry = Registry::default().register("flaky", move |_: AppState, job: Job| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            anyhow::ensure!(job.attempt >= 3, "not yet (attempt {})", job.attempt);
            Ok(())
        }
    });
    let worker = Worker::new(app.state.clone(), registry, fast());
    let id = enqueue(&app, NewJob::new("flaky", json!({})))
        .await
        .unwrap();
    let (status, attempts, last_error) = settle(&worker, &app, id).await;
    assert_eq!((status.as_str(), attempts), ("done", 3));
    assert_eq!(last_error, None);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_job_that_keeps_failing_goes_dead_with_its_last_error() {
    let app = TestApp::spawn().await;
    let registry = Registry::default().register("doomed", |_: AppState, job: Job| async move {
        anyhow::bail!("provider said no on attempt {}", job.attempt)
    });
    let worker = Worker::new(app.state.clone(), registry, fast());
    let mut job = NewJob::new("doomed", json!({}));
    job.max_attempts = Some(4);
    let id = enqueue(&app, job).await.unwrap();
    let (status, attempts, last_error) = settle(&worker, &app, id).await;
    assert_eq!((status.as_str(), attempts), ("dead", 4));
    assert_eq!(last_error.as_deref(), Some("provider said no on attempt 4"));
}

#[tokio::test]
async fn a_panicking_handler_is_caught_and_recorded() {
    let app = TestApp::spawn().await;
    let registry = Registry::default().register("panics", |_: AppState, _: Job| async move {
        if true {
            panic!("index out of bounds in handler");
        }
        Ok(())
    });
    let worker = Worker::new(app.state.clone(), registry, fast());
    let mut job = NewJob::new("panics", json!({}));
    job.max_attempts = Some(2);
    let id = enqueue(&app, job).await.unwrap();
    let (status, attempts, last_error) = settle(&worker, &app, id).await;
    assert_eq!((status.as_str(), attempts), ("dead", 2));
    assert!(
        last_error
            .unwrap()
            .contains("handler panicked: index out of bounds")
    );
}

#[tokio::test]
async fn unknown_kinds_are_dead_at_once_and_dedupe_keys_hold() {
    let app = TestApp::spawn().await;
    let worker = Worker::new(app.state.clone(), Registry::default(), fast());
    let first = enqueue(
        &app,
        NewJob::new("nobody.handles.this", json!({})).dedupe("k-1"),
    )
    .await;
    let second = enqueue(
        &app,
        NewJob::new("nobody.handles.this", json!({})).dedupe("k-1"),
    )
    .await;
    assert!(first.is_some());
    assert_eq!(second, None, "the same dedupe key enqueues nothing");
    let (status, attempts, last_error) = settle(&worker, &app, first.unwrap()).await;
    assert_eq!((status.as_str(), attempts), ("dead", 1));
    assert!(last_error.unwrap().contains("no handler"));
}

#[tokio::test]
async fn the_container_never_runs_a_kind_the_manifest_gives_the_edge_unless_handed_back() {
    let app = TestApp::spawn().await;
    let ran = Arc::new(AtomicU32::new(0));
    let seen = ran.clone();
    let registry = Registry::default().register("edge.kind", move |_: AppState, _: Job| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let config = WorkerConfig {
        edge_kinds: vec!["edge.kind".into()],
        ..fast()
    };
    let worker = Worker::new(app.state.clone(), registry, config);
    let id = enqueue(&app, NewJob::new("edge.kind", json!({})).dedupe("edge-1"))
        .await
        .unwrap();
    assert_eq!(
        worker.drain().await.unwrap(),
        0,
        "an edge-owned kind is not claimed"
    );
    assert_eq!(job_row(&app, id).await, ("pending".into(), 0, None));
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // The edge's consumer hands a case it leaves to the container back (src/jobs.ts).
    app.db()
        .await
        .execute(
            "update jobs set handed_back_at = now() where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (status, attempts, _) = settle(&worker, &app, id).await;
    assert_eq!((status.as_str(), attempts), ("done", 1));
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn the_container_leaves_the_manifests_edge_kinds_only_when_the_worker_runs_work() {
    use callbridge::strangler::{embedded, work_owners};
    // The container alone (make dev, EDGE_RUNS_WORK unset) runs every kind and task.
    assert!(WorkerConfig::default().edge_kinds.is_empty());
    assert!(work_owners(false).edge_job_kinds().is_empty());
    for task in callbridge::strangler::CRON_TASKS {
        assert_eq!(work_owners(false).cron_owner(task), "origin", "{task}");
        assert_eq!(
            work_owners(true).cron_owner(task),
            embedded().cron_owner(task),
            "{task}"
        );
    }
    assert_eq!(
        work_owners(true).edge_job_kinds(),
        embedded().edge_job_kinds()
    );
}

#[tokio::test]
async fn a_job_whose_worker_died_is_taken_over_when_its_lease_expires() {
    let app = TestApp::spawn().await;
    let id = enqueue(&app, NewJob::new("recoverable", json!({})))
        .await
        .unwrap();
    // A worker claimed it and died: running, lease still valid, then expired.
    app.db()
        .await
        .execute(
            "update jobs set status = 'running', attempts = 1, locked_by = 'dead-worker',
                locked_until = now() + interval '1 hour' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let registry =
        Registry::default().register("recoverable", |_: AppState, _: Job| async { Ok(()) });
    let worker = Worker::new(app.state.clone(), registry, fast());
    assert_eq!(
        worker.drain().await.unwrap(),
        0,
        "a live lease is respected"
    );
    app.db()
        .await
        .execute(
            "update jobs set locked_until = now() - interval '1 second' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(worker.drain().await.unwrap(), 1);
    let (status, attempts, _) = job_row(&app, id).await;
    assert_eq!((status.as_str(), attempts), ("done", 2));
}

#[tokio::test]
async fn a_long_job_keeps_its_lease_so_no_one_else_takes_it() {
    let app = TestApp::spawn().await;
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let registry = Registry::default().register("slow", move |_: AppState, _: Job| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Ok(())
        }
    });
    let config = WorkerConfig {
        lease: Duration::from_secs(1),
        ..fast()
    };
    let first = Worker::new(app.state.clone(), registry.clone(), config.clone());
    let second = Worker::new(app.state.clone(), registry, config);
    let id = enqueue(&app, NewJob::new("slow", json!({}))).await.unwrap();
    let running = tokio::spawn(async move { first.drain().await.unwrap() });
    // Past the original 1 s lease, a second worker still finds nothing to take.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(second.drain().await.unwrap(), 0);
    assert_eq!(running.await.unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(job_row(&app, id).await.0, "done");
}

#[tokio::test]
async fn a_running_worker_wakes_on_notify_without_waiting_for_its_poll() {
    let app = TestApp::spawn().await;
    let done = Arc::new(tokio::sync::Notify::new());
    let signal = done.clone();
    let registry = Registry::default().register("ping", move |_: AppState, _: Job| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            Ok(())
        }
    });
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let worker = Worker::new(app.state.clone(), registry, config);
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(worker.run(app.state.listener.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await; // the worker is idle, LISTENing
    enqueue(&app, NewJob::new("ping", json!({}))).await.unwrap();
    // The enqueue committed; the bell sends the NOTIFY outside it.
    app.state.job_bell.ring();
    tokio::time::timeout(Duration::from_secs(5), done.notified())
        .await
        .expect("woken by NOTIFY");
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn an_event_stored_by_the_edge_wakes_workers_from_its_own_transaction() {
    // The edge shim inserts with received_via = 'edge' and rings no bell: the inbox trigger
    // notifies for it. The container's own inserts ('origin') do not notify in-transaction.
    let app = TestApp::spawn().await;
    let done = Arc::new(tokio::sync::Notify::new());
    let signal = done.clone();
    let registry = Registry::default().register("telnyx.event", move |_: AppState, _: Job| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            Ok(())
        }
    });
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let worker = Worker::new(app.state.clone(), registry, config);
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(worker.run(app.state.listener.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let db = app.db().await;
    let edge_sql = callbridge::inbox::INBOX_INSERT_SQL;
    let stored: i64 = db
        .query_one(
            edge_sql,
            &[
                &"telnyx",
                &r#"{"data": {"id": "evt-edge-1", "event_type": "call.initiated"}}"#,
                &"edge",
            ],
        )
        .await
        .unwrap()
        .get("inserted");
    assert_eq!(stored, 1);
    tokio::time::timeout(Duration::from_secs(5), done.notified())
        .await
        .expect("woken by the inbox trigger's NOTIFY");
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_caption_storm_sends_no_worker_to_postgres() {
    // Live partials and call events share the process's LISTEN connection with the job
    // bell. Only job wake-ups (and the poll) may cause a claim query.
    let app = TestApp::spawn().await;
    let ran = Arc::new(AtomicU32::new(0));
    let seen = ran.clone();
    let registry = Registry::default().register("ping", move |_: AppState, _: Job| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let worker = Worker::new(app.state.clone(), registry, config);
    let claims = worker.claim_counter();
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(worker.run(app.state.listener.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await; // idle, LISTENing
    let idle = claims.load(Ordering::SeqCst);

    let call_id = uuid::Uuid::new_v4();
    let db = app.db().await;
    for order in 0..400u64 {
        // A call each: the publisher keeps only the newest partial per call and track, and
        // the storm is 400 notifications.
        app.state.partials.publish(
            uuid::Uuid::new_v4().into(),
            "inbound",
            order,
            "hola que tal",
        );
        if order % 4 == 0 {
            db.execute(
                "select pg_notify($1, $2)",
                &[
                    &callbridge::events::NOTIFY_CHANNEL,
                    &format!("{call_id}:{order}"),
                ],
            )
            .await
            .unwrap();
        }
    }
    const JOBS: u32 = 3;
    for _ in 0..JOBS {
        enqueue(&app, NewJob::new("ping", json!({}))).await.unwrap();
        app.state.job_bell.ring();
    }
    for _ in 0..500 {
        if ran.load(Ordering::SeqCst) == JOBS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ran.load(Ordering::SeqCst), JOBS, "every job ran");
    tokio::time::sleep(Duration::from_millis(300)).await; // late notices would claim now
    stop.cancel();
    handle.await.unwrap();
    // Each wake-up claims until a claim comes back empty: at most two claims per job.
    let storm = claims.load(Ordering::SeqCst) - idle;
    assert!(
        storm <= 2 * u64::from(JOBS),
        "500 captions and events plus {JOBS} jobs caused {storm} claim queries"
    );
}

#[test]
fn backoff_grows_exponentially_with_jitter_and_is_capped() {
    let config = WorkerConfig::default();
    for attempt in 1..=5 {
        let ceiling = config.base_backoff * 2u32.pow(attempt as u32 - 1);
        let delay = jobs::backoff(&config, attempt);
        assert!(
            delay <= ceiling && delay >= ceiling / 2,
            "attempt {attempt}: {delay:?}"
        );
    }
    assert!(jobs::backoff(&config, 40) <= config.max_backoff);
}
