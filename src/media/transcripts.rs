//! Where the bridge's other results go: gaps (durable, each with a call event in the same
//! statement) and the per-call bridge heartbeat. Final turns go through the replica's
//! writer (`crate::turns`), partial turns (live only) through its batched publisher
//! (`crate::partials`).

use serde_json::json;

use crate::db::{Db, DbError};
use crate::events;
use crate::ids::CallId;

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
