//! The webhook inbox: a verified provider event stored once in `webhook_inbox` and its
//! processing job enqueued in the same statement. The receivers (`http::webhooks`), the
//! jobs that process the events and the edge shim (which runs [`INBOX_INSERT_SQL`] byte for
//! byte) all name the providers and job kinds through this module.

use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError};
use crate::queue::JobKind;

/// Stores a verified webhook body and enqueues its job, in one statement that also reads it:
/// `$1` the provider, `$2` the raw body as text, `$3` `received_via`. PostgreSQL is the one
/// parser: `webhook_body` (migration 20261206001210) reads the raw
/// text as `jsonb` after replacing each `\u0000` escape by `\ufffd` (ADR 0020), or says why
/// it will not; the statement picks out the event id and type, and converts
/// `data.occurred_at` when it is an RFC 3339 timestamp (else NULL). The answer is one row:
/// `rejected` (why nothing was stored: the 400's detail), `not_json` (the body is not JSON,
/// as opposed to not this provider's webhook), `event_id`, `nul_replaced` and `inserted` (0
/// for a duplicate). The edge shim runs this statement byte for byte through Hyperdrive
/// (`received_via = 'edge'`), so both sides store identical rows (docs/STRANGLER.md; ADR 0030):
/// the text lives in `edge-shim/src/webhook_inbox_insert.sql`, which the Worker imports as a
/// Text module and this constant includes (ADR 0039).
pub const INBOX_INSERT_SQL: &str = include_str!("../edge-shim/src/webhook_inbox_insert.sql");

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

/// What the inbox statement made of a verified body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored (or already stored: `duplicate`) and its job enqueued.
    Received { event_id: String, duplicate: bool },
    /// Nothing stored: `reason` is the 400's detail. `not_json`: the body is not JSON (else
    /// it is JSON but not this provider's webhook, and the receiver prefixes the reason).
    Refused { reason: String, not_json: bool },
}

/// The 400 for a body that is not UTF-8 (PostgreSQL only takes text).
pub const NOT_UTF8: &str = "the body is not JSON: it is not valid UTF-8";

/// The 400 for a body with a NUL byte (never JSON; PostgreSQL refuses it in text).
pub const NUL_BYTE: &str = "the body is not JSON: it contains a NUL byte";

/// A body PostgreSQL would not read as JSON, should one reach it as an error rather than as
/// `webhook_body`'s refusal: its message and detail (never its context line, which echoes
/// the body).
fn not_json(error: &tokio_postgres::Error) -> Option<String> {
    let db = error.as_db_error()?;
    let code = db.code().code();
    if !(code.starts_with("22") || code == "54001") {
        return None;
    }
    Some(match db.detail() {
        Some(detail) => format!("the body is not JSON: {} ({detail})", db.message()),
        None => format!("the body is not JSON: {}", db.message()),
    })
}

/// Stores a verified body (see [`INBOX_INSERT_SQL`]) and enqueues its job, counting it. The
/// caller rings the job bell when the event was new.
pub async fn store(db: &Db, provider: Provider, body: &[u8]) -> Result<Stored, DbError> {
    let refused = |reason: &str| Stored::Refused {
        reason: reason.to_owned(),
        not_json: true,
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(refused(NOT_UTF8));
    };
    if text.contains('\0') {
        return Ok(refused(NUL_BYTE));
    }
    let client = db.client().await?;
    let statement = db.prepare(&client, INBOX_INSERT_SQL).await?;
    let row = match client
        .query_one(&statement, &[&provider.as_str(), &text, &"origin"])
        .await
    {
        Ok(row) => row,
        Err(error) => match not_json(&error) {
            Some(reason) => return Ok(refused(&reason)),
            None => return Err(error.into()),
        },
    };
    if let Some(reason) = row.get::<_, Option<String>>("rejected") {
        return Ok(Stored::Refused {
            reason,
            not_json: row.get("not_json"),
        });
    }
    let replaced: i64 = row.get("nul_replaced");
    if replaced > 0 {
        metrics::counter!("webhook_nul_replaced_total", "provider" => provider.as_str())
            .increment(replaced as u64);
    }
    let duplicate = row.get::<_, i64>("inserted") == 0;
    metrics::counter!(
        "webhooks_received_total",
        "provider" => provider.as_str(),
        "duplicate" => duplicate.to_string()
    )
    .increment(1);
    Ok(Stored::Received {
        event_id: row.get("event_id"),
        duplicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The edge shim runs the inbox statement through Hyperdrive and must run this very text:
    /// `edge-shim/src/inbox.ts` imports the file this module includes (a wrangler `Text`
    /// module), so there is no copy to drift. Resolving its import proves it names the same
    /// file; the edge's own test (`test/inbox-sql.test.ts`) proves the Worker receives the
    /// file's bytes unchanged.
    #[test]
    fn the_edge_imports_the_same_inbox_statement() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let edge = std::fs::read_to_string(root.join("edge-shim/src/inbox.ts")).unwrap();
        let import = edge
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix("import INBOX_INSERT_SQL from \"")?;
                rest.strip_suffix("\";")
            })
            .expect("edge-shim/src/inbox.ts imports INBOX_INSERT_SQL from a .sql file");
        let imported = root
            .join("edge-shim/src")
            .join(import)
            .canonicalize()
            .unwrap();
        let ours = root
            .join("edge-shim/src/webhook_inbox_insert.sql")
            .canonicalize()
            .unwrap();
        assert_eq!(imported, ours);
        assert_eq!(std::fs::read_to_string(ours).unwrap(), INBOX_INSERT_SQL);
    }

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
