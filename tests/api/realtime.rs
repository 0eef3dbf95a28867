//! Browser transcription: a short-lived AssemblyAI token for direct streaming, and the
//! session-authenticated WebSocket proxy (batching, origin check, optional call binding).
#![cfg(feature = "sim")]

use crate::common;

use std::time::Duration;

use callbridge::sim::assemblyai::AssemblyAiSim;
use common::{TestApp, assert_problem};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

async fn spawn() -> (TestApp, AssemblyAiSim) {
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    let url = aai.streaming_url();
    let app = TestApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", url.as_str()),
    ])
    .await;
    (app, aai)
}

/// 16 kHz S16LE: `speaking` ms of a tone then `silent` ms of silence.
fn pcm16(speaking: u64, silent: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for n in 0..(speaking + silent) * 16 {
        let sample = if n < speaking * 16 {
            (9000.0 * (n as f64 * 0.1).sin()) as i16
        } else {
            0
        };
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    bytes
}

#[tokio::test]
async fn a_token_lets_the_browser_stream_directly_once() {
    let (app, _aai) = spawn().await;
    let ada = app.sign_in("Ada").await;
    let response = app
        .request_as(reqwest::Method::POST, &ada, "/api/realtime/token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["expires_in_seconds"], 60);
    let url = body["websocket_url"].as_str().unwrap().to_owned();
    assert!(
        url.contains("encoding=pcm_s16le")
            && url.contains("speech_model=")
            && url.contains("token=")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("the token opens a session");
    let first = socket.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"Begin\""));
    let again = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(again.is_err(), "tokens are single-use");

    assert_problem(
        app.client
            .post(app.url("/api/realtime/token"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let plain = TestApp::spawn().await;
    let bob = plain.sign_in("Bob").await;
    let response = plain
        .request_as(reqwest::Method::POST, &bob, "/api/realtime/token")
        .send()
        .await
        .unwrap();
    assert_problem(response, 503).await;
}

async fn open_proxy(
    app: &TestApp,
    token: &str,
    origin: &str,
    query: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    u16,
> {
    let mut request = format!("ws://127.0.0.1:{}/api/realtime/transcribe{query}", app.port)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "cookie",
        format!("authjs.session-token={token}").parse().unwrap(),
    );
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn the_proxy_batches_browser_audio_and_relays_turns_storing_them_for_a_call() {
    let (app, aai) = spawn().await;
    let ada = app.sign_in("Ada").await;
    let me: serde_json::Value = app.get_as(&ada, "/api/me").await.json().await.unwrap();
    let org: uuid::Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let call_id = uuid::Uuid::now_v7();
    app.db().await.execute("insert into calls (id, organisation_id, direction, from_number, to_number, status) values ($1, $2, 'outbound', '+1', '+2', 'answered')", &[&call_id, &org]).await.unwrap();

    let mut socket = open_proxy(
        &app,
        &ada.token,
        "https://app.example.com",
        &format!("?call_id={call_id}"),
    )
    .await
    .unwrap();
    // A browser's 20 ms frames (640 bytes at 16 kHz).
    for chunk in pcm16(1200, 700).chunks(640) {
        socket
            .send(Message::Binary(chunk.to_vec().into()))
            .await
            .unwrap();
    }
    socket
        .send(Message::Text(r#"{"type":"Terminate"}"#.into()))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(5), socket.next()).await
    {
        if let Message::Text(text) = message {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            kinds.push(value["type"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some("Begin"));
    assert!(kinds.iter().any(|k| k == "Turn"));
    assert_eq!(kinds.last().map(String::as_str), Some("Termination"));
    let session = aai.sessions().pop().unwrap();
    let (last, rest) = session.chunk_bytes.split_last().unwrap();
    assert!(
        rest.iter().all(|b| *b == 3200),
        "100 ms chunks at 16 kHz: {:?}",
        session.chunk_bytes
    );
    assert!(*last >= 1600);
    let text: String = app
        .db()
        .await
        .query_one(
            "select text from transcript_turns where call_id = $1 and track = 'browser'",
            &[&call_id],
        )
        .await
        .unwrap()
        .get("text");
    assert_eq!(text, "Hello, this is a test call.");
}

#[tokio::test]
async fn the_proxy_refuses_other_origins_strangers_and_other_organisations_calls() {
    let (app, _aai) = spawn().await;
    let ada = app.sign_in("Ada").await;
    assert_eq!(
        open_proxy(&app, &ada.token, "https://evil.example.net", "")
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        open_proxy(&app, "not-a-session", "https://app.example.com", "")
            .await
            .err(),
        Some(401)
    );
    let eve = app.sign_in("Eve").await;
    let me: serde_json::Value = app.get_as(&eve, "/api/me").await.json().await.unwrap();
    let org: uuid::Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let eves_call = uuid::Uuid::now_v7();
    app.db().await.execute("insert into calls (id, organisation_id, direction, from_number, to_number, status) values ($1, $2, 'outbound', '+1', '+2', 'answered')", &[&eves_call, &org]).await.unwrap();
    assert_eq!(
        open_proxy(
            &app,
            &ada.token,
            "https://app.example.com",
            &format!("?call_id={eves_call}")
        )
        .await
        .err(),
        Some(404)
    );
    assert!(
        open_proxy(&app, &ada.token, "https://app.example.com", "")
            .await
            .is_ok()
    );
}

/// Issue 14 item 6: a transcription socket does not outlive its session or its membership:
/// within AUTH_STREAM_RECHECK_SECS it closes with 4401 (signed out) or 4403 (removed).
#[tokio::test]
async fn the_proxy_closes_when_the_session_or_the_membership_ends() {
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    let url = aai.streaming_url();
    let app = TestApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", url.as_str()),
        ("AUTH_STREAM_RECHECK_SECS", "1"),
    ])
    .await;
    let close_code = |mut socket: tokio_tungstenite::WebSocketStream<_>| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    };

    // Signed out mid-stream.
    let ada = app.sign_in("Ada").await;
    let socket = open_proxy(&app, &ada.token, "https://app.example.com", "")
        .await
        .unwrap();
    app.delete_session(&ada.token).await;
    let (code, reason) = close_code(socket).await.expect("a close frame");
    assert_eq!(code, 4401, "{reason}");

    // Removed from the organisation that owns the call the socket is bound to.
    let owner = app.sign_in("Owner").await;
    let me: serde_json::Value = app.get_as(&owner, "/api/me").await.json().await.unwrap();
    let org: uuid::Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let call_id = uuid::Uuid::now_v7();
    let db = app.db().await;
    db.execute("insert into calls (id, organisation_id, direction, from_number, to_number, status) values ($1, $2, 'outbound', '+1', '+2', 'answered')", &[&call_id, &org]).await.unwrap();
    let bob = app.sign_in("Bob").await;
    db.execute(
        "insert into memberships (organisation_id, user_id, role) values ($1, $2, 'member')",
        &[&org, &bob.user_id],
    )
    .await
    .unwrap();
    let socket = open_proxy(
        &app,
        &bob.token,
        "https://app.example.com",
        &format!("?call_id={call_id}"),
    )
    .await
    .unwrap();
    db.execute(
        "delete from memberships where organisation_id = $1 and user_id = $2",
        &[&org, &bob.user_id],
    )
    .await
    .unwrap();
    let (code, reason) = close_code(socket).await.expect("a close frame");
    assert_eq!(code, 4403, "{reason}");
}

/// Issue 14 item 7: token minting is capped per user, and the proxy refuses oversized messages.
#[tokio::test]
async fn token_minting_is_capped_and_oversized_messages_are_refused() {
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    let url = aai.streaming_url();
    let app = TestApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", url.as_str()),
        ("REALTIME_TOKENS_PER_MIN", "2"),
        ("REALTIME_MAX_MESSAGE_BYTES", "4096"),
    ])
    .await;
    let ada = app.sign_in("Ada").await;
    let mint = || {
        app.request_as(reqwest::Method::POST, &ada, "/api/realtime/token")
            .send()
    };
    assert_eq!(mint().await.unwrap().status(), 200);
    assert_eq!(mint().await.unwrap().status(), 200);
    let refused = mint().await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, 429).await;

    let mut socket = open_proxy(&app, &ada.token, "https://app.example.com", "")
        .await
        .unwrap();
    let _ = socket
        .send(Message::Binary(vec![0u8; 64 * 1024].into()))
        .await;
    let mut closed = false;
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
        match next {
            Some(Ok(Message::Close(frame))) => {
                // The read fails with "message too big"; the session is wound down and closed.
                if let Some(frame) = frame {
                    assert_ne!(u16::from(frame.code), 1000, "{frame:?}");
                }
                closed = true;
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "an oversized message ends the socket");
}

/// The ledger rows of `source_key` prefix `prefix` for `organisation`, once `ready` holds.
async fn ledger_rows(
    app: &TestApp,
    organisation: uuid::Uuid,
    ready: impl Fn(&[(String, f64, Option<uuid::Uuid>, String)]) -> bool,
) -> Vec<(String, f64, Option<uuid::Uuid>, String)> {
    let db = app.db().await;
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = db
            .query(
                "select unit, quantity::float8 as quantity, call_id, source_key from usage_ledger
                 where organisation_id = $1 and vendor = 'assemblyai' order by id",
                &[&organisation],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get("unit"),
                    r.get("quantity"),
                    r.get("call_id"),
                    r.get("source_key"),
                )
            })
            .collect();
        if ready(&rows) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ledger never got there: {rows:?}");
}

#[tokio::test]
async fn browser_sessions_are_metered_to_the_organisation_that_opened_them() {
    let (app, aai) = spawn().await;
    let ada = app.sign_in("Ada").await;
    let me: serde_json::Value = app.get_as(&ada, "/api/me").await.json().await.unwrap();
    let org: uuid::Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let bob = app.sign_in("Bob").await;
    let bobs: serde_json::Value = app.get_as(&bob, "/api/me").await.json().await.unwrap();
    let bobs_org: uuid::Uuid = bobs["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // A direct session: its seconds never pass us, so the token is what is counted.
    let response = app
        .request_as(reqwest::Method::POST, &ada, "/api/realtime/token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let rows = ledger_rows(&app, org, |rows| !rows.is_empty()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1), ("direct_sessions", 1.0));

    // A session through the proxy, not bound to a call: billed to Ada's organisation at the
    // seconds AssemblyAI's Termination reported (what it bills).
    let mut socket = open_proxy(&app, &ada.token, "https://app.example.com", "")
        .await
        .unwrap();
    for chunk in pcm16(1500, 700).chunks(640) {
        socket
            .send(Message::Binary(chunk.to_vec().into()))
            .await
            .unwrap();
    }
    // Long enough that the session's wall-clock seconds are not zero.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    socket
        .send(Message::Text(r#"{"type":"Terminate"}"#.into()))
        .await
        .unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {}
    let billed = aai.billed_session_seconds();
    assert_eq!(
        billed.len(),
        1,
        "one session reached AssemblyAI: {billed:?}"
    );
    let (session_id, seconds) = billed[0].clone();
    assert!(seconds >= 1, "the simulator billed {seconds} s");
    let rows = ledger_rows(&app, org, |rows| rows.len() == 2).await;
    let streamed = &rows[1];
    assert_eq!(streamed.0, "streaming_seconds");
    assert_eq!(
        streamed.1, seconds as f64,
        "the ledger bills what AssemblyAI billed"
    );
    assert_eq!(streamed.2, None, "not bound to a call");
    assert_eq!(streamed.3, format!("assemblyai:session:{session_id}"));

    // Bound to a call: billed to the call.
    let call_id = uuid::Uuid::now_v7();
    app.db().await.execute("insert into calls (id, organisation_id, direction, from_number, to_number, status) values ($1, $2, 'outbound', '+1', '+2', 'answered')", &[&call_id, &org]).await.unwrap();
    let mut socket = open_proxy(
        &app,
        &ada.token,
        "https://app.example.com",
        &format!("?call_id={call_id}"),
    )
    .await
    .unwrap();
    for chunk in pcm16(600, 300).chunks(640) {
        socket
            .send(Message::Binary(chunk.to_vec().into()))
            .await
            .unwrap();
    }
    // The browser leaves without `Terminate`: the session is still ended and billed.
    socket.close(None).await.unwrap();
    let rows = ledger_rows(&app, org, |rows| rows.len() == 3).await;
    assert_eq!(rows[2].0, "streaming_seconds");
    assert_eq!(rows[2].2, Some(call_id));

    // Nothing of it is Bob's, and Bob's usage report shows none of it.
    let bobs_rows = app
        .db()
        .await
        .query(
            "select 1 from usage_ledger where organisation_id = $1",
            &[&bobs_org],
        )
        .await
        .unwrap();
    assert!(bobs_rows.is_empty());
    // Ada's own report shows both units.
    let report: serde_json::Value = app
        .get_as(&ada, "/api/usage?group_by=day")
        .await
        .json()
        .await
        .unwrap();
    let text = report.to_string();
    assert!(
        text.contains("direct_sessions") && text.contains("streaming_seconds"),
        "{report}"
    );
}
