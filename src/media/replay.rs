//! The audio a track holds for replay to a new AssemblyAI session, and the account of what
//! never reached AssemblyAI. Every batch remembers whether a session was sent it; a batch
//! that leaves the buffer unsent (overflow while disconnected, or still held when the track
//! gives up) is lost audio, reported as a gap in track milliseconds. Nothing else is a gap:
//! audio a session already heard is not lost when it is trimmed. Pure and synchronous.

use std::collections::VecDeque;

use super::audio::MULAW_BYTES_PER_MS;

#[derive(Debug)]
pub struct Batch {
    /// Where the batch begins on the track's clock.
    pub offset_ms: u64,
    pub bytes: Vec<u8>,
    /// Audio it carries; less than `bytes` for a tail padded with silence.
    pub audio_ms: u64,
    /// Some AssemblyAI session was sent it.
    pub sent: bool,
}

impl Batch {
    pub fn new(offset_ms: u64, bytes: Vec<u8>) -> Self {
        let audio_ms = (bytes.len() / MULAW_BYTES_PER_MS) as u64;
        Self {
            offset_ms,
            bytes,
            audio_ms,
            sent: false,
        }
    }

    pub fn end_ms(&self) -> u64 {
        self.offset_ms + self.audio_ms
    }
}

pub struct ReplayBuffer {
    held: VecDeque<Batch>,
    held_bytes: usize,
    cap_bytes: usize,
    /// The gap growing now, and finished ones not yet taken.
    open_gap: Option<(u64, u64)>,
    gaps: Vec<(u64, u64)>,
}

impl ReplayBuffer {
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            held: VecDeque::new(),
            held_bytes: 0,
            cap_bytes,
            open_gap: None,
            gaps: Vec::new(),
        }
    }

    /// Holds a batch; beyond the cap the oldest leave (lost if never sent).
    pub fn push(&mut self, batch: Batch) {
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

    pub fn first_offset(&self) -> Option<u64> {
        self.held.front().map(|b| b.offset_ms)
    }

    /// Lends out the `index`th batch held, oldest first (a new session is sent them all),
    /// leaving an empty one in its place until `put_back`.
    pub fn take(&mut self, index: usize) -> Option<Batch> {
        let slot = self.held.get_mut(index)?;
        let empty = Batch {
            offset_ms: slot.offset_ms,
            bytes: Vec::new(),
            audio_ms: slot.audio_ms,
            sent: slot.sent,
        };
        Some(std::mem::replace(slot, empty))
    }

    /// Returns a batch lent by `take`, marked sent if the session took it.
    pub fn put_back(&mut self, index: usize, mut batch: Batch, sent: bool) {
        batch.sent |= sent;
        if let Some(slot) = self.held.get_mut(index) {
            *slot = batch;
        }
    }

    /// A live session heard this audio and found no turn in it: keep only the newest
    /// `keep_bytes` (at least one batch).
    pub fn trim_to(&mut self, keep_bytes: usize) {
        while self.held_bytes > keep_bytes && self.held.len() > 1 {
            self.discard_front();
        }
    }

    /// A final turn covers the audio up to `end_ms`: it needs no replay.
    pub fn transcribed_through(&mut self, end_ms: u64) {
        while self.held.front().is_some_and(|b| b.end_ms() <= end_ms) {
            self.discard_front();
        }
    }

    /// The track gives up (its deadline passed): whatever was never sent is lost.
    pub fn abandon(&mut self) {
        while !self.held.is_empty() {
            self.discard_front();
        }
    }

    /// The gaps recorded so far, `(start_ms, end_ms)`, oldest first; the buffer forgets them.
    pub fn take_gaps(&mut self) -> Vec<(u64, u64)> {
        let mut gaps = std::mem::take(&mut self.gaps);
        gaps.extend(self.open_gap.take());
        gaps
    }

    fn discard_front(&mut self) {
        let Some(batch) = self.held.pop_front() else {
            return;
        };
        self.held_bytes -= batch.bytes.len();
        if !batch.sent {
            self.lose(batch.offset_ms, batch.end_ms());
        }
    }

    fn lose(&mut self, start: u64, end: u64) {
        match &mut self.open_gap {
            Some(gap) if start <= gap.1 => gap.1 = gap.1.max(end),
            open => {
                self.gaps.extend(open.take());
                *open = Some((start, end));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(offset_ms: u64, sent: bool) -> Batch {
        let mut batch = Batch::new(offset_ms, vec![0xFF; 800]);
        batch.sent = sent;
        batch
    }

    #[test]
    fn overflow_of_unsent_audio_is_a_gap_and_sent_audio_is_not() {
        let mut buffer = ReplayBuffer::new(3 * 800);
        buffer.push(batch(0, true));
        buffer.push(batch(100, true));
        // Disconnected from here on.
        for offset in (200..800).step_by(100) {
            buffer.push(batch(offset, false));
        }
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.first_offset(), Some(500));
        assert_eq!(
            buffer.take_gaps(),
            vec![(200, 500)],
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
        assert_eq!(buffer.take_gaps(), vec![(0, 100), (200, 300)]);
    }

    #[test]
    fn trimming_heard_audio_and_transcribed_audio_loses_nothing() {
        let mut buffer = ReplayBuffer::new(100 * 800);
        for offset in (0..1000).step_by(100) {
            buffer.push(batch(offset, true));
        }
        buffer.transcribed_through(300);
        assert_eq!(buffer.first_offset(), Some(300));
        buffer.trim_to(2 * 800);
        assert_eq!(buffer.len(), 2);
        assert!(buffer.take_gaps().is_empty());
    }

    #[test]
    fn abandoning_reports_the_unsent_tail_with_its_real_length() {
        let mut buffer = ReplayBuffer::new(100 * 800);
        buffer.push(batch(0, true));
        buffer.push(batch(100, false));
        let mut tail = Batch::new(200, vec![0xFF; 400]);
        tail.audio_ms = 40; // 40 ms of audio padded to the 50 ms minimum
        buffer.push(tail);
        buffer.abandon();
        assert!(buffer.is_empty());
        assert_eq!(buffer.take_gaps(), vec![(100, 240)]);
    }
}
