//! The durable per-call event log (`call_events`) and its live fan-out to SSE subscribers on
//! any replica (docs/ARCHITECTURE.md, "Background work and fan-out"): an append writes the row and `NOTIFY`s only `call_id:seq`;
//! subscribers re-read the log after their last sequence number, so a lost notification, a
//! lagging subscriber or a reconnect never loses or duplicates an event.

use std::collections::VecDeque;
use std::time::Duration;

use crate::db::GenericClient;
use crate::ids::CallId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::db::{Db, DbError, Listener, Notice};

pub const NOTIFY_CHANNEL: &str = "callbridge_call_events";
/// Live partial transcript turns (not part of the durable log): the media bridge notifies,
/// SSE followers on any replica pass them on.
pub const PARTIALS_CHANNEL: &str = "callbridge_partials";
/// Re-read the log this often even without a notification (belt and braces).
const RECHECK: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CallEvent {
    /// Per-call sequence number, 1, 2, 3…; the SSE `id`, so `Last-Event-ID` resumes after it.
    pub seq: i64,
    pub kind: String,
    pub data: serde_json::Value,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub occurred_at: DateTime<Utc>,
}

/// Appends an event in one statement (sequence, row and notification commit together).
pub async fn append(
    client: &impl GenericClient,
    call_id: CallId,
    kind: &str,
    data: serde_json::Value,
    occurred_at: DateTime<Utc>,
) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "with next as (
                 update calls set event_seq = event_seq + 1 where id = $1 returning event_seq
             ), inserted as (
                 insert into call_events (call_id, seq, kind, data, occurred_at)
                 select $1, event_seq, $2, $3, $4 from next returning seq
             )
             select seq, pg_notify($5, $1::text || ':' || seq) from inserted",
            &[&call_id, &kind, &data, &occurred_at, &NOTIFY_CHANNEL],
        )
        .await?;
    Ok(row.get("seq"))
}

pub async fn after(
    client: &impl GenericClient,
    call_id: CallId,
    seq: i64,
    limit: i64,
) -> Result<Vec<CallEvent>, DbError> {
    let rows = client
        .query(
            "select seq, kind, data, occurred_at from call_events
             where call_id = $1 and seq > $2 order by seq limit $3",
            &[&call_id, &seq, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| CallEvent {
            seq: row.get("seq"),
            kind: row.get("kind"),
            data: row.get("data"),
            occurred_at: row.get("occurred_at"),
        })
        .collect())
}

/// What a follower receives: durable log entries, and live-only partial transcripts.
#[derive(Debug, Clone)]
pub enum FollowItem {
    Durable(CallEvent),
    /// A partial transcript: never stored, never replayed; dropped for a lagging subscriber.
    Partial(serde_json::Value),
}

struct Follow {
    db: Db,
    call_id: CallId,
    prefix: String,
    partial_marker: String,
    last: i64,
    notices: tokio::sync::broadcast::Receiver<Notice>,
    buffer: VecDeque<CallEvent>,
    partials: VecDeque<serde_json::Value>,
    shutdown: CancellationToken,
}

/// What a call's partials carry (`partials`), so a follower picks them out of the channel's
/// notifications before parsing any.
pub fn partial_marker(call_id: CallId) -> String {
    format!("\"call_id\":\"{call_id}\"")
}

/// Every event of `call_id` after `after_seq`, in order, then live ones as they are
/// appended anywhere, until `shutdown`. Subscribes *before* the first read, so nothing
/// appended in between is missed.
pub fn follow(
    db: Db,
    listener: &Listener,
    call_id: CallId,
    after_seq: i64,
    shutdown: CancellationToken,
) -> impl futures_util::Stream<Item = FollowItem> + Send + use<> {
    let state = Follow {
        db,
        call_id,
        prefix: format!("{call_id}:"),
        partial_marker: partial_marker(call_id),
        last: after_seq,
        notices: listener.subscribe(),
        buffer: VecDeque::new(),
        partials: VecDeque::new(),
        shutdown,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.buffer.pop_front() {
                state.last = event.seq;
                return Some((FollowItem::Durable(event), state));
            }
            if let Some(partial) = state.partials.pop_front() {
                return Some((FollowItem::Partial(partial), state));
            }
            let fetched = match state.db.client().await {
                Ok(client) => after(&client, state.call_id, state.last, 500).await,
                Err(error) => Err(error),
            };
            match fetched {
                Ok(events) if !events.is_empty() => {
                    state.buffer.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "reading call events failed; retrying");
                    tokio::select! {
                        () = state.shutdown.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            }
            // Wait for something that may concern this call.
            loop {
                tokio::select! {
                    () = state.shutdown.cancelled() => return None,
                    () = tokio::time::sleep(RECHECK) => break,
                    notice = state.notices.recv() => match notice {
                        Ok(Notice::Notification { channel, payload })
                            if channel == NOTIFY_CHANNEL && payload.starts_with(&state.prefix) => break,
                        Ok(Notice::Notification { channel, payload })
                            if channel == PARTIALS_CHANNEL && payload.contains(&state.partial_marker) => {
                            // Keep only the newest few: a slow subscriber loses partials, never finals.
                            if let Ok(value) = serde_json::from_str(&payload) {
                                if state.partials.len() >= 8 {
                                    state.partials.pop_front();
                                }
                                state.partials.push_back(value);
                            }
                            break;
                        }
                        Ok(Notice::Reconnected) | Err(RecvError::Lagged(_)) => break,
                        Ok(Notice::Notification { .. }) => continue,
                        Err(RecvError::Closed) => return None,
                    },
                }
            }
        }
    })
}
