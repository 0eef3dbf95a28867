//! Telnyx media-stream frames (the WebSocket Telnyx opens to `/media/telnyx/{token}`): each
//! line of the input is one text message; media frames go through the per-track reorder
//! buffer and batching exactly as the bridge feeds them.
#![no_main]

use callbridge::media::shaping::TrackAudio;
use callbridge::media::frames::{self, Frame, Track};
use libfuzzer_sys::fuzz_target;

/// The bridge's defaults: 100 ms batches, a reorder window of 4 frames.
const BATCH_MS: usize = 100;
const WINDOW: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut inbound = TrackAudio::new(BATCH_MS, WINDOW);
    let mut outbound = TrackAudio::new(BATCH_MS, WINDOW);
    let mut largest_frame = 0;
    for line in text.split('\n') {
        if let Ok(Frame::Media(mut media)) = frames::parse(line) {
            largest_frame = largest_frame.max(media.payload.len());
            let track = match media.track {
                Track::Inbound => &mut inbound,
                Track::Outbound => &mut outbound,
            };
            for batch in track.push(media.chunk, &mut media.payload) {
                assert_eq!(batch.len(), BATCH_MS * 8, "batches are exactly 100 ms");
            }
            // What one track holds is bounded by its window, not by the sender.
            assert!(track.pending_bytes() <= (WINDOW + 1) * largest_frame + BATCH_MS * 8);
        }
    }
    for track in [&mut inbound, &mut outbound] {
        for batch in track.flush() {
            assert!((400..=800).contains(&batch.len()), "{}", batch.len());
        }
    }
});
