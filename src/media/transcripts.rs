//! Where the bridge's results go: final turns and gaps (durable, each with a call event in
//! the same transaction), partial turns (live only, a NOTIFY that SSE subscribers on any
//! replica receive), and the per-call bridge heartbeat.

use serde_json::json;
use uuid::Uuid;

use crate::db::{Db, DbError};
use crate::events;

pub const PARTIALS_CHANNEL: &str = "callbridge_partials";
/// NOTIFY payloads must stay under 8000 bytes.
const MAX_PARTIAL_TEXT: usize = 6000;

#[derive(Debug, Clone)]
pub struct FinalTurn {
    pub call_id: Uuid,
    pub track: &'static str,
    pub turn_index: i32,
    pub session_id: String,
    pub text: String,
    pub words: serde_json::Value,
    pub confidence: Option<f64>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// The language AssemblyAI detected for the turn, or the party's when fixed.
    pub language: Option<String>,
}

pub async fn store_final(db: &Db, turn: &FinalTurn) -> Result<(), DbError> {
    let mut client = db.client().await?;
    let transaction = client.transaction().await?;
    let inserted = transaction
        .execute(
            "insert into transcript_turns (call_id, track, turn_index, session_id, text, words, confidence, start_ms, end_ms, language)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) on conflict do nothing",
            &[&turn.call_id, &turn.track, &turn.turn_index, &turn.session_id, &turn.text, &turn.words, &turn.confidence, &turn.start_ms, &turn.end_ms, &turn.language],
        )
        .await?;
    if inserted == 1 {
        let data = json!({
            "track": turn.track, "turn_index": turn.turn_index, "text": turn.text, "language": turn.language,
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
    }
    transaction.commit().await?;
    Ok(())
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

pub async fn heartbeat(
    db: &Db,
    call_id: Uuid,
    replica: &str,
    stream_id: Option<&str>,
) -> Result<(), DbError> {
    let client = db.client().await?;
    client
        .execute(
            "insert into media_streams (call_id, replica, stream_id) values ($1, $2, $3)
             on conflict (call_id) do update set replica = $2, stream_id = coalesce($3, media_streams.stream_id),
                 heartbeat_at = now(), ended_at = null",
            &[&call_id, &replica, &stream_id],
        )
        .await?;
    Ok(())
}

pub async fn stream_ended(db: &Db, call_id: Uuid) -> Result<(), DbError> {
    let client = db.client().await?;
    client
        .execute(
            "update media_streams set ended_at = now(), heartbeat_at = now() where call_id = $1",
            &[&call_id],
        )
        .await?;
    Ok(())
}
