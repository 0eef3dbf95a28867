//! AssemblyAI Universal-Streaming v3 server messages (text frames of the realtime WebSocket):
//! any text is one of the messages we act on or `Other`, never a panic, the same text
//! always reads the same way, and the one-pass reading agrees with the tolerant tree reading
//! whenever the tree can be built. (It skips the fields it does not read, so it also reads a
//! message with an out-of-range number, a lone surrogate or nesting deeper than 128 in such
//! a field, which the tree refuses: the unit test of `parse_server_message` covers those.)
#![no_main]

use callbridge::providers::assemblyai::{
    ServerMessage, parse_server_message, parse_server_message_loosely,
};
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
    if serde_json::from_str::<serde_json::Value>(text).is_ok() {
        assert_eq!(message, parse_server_message_loosely(text));
    }
});
