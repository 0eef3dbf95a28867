//! The Postgres job queue as its producers see it (docs/JOBS.md): what a job is ([`NewJob`],
//! and [`JobKind`] for a kind with a typed payload), enqueueing inside the caller's
//! transaction, the claimed [`Job`] a handler gets, and the after-commit wake-up [`bell`].
//! Below `state` and the domain modules, so they enqueue without knowing the workers
//! (`jobs` runs them).

pub mod bell;

use crate::db::GenericClient;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// A job kind with a typed payload, in the manner of crates.io's background jobs: the kind
/// name stored in `jobs.kind` (never renamed: queued rows and the edge carry it), the payload
/// type, and its dedupe rule. `jobs::Registry::job` decodes the payload for the handler.
pub trait JobKind: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stored kind, e.g. `telnyx.event`.
    const KIND: &'static str;
    /// Attempts before the job is parked as dead; `None` is the queue's default (10).
    const MAX_ATTEMPTS: Option<i32> = None;

    /// At most one job with this key ever exists, so a second enqueue is a no-op; `None`
    /// lets duplicates in.
    fn dedupe_key(&self) -> Option<String>;

    /// The envelope to [`enqueue`].
    fn envelope(&self) -> NewJob {
        NewJob {
            kind: Self::KIND.to_owned(),
            // A derived `Serialize` of plain fields cannot fail.
            payload: serde_json::to_value(self).unwrap_or_default(),
            dedupe_key: self.dedupe_key(),
            run_at: None,
            max_attempts: Self::MAX_ATTEMPTS,
        }
    }
}

pub const NOTIFY_CHANNEL: &str = "callbridge_jobs";

/// The job envelope: what `enqueue` stores and what a Cloudflare Queue message would carry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewJob {
    /// Names the handler, e.g. `telnyx.event`.
    pub kind: String,
    /// Handler input; keep it small (ids, not documents).
    pub payload: serde_json::Value,
    /// At most one job with this key ever exists; a second enqueue is a no-op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
    /// Not before this instant (default: now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "crate::timestamps::option::serialize")]
    pub run_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
}

impl NewJob {
    pub fn new(kind: &str, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.to_owned(),
            payload,
            dedupe_key: None,
            run_at: None,
            max_attempts: None,
        }
    }

    pub fn dedupe(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// Not before `run_at`.
    pub fn at(mut self, run_at: DateTime<Utc>) -> Self {
        self.run_at = Some(run_at);
        self
    }
}

/// Enqueues `job` with the caller's client or transaction (a typed kind: `&kind.envelope()`).
/// `None` when deduplicated. Ring `AppState::job_bell` once the transaction has committed (a worker finishing a job claims
/// again at once, so jobs enqueued by job handlers need no ring).
pub async fn enqueue(client: &impl GenericClient, job: &NewJob) -> Result<Option<i64>, DbError> {
    let row = client
        .query_opt(
            "insert into jobs (kind, payload, dedupe_key, run_at, max_attempts)
             values ($1, $2, $3, coalesce($4, now()), coalesce($5, 10))
             on conflict (dedupe_key) where dedupe_key is not null do nothing
             returning id",
            &[
                &job.kind,
                &job.payload,
                &job.dedupe_key,
                &job.run_at,
                &job.max_attempts,
            ],
        )
        .await?;
    Ok(row.map(|row| row.get("id")))
}

/// A claimed job as a handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    /// 1 on the first run.
    pub attempt: i32,
    pub max_attempts: i32,
    /// The worker holding the lease (`locked_by`).
    pub worker: String,
}

/// Another worker claimed the job after this one's lease expired: its effects must not
/// commit (the transaction calling [`Job::complete_in`] rolls back).
#[derive(Debug, thiserror::Error)]
#[error("job {0} was claimed by another worker (lease expired); this run's effects roll back")]
pub struct LeaseLost(pub i64);

impl Job {
    /// The payload as `J`'s type; a payload that does not decode can never run, so it is
    /// [`Permanent`].
    pub fn payload<J: JobKind>(&self) -> Result<J, Permanent> {
        serde_json::from_value(self.payload.clone())
            .map_err(|error| Permanent(format!("{} payload: {error}", J::KIND)))
    }

    /// Marks the job `done` inside the transaction that commits its effects, so the effect
    /// and the completion commit together or not at all (docs/JOBS.md, "exactly-once
    /// effects"). Fenced by the lease: fails with [`LeaseLost`] when another worker has
    /// claimed the job meanwhile, so only one run's effects can ever commit.
    pub async fn complete_in(&self, transaction: &impl GenericClient) -> anyhow::Result<()> {
        let updated = transaction
            .execute(
                "update jobs set status = 'done', finished_at = now(), updated_at = now(),
                        locked_until = null, last_error = null
                 where id = $1 and locked_by = $2 and status = 'running'",
                &[&self.id, &self.worker],
            )
            .await?;
        if updated == 0 {
            return Err(LeaseLost(self.id).into());
        }
        Ok(())
    }
}

/// Marks an error as not worth retrying: the job goes straight to `dead`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);
