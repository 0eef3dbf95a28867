//! Where a call's media stream picks up when it (re)connects, on whichever replica: turn and
//! utterance numbering continued from the database (never restarted at 0), and each track's
//! position on the call's clock, measured from the frames. A stream that replaces one which
//! never ended (a re-attach after a deploy or crash) continues the clock from where the old
//! stream's last frame left off, and the time it was away is the re-attach gap.
//!
//! Both ends of that time come from frame positions, never from when a busy task happened
//! to read a frame or write a row: a stream's start is the earliest `arrival − position`
//! over its frames, and its end is that start plus the furthest frame's position. Both are
//! kept as wall-clock times (ADR 0026), so a pool wait or a slow write cannot move them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::db::{Db, DbError};
use crate::heartbeats::wall_clock;
use crate::ids::CallId;

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
    /// When the audio of that furthest frame ended (wall clock, from the frames).
    ended_at: DateTime<Utc>,
}

/// Where a track's first frame sits on the call's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub start_ms: u64,
    /// `(start_ms, end_ms)` of the audio that no stream carried (re-attach only).
    pub gap: Option<(u64, u64)>,
}

impl Resume {
    /// What the stream of `call_id`'s `leg` (`call`, or a leg's role) continues from.
    pub async fn load(db: &Db, call_id: CallId, leg: &str) -> Result<Self, DbError> {
        let client = db.client().await?;
        let mut resume = Resume::default();
        for row in client
            .query(
                "select track, max(turn_index) + 1 as next_turn from transcript_turns
                 where call_id = $1 group by track",
                &[&call_id],
            )
            .await?
        {
            resume
                .next_turn
                .insert(row.get("track"), row.get("next_turn"));
        }
        resume.next_utterance = client
            .query_one(
                "select coalesce(max(seq) + 1, 0) as next_seq from utterances where call_id = $1",
                &[&call_id],
            )
            .await?
            .get("next_seq");
        for row in client
            .query(
                "select p.track, p.end_ms, p.frame_at,
                        (s.ended_at is null and s.call_id is not null) as live
                 from media_stream_positions p
                 left join media_streams s on s.call_id = p.call_id and s.leg = $2
                 -- A leg's stream continues its own party's track only.
                 where p.call_id = $1 and ($2 = 'call' or p.track = $2)",
                &[&call_id, &leg],
            )
            .await?
        {
            let (track, end_ms, ended_at, live): (String, i64, DateTime<Utc>, bool) = (
                row.get("track"),
                row.get("end_ms"),
                row.get("frame_at"),
                row.get("live"),
            );
            resume.reattached |= live;
            resume.previous.insert(
                track,
                Position {
                    end_ms: end_ms.max(0) as u64,
                    ended_at,
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

    /// Where the track's first frame begins on the call's clock, given that this stream's
    /// audio began at `began` (wall clock). Without a previous stream: 0. After one: where it
    /// left off plus the time no stream carried audio, from the old stream's last frame's
    /// end to the new stream's first frame's start.
    pub fn origin(&self, label: &str, began: DateTime<Utc>) -> Origin {
        let Some(previous) = self.previous.get(label) else {
            return Origin {
                start_ms: 0,
                gap: None,
            };
        };
        let away = (began - previous.ended_at).num_milliseconds().max(0) as u64;
        let start_ms = previous.end_ms + away;
        Origin {
            start_ms,
            gap: (self.reattached && away > 0).then_some((previous.end_ms, start_ms)),
        }
    }
}

/// Frames over which a stream's start is measured before the track is placed on the call's
/// clock (a second): frames arrive in real time, so once any backlog is read,
/// `arrival - position` is when the stream's audio began.
const SETTLE_FRAMES: u64 = 50;

/// Frames in each half of the window over which the stream's start is estimated (5 s):
/// long enough to see past a burst of late reads, short enough to follow a sender whose
/// clock runs a little fast or slow against ours (100 ppm is 360 ms an hour).
const WINDOW_FRAMES: u64 = 250;

/// A track's position on the call's clock, from the frames received: the end of the
/// furthest frame (by its `chunk` number), and when the stream's audio began.
#[derive(Debug, Clone, Copy)]
pub struct TrackClock {
    origin_ms: u64,
    first_chunk: u64,
    end_ms: u64,
    /// The earliest `arrival - (position + 1 frame)` over the frames of the current and the
    /// previous half window: when the stream's first frame began. A frame read late (a busy
    /// task, a stalled network) only ever makes its own estimate later, so the earliest one
    /// is the truth to within the quickest delivery.
    began_now: Option<Instant>,
    began_before: Option<Instant>,
    frames_now: u64,
    settled: bool,
}

impl TrackClock {
    pub fn start(origin_ms: u64, chunk: u64, frame_ms: u64, began: Instant) -> Self {
        Self {
            origin_ms,
            first_chunk: chunk,
            end_ms: origin_ms + frame_ms,
            began_now: Some(began),
            began_before: None,
            frames_now: 1,
            settled: false,
        }
    }

    /// Frames before the first one are late (the reorder buffer drops them too). Returns
    /// when the stream's audio began once the first estimate settles (once per stream).
    pub fn observe(&mut self, chunk: u64, frame_ms: u64, at: Instant) -> Option<Instant> {
        let index = chunk.checked_sub(self.first_chunk)?;
        self.end_ms = self.end_ms.max(self.origin_ms + (index + 1) * frame_ms);
        if self.frames_now >= WINDOW_FRAMES {
            self.began_before = self.began_now.take();
            self.frames_now = 0;
        }
        if let Some(began) = at.checked_sub(Duration::from_millis((index + 1) * frame_ms)) {
            self.began_now = Some(self.began_now.map_or(began, |b| b.min(began)));
        }
        self.frames_now += 1;
        if self.settled || index + 1 < SETTLE_FRAMES {
            return None;
        }
        self.settled = true;
        Some(self.began())
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
        match (self.began_now, self.began_before) {
            (Some(now), Some(before)) => now.min(before),
            (Some(began), None) | (None, Some(began)) => began,
            // Never both empty: a rollover moves the current estimate into `before`.
            (None, None) => Instant::now(),
        }
    }

    pub fn settled(&self) -> bool {
        self.settled
    }

    pub fn end_ms(&self) -> u64 {
        self.end_ms
    }

    /// When the audio of the furthest frame ended: the stream's start plus that frame's
    /// position in the stream. Not when it was read: a frame read late says nothing about
    /// when its audio was spoken.
    pub fn ended_at(&self) -> Instant {
        self.began() + Duration::from_millis(self.end_ms.saturating_sub(self.origin_ms))
    }
}

/// Records how far each track has got (called with the heartbeat and when the stream
/// ends): its end on the call's clock and when that audio ended (`TrackClock::ended_at`).
/// A position never moves back: a late write from an older heartbeat is ignored.
pub async fn save_positions(
    db: &Db,
    call_id: CallId,
    positions: &[(&str, u64, Instant)],
) -> Result<(), DbError> {
    if positions.is_empty() {
        return Ok(());
    }
    let calls = vec![call_id; positions.len()];
    let tracks: Vec<&str> = positions.iter().map(|p| p.0).collect();
    let ends: Vec<i64> = positions.iter().map(|p| p.1 as i64).collect();
    // Converted before waiting for a connection: the wait cannot move the time.
    let ended: Vec<DateTime<Utc>> = positions.iter().map(|p| wall_clock(p.2)).collect();
    let client = db.client().await?;
    crate::heartbeats::save_positions_of(&client, &calls, &tracks, &ends, &ended).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    /// The old stream's last frame ended at `end_ms` on the call's clock, at wall time 0.
    fn resumed(end_ms: u64, reattached: bool) -> Resume {
        let mut resume = Resume {
            reattached,
            ..Resume::default()
        };
        resume.previous.insert(
            "inbound".into(),
            Position {
                end_ms,
                ended_at: at(0),
            },
        );
        resume
    }

    #[test]
    fn a_first_stream_starts_at_zero_without_a_gap() {
        let origin = Resume::default().origin("inbound", at(0));
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
        // The old stream's last frame ended at 6,000 ms on the call's clock; the new
        // stream's audio began 4,880 ms later.
        let resume = resumed(6_000, true);
        let origin = resume.origin("inbound", at(4_880));
        assert_eq!(origin.start_ms, 6_000 + 4_880);
        assert_eq!(origin.gap, Some((6_000, 10_880)));
        assert_eq!(
            resume.origin("outbound", at(0)).gap,
            None,
            "a track the old stream never saw starts fresh"
        );
    }

    #[test]
    fn a_stream_after_one_that_ended_continues_the_clock_without_a_gap() {
        let origin = resumed(6_000, false).origin("inbound", at(980));
        assert_eq!(origin.start_ms, 6_980);
        assert_eq!(origin.gap, None);
    }

    #[test]
    fn the_clock_follows_the_furthest_frame() {
        let at = Instant::now();
        let mut clock = TrackClock::start(1_000, 5, 20, at);
        assert_eq!(clock.end_ms(), 1_020);
        clock.observe(7, 20, at);
        assert_eq!(clock.end_ms(), 1_060);
        clock.observe(6, 20, at);
        clock.observe(4, 20, at);
        assert_eq!(clock.end_ms(), 1_060, "late frames do not move it back");
    }

    #[test]
    fn the_end_of_the_audio_comes_from_frame_positions_not_from_when_frames_were_read() {
        // 100 frames sent in real time from t0; the last 15 were held up (a busy task, a
        // stalled network) and read together 300 ms late.
        let t0 = Instant::now();
        let frame = |i: u64| t0 + Duration::from_millis(20 * (i + 1));
        let mut clock = TrackClock::start(0, 1, 20, frame(0));
        for i in 1..85 {
            clock.observe(i + 1, 20, frame(i));
        }
        let late = frame(99) + Duration::from_millis(300);
        for i in 85..100 {
            clock.observe(i + 1, 20, late);
        }
        assert_eq!(clock.end_ms(), 2_000);
        assert_eq!(clock.began(), t0);
        assert_eq!(
            clock.ended_at(),
            frame(99),
            "the last frame's audio ended 2 s after the stream began, however late it was read"
        );
    }

    #[test]
    fn the_estimate_follows_a_sender_whose_clock_runs_slow() {
        // Each frame arrives 20.02 ms after the one before (1,000 ppm, exaggerated): after
        // a minute the stream's frames are 60 ms behind their positions.
        let t0 = Instant::now();
        let frame = |i: u64| t0 + Duration::from_micros(20_020 * (i + 1));
        let mut clock = TrackClock::start(0, 1, 20, t0);
        for i in 1..3_000 {
            clock.observe(i + 1, 20, frame(i));
        }
        let behind = frame(2_999).duration_since(clock.ended_at());
        assert!(
            behind < Duration::from_millis(15),
            "within the window's drift, not a minute's: {behind:?}"
        );
    }

    #[test]
    fn a_start_read_late_is_corrected_by_the_frames_that_follow() {
        // The first 30 frames waited unread for 400 ms, then frames came in real time.
        let t0 = Instant::now();
        let frame = |i: u64| t0 + Duration::from_millis(20 * (i + 1));
        let backlog = frame(29) + Duration::from_millis(400);
        let mut clock = TrackClock::start(0, 1, 20, backlog - Duration::from_millis(20));
        let mut settled = None;
        for i in 1..30 {
            settled = settled.or(clock.observe(i + 1, 20, backlog));
        }
        for i in 30..60 {
            settled = settled.or(clock.observe(i + 1, 20, frame(i)));
        }
        assert_eq!(settled, Some(t0));
    }
}
