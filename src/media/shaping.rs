//! Per-track audio shaping between Telnyx and AssemblyAI: a small reorder buffer (frames may
//! arrive out of order) and batching of 20 ms frames into chunks AssemblyAI accepts
//! (50–1000 ms; default 100 ms). µ-law in, µ-law out: bytes are never transcoded. Pure and
//! synchronous, so it is tested without sockets.

use std::collections::BTreeMap;

/// µ-law silence.
pub const MULAW_SILENCE: u8 = 0xFF;
/// Bytes of µ-law at 8 kHz per millisecond.
pub const MULAW_BYTES_PER_MS: usize = 8;
/// Missing frames are filled with silence to keep time aligned, up to this many in a row.
const MAX_FILLED_FRAMES: u64 = 10;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AudioCounters {
    pub frames_in: u64,
    /// Arrived after their place had passed (or twice): dropped.
    pub frames_late: u64,
    /// Never arrived: replaced by silence.
    pub frames_missing: u64,
}

pub struct TrackAudio {
    reorder: BTreeMap<u64, Vec<u8>>,
    next_chunk: Option<u64>,
    window: usize,
    frame_bytes: usize,
    batch: Vec<u8>,
    batch_bytes: usize,
    min_bytes: usize,
    pub counters: AudioCounters,
}

impl TrackAudio {
    /// `batch_ms` is clamped to AssemblyAI's 50–1000 ms.
    pub fn new(batch_ms: usize, reorder_window: usize) -> Self {
        let batch_ms = batch_ms.clamp(50, 1000);
        Self {
            reorder: BTreeMap::new(),
            next_chunk: None,
            window: reorder_window.max(1),
            frame_bytes: 20 * MULAW_BYTES_PER_MS,
            batch: Vec::with_capacity(batch_ms * MULAW_BYTES_PER_MS),
            batch_bytes: batch_ms * MULAW_BYTES_PER_MS,
            min_bytes: 50 * MULAW_BYTES_PER_MS,
            counters: AudioCounters::default(),
        }
    }

    /// Adds one frame; returns the batches that became complete, in order. The payload is
    /// taken (left empty) only when the frame must wait in the reorder buffer: otherwise it
    /// is copied into the batch and the caller keeps the buffer to decode the next frame into.
    pub fn push(&mut self, chunk: u64, payload: &mut Vec<u8>) -> Vec<Vec<u8>> {
        self.counters.frames_in += 1;
        if !payload.is_empty() {
            self.frame_bytes = payload.len();
        }
        let next = *self.next_chunk.get_or_insert(chunk);
        if chunk < next || self.reorder.contains_key(&chunk) {
            self.counters.frames_late += 1;
            return Vec::new();
        }
        if chunk == next && self.reorder.is_empty() {
            // In order, nothing waiting: the usual case skips the reorder map.
            let mut ready = Vec::new();
            self.append(payload, &mut ready);
            // Saturating: the chunk number is the sender's; u64::MAX must not panic.
            self.next_chunk = Some(next.saturating_add(1));
            return ready;
        }
        self.reorder.insert(chunk, std::mem::take(payload));
        let mut ready = Vec::new();
        loop {
            let next = self.next_chunk.unwrap_or(chunk);
            if let Some(payload) = self.reorder.remove(&next) {
                self.append(&payload, &mut ready);
                self.next_chunk = Some(next.saturating_add(1));
            } else if self.reorder.len() > self.window {
                // Waited long enough: the missing frames are gone. Fill a short hole with
                // silence so AssemblyAI's clock stays aligned with the call's.
                let first = *self.reorder.keys().next().expect("not empty");
                let missing = first - next;
                self.counters.frames_missing += missing;
                let filled = missing.min(MAX_FILLED_FRAMES) as usize;
                let silence = vec![MULAW_SILENCE; filled * self.frame_bytes];
                self.append(&silence, &mut ready);
                self.next_chunk = Some(first);
            } else {
                break;
            }
        }
        ready
    }

    /// Batches leave with exactly their size as capacity: the bridge holds seconds of them
    /// for replay, and a grown-by-doubling buffer would hold 1,280 bytes for every 800.
    fn append(&mut self, mut bytes: &[u8], ready: &mut Vec<Vec<u8>>) {
        while !bytes.is_empty() {
            let room = self.batch_bytes - self.batch.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.batch.extend_from_slice(now);
            bytes = later;
            if self.batch.len() == self.batch_bytes {
                let next = Vec::with_capacity(self.batch_bytes);
                ready.push(std::mem::replace(&mut self.batch, next));
            }
        }
    }

    /// Audio bytes held and not yet batched (what `flush` returns before padding).
    pub fn pending_bytes(&self) -> usize {
        self.batch.len() + self.reorder.values().map(Vec::len).sum::<usize>()
    }

    /// Everything still held (reordered frames, then the partial batch), split into chunks
    /// within the rules; a short tail is padded with silence to the 50 ms minimum.
    pub fn flush(&mut self) -> Vec<Vec<u8>> {
        let mut ready = Vec::new();
        let held: Vec<Vec<u8>> = std::mem::take(&mut self.reorder).into_values().collect();
        for payload in held {
            self.append(&payload, &mut ready);
        }
        if !self.batch.is_empty() {
            let mut tail = std::mem::take(&mut self.batch);
            if tail.len() < self.min_bytes {
                tail.resize(self.min_bytes, MULAW_SILENCE);
            }
            ready.push(tail);
        }
        ready
    }
}

/// Batches an arbitrary byte stream (a browser's audio) into chunks of `batch_ms`, for any
/// encoding: AssemblyAI's 50–1000 ms rule applies whatever the sender's frame size.
pub struct ByteBatcher {
    buffer: Vec<u8>,
    batch_bytes: usize,
    min_bytes: usize,
    max_bytes: usize,
    silence: u8,
    /// Bytes per sample: a chunk never splits a sample.
    sample_bytes: usize,
}

impl ByteBatcher {
    pub fn new(batch_ms: usize, bytes_per_ms: usize, sample_bytes: usize, silence: u8) -> Self {
        let batch_ms = batch_ms.clamp(50, 1000);
        Self {
            buffer: Vec::new(),
            batch_bytes: batch_ms * bytes_per_ms,
            min_bytes: 50 * bytes_per_ms,
            max_bytes: 1000 * bytes_per_ms,
            silence,
            sample_bytes: sample_bytes.max(1),
        }
    }

    /// Appends audio; returns complete chunks. Holds at most one chunk plus the input.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buffer.extend_from_slice(bytes);
        let mut ready = Vec::new();
        while self.buffer.len() >= self.batch_bytes {
            let rest = self.buffer.split_off(self.batch_bytes);
            ready.push(std::mem::replace(&mut self.buffer, rest));
        }
        ready
    }

    /// The remainder, padded with silence to 50 ms and cut on a sample boundary.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        if self.buffer.is_empty() {
            return None;
        }
        let mut tail = std::mem::take(&mut self.buffer);
        tail.truncate(tail.len() - tail.len() % self.sample_bytes);
        if tail.len() < self.min_bytes {
            tail.resize(self.min_bytes, self.silence);
        }
        tail.truncate(self.max_bytes);
        Some(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_number_at_the_top_of_u64_is_taken_not_a_panic() {
        let mut track = TrackAudio::new(100, 4);
        track.push(u64::MAX - 1, &mut vec![1; 160]);
        track.push(u64::MAX, &mut vec![2; 160]);
        let mut other = TrackAudio::new(100, 4);
        other.push(u64::MAX, &mut vec![3; 160]);
        other.push(u64::MAX - 2, &mut vec![4; 160]);
        assert_eq!(track.counters.frames_in, 2);
        assert_eq!(other.counters.frames_late, 1);
    }

    fn frame(n: u8) -> Vec<u8> {
        vec![n; 160]
    }

    #[test]
    fn twenty_ms_frames_become_hundred_ms_batches() {
        let mut audio = TrackAudio::new(100, 4);
        let mut batches = Vec::new();
        for n in 0..12u8 {
            batches.extend(audio.push(u64::from(n), &mut frame(n)));
        }
        assert_eq!(batches.len(), 2);
        assert!(batches.iter().all(|b| b.len() == 800));
        assert!(
            batches.iter().all(|b| b.capacity() == 800),
            "held for replay: no slack"
        );
        assert_eq!(&batches[1][..160], &frame(5)[..]);
        let tail = audio.flush();
        assert_eq!(tail.len(), 1);
        assert_eq!(
            tail[0].len(),
            400,
            "two 20 ms frames padded to the 50 ms minimum"
        );
        assert_eq!(
            &tail[0][..320],
            &[vec![10; 160], vec![11; 160]].concat()[..]
        );
    }

    #[test]
    fn batch_size_is_configurable_within_assemblyai_limits() {
        assert_eq!(TrackAudio::new(20, 4).batch_bytes, 400);
        assert_eq!(TrackAudio::new(5000, 4).batch_bytes, 8000);
        assert_eq!(TrackAudio::new(240, 4).batch_bytes, 1920);
    }

    #[test]
    fn out_of_order_frames_are_put_back_in_order() {
        let mut audio = TrackAudio::new(100, 4);
        let mut bytes = Vec::new();
        for n in [0u8, 2, 1, 4, 3, 6, 5, 8, 7, 9] {
            for batch in audio.push(u64::from(n), &mut frame(n)) {
                bytes.extend(batch);
            }
        }
        for batch in audio.flush() {
            bytes.extend(batch);
        }
        let order: Vec<u8> = bytes.chunks(160).map(|c| c[0]).collect();
        assert_eq!(order, (0..10).collect::<Vec<u8>>());
        assert_eq!(audio.counters.frames_late, 0);
    }

    #[test]
    fn browser_bytes_batch_on_sample_boundaries_within_limits() {
        // 16 kHz S16LE: 32 bytes per ms; 100 ms = 3200 bytes.
        let mut batcher = ByteBatcher::new(100, 32, 2, 0);
        let mut chunks = Vec::new();
        for _ in 0..7 {
            chunks.extend(batcher.push(&[1u8; 1000]));
        }
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| c.len() == 3200));
        let tail = batcher.flush().unwrap();
        assert_eq!(tail.len(), 1600, "600 bytes padded to the 50 ms minimum");
        assert!(batcher.flush().is_none());
    }

    #[test]
    fn late_duplicates_are_dropped_and_lost_frames_become_silence() {
        let mut audio = TrackAudio::new(100, 2);
        let mut bytes = Vec::new();
        for n in [0u8, 1, 1, 3, 4, 5, 6, 2] {
            for batch in audio.push(u64::from(n), &mut frame(n)) {
                bytes.extend(batch);
            }
        }
        for batch in audio.flush() {
            bytes.extend(batch);
        }
        let order: Vec<u8> = bytes.chunks(160).map(|c| c[0]).take(7).collect();
        assert_eq!(order, vec![0, 1, MULAW_SILENCE, 3, 4, 5, 6]);
        assert_eq!(audio.counters.frames_missing, 1);
        assert_eq!(
            audio.counters.frames_late, 2,
            "the duplicate 1 and the too-late 2"
        );
    }
}
