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
/// The largest payload PostgreSQL takes (it refuses 8000 bytes or more). Escaping can take a
/// text past it (a control character is six bytes escaped), and one payload refused fails
/// the whole batch's statement, every call's partials with it.
const MAX_NOTIFY_PAYLOAD: usize = 7999;

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
        let text = first_chars(text, MAX_PARTIAL_TEXT / 4).to_owned();
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
    let payloads = payloads(&batch);
    let client = db.client().await?;
    // Through the statement cache: one round trip per batch instead of three (prepare,
    // execute, close).
    let statement = db.prepare(&client, PUBLISH_SQL).await?;
    client
        .execute(&statement, &[&PARTIALS_CHANNEL, &payloads])
        .await?;
    Ok(())
}

/// The batch's payloads. Written straight from the fields: through a `json!` tree, each
/// partial built and dropped a map of four keys (ADR 0058).
fn payloads(batch: &HashMap<(CallId, &'static str), Partial>) -> Vec<String> {
    batch
        .iter()
        .filter_map(|(&(call_id, track), partial)| payload(call_id, track, partial))
        .collect()
}

/// One partial's payload, its text halved until the payload fits NOTIFY (only escapes can
/// take it past: `publish` already cut the text to `MAX_PARTIAL_TEXT` bytes at most).
fn payload(call_id: CallId, track: &str, partial: &Partial) -> Option<String> {
    let mut text = partial.text.as_str();
    loop {
        let payload = Payload {
            call_id,
            track,
            turn_order: partial.turn_order,
            text,
        };
        // A struct of strings and integers always serialises; `None` is never reached.
        let json = serde_json::to_string(&payload).ok()?;
        if json.len() <= MAX_NOTIFY_PAYLOAD {
            return Some(json);
        }
        text = first_chars(text, text.chars().count() / 2);
    }
}

/// The first `n` characters of `text` (all of it when it has no more).
fn first_chars(text: &str, n: usize) -> &str {
    // No more bytes than `n` means no more characters: not counted.
    if text.len() <= n {
        return text;
    }
    text.char_indices()
        .nth(n)
        .map_or(text, |(cut, _)| &text[..cut])
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
        let limit = MAX_PARTIAL_TEXT / 4;
        for (track, text, kept) in [
            ("a", "é".repeat(limit + 1), limit),
            ("b", "é".repeat(limit), limit),
            ("c", "x".repeat(limit + 1), limit),
            ("d", String::new(), 0),
        ] {
            partials.publish(call_id, track, 1, &text);
            let pending = partials.pending.lock().unwrap();
            let stored = &pending[&(call_id, track)].text;
            assert_eq!(stored.chars().count(), kept, "{track}");
            assert!(text.starts_with(stored.as_str()), "{track}: a prefix");
        }
    }

    fn batch_of(call_id: CallId, text: &str) -> HashMap<(CallId, &'static str), Partial> {
        HashMap::from([(
            (call_id, "agent"),
            Partial {
                turn_order: 7,
                text: text.to_owned(),
            },
        )])
    }

    #[test]
    fn the_payload_carries_what_a_follower_matches_and_reads() {
        let call_id = CallId::new();
        let payloads = payloads(&batch_of(call_id, "say \"hi\"\n"));
        let [payload] = payloads.as_slice() else {
            panic!("one payload: {payloads:?}");
        };
        assert!(
            payload.contains(&crate::events::partial_marker(call_id)),
            "{payload}"
        );
        let value: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"call_id": call_id, "track": "agent", "turn_order": 7, "text": "say \"hi\"\n"})
        );
    }

    #[test]
    fn a_payload_fits_notify_whatever_its_text_escapes_to() {
        let call_id = CallId::new();
        let limit = MAX_PARTIAL_TEXT / 4;
        // Four bytes a character, nothing escaped: kept whole.
        let wide = "😀".repeat(limit);
        // Six bytes a character once escaped: 9,000 bytes, so it is shortened.
        let controls = "\u{1}".repeat(limit);
        for (text, whole) in [(wide, true), (controls, false)] {
            let payloads = payloads(&batch_of(call_id, &text));
            let [payload] = payloads.as_slice() else {
                panic!("one payload");
            };
            assert!(payload.len() < 8000, "{} bytes", payload.len());
            let value: serde_json::Value = serde_json::from_str(payload).unwrap();
            let sent = value["text"].as_str().unwrap();
            assert!(text.starts_with(sent));
            assert_eq!(sent.len() == text.len(), whole);
            assert!(!sent.is_empty());
        }
    }
}
