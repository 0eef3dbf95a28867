//! What an AssemblyAI socket keeps in heap for reading once its messages have been read
//! (ADR 0061), counted by a global allocator of this test binary's own: tungstenite's
//! client, as the service had it, against `ws_client`, each after a Turn of the bench's
//! length (about 2.5 KB) and after a long one (400 words, a few minutes' monologue, about
//! 34 KB).
//!
//! Both clients talk to the same tungstenite server in this process, so the server's part
//! of each count is the same and the difference is the clients'.

use std::alloc::System;
use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use callbridge::ws_client;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CONNECTIONS: usize = 50;

/// A Turn message of `words` words, as AssemblyAI sends them (about 100 bytes a word).
fn turn(words: usize) -> String {
    let words: Vec<String> = (0..words)
        .map(|i| {
            format!(
                r#"{{"start":{},"end":{},"text":"word{i}","confidence":0.93,"word_is_final":true}}"#,
                i * 300,
                i * 300 + 250
            )
        })
        .collect();
    format!(
        r#"{{"type":"Turn","turn_order":3,"turn_is_formatted":true,"end_of_turn":true,"transcript":"...","end_of_turn_confidence":0.9,"words":[{}]}}"#,
        words.join(",")
    )
}

/// A server that sends every connection `messages`, then holds it open until the test ends.
async fn server(messages: Vec<String>) -> (u16, Arc<Semaphore>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let done = Arc::new(Semaphore::new(0));
    let hold = done.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (messages, hold) = (messages.clone(), hold.clone());
            tokio::spawn(async move {
                // Small buffers, so that the server's part of each count is small too.
                let config = WebSocketConfig::default().read_buffer_size(2048);
                let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config))
                    .await
                    .unwrap();
                for message in messages {
                    ws.send(Message::Text(message.into())).await.unwrap();
                }
                let _permit = hold.acquire().await;
                drop(ws);
            });
        }
    });
    (port, done)
}

/// Net heap held per connection by `CONNECTIONS` connections that have each read `count`
/// messages (server side included).
async fn held_per_connection<C, Fut, K>(port: u16, count: usize, open: C) -> isize
where
    C: Fn(u16, usize) -> Fut,
    Fut: std::future::Future<Output = K>,
{
    // The runtime's and the listener's first allocations stay out of the count.
    drop(open(port, count).await);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let region = Region::new(ALLOCATOR);
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        held.push(open(port, count).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let change = region.change();
    drop(held);
    let net = change.bytes_allocated as isize - change.bytes_deallocated as isize
        + change.bytes_reallocated;
    net / CONNECTIONS as isize
}

/// tungstenite's client with the buffers the service gave it before ADR 0061.
async fn tungstenite_client(
    port: u16,
    count: usize,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let request = format!("ws://127.0.0.1:{port}/")
        .into_client_request()
        .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let config = WebSocketConfig::default()
        .read_buffer_size(2048)
        .write_buffer_size(1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .unwrap();
    for _ in 0..count {
        let message = ws.next().await.unwrap().unwrap();
        assert!(message.is_text());
    }
    ws
}

async fn our_client(port: u16, count: usize) -> ws_client::Socket {
    let request = format!("ws://127.0.0.1:{port}/")
        .into_client_request()
        .unwrap();
    let mut socket = ws_client::connect(
        request,
        &callbridge::tls::websocket_client_config(),
        callbridge::providers::assemblyai::socket_options(),
    )
    .await
    .unwrap();
    for _ in 0..count {
        let message = socket.reader.next().await.unwrap();
        assert!(matches!(message, ws_client::Incoming::Text(_)));
    }
    socket
}

#[tokio::test(flavor = "current_thread")]
async fn a_socket_keeps_its_read_buffer_small_after_a_long_turn() {
    for (label, words) in [("bench-length Turn", 30), ("long Turn", 400)] {
        // A pong-sized message after the Turn: what a socket keeps between messages.
        let messages = vec![
            r#"{"type":"Begin","id":"s"}"#.to_owned(),
            turn(words),
            "{}".to_owned(),
        ];
        let length = messages[1].len();
        let (port, done) = server(messages.clone()).await;
        let tungstenite = held_per_connection(port, 3, tungstenite_client).await;
        let ours = held_per_connection(port, 3, our_client).await;
        done.add_permits(usize::MAX >> 4);
        let saved = tungstenite - ours;
        eprintln!(
            "{label} of {length} bytes: heap per connection (server side included), tungstenite {tungstenite} B, ws_client {ours} B: {saved} B less"
        );
        // tungstenite keeps its handshake's 4 KiB buffer, doubled by a Turn over 2 KiB, or
        // grown to twice a long Turn; ws_client keeps its 512-byte read buffer, the Turn's own
        // buffer freed by the next read (were it kept, the saving would be about a Turn less).
        let expected = if length < 4096 {
            6 * 1024
        } else {
            length as isize * 3 / 2
        };
        assert!(
            saved > expected,
            "{label}: tungstenite {tungstenite} B, ws_client {ours} B"
        );
    }
}
