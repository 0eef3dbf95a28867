//! Where the bridge's results go: final turns and gaps (durable, each with a call event in
//! the same transaction) and the per-call bridge heartbeat. Partial turns (live only) go
//! through the replica's batched publisher (`crate::partials`).

use serde_json::json;

use crate::db::{Db, DbError};
use crate::events;
use crate::ids::CallId;
use crate::retry::{self, Failure, Policy};

#[derive(Debug, Clone)]
pub struct FinalTurn {
    pub call_id: CallId,
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

/// Stores a final turn and its `transcript.final` event in one statement (so one round trip
/// and one implicit transaction): nothing is ever dropped on a key that new data can collide
/// with. The identity (session, turn order) is the only conflict that is ignored — a true
/// duplicate. A proposed `turn_index` that another turn holds is replaced by the next free
/// one; if two writers of one track take the same free index at once, the primary key
/// refuses the second and its retry (`store_final_retrying`) takes the next.
///
/// One statement, not a transaction of several: under load a transaction held its pooled
/// connection, its advisory lock and the call's row lock across every round trip while the
/// task waited to be polled again, and the pool ran dry (ADR 0026).
pub async fn store_final(db: &Db, turn: &FinalTurn) -> Result<Stored, DbError> {
    let data = json!({
        "track": turn.track, "text": turn.text, "language": turn.language,
        "confidence": turn.confidence, "start_ms": turn.start_ms, "end_ms": turn.end_ms,
    });
    let client = db.client().await?;
    // Through the statement cache: unprepared, each turn cost three round trips (prepare,
    // execute, close), and turns are most of a live call's statements (benches/media_bridge.rs).
    let row = db
        .query(
            &client,
            // As `events::append` (sequence, row and notification in one statement), for
            // the turn just inserted; nothing is appended for a duplicate.
            "with proposed as (
                 select case
                     when $5::int >= 0 and not exists (select 1 from transcript_turns
                                                       where call_id = $1 and track = $2 and turn_index = $5)
                     then $5::int
                     else (select coalesce(max(turn_index) + 1, 0)::int from transcript_turns
                           where call_id = $1 and track = $2)
                 end as turn_index
             ), inserted as (
                 insert into transcript_turns (call_id, track, turn_index, session_id, turn_order, text, words, confidence, start_ms, end_ms, language)
                 select $1, $2, p.turn_index, $3, $4, $6, $7, $8, $9, $10, $11 from proposed p
                 on conflict (call_id, track, session_id, turn_order) do nothing
                 returning turn_index
             ), relinked as (
                 -- Stored under another index than proposed: an utterance already made of
                 -- the turn (handed over before storing) follows it there (ADR 0017).
                 update utterances u set source_turn_index = i.turn_index
                 from inserted i
                 where u.call_id = $1 and u.source_track = $2 and u.source_session_id = $3
                   and u.source_turn_order = $4 and u.source_turn_index <> i.turn_index
             ), next as (
                 update calls set event_seq = event_seq + 1
                 where id = $1 and exists (select 1 from inserted) returning event_seq
             ), appended as (
                 insert into call_events (call_id, seq, kind, data, occurred_at)
                 select $1, n.event_seq, 'transcript.final', $12::jsonb || jsonb_build_object('turn_index', i.turn_index), $13
                 from next n cross join inserted i
                 returning seq
             )
             select i.turn_index, pg_notify($14, $1::text || ':' || a.seq)
             from inserted i cross join appended a",
            &[&turn.call_id, &turn.track, &turn.session_id, &turn.turn_order, &turn.turn_index.unwrap_or(-1),
              &turn.text, &turn.words, &turn.confidence, &turn.start_ms, &turn.end_ms, &turn.language,
              &data, &chrono::Utc::now(), &events::NOTIFY_CHANNEL],
        )
        .await?
        .into_iter()
        .next();
    let Some(row) = row else {
        metrics::counter!("transcript_turns_duplicate_total").increment(1);
        tracing::debug!(call_id = %turn.call_id, track = turn.track, session_id = %turn.session_id, turn_order = turn.turn_order, "duplicate final turn ignored");
        return Ok(Stored::Duplicate);
    };
    let turn_index: i32 = row.get("turn_index");
    match turn.turn_index {
        Some(proposed) if proposed != turn_index => {
            metrics::counter!("transcript_turns_renumbered_total").increment(1);
            tracing::warn!(call_id = %turn.call_id, track = turn.track, proposed, turn_index, "turn index already taken by another turn; stored under the next free one");
            Ok(Stored::Renumbered {
                proposed,
                turn_index,
            })
        }
        _ => Ok(Stored::New { turn_index }),
    }
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

/// Stores a gap and its `transcript.gap` event in one statement (one round trip, as
/// `store_final`).
pub async fn store_gap(
    db: &Db,
    call_id: CallId,
    track: &str,
    start_ms: i64,
    duration_ms: i64,
    reason: &str,
) -> Result<(), DbError> {
    let data =
        json!({"track": track, "start_ms": start_ms, "duration_ms": duration_ms, "reason": reason});
    let client = db.client().await?;
    client
        .query_one(
            // As `events::append`, after the gap's row.
            "with gap as (
                 insert into transcript_gaps (call_id, track, start_ms, duration_ms, reason)
                 values ($1, $2, $3, $4, $5) returning call_id
             ), next as (
                 update calls set event_seq = event_seq + 1
                 where id = $1 and exists (select 1 from gap) returning event_seq
             ), appended as (
                 insert into call_events (call_id, seq, kind, data, occurred_at)
                 select $1, event_seq, 'transcript.gap', $6, $7 from next returning seq
             )
             select pg_notify($8, $1::text || ':' || seq) from appended",
            &[
                &call_id,
                &track,
                &start_ms,
                &duration_ms,
                &reason,
                &data,
                &chrono::Utc::now(),
                &events::NOTIFY_CHANNEL,
            ],
        )
        .await?;
    Ok(())
}

/// The stream of `call_id`'s `leg` (`call` for a one-leg call, else the leg's role) is
/// alive on `replica`.
pub async fn heartbeat(
    db: &Db,
    call_id: CallId,
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

pub async fn stream_ended(db: &Db, call_id: CallId, leg: &str) -> Result<(), DbError> {
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
