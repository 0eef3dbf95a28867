//! Issue 14 item 7 (the parts done): the HTTP server cuts off a client that trickles its
//! request head (slowloris), and unknown bearer tokens are remembered briefly so a flood of
//! made-up tokens does not cost a database query each.

use crate::common;

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

async fn assert_429(response: reqwest::Response) {
    let retry: u64 = response
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    common::assert_problem(response, 429).await;
}

#[tokio::test]
async fn anonymous_requests_are_limited_per_address() {
    let app = TestApp::spawn_with(&[("RATE_LIMIT_ANONYMOUS_PER_MIN", "5")]).await;
    for _ in 0..5 {
        assert_eq!(app.get("/api/openapi.json").await.status(), 200);
    }
    assert_429(app.get("/api/openapi.json").await).await;
    // Probes are never limited.
    assert_eq!(app.get("/healthz").await.status(), 200);
    // A signed-in caller has its own budget.
    let ada = app.sign_in("Ada").await;
    assert_eq!(app.get_as(&ada, "/api/me").await.status(), 200);
}

#[tokio::test]
async fn a_session_is_limited_on_its_own() {
    let app = TestApp::spawn_with(&[("RATE_LIMIT_SESSION_PER_MIN", "5")]).await;
    let ada = app.sign_in("Ada").await;
    for _ in 0..5 {
        assert_eq!(app.get_as(&ada, "/api/me").await.status(), 200);
    }
    assert_429(app.get_as(&ada, "/api/me").await).await;
    let bob = app.sign_in("Bob").await;
    assert_eq!(app.get_as(&bob, "/api/me").await.status(), 200);
}

#[tokio::test]
async fn guessing_tokens_is_limited_per_address() {
    let app = TestApp::spawn_with(&[("RATE_LIMIT_AUTH_FAILURES_PER_MIN", "3")]).await;
    let guess = |n: u32| {
        app.client
            .get(app.url("/api/me"))
            .bearer_auth(format!("0190c0de-0000-7000-8000-{n:012}"))
            .send()
    };
    for n in 0..3 {
        assert_eq!(guess(n).await.unwrap().status(), 401);
    }
    assert_429(guess(3).await.unwrap()).await;
}

#[tokio::test]
async fn live_streams_per_user_are_capped() {
    let app = TestApp::spawn_with(&[("STREAMS_PER_USER_MAX", "2")]).await;
    let ada = app.sign_in("Ada").await;
    let me: serde_json::Value = app.get_as(&ada, "/api/me").await.json().await.unwrap();
    let org: uuid::Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let call = uuid::Uuid::now_v7();
    app.db()
        .await
        .execute(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status)
             values ($1, $2, 'outbound', '+14155550100', '+14155550123', 'answered')",
            &[&call, &org],
        )
        .await
        .unwrap();
    let path = format!("/api/calls/{call}/events");
    let first = app.get_as(&ada, &path).await;
    let second = app.get_as(&ada, &path).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    assert_429(app.get_as(&ada, &path).await).await;
    drop(first);
    // The slot is freed when the server notices the client left (its next write).
    let mut reopened = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let response = app.get_as(&ada, &path).await;
        if response.status() == 200 {
            reopened = Some(response);
            break;
        }
    }
    assert!(reopened.is_some(), "a closed stream frees its slot");
}
