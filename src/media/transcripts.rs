//! Where the bridge's results go: final turns and gaps (durable, each with a call event in
//! the same transaction), partial turns (live only, a NOTIFY that SSE subscribers on any
//! replica receive), and the per-call bridge heartbeat.

use serde_json::json;
use uuid::Uuid;

use crate::db::{Db, DbError};
use crate::events::{self, PARTIALS_CHANNEL};
use crate::retry::{self, Failure, Policy};

/// NOTIFY payloads must stay under 8000 bytes.
const MAX_PARTIAL_TEXT: usize = 6000;

#[derive(Debug, Clone)]
pub struct FinalTurn {
    pub call_id: Uuid,
    pub track: &'static str,
    /// The display order the caller proposes (continued from the database when the stream
    /// started); `None` takes the next free one. Never reused: a taken index is replaced.
    pub turn_index: Option<i32>,
    /// The turn's identity: the AssemblyAI session and its `turn_order` there.
    pub session_id: String,
    pub turn_order: i64,
    pub text: String,
    pub words: serde_json::Value,
    pub confidence: Option<f64>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// The language AssemblyAI detected for the turn, or the party's when fixed.
    pub language: Option<String>,
}

/// What `store_final` did with a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored (and evented) under this index.
    New { turn_index: i32 },
    /// Stored, but the proposed index belonged to another turn (two writers on one track):
    /// stored under the next free index instead. Counted and logged.
    Renumbered { proposed: i32, turn_index: i32 },
    /// This session's turn was already stored: a true duplicate, ignored. Counted.
    Duplicate,
}

/// Stores a final turn and its `transcript.final` event in one transaction. Writers of one
/// call's track are serialised by an advisory lock, so the index check and the insert cannot
/// race; nothing is ever dropped on a key that new data can collide with.
pub async fn store_final(db: &Db, turn: &FinalTurn) -> Result<Stored, DbError> {
    let mut client = db.client().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "select pg_advisory_xact_lock(hashtext('transcript_turns:' || $1::uuid::text || ':' || $2::text))",
            &[&turn.call_id, &turn.track],
        )
        .await?;
    let row = transaction
        .query_one(
            "select exists (select 1 from transcript_turns
                            where call_id = $1 and track = $2 and session_id = $3 and turn_order = $4),
                    exists (select 1 from transcript_turns
                            where call_id = $1 and track = $2 and turn_index = $5),
                    coalesce(max(turn_index) + 1, 0)
             from transcript_turns where call_id = $1 and track = $2",
            &[&turn.call_id, &turn.track, &turn.session_id, &turn.turn_order, &turn.turn_index.unwrap_or(-1)],
        )
        .await?;
    let (duplicate, taken, next): (bool, bool, i32) = (row.get(0), row.get(1), row.get(2));
    if duplicate {
        transaction.commit().await?;
        metrics::counter!("transcript_turns_duplicate_total").increment(1);
        tracing::debug!(call_id = %turn.call_id, track = turn.track, session_id = %turn.session_id, turn_order = turn.turn_order, "duplicate final turn ignored");
        return Ok(Stored::Duplicate);
    }
    let (turn_index, stored) = match turn.turn_index {
        Some(proposed) if taken => (
            next,
            Stored::Renumbered {
                proposed,
                turn_index: next,
            },
        ),
        Some(proposed) => (
            proposed,
            Stored::New {
                turn_index: proposed,
            },
        ),
        None => (next, Stored::New { turn_index: next }),
    };
    transaction
        .execute(
            "insert into transcript_turns (call_id, track, turn_index, session_id, turn_order, text, words, confidence, start_ms, end_ms, language)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[&turn.call_id, &turn.track, &turn_index, &turn.session_id, &turn.turn_order, &turn.text, &turn.words, &turn.confidence, &turn.start_ms, &turn.end_ms, &turn.language],
        )
        .await?;
    let data = json!({
        "track": turn.track, "turn_index": turn_index, "text": turn.text, "language": turn.language,
        "confidence": turn.confidence, "start_ms": turn.start_ms, "end_ms": turn.end_ms,
    });
    events::append(
        &*transaction,
        turn.call_id,
        "transcript.final",
        data,
        chrono::Utc::now(),
    )
    .await?;
    transaction.commit().await?;
    if let Stored::Renumbered {
        proposed,
        turn_index,
    } = stored
    {
        metrics::counter!("transcript_turns_renumbered_total").increment(1);
        tracing::warn!(call_id = %turn.call_id, track = turn.track, proposed, turn_index, "turn index already taken by another turn; stored under the next free one");
    }
    Ok(stored)
}

/// Stores a final turn, retrying transient database errors. A turn that still cannot be
/// stored is counted (`transcript_turns_lost_total`) and logged as an error, never dropped
/// quietly.
pub async fn store_final_retrying(db: &Db, turn: &FinalTurn) -> Option<Stored> {
    // About 3 s of database trouble is ridden out (200 ms doubling, five attempts).
    let policy = Policy::provider(5);
    match retry::run(&policy, "storing a final turn", |_| async {
        store_final(db, turn).await.map_err(Failure::Transient)
    })
    .await
    {
        Ok(stored) => Some(stored),
        Err(error) => {
            metrics::counter!("transcript_turns_lost_total").increment(1);
            tracing::error!(%error, call_id = %turn.call_id, track = turn.track, session_id = %turn.session_id, turn_order = turn.turn_order, text = %turn.text, "a final turn could not be stored");
            None
        }
    }
}

pub async fn store_gap(
    db: &Db,
    call_id: Uuid,
    track: &str,
    start_ms: i64,
    duration_ms: i64,
    reason: &str,
) -> Result<(), DbError> {
    let mut client = db.client().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "insert into transcript_gaps (call_id, track, start_ms, duration_ms, reason) values ($1, $2, $3, $4, $5)",
            &[&call_id, &track, &start_ms, &duration_ms, &reason],
        )
        .await?;
    let data =
        json!({"track": track, "start_ms": start_ms, "duration_ms": duration_ms, "reason": reason});
    events::append(
        &*transaction,
        call_id,
        "transcript.gap",
        data,
        chrono::Utc::now(),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// Live only: subscribers that are connected now see it; nobody replays it.
pub async fn publish_partial(
    db: &Db,
    call_id: Uuid,
    track: &str,
    turn_order: u64,
    text: &str,
) -> Result<(), DbError> {
    let text: String = text.chars().take(MAX_PARTIAL_TEXT / 4).collect();
    let payload =
        json!({"call_id": call_id, "track": track, "turn_order": turn_order, "text": text})
            .to_string();
    let client = db.client().await?;
    client
        .execute("select pg_notify($1, $2)", &[&PARTIALS_CHANNEL, &payload])
        .await?;
    Ok(())
}

/// The stream of `call_id`'s `leg` (`call` for a one-leg call, else the leg's role) is
/// alive on `replica`.
pub async fn heartbeat(
    db: &Db,
    call_id: Uuid,
    leg: &str,
    replica: &str,
    stream_id: Option<&str>,
) -> Result<(), DbError> {
    let client = db.client().await?;
    client
        .execute(
            "insert into media_streams (call_id, replica, stream_id, leg) values ($1, $2, $3, $4)
             on conflict (call_id, leg) do update set replica = $2, stream_id = coalesce($3, media_streams.stream_id),
                 heartbeat_at = now(), ended_at = null
             -- A beat still in flight from a stream that has since detached must not mark it
             -- live again; a new stream of the call (another stream id) takes over.
             where media_streams.replica <> 'detached' or media_streams.stream_id is distinct from $3",
            &[&call_id, &replica, &stream_id, &leg],
        )
        .await?;
    Ok(())
}

pub async fn stream_ended(db: &Db, call_id: Uuid, leg: &str) -> Result<(), DbError> {
    let client = db.client().await?;
    client
        .execute(
            "update media_streams set ended_at = now(), heartbeat_at = now()
             where call_id = $1 and leg = $2",
            &[&call_id, &leg],
        )
        .await?;
    Ok(())
}
