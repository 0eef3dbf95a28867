//! The job workers and one handler per job kind (docs/JOBS.md); what a job is and how it is
//! enqueued is `queue`.
//!
//! Workers claim with `FOR UPDATE SKIP LOCKED` under
//! a lease, extend the lease while running, retry with exponential backoff and equal jitter,
//! and park a job as `dead` with its last error after `max_attempts`. A panic in a handler is
//! caught and recorded like an error. Workers wake on `NOTIFY callbridge_jobs` (rung by `queue::bell`
//! after the enqueuing commit, or by the inbox trigger for edge writes) and poll as a fallback
//! for missed notifications, retries and leases.

pub mod call_max_duration;
pub mod handlers;
pub mod recording_import;
pub mod telnyx_event;
pub mod transcript_fetch;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::db::{DbError, Listener, Notice};
use crate::queue::{Job, JobKind, NOTIFY_CHANNEL, Permanent};
use crate::state::AppState;

pub type Handler =
    Arc<dyn Fn(AppState, Job) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Which handler runs which kind. Production uses [`handlers::registry`]; tests may add.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Handler>,
}

impl Registry {
    /// Runs `J`'s jobs (kind [`JobKind::KIND`]); the handler reads its payload with
    /// [`Job::payload`], which fails a payload that does not decode as [`Permanent`].
    pub fn job<J, F, Fut>(self, handler: F) -> Self
    where
        J: JobKind,
        F: Fn(AppState, Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.register(J::KIND, handler)
    }

    /// Runs jobs of `kind`, a name without a payload type (tests' ad-hoc kinds).
    pub fn register<F, Fut>(mut self, kind: &str, handler: F) -> Self
    where
        F: Fn(AppState, Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.handlers.insert(
            kind.to_owned(),
            Arc::new(move |state, job| handler(state, job).boxed()),
        );
        self
    }

    /// The kinds this registry runs (what the manifest guard checks against).
    pub fn kinds(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub lease: Duration,
    pub poll_interval: Duration,
    pub batch: i64,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Kinds the edge runs (`edge-shim/routes.json`): never claimed here, unless the edge
    /// handed the job back (`handed_back_at`). Default: none (the container alone); the
    /// service sets the embedded manifest's when `EDGE_RUNS_WORK` is on (ADR 0042).
    pub edge_kinds: Vec<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            batch: 8,
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(3600),
            edge_kinds: Vec::new(),
        }
    }
}

/// Waits for a notice that can mean new work. The process shares one LISTEN connection, so
/// live partials and call events arrive here too; each of those used to send every worker to
/// PostgreSQL with a claim that found nothing. A reconnection or a lagging receiver may have
/// hidden a job wake-up, so both count as one.
async fn job_wake(wake: &mut broadcast::Receiver<Notice>) {
    loop {
        match wake.recv().await {
            Ok(Notice::Notification { channel, .. }) if channel == NOTIFY_CHANNEL => return,
            Ok(Notice::Notification { .. }) => {}
            Ok(Notice::Reconnected) | Err(RecvError::Lagged(_)) => return,
            // The listener is gone (shutdown): only the poll interval wakes the worker now.
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Backoff before attempt `attempt + 1`: exponential from `base_backoff`, capped at
/// `max_backoff`, with equal jitter (`crate::retry`: uniformly in [½, 1] of the ceiling).
pub fn backoff(config: &WorkerConfig, attempt: i32) -> Duration {
    crate::retry::backoff(
        config.base_backoff,
        config.max_backoff,
        attempt.clamp(1, 31) as u32,
    )
}

pub struct Worker {
    state: AppState,
    registry: Registry,
    config: WorkerConfig,
    id: String,
    claims: Arc<AtomicU64>,
}

impl Worker {
    pub fn new(state: AppState, registry: Registry, config: WorkerConfig) -> Self {
        let id = format!(
            "{}-{}",
            state.config.hostname.as_deref().unwrap_or("worker"),
            uuid::Uuid::new_v4().simple()
        );
        Self {
            state,
            registry,
            config,
            id,
            claims: Arc::default(),
        }
    }

    /// How many claim queries this worker has sent so far; the handle stays live after
    /// `run` takes the worker. Every claim is a round trip to PostgreSQL, so wake-ups that
    /// cannot mean work must not cause one.
    pub fn claim_counter(&self) -> Arc<AtomicU64> {
        self.claims.clone()
    }

    /// Claims and runs ready jobs until none is left ready *now* (future retries wait).
    /// Deterministic for tests: returns how many jobs ran.
    pub async fn drain(&self) -> Result<usize, DbError> {
        let mut total = 0;
        loop {
            let ran = self.run_batch().await?;
            if ran == 0 {
                return Ok(total);
            }
            total += ran;
        }
    }

    /// Runs until `shutdown`; finishes the jobs in hand before returning.
    pub async fn run(self, listener: Listener, shutdown: CancellationToken) {
        let mut wake = listener.subscribe();
        tracing::info!(worker = %self.id, "job worker started");
        loop {
            match self.run_batch().await {
                Ok(0) => {}
                Ok(_) => continue,
                Err(error) => tracing::warn!(%error, "claiming jobs failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = job_wake(&mut wake) => {},
                () = tokio::time::sleep(self.config.poll_interval) => {},
            }
        }
        tracing::info!(worker = %self.id, "job worker stopped");
    }

    async fn claim(&self) -> Result<Vec<Job>, DbError> {
        let client = self.state.db.client().await?;
        self.claims.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("job_claim_queries_total").increment(1);
        let lease = self.config.lease.as_secs_f64();
        let rows = client
            .query(
                "update jobs set status = 'running', attempts = attempts + 1,
                        locked_until = now() + make_interval(secs => $1), locked_by = $2,
                        updated_at = now()
                 where id in (
                     select id from jobs
                     where ((status = 'pending' and run_at <= now())
                        or (status = 'running' and locked_until < now()))
                       and (kind <> all($4) or handed_back_at is not null)
                     order by run_at, id
                     limit $3
                     for update skip locked)
                 returning id, kind, payload, attempts, max_attempts",
                &[
                    &lease,
                    &self.id,
                    &self.config.batch,
                    &self.config.edge_kinds,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Job {
                id: row.get("id"),
                kind: row.get("kind"),
                payload: row.get("payload"),
                attempt: row.get("attempts"),
                max_attempts: row.get("max_attempts"),
                worker: self.id.clone(),
            })
            .collect())
    }

    async fn run_batch(&self) -> Result<usize, DbError> {
        let jobs = self.claim().await?;
        let count = jobs.len();
        let runs = jobs.into_iter().map(|job| self.execute(job));
        for result in futures_util::future::join_all(runs).await {
            result?;
        }
        Ok(count)
    }

    async fn execute(&self, job: Job) -> Result<(), DbError> {
        let started = std::time::Instant::now();
        let span = tracing::info_span!("job", id = job.id, kind = %job.kind, attempt = job.attempt);
        let outcome = match self.registry.handlers.get(&job.kind) {
            None => Err(anyhow::Error::new(Permanent(format!(
                "no handler for kind {:?}",
                job.kind
            )))),
            Some(handler) => {
                let run = AssertUnwindSafe(handler(self.state.clone(), job.clone())).catch_unwind();
                let keep_lease = self.extend_lease_while(job.id);
                tokio::pin!(run);
                tokio::pin!(keep_lease);
                let result = tokio::select! {
                    result = &mut run => result,
                    () = &mut keep_lease => unreachable!("the lease loop never ends"),
                };
                result.unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    Err(anyhow::anyhow!("handler panicked: {message}"))
                })
            }
        };
        let _entered = span.enter();
        let labels = [("kind", job.kind.clone())];
        metrics::histogram!("job_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        let client = self.state.db.client().await?;
        match outcome {
            Ok(()) => {
                metrics::counter!("jobs_total", "kind" => job.kind.clone(), "outcome" => "done")
                    .increment(1);
                // A no-op for a handler that completed the job in its own transaction.
                client
                    .execute(
                        "update jobs set status = 'done', finished_at = now(), updated_at = now(),
                                locked_until = null, last_error = null
                         where id = $1 and locked_by = $2 and status = 'running'",
                        &[&job.id, &self.id],
                    )
                    .await?;
            }
            Err(error) => {
                let permanent = error.downcast_ref::<Permanent>().is_some();
                let message = format!("{error:#}");
                if permanent || job.attempt >= job.max_attempts {
                    tracing::error!(error = %message, "job is dead");
                    metrics::counter!("jobs_total", "kind" => job.kind.clone(), "outcome" => "dead").increment(1);
                    client
                        .execute(
                            "update jobs set status = 'dead', last_error = $3, finished_at = now(),
                                    updated_at = now(), locked_until = null
                             where id = $1 and locked_by = $2 and status = 'running'",
                            &[&job.id, &self.id, &message],
                        )
                        .await?;
                } else {
                    let delay = backoff(&self.config, job.attempt).as_secs_f64();
                    tracing::warn!(error = %message, retry_in_secs = delay, "job failed; will retry");
                    metrics::counter!("jobs_total", "kind" => job.kind.clone(), "outcome" => "retry").increment(1);
                    client
                        .execute(
                            "update jobs set status = 'pending', last_error = $3, updated_at = now(),
                                    run_at = now() + make_interval(secs => $4), locked_until = null
                             where id = $1 and locked_by = $2 and status = 'running'",
                            &[&job.id, &self.id, &message, &delay],
                        )
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Keeps the lease alive while a long job runs (recording imports), so another worker
    /// does not take it over; a worker that dies stops extending and the lease expires.
    async fn extend_lease_while(&self, id: i64) {
        let period = self.config.lease / 3;
        loop {
            tokio::time::sleep(period).await;
            if let Ok(client) = self.state.db.client().await {
                let _ = client
                    .execute(
                        "update jobs set locked_until = now() + make_interval(secs => $3)
                         where id = $1 and locked_by = $2 and status = 'running'",
                        &[&id, &self.id, &self.config.lease.as_secs_f64()],
                    )
                    .await;
            }
        }
    }
}
