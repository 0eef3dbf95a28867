//! Issue 14 item 7 (the parts done): the HTTP server cuts off a client that trickles its
//! request head (slowloris), and unknown bearer tokens are remembered briefly so a flood of
//! made-up tokens does not cost a database query each.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::TestApp;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test]
async fn a_client_trickling_its_request_head_is_cut_off() {
    let app = TestApp::spawn_with(&[("HTTP_HEADER_READ_TIMEOUT_SECS", "1")]).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let started = Instant::now();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One header line every 300 ms, never the blank line that ends the head.
    let mut closed_after = None;
    for n in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if tcp
            .write_all(format!("X-Slow-{n}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buffer = [0u8; 512];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buffer)).await
            && read.map_or(true, |n| n == 0 || buffer.starts_with(b"HTTP/1.1 408"))
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the server kept a trickling connection for 6 s");
    assert!(
        closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    // Ordinary requests are unaffected.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn unknown_tokens_are_remembered_briefly() {
    let app = TestApp::spawn_with(&[("AUTH_NEGATIVE_CACHE_SECS", "2")]).await;
    let user = app.create_user("Later", "later@example.com").await;
    let token = uuid::Uuid::new_v4().to_string();
    let me = || {
        app.client
            .get(app.url("/api/me"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(me().await.unwrap().status(), 401);
    // The token becomes valid, but this replica answers from its negative cache for now:
    // repeating an unknown token does not reach the database.
    app.create_session(&user, &token, Utc::now() + chrono::Duration::days(1))
        .await;
    assert_eq!(me().await.unwrap().status(), 401);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(me().await.unwrap().status(), 200);
}
