//! Live partial transcript turns, published in batches: each media bridge hands its newest
//! partial per track to `Partials`, and one task per replica sends everything pending as
//! `NOTIFY`s in one statement, then waits for more (at least `BATCH_GAP`). Partials are live only (docs/MEDIA_BRIDGE.md)
//! and a newer one of a track supersedes the older, so only the newest per track is kept.
//! However many calls and partials, they hold at most one pooled connection at a time: one
//! spawned checkout per partial once queued hundreds of tasks on the pool under load, and
//! the media WebSocket upgrades behind them timed out (503, ADR 0026).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError};
use crate::events::PARTIALS_CHANNEL;
use crate::ids::CallId;

/// NOTIFY payloads must stay under 8000 bytes (text is at most 4 bytes a character).
const MAX_PARTIAL_TEXT: usize = 6000;

/// The least time between two batches. Each batch is a transaction that commits and wakes
/// every listening backend, whatever it carries: published as fast as they could go, the
/// media bench's 500 calls cost PostgreSQL 90 of them a second. A caption that moves 20
/// times a second moves as fast as anyone reads it, and the first partial after a pause
/// still goes at once (ADR 0054).
const BATCH_GAP: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq)]
struct Partial {
    turn_order: u64,
    text: String,
}

/// The newest unpublished partial per (call, track label).
type Pending = Arc<Mutex<HashMap<(CallId, &'static str), Partial>>>;

#[derive(Clone)]
pub struct Partials {
    pending: Pending,
    wake: Arc<Notify>,
}

impl Partials {
    /// Starts the publisher; it stops with `shutdown`.
    pub fn start(db: Db, shutdown: CancellationToken) -> Self {
        let partials = Self {
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
        };
        let (pending, wake) = (partials.pending.clone(), partials.wake.clone());
        tokio::spawn(async move {
            while shutdown
                .run_until_cancelled(wake.notified())
                .await
                .is_some()
            {
                let batch = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
                if batch.is_empty() {
                    continue;
                }
                metrics::histogram!("transcript_partials_batch_size").record(batch.len() as f64);
                if let Err(error) = publish(&db, batch).await {
                    // Live only: a partial that missed its moment is not worth a retry.
                    tracing::debug!(%error, "publishing partial turns failed");
                }
                // What arrives meanwhile is kept (newest per track) and goes with the next.
                if shutdown
                    .run_until_cancelled(tokio::time::sleep(BATCH_GAP))
                    .await
                    .is_none()
                {
                    return;
                }
            }
        });
        partials
    }

    /// Queues `text` as the newest partial of `call_id`'s `track`; published with the next
    /// batch (at once when none was published in the last `BATCH_GAP`).
    pub fn publish(&self, call_id: CallId, track: &'static str, turn_order: u64, text: &str) {
        let text = match text.char_indices().nth(MAX_PARTIAL_TEXT / 4) {
            Some((cut, _)) => text[..cut].to_owned(),
            None => text.to_owned(),
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((call_id, track), Partial { turn_order, text });
        self.wake.notify_one();
    }
}

const PUBLISH_SQL: &str = "select pg_notify($1, p) from unnest($2::text[]) as p";

/// One partial as followers receive it (`events::follow`, the SSE stream).
#[derive(Serialize)]
struct Payload<'a> {
    call_id: CallId,
    track: &'a str,
    turn_order: u64,
    text: &'a str,
}

/// Every pending partial in one statement: one `pg_notify` per partial.
async fn publish(db: &Db, batch: HashMap<(CallId, &'static str), Partial>) -> Result<(), DbError> {
    // Written straight from the fields: through a `json!` tree, building and dropping a map
    // per partial cost more than the statement's own client side (ADR 0058).
    let payloads: Vec<String> = batch
        .iter()
        .filter_map(|((call_id, track), partial)| {
            serde_json::to_string(&Payload {
                call_id: *call_id,
                track,
                turn_order: partial.turn_order,
                text: &partial.text,
            })
            .ok()
        })
        .collect();
    let client = db.client().await?;
    // Through the statement cache: one round trip per batch instead of three (prepare,
    // execute, close).
    let statement = db.prepare(&client, PUBLISH_SQL).await?;
    client
        .execute(&statement, &[&PARTIALS_CHANNEL, &payloads])
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partials() -> Partials {
        Partials {
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
        }
    }

    #[test]
    fn a_long_partial_is_cut_at_a_character_not_a_byte() {
        let partials = partials();
        let call_id = CallId::new();
        let long = "é".repeat(MAX_PARTIAL_TEXT);
        partials.publish(call_id, "inbound", 3, &long);
        partials.publish(call_id, "outbound", 4, "short");
        let pending = partials.pending.lock().unwrap();
        let cut = &pending[&(call_id, "inbound")];
        assert_eq!(cut.text.chars().count(), MAX_PARTIAL_TEXT / 4);
        assert!(cut.text.len() <= MAX_PARTIAL_TEXT, "under NOTIFY's limit");
        assert_eq!(pending[&(call_id, "outbound")].text, "short");
    }

    #[test]
    fn the_payload_carries_what_a_follower_matches_and_reads() {
        let call_id = CallId::new();
        let payload = serde_json::to_string(&Payload {
            call_id,
            track: "agent",
            turn_order: 7,
            text: "say \"hi\"\n",
        })
        .unwrap();
        // `events::follow` picks a call's partials out by this marker before parsing.
        assert!(
            payload.contains(&format!("\"call_id\":\"{call_id}\"")),
            "{payload}"
        );
        let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"call_id": call_id, "track": "agent", "turn_order": 7, "text": "say \"hi\"\n"})
        );
    }
}
