//! Where a call's media stream picks up when it (re)connects, on whichever replica: turn and
//! utterance numbering continued from the database (never restarted at 0), and each track's
//! position on the call's clock, measured from the frames. A stream that replaces one which
//! never ended (a re-attach after a deploy or crash) continues the clock from where the old
//! stream's last frame left off, and the time it was away is the re-attach gap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::db::{Db, DbError};

/// What a new stream of a call continues from.
#[derive(Debug, Default)]
pub struct Resume {
    next_turn: HashMap<String, i32>,
    pub next_utterance: i32,
    previous: HashMap<String, Position>,
    /// Whether the previous stream was still live (not ended): its track positions mark
    /// where lost audio begins.
    reattached: bool,
}

#[derive(Debug, Clone, Copy)]
struct Position {
    end_ms: u64,
    /// How long before the new stream connected that last frame arrived.
    age: Duration,
}

/// Where a track's first frame sits on the call's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub start_ms: u64,
    /// `(start_ms, end_ms)` of the audio that no stream carried (re-attach only).
    pub gap: Option<(u64, u64)>,
}

impl Resume {
    /// What the stream of `call_id`'s `leg` (`call`, or a leg's role) that connected at
    /// `connected_at` continues from.
    pub async fn load(
        db: &Db,
        call_id: Uuid,
        leg: &str,
        connected_at: Instant,
    ) -> Result<Self, DbError> {
        let client = db.client().await?;
        let mut resume = Resume::default();
        for row in client
            .query(
                "select track, max(turn_index) + 1 from transcript_turns where call_id = $1 group by track",
                &[&call_id],
            )
            .await?
        {
            resume.next_turn.insert(row.get(0), row.get(1));
        }
        resume.next_utterance = client
            .query_one(
                "select coalesce(max(seq) + 1, 0) from utterances where call_id = $1",
                &[&call_id],
            )
            .await?
            .get(0);
        let loaded_at = Instant::now();
        for row in client
            .query(
                "select p.track, p.end_ms, greatest(extract(epoch from now() - p.frame_at) * 1000, 0)::bigint,
                        s.ended_at is null and s.call_id is not null
                 from media_stream_positions p
                 left join media_streams s on s.call_id = p.call_id and s.leg = $2
                 -- A leg's stream continues its own party's track only.
                 where p.call_id = $1 and ($2 = 'call' or p.track = $2)",
                &[&call_id, &leg],
            )
            .await?
        {
            let (track, end_ms, age_ms, live): (String, i64, i64, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            resume.reattached |= live;
            // The database measured the age now; the stream connected a little earlier.
            let age = Duration::from_millis(age_ms.max(0) as u64)
                .saturating_sub(loaded_at.saturating_duration_since(connected_at));
            resume.previous.insert(
                track,
                Position {
                    end_ms: end_ms.max(0) as u64,
                    age,
                },
            );
        }
        Ok(resume)
    }

    /// The index the track's next final turn proposes.
    /// `label`: the track as stored (`inbound`/`outbound`, or a leg's party).
    pub fn next_turn_index(&self, label: &str) -> i32 {
        self.next_turn.get(label).copied().unwrap_or(0)
    }

    /// Where the track's first frame begins on the call's clock, given that its audio
    /// began `since_connected` after this stream connected. Without a previous stream: 0.
    /// After one: where it left off plus the time no stream carried audio.
    pub fn origin(&self, label: &str, since_connected: Duration) -> Origin {
        let Some(previous) = self.previous.get(label) else {
            return Origin {
                start_ms: 0,
                gap: None,
            };
        };
        let away = (previous.age + since_connected).as_millis() as u64;
        let start_ms = previous.end_ms + away;
        Origin {
            start_ms,
            gap: (self.reattached && away > 0).then_some((previous.end_ms, start_ms)),
        }
    }
}

/// Frames over which a stream's start is measured: frames arrive in real time, so once any
/// backlog is read, `arrival - position` is when the stream's audio began.
const SETTLE_FRAMES: u64 = 50;

/// A track's position on the call's clock, from the frames received: the end of the
/// furthest frame (by its `chunk` number) and when it arrived; and, over its first frames,
/// when the stream's audio began.
#[derive(Debug, Clone, Copy)]
pub struct TrackClock {
    origin_ms: u64,
    first_chunk: u64,
    end_ms: u64,
    last_frame: Instant,
    /// The earliest `arrival - (position + 1 frame)` seen so far, while still settling.
    began: Instant,
    settled: bool,
}

impl TrackClock {
    pub fn start(origin_ms: u64, chunk: u64, frame_ms: u64, at: Instant, began: Instant) -> Self {
        Self {
            origin_ms,
            first_chunk: chunk,
            end_ms: origin_ms + frame_ms,
            last_frame: at,
            began,
            settled: false,
        }
    }

    /// Frames before the first one are late (the reorder buffer drops them too). Returns
    /// when the stream's audio began once the estimate settles (once per stream).
    pub fn observe(&mut self, chunk: u64, frame_ms: u64, at: Instant) -> Option<Instant> {
        let index = chunk.checked_sub(self.first_chunk)?;
        let end = self.origin_ms + (index + 1) * frame_ms;
        if end > self.end_ms {
            self.end_ms = end;
            self.last_frame = at;
        }
        if self.settled {
            return None;
        }
        if let Some(began) = at.checked_sub(Duration::from_millis((index + 1) * frame_ms)) {
            self.began = self.began.min(began);
        }
        if index + 1 >= SETTLE_FRAMES {
            self.settled = true;
            return Some(self.began);
        }
        None
    }

    /// The origin moved by `delta_ms` (a settled estimate of the stream's start).
    pub fn shift(&mut self, delta_ms: i64) {
        self.origin_ms = self.origin_ms.saturating_add_signed(delta_ms);
        self.end_ms = self.end_ms.saturating_add_signed(delta_ms);
    }

    pub fn origin_ms(&self) -> u64 {
        self.origin_ms
    }

    pub fn began(&self) -> Instant {
        self.began
    }

    pub fn settled(&self) -> bool {
        self.settled
    }

    pub fn end_ms(&self) -> u64 {
        self.end_ms
    }

    pub fn since_last_frame(&self) -> Duration {
        self.last_frame.elapsed()
    }
}

/// Records how far each track has got (called with the heartbeat and when the stream
/// ends). A position never moves back: a late write from an older heartbeat is ignored.
pub async fn save_positions(
    db: &Db,
    call_id: Uuid,
    positions: &[(&str, u64, Duration)],
) -> Result<(), DbError> {
    if positions.is_empty() {
        return Ok(());
    }
    let calls = vec![call_id; positions.len()];
    let tracks: Vec<&str> = positions.iter().map(|p| p.0).collect();
    let ends: Vec<i64> = positions.iter().map(|p| p.1 as i64).collect();
    let since: Vec<f64> = positions.iter().map(|p| p.2.as_secs_f64()).collect();
    let client = db.client().await?;
    save_positions_of(&**client, &calls, &tracks, &ends, &since).await
}

/// The same for many calls in one statement (the replica's batched heartbeats): row `i` is
/// `calls[i]`'s `tracks[i]` at `ends[i]` ms, its last frame `since[i]` seconds ago. A
/// (call, track) appears at most once.
pub async fn save_positions_of(
    client: &impl tokio_postgres::GenericClient,
    calls: &[Uuid],
    tracks: &[&str],
    ends: &[i64],
    since: &[f64],
) -> Result<(), DbError> {
    client
        .execute(
            "insert into media_stream_positions (call_id, track, end_ms, frame_at)
             select p.call_id, p.track, p.end_ms, now() - make_interval(secs => p.since)
             from unnest($1::uuid[], $2::text[], $3::bigint[], $4::float8[]) as p (call_id, track, end_ms, since)
             on conflict (call_id, track) do update set end_ms = excluded.end_ms, frame_at = excluded.frame_at
             where excluded.end_ms >= media_stream_positions.end_ms",
            &[&calls, &tracks, &ends, &since],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resumed(end_ms: u64, age_ms: u64, reattached: bool) -> Resume {
        let mut resume = Resume {
            reattached,
            ..Resume::default()
        };
        resume.previous.insert(
            "inbound".into(),
            Position {
                end_ms,
                age: Duration::from_millis(age_ms),
            },
        );
        resume
    }

    #[test]
    fn a_first_stream_starts_at_zero_without_a_gap() {
        let origin = Resume::default().origin("inbound", Duration::ZERO);
        assert_eq!(
            origin,
            Origin {
                start_ms: 0,
                gap: None
            }
        );
    }

    #[test]
    fn a_re_attached_stream_continues_where_the_old_one_left_off() {
        // The old stream's last frame ended at 6,000 ms and arrived 4,800 ms before the new
        // stream connected; the new stream's audio began 80 ms after it connected.
        let resume = resumed(6_000, 4_800, true);
        let origin = resume.origin("inbound", Duration::from_millis(80));
        assert_eq!(origin.start_ms, 6_000 + 4_880);
        assert_eq!(origin.gap, Some((6_000, 10_880)));
        assert_eq!(
            resume.origin("outbound", Duration::ZERO).gap,
            None,
            "a track the old stream never saw starts fresh"
        );
    }

    #[test]
    fn a_stream_after_one_that_ended_continues_the_clock_without_a_gap() {
        let origin = resumed(6_000, 980, false).origin("inbound", Duration::ZERO);
        assert_eq!(origin.start_ms, 6_980);
        assert_eq!(origin.gap, None);
    }

    #[test]
    fn the_clock_follows_the_furthest_frame() {
        let at = Instant::now();
        let mut clock = TrackClock::start(1_000, 5, 20, at, at);
        assert_eq!(clock.end_ms(), 1_020);
        clock.observe(7, 20, at);
        assert_eq!(clock.end_ms(), 1_060);
        clock.observe(6, 20, at);
        clock.observe(4, 20, at);
        assert_eq!(clock.end_ms(), 1_060, "late frames do not move it back");
    }
}
