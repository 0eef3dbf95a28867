//! Heartbeats of the media streams this replica carries, written in batches: each bridge
//! hands its beat (stream id, track positions) to `Heartbeats`, and one task per replica
//! writes all pending beats every `FLUSH_EVERY` in two statements. PostgreSQL's work for live
//! calls is then a constant per replica instead of two statements per call per beat
//! (docs/MEDIA_BRIDGE.md, "Heartbeats"; measured by benches/media_bridge.rs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError};
use crate::ids::CallId;

/// How often pending beats are written. A beat waits at most this long, so a live stream's
/// `heartbeat_at` is at most bridge interval + this old, well inside
/// `reattach::STALE_AFTER_SECS`.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// This process's name in `media_streams.replica`: host (`HOSTNAME`) and process id.
pub fn replica_name(hostname: Option<&str>) -> String {
    format!("{}-{}", hostname.unwrap_or("local"), std::process::id())
}

/// The wall-clock time of `at`, a moment this process measured (now or earlier). Track
/// positions are stored as wall-clock times converted at once, so a wait for a connection
/// or a slow write cannot shift them (ADR 0026).
pub fn wall_clock(at: Instant) -> DateTime<Utc> {
    let ago = chrono::Duration::from_std(at.elapsed()).unwrap_or(chrono::Duration::zero());
    Utc::now() - ago
}

#[derive(Default)]
struct Beat {
    stream_id: Option<String>,
    /// Per track (its label in `media_stream_positions`): its end on the call's clock and
    /// when that audio ended (from the frames: `media::resume::TrackClock::ended_at`).
    positions: HashMap<&'static str, (u64, Instant)>,
}

/// Pending beats by (call, leg): a one-leg call's stream is leg `call`, an interpreted
/// call's legs each have their own row.
type Pending = Arc<Mutex<HashMap<(CallId, &'static str), Beat>>>;

#[derive(Clone)]
pub struct Heartbeats {
    pending: Pending,
}

impl Heartbeats {
    /// Starts the writer for `replica`; it stops with `shutdown`.
    pub fn start(db: Db, replica: String, shutdown: CancellationToken) -> Self {
        let pending: Pending = Arc::default();
        let writer = pending.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FLUSH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while shutdown.run_until_cancelled(every.tick()).await.is_some() {
                let beats = std::mem::take(&mut *writer.lock().unwrap_or_else(|p| p.into_inner()));
                if beats.is_empty() {
                    continue;
                }
                if let Err(error) = write(&db, &replica, beats).await {
                    tracing::debug!(%error, "writing media heartbeats failed");
                }
            }
        });
        Self { pending }
    }

    /// Records a beat of the stream of `call_id`'s `leg`, written with the next batch.
    pub fn beat(
        &self,
        call_id: CallId,
        leg: &'static str,
        stream_id: Option<&str>,
        positions: &[(&'static str, u64, Instant)],
    ) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let beat = pending.entry((call_id, leg)).or_default();
        if stream_id.is_some() {
            beat.stream_id = stream_id.map(str::to_owned);
        }
        for &(track, end_ms, ended_at) in positions {
            beat.positions.insert(track, (end_ms, ended_at));
        }
    }

    /// Drops a pending beat of a stream that has ended, so it cannot mark the stream live
    /// again after its end was recorded.
    pub fn forget(&self, call_id: CallId, leg: &'static str) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(call_id, leg));
    }
}

/// One statement for the streams, one for the positions, whatever the number of calls.
async fn write(
    db: &Db,
    replica: &str,
    beats: HashMap<(CallId, &'static str), Beat>,
) -> Result<(), DbError> {
    let mut calls = Vec::with_capacity(beats.len());
    let mut legs = Vec::with_capacity(beats.len());
    let mut streams: Vec<Option<String>> = Vec::with_capacity(beats.len());
    let (mut position_calls, mut tracks, mut ends, mut ended) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((call_id, leg), beat) in beats {
        calls.push(call_id);
        legs.push(leg);
        streams.push(beat.stream_id);
        for (track, (end_ms, ended_at)) in beat.positions {
            position_calls.push(call_id);
            tracks.push(track);
            ends.push(end_ms as i64);
            ended.push(wall_clock(ended_at));
        }
    }
    let client = db.client().await?;
    // Through the statement cache: an unprepared statement is three round trips (prepare,
    // execute, close), and these run every 5 s for as long as the replica carries a call.
    let streams_upsert = db.prepare(&client, STREAMS_SQL).await?;
    client
        .execute(&streams_upsert, &[&replica, &calls, &legs, &streams])
        .await?;
    if !position_calls.is_empty() {
        let positions_upsert = db.prepare(&client, POSITIONS_SQL).await?;
        client
            .execute(
                &positions_upsert,
                &[&position_calls, &tracks, &ends, &ended],
            )
            .await?;
    }
    Ok(())
}

/// As `transcripts::heartbeat`, for many calls; and a beat of the same stream never revives a
/// row whose end was recorded (a new stream of the call beats at once itself).
const STREAMS_SQL: &str = "insert into media_streams (call_id, leg, replica, stream_id)
     select b.call_id, b.leg, $1, b.stream_id
     from unnest($2::uuid[], $3::text[], $4::text[]) as b (call_id, leg, stream_id)
     on conflict (call_id, leg) do update set replica = excluded.replica,
         stream_id = coalesce(excluded.stream_id, media_streams.stream_id),
         heartbeat_at = now(), ended_at = null
     where (media_streams.replica <> 'detached' and media_streams.ended_at is null)
        or media_streams.stream_id is distinct from excluded.stream_id";

const POSITIONS_SQL: &str = "insert into media_stream_positions (call_id, track, end_ms, frame_at)
     select p.call_id, p.track, p.end_ms, p.ended
     from unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[]) as p (call_id, track, end_ms, ended)
     on conflict (call_id, track) do update set end_ms = excluded.end_ms, frame_at = excluded.frame_at
     where excluded.end_ms >= media_stream_positions.end_ms";

/// Track positions of many calls in one statement (`media::resume` reads them back): row `i` is
/// `calls[i]`'s `tracks[i]` at `ends[i]` ms, whose audio ended at `ended[i]`. A (call, track)
/// appears at most once.
pub async fn save_positions_of(
    client: &impl crate::db::GenericClient,
    calls: &[CallId],
    tracks: &[&str],
    ends: &[i64],
    ended: &[DateTime<Utc>],
) -> Result<(), DbError> {
    client
        .execute(POSITIONS_SQL, &[&calls, &tracks, &ends, &ended])
        .await?;
    Ok(())
}
