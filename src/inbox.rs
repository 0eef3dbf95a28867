//! The webhook inbox: a verified provider event stored once in `webhook_inbox` and its
//! processing job enqueued in the same statement. The receivers (`http::webhooks`), the
//! jobs that process the events and the edge shim (which runs [`INBOX_INSERT_SQL`] byte for
//! byte) all name the providers and job kinds through this module.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError};
use crate::queue::JobKind;

/// Inserts the event unless its id is known, and enqueues its job in the same statement.
/// The job's kind is `<provider>.event` ([`Provider::job_kind`]); the edge shim runs this
/// same statement through Hyperdrive (`received_via = 'edge'`).
pub const INBOX_INSERT_SQL: &str = "with inserted as (
        insert into webhook_inbox (provider, event_id, event_type, occurred_at, payload, received_via)
        values ($1, $2, $3, $4, $5, $6)
        on conflict (provider, event_id) do nothing
        returning provider, event_id
    ), enqueued as (
        insert into jobs (kind, payload, dedupe_key)
        select provider || '.event', jsonb_build_object('provider', provider, 'event_id', event_id),
               'webhook:' || provider || ':' || event_id
        from inserted
        on conflict (dedupe_key) where dedupe_key is not null do nothing
        returning id
    )
    select count(*) from inserted";

/// A provider whose webhooks land in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Telnyx,
    AssemblyAi,
}

impl Provider {
    /// The `webhook_inbox.provider` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::Telnyx => "telnyx",
            Provider::AssemblyAi => "assemblyai",
        }
    }

    /// The kind of the job [`INBOX_INSERT_SQL`] enqueues for this provider's events
    /// (`provider || '.event'` in the statement).
    pub const fn job_kind(self) -> &'static str {
        match self {
            Provider::Telnyx => "telnyx.event",
            Provider::AssemblyAi => "assemblyai.event",
        }
    }
}

/// The payload [`INBOX_INSERT_SQL`] gives the job of a new event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    #[serde(default)]
    pub provider: String,
    pub event_id: String,
}

impl EventRef {
    /// The statement's `'webhook:' || provider || ':' || event_id`.
    fn dedupe_key(&self) -> Option<String> {
        Some(format!("webhook:{}:{}", self.provider, self.event_id))
    }
}

/// Job `telnyx.event`: apply one stored Telnyx event (`jobs::telnyx_event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TelnyxEventJob(pub EventRef);

impl JobKind for TelnyxEventJob {
    const KIND: &'static str = Provider::Telnyx.job_kind();

    fn dedupe_key(&self) -> Option<String> {
        self.0.dedupe_key()
    }
}

/// Job `assemblyai.event`: fetch and store a finished post-call transcript
/// (`jobs::transcript_fetch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AssemblyAiEventJob(pub EventRef);

impl JobKind for AssemblyAiEventJob {
    const KIND: &'static str = Provider::AssemblyAi.job_kind();

    fn dedupe_key(&self) -> Option<String> {
        self.0.dedupe_key()
    }
}

/// One verified event, as the receiver parsed it.
#[derive(Debug)]
pub struct Event<'a> {
    pub provider: Provider,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub occurred_at: Option<DateTime<Utc>>,
    pub payload: &'a serde_json::Value,
}

/// Stores a verified event and enqueues its job (one statement, so both or neither), counting
/// it. Returns whether the event id was already known (a duplicate delivery). The caller
/// rings the job bell when it was not.
pub async fn store(db: &Db, event: &Event<'_>) -> Result<bool, DbError> {
    let client = db.client().await?;
    let statement = db.prepare(&client, INBOX_INSERT_SQL).await?;
    let inserted: i64 = client
        .query_one(
            &statement,
            &[
                &event.provider.as_str(),
                &event.event_id,
                &event.event_type,
                &event.occurred_at,
                event.payload,
                &"origin",
            ],
        )
        .await?
        .get("count");
    let duplicate = inserted == 0;
    metrics::counter!(
        "webhooks_received_total",
        "provider" => event.provider.as_str(),
        "duplicate" => duplicate.to_string()
    )
    .increment(1);
    Ok(duplicate)
}

/// Makes a verified body storable: PostgreSQL refuses U+0000 in `jsonb` and `text`, and a
/// signed event must be stored, not answered 500 and retried until the provider gives up.
/// Runs after the signature check, which saw the raw bytes (docs/adr/0020-nul-in-webhooks.md).
pub fn storable(payload: &mut serde_json::Value, provider: Provider) {
    let replaced = crate::db::replace_nul(payload);
    if replaced > 0 {
        metrics::counter!("webhook_nul_replaced_total", "provider" => provider.as_str())
            .increment(replaced as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_kind_is_the_one_the_statement_builds() {
        for provider in [Provider::Telnyx, Provider::AssemblyAi] {
            assert_eq!(
                provider.job_kind(),
                format!("{}.event", provider.as_str()),
                "INBOX_INSERT_SQL enqueues provider || '.event'"
            );
        }
        assert!(INBOX_INSERT_SQL.contains("provider || '.event'"));
    }

    #[test]
    fn the_typed_jobs_match_what_the_statement_enqueues() {
        let event = EventRef {
            provider: "telnyx".into(),
            event_id: "e-1".into(),
        };
        let job = TelnyxEventJob(event).envelope();
        assert_eq!(job.kind, "telnyx.event");
        // jsonb_build_object('provider', provider, 'event_id', event_id)
        assert_eq!(
            job.payload,
            serde_json::json!({"provider": "telnyx", "event_id": "e-1"})
        );
        assert_eq!(job.dedupe_key.as_deref(), Some("webhook:telnyx:e-1"));
        assert!(INBOX_INSERT_SQL.contains("'webhook:' || provider || ':' || event_id"));
        assert_eq!(AssemblyAiEventJob::KIND, "assemblyai.event");
    }
}
