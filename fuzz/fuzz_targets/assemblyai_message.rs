//! AssemblyAI Universal-Streaming v3 server messages (text frames of the realtime WebSocket):
//! any text is one of the messages we act on or `Other`, never a panic, and the same text
//! always reads the same way.
#![no_main]

use callbridge::providers::assemblyai::{ServerMessage, parse_server_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let message = parse_server_message(text);
    if let ServerMessage::Turn(turn) = &message {
        // Confidences are JSON numbers: never NaN, so the message compares equal to itself.
        assert!(turn.words.iter().all(|w| !w.confidence.is_nan()));
    }
    assert_eq!(message, parse_server_message(text));
});
