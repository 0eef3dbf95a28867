//! The audio a track holds for replay to a new AssemblyAI session, and the account of what
//! was lost. Every batch knows whether a session *heard* it: the session answered a
//! WebSocket ping sent after it (frames are read in order), finished cleanly, or transcribed
//! it. Written is not heard: a session that drops has not read what was still in flight.
//!
//! A batch that leaves the buffer without a transcript (overflow while disconnected, or
//! still held when the track gives up) is reported as a gap in track milliseconds, of one of
//! two kinds: `Unheard` (AssemblyAI never read it) or `Untranscribed` (read only by a
//! session that dropped in the middle of a turn, so its words never came back). Audio a
//! live session heard with no turn open, and audio a final turn covers, is never a gap.
//! Synchronous; the one thing shared is the current session's [`PongMark`], which its
//! reader task moves forward and the buffer reads before it next changes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::shaping::MULAW_BYTES_PER_MS;

/// What AssemblyAI has done with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    No,
    Yes,
    /// Read by a session that dropped while a turn was open: its words are lost unless a
    /// new session hears it again.
    ByDroppedSession,
}

/// Why audio has no transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    /// AssemblyAI never read it.
    Unheard,
    /// Read by a session that dropped before finishing the turn, and not replayed.
    Untranscribed,
}

impl GapKind {
    /// The `reason` stored with the gap.
    pub fn reason(self) -> &'static str {
        match self {
            GapKind::Unheard => "assemblyai_unavailable",
            GapKind::Untranscribed => "assemblyai_dropped_turn",
        }
    }
}

#[derive(Debug)]
pub struct Batch {
    /// Where the batch begins on the track's clock.
    pub offset_ms: u64,
    /// Shared, not copied, with the send that goes to the session (and any replay).
    pub bytes: bytes::Bytes,
    /// Audio it carries; less than `bytes` for a tail padded with silence.
    pub audio_ms: u64,
    pub heard: Heard,
    /// When it was last sent to a session, for AssemblyAI's end-of-turn latency.
    pub sent_at: Option<Instant>,
}

impl Batch {
    pub fn new(offset_ms: u64, bytes: Vec<u8>) -> Self {
        let audio_ms = (bytes.len() / MULAW_BYTES_PER_MS) as u64;
        Self {
            offset_ms,
            bytes: bytes.into(),
            audio_ms,
            heard: Heard::No,
            sent_at: None,
        }
    }

    pub fn end_ms(&self) -> u64 {
        self.offset_ms + self.audio_ms
    }
}

/// A stretch of lost audio, `start_ms..end_ms` on the track's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub start_ms: u64,
    pub end_ms: u64,
    pub kind: GapKind,
}

/// Where a session's pongs have got to: the end of the last batch whose ping came back, on
/// the session's own clock (the track's as it was when the session began: see
/// [`ReplayBuffer::ping_payload`]). The session's reader moves it
/// forward; the call's task reads it only when its buffer next changes, so a pong wakes the
/// reader alone and not the call's task too (ten pongs a second per track).
#[derive(Clone, Default)]
pub struct PongMark(Arc<AtomicU64>);

impl PongMark {
    /// The session answered the ping sent after the batch ending at `through_ms`.
    pub fn record(&self, through_ms: u64) {
        self.0.fetch_max(through_ms, Ordering::Release);
    }

    fn through(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The current session's [`PongMark`], and how much of it the buffer has applied.
struct Listening {
    mark: PongMark,
    applied: u64,
    /// How far the track's clock moved since the session began (`shift`): its pings carry
    /// the session's clock, so its pongs stay comparable across a shift.
    shifted_ms: i64,
}

pub struct ReplayBuffer {
    held: VecDeque<Batch>,
    held_bytes: usize,
    cap_bytes: usize,
    /// The gap growing now, and finished ones not yet taken.
    open_gap: Option<Gap>,
    gaps: Vec<Gap>,
    listening: Option<Listening>,
    /// The end and send time of the last batch transcribed words released, which may
    /// still be the one a final turn's last word ends in (`sent_at`).
    released: Option<(u64, Option<Instant>)>,
}

impl ReplayBuffer {
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            held: VecDeque::new(),
            held_bytes: 0,
            cap_bytes,
            open_gap: None,
            gaps: Vec::new(),
            listening: None,
            released: None,
        }
    }

    /// A new session's pongs will count from now on (a fresh mark, for its reader); the
    /// last session's are applied first and then no longer read.
    pub fn listen(&mut self) -> PongMark {
        self.catch_up();
        let mark = PongMark::default();
        self.listening = Some(Listening {
            mark: mark.clone(),
            applied: 0,
            shifted_ms: 0,
        });
        mark
    }

    /// What the ping after the batch ending at `end_ms` (on the track's clock now) carries:
    /// that end on the current session's clock, so pings sent before and after a shift
    /// mean the same thing when their pongs come back.
    pub fn ping_payload(&self, end_ms: u64) -> u64 {
        let shifted_ms = self.listening.as_ref().map_or(0, |l| l.shifted_ms);
        end_ms.saturating_add_signed(-shifted_ms)
    }

    /// Applies the pongs that came back since last time: what they confirm was heard.
    fn catch_up(&mut self) {
        let Some(listening) = self.listening.as_mut() else {
            return;
        };
        let through = listening.mark.through();
        if through <= listening.applied {
            return;
        }
        listening.applied = through;
        let end_ms = through.saturating_add_signed(listening.shifted_ms);
        for batch in self.held.iter_mut().take_while(|b| b.end_ms() <= end_ms) {
            batch.heard = Heard::Yes;
        }
    }

    /// Holds a batch; beyond the cap the oldest leave (a gap unless heard).
    pub fn push(&mut self, batch: Batch) {
        self.catch_up();
        self.held_bytes += batch.bytes.len();
        self.held.push_back(batch);
        while self.held_bytes > self.cap_bytes && !self.held.is_empty() {
            self.discard_front();
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The `index`th batch held, oldest first (a new session is sent them all).
    pub fn get(&self, index: usize) -> Option<&Batch> {
        self.held.get(index)
    }

    /// The `index`th batch was sent (again) to a session at `at`.
    pub fn sent(&mut self, index: usize, at: Instant) {
        if let Some(batch) = self.held.get_mut(index) {
            batch.sent_at = Some(at);
        }
    }

    /// When the first batch ending at or after `end_ms` was last sent: the audio a turn's
    /// last word ends in. Looked up before the turn releases it.
    pub fn sent_at(&self, end_ms: u64) -> Option<Instant> {
        match self.released {
            Some((released_end, sent_at)) if released_end >= end_ms => sent_at,
            _ => self
                .held
                .iter()
                .find(|b| b.end_ms() >= end_ms)
                .and_then(|b| b.sent_at),
        }
    }

    /// The current session has heard every batch held but the newest (whose pong may
    /// still be on its way): what it was replayed, and what followed.
    pub fn heard_all_but_newest(&mut self) -> bool {
        self.catch_up();
        self.held
            .iter()
            .rev()
            .skip(1)
            .all(|b| b.heard == Heard::Yes)
    }

    /// A session finished cleanly after everything held was sent to it.
    pub fn all_heard(&mut self) {
        for batch in &mut self.held {
            batch.heard = Heard::Yes;
        }
    }

    /// The session dropped. With a turn open, what it heard since the last final turn has
    /// no transcript yet: it counts as lost unless a new session hears it again.
    pub fn session_dropped(&mut self, turn_open: bool) {
        // Its reader recorded every pong before it reported the drop.
        self.catch_up();
        self.listening = None;
        if !turn_open {
            return;
        }
        for batch in &mut self.held {
            if batch.heard == Heard::Yes {
                batch.heard = Heard::ByDroppedSession;
            }
        }
    }

    /// A live session heard this audio and found no turn in it: keep only the newest
    /// `keep_bytes` (at least one batch).
    pub fn trim_to(&mut self, keep_bytes: usize) {
        self.catch_up();
        while self.held_bytes > keep_bytes && self.held.len() > 1 {
            self.discard_front();
        }
    }

    /// Words that will not change (a final turn's, or an open turn's final words) cover the
    /// audio up to `end_ms`: it was heard and needs no replay.
    pub fn transcribed_through(&mut self, end_ms: u64) {
        self.catch_up();
        while self.held.front().is_some_and(|b| b.end_ms() <= end_ms) {
            if let Some(batch) = self.held.front_mut() {
                batch.heard = Heard::Yes;
                self.released = Some((batch.end_ms(), batch.sent_at));
            }
            self.discard_front();
        }
    }

    /// The track gives up (its deadline passed): whatever has no transcript is lost.
    pub fn abandon(&mut self) {
        self.catch_up();
        while !self.held.is_empty() {
            self.discard_front();
        }
    }

    /// The track's clock moved by `delta_ms` (its origin settled): so does everything held.
    pub fn shift(&mut self, delta_ms: i64) {
        self.catch_up();
        if let Some(listening) = self.listening.as_mut() {
            listening.shifted_ms += delta_ms;
        }
        for batch in &mut self.held {
            batch.offset_ms = batch.offset_ms.saturating_add_signed(delta_ms);
        }
        if let Some((end_ms, _)) = self.released.as_mut() {
            *end_ms = end_ms.saturating_add_signed(delta_ms);
        }
        for gap in self.gaps.iter_mut().chain(self.open_gap.as_mut()) {
            gap.start_ms = gap.start_ms.saturating_add_signed(delta_ms);
            gap.end_ms = gap.end_ms.saturating_add_signed(delta_ms);
        }
    }

    /// The gaps recorded so far, oldest first; the buffer forgets them.
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        let mut gaps = std::mem::take(&mut self.gaps);
        gaps.extend(self.open_gap.take());
        gaps
    }

    fn discard_front(&mut self) {
        let Some(batch) = self.held.pop_front() else {
            return;
        };
        self.held_bytes -= batch.bytes.len();
        let kind = match batch.heard {
            Heard::Yes => return,
            Heard::No => GapKind::Unheard,
            Heard::ByDroppedSession => GapKind::Untranscribed,
        };
        self.lose(Gap {
            start_ms: batch.offset_ms,
            end_ms: batch.end_ms(),
            kind,
        });
    }

    fn lose(&mut self, lost: Gap) {
        match &mut self.open_gap {
            Some(gap) if gap.kind == lost.kind && lost.start_ms <= gap.end_ms => {
                gap.end_ms = gap.end_ms.max(lost.end_ms);
            }
            open => {
                self.gaps.extend(open.take());
                *open = Some(lost);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(offset_ms: u64, heard: bool) -> Batch {
        let mut batch = Batch::new(offset_ms, vec![0xFF; 800]);
        batch.heard = if heard { Heard::Yes } else { Heard::No };
        batch
    }

    fn unheard(start_ms: u64, end_ms: u64) -> Gap {
        Gap {
            start_ms,
            end_ms,
            kind: GapKind::Unheard,
        }
    }

    #[test]
    fn overflow_of_unheard_audio_is_a_gap_and_heard_audio_is_not() {
        let mut buffer = ReplayBuffer::new(3 * 800);
        buffer.push(batch(0, true));
        buffer.push(batch(100, true));
        // Disconnected from here on.
        for offset in (200..800).step_by(100) {
            buffer.push(batch(offset, false));
        }
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.get(0).map(|b| b.offset_ms), Some(500));
        assert_eq!(
            buffer.take_gaps(),
            vec![unheard(200, 500)],
            "only audio no session heard"
        );
        assert!(buffer.take_gaps().is_empty(), "taken once");
    }

    #[test]
    fn separate_losses_are_separate_gaps() {
        let mut buffer = ReplayBuffer::new(800);
        buffer.push(batch(0, false));
        buffer.push(batch(100, true));
        buffer.push(batch(200, false));
        buffer.push(batch(300, false));
        assert_eq!(buffer.take_gaps(), vec![unheard(0, 100), unheard(200, 300)]);
    }

    #[test]
    fn trimming_heard_audio_and_transcribed_audio_loses_nothing() {
        let mut buffer = ReplayBuffer::new(100 * 800);
        for offset in (0..1000).step_by(100) {
            buffer.push(batch(offset, true));
        }
        buffer.transcribed_through(300);
        assert_eq!(buffer.get(0).map(|b| b.offset_ms), Some(300));
        buffer.trim_to(2 * 800);
        assert_eq!(buffer.len(), 2);
        assert!(buffer.take_gaps().is_empty());
    }

    #[test]
    fn a_pong_confirms_what_was_sent_before_it() {
        let mut buffer = ReplayBuffer::new(2 * 800);
        let pongs = buffer.listen();
        for offset in (0..400).step_by(100) {
            buffer.push(batch(offset, false));
            if offset == 100 {
                pongs.record(200);
            }
        }
        // 0–200 heard before they overflowed; 200–400 still held.
        assert!(buffer.take_gaps().is_empty());
        pongs.record(300);
        pongs.record(100); // out of order: the mark never goes back
        buffer.abandon();
        assert_eq!(
            buffer.take_gaps(),
            vec![unheard(300, 400)],
            "in flight when the track gave up"
        );
    }

    #[test]
    fn audio_a_dropped_session_heard_mid_turn_is_untranscribed_unless_heard_again() {
        let mut buffer = ReplayBuffer::new(3 * 800);
        let first = buffer.listen();
        buffer.push(batch(0, false));
        buffer.push(batch(100, false));
        first.record(200);
        buffer.session_dropped(true);
        first.record(400); // a dropped session's mark is read no more
        buffer.push(batch(200, false));
        buffer.push(batch(300, false));
        assert_eq!(
            buffer.take_gaps(),
            vec![Gap {
                start_ms: 0,
                end_ms: 100,
                kind: GapKind::Untranscribed
            }]
        );
        buffer.listen().record(400); // replayed to a new session
        buffer.abandon();
        assert!(buffer.take_gaps().is_empty());

        let mut silent = ReplayBuffer::new(800);
        silent.push(batch(0, true));
        silent.session_dropped(false);
        silent.push(batch(100, false));
        assert!(
            silent.take_gaps().is_empty(),
            "no turn was open: nothing lost"
        );
    }

    #[test]
    fn pongs_mean_the_same_audio_before_and_after_the_tracks_clock_moves() {
        let mut buffer = ReplayBuffer::new(100 * 800);
        let pongs = buffer.listen();
        buffer.push(batch(0, false));
        let before_shift = buffer.ping_payload(100);
        buffer.push(batch(100, false));
        // The track's origin settles 1 s later: everything held moves with it, and the
        // pong for the ping sent after 100–200 (in flight) still confirms both batches.
        let in_flight = buffer.ping_payload(200);
        buffer.shift(1000);
        pongs.record(before_shift);
        pongs.record(in_flight);
        buffer.push(batch(1200, false));
        buffer.push(batch(1300, false));
        // A ping sent after the shift, for the batch ending at 1300 on the new clock.
        pongs.record(buffer.ping_payload(1300));
        buffer.abandon();
        assert_eq!(
            buffer.take_gaps(),
            vec![unheard(1300, 1400)],
            "only the batch whose ping never came back"
        );
    }

    #[test]
    fn a_turns_last_word_is_timed_from_the_send_of_the_batch_it_ends_in() {
        let mut buffer = ReplayBuffer::new(100 * 800);
        let start = Instant::now();
        let at = |ms| start + std::time::Duration::from_millis(ms);
        for (index, offset) in (0..400).step_by(100).enumerate() {
            buffer.push(batch(offset, true));
            buffer.sent(index, at(offset));
        }
        assert_eq!(buffer.sent_at(150), Some(at(100)));
        // An open turn's final words end exactly where a batch does: it leaves, and is
        // still the one a final turn ending there is timed from.
        buffer.transcribed_through(200);
        assert_eq!(buffer.sent_at(200), Some(at(100)));
        assert_eq!(buffer.sent_at(201), Some(at(200)));
        buffer.sent(0, at(1000)); // replayed to a new session
        assert_eq!(buffer.sent_at(250), Some(at(1000)));
        assert_eq!(buffer.sent_at(500), None, "not sent yet");
    }

    #[test]
    fn abandoning_reports_the_unheard_tail_with_its_real_length() {
        let mut buffer = ReplayBuffer::new(100 * 800);
        buffer.push(batch(0, true));
        buffer.push(batch(100, false));
        let mut tail = Batch::new(200, vec![0xFF; 400]);
        tail.audio_ms = 40; // 40 ms of audio padded to the 50 ms minimum
        buffer.push(tail);
        buffer.abandon();
        assert!(buffer.is_empty());
        assert_eq!(buffer.take_gaps(), vec![unheard(100, 240)]);
    }
}
