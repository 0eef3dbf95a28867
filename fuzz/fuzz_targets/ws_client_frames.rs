//! What an AssemblyAI server sends on its WebSocket, read by our client (`ws_client`, ADR
//! 0061): any bytes end in a close or an error, never a panic; no message is longer than the
//! limit or than the bytes that came; and the reading is the same however the bytes are cut
//! (one read at a time of 1 to 64 bytes, part of them with the handshake's response), which
//! is what the reader's fixed buffer, its spill buffer and its fragments must get right.
//! The first two input bytes choose the cut; the rest is the server's.
#![no_main]

use std::time::Duration;

use callbridge::ws_client::Options;
use callbridge::ws_client::scripted::{Read, read_all};
use libfuzzer_sys::fuzz_target;

/// The smallest read buffer the client allows, and a limit a few KB long, so that inputs
/// reach the spill buffer, fragments and the limit.
const OPTIONS: Options = Options {
    read_buffer: 256,
    write_buffer: 256,
    max_message: 4_096,
    handshake_timeout: Duration::from_secs(1),
};

fuzz_target!(|data: &[u8]| {
    let [chunk, early, server @ ..] = data else {
        return;
    };
    let whole = read_all(server, 0, usize::MAX, OPTIONS);
    let (last, messages) = whole.split_last().expect("a reading ends in something");
    assert!(matches!(last, Read::Close(_) | Read::Error(_)), "{last:?}");
    let mut read = 0;
    for message in messages {
        let length = match message {
            Read::Text(text) => text.len(),
            Read::Binary(bytes) | Read::Pong(bytes) => bytes.len(),
            Read::Close(_) | Read::Error(_) => panic!("reading went on after {message:?}"),
        };
        assert!(length <= OPTIONS.max_message, "{length} bytes");
        read += length;
    }
    assert!(read <= server.len(), "{read} bytes of messages from {} bytes", server.len());
    let cut = read_all(server, usize::from(*early) * 4, usize::from(*chunk % 64) + 1, OPTIONS);
    assert_eq!(cut, whole);
});
