//! Issue 14 item 6: the call events stream re-checks the session and the membership every
//! AUTH_STREAM_RECHECK_SECS and ends with one `auth.revoked` event when either is gone.

use crate::common;

use std::time::Duration;

use common::TestApp;
use common::sse::SseReader;
use uuid::Uuid;

async fn call_in(app: &TestApp, org: Uuid) -> Uuid {
    let call_id = Uuid::now_v7();
    app.db()
        .await
        .execute(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status)
             values ($1, $2, 'outbound', '+14155550100', '+14155550123', 'answered')",
            &[&call_id, &org],
        )
        .await
        .unwrap();
    call_id
}

/// The `auth.revoked` event, then the end of the stream.
async fn revocation(stream: &mut SseReader) -> serde_json::Value {
    let event = stream
        .next(Duration::from_secs(10))
        .await
        .expect("an auth.revoked event within the recheck interval");
    assert_eq!(event.event.as_deref(), Some("auth.revoked"), "{event:?}");
    assert!(
        stream.next(Duration::from_secs(3)).await.is_none(),
        "the stream ends after it"
    );
    serde_json::from_str(&event.data).unwrap()
}

#[tokio::test]
async fn a_signed_out_session_ends_the_events_stream() {
    let app = TestApp::spawn_with(&[("AUTH_STREAM_RECHECK_SECS", "1")]).await;
    let ada = app.sign_in("Ada").await;
    let call = call_in(&app, app.organisation_of(&ada).await).await;
    let response = app.get_as(&ada, &format!("/api/calls/{call}/events")).await;
    assert_eq!(response.status(), 200);
    let mut stream = SseReader::new(response);
    app.delete_session(&ada.token).await;
    let data = revocation(&mut stream).await;
    assert_eq!(data["reason"], "session_ended");
    // And the session cache does not keep it alive for other requests either.
    assert_eq!(app.get_as(&ada, "/api/me").await.status(), 401);
}

#[tokio::test]
async fn a_removed_member_stops_receiving_the_organisations_events() {
    let app = TestApp::spawn_with(&[("AUTH_STREAM_RECHECK_SECS", "1")]).await;
    let owner = app.sign_in("Owner").await;
    let org = app.organisation_of(&owner).await;
    let call = call_in(&app, org).await;
    let bob = app.sign_in("Bob").await;
    let db = app.db().await;
    db.execute(
        "insert into memberships (organisation_id, user_id, role) values ($1, $2, 'member')",
        &[&org, &bob.user_id],
    )
    .await
    .unwrap();
    let response = app
        .client
        .get(app.url(&format!("/api/calls/{call}/events")))
        .header("cookie", format!("authjs.session-token={}", bob.token))
        .header("x-org-id", org.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = SseReader::new(response);
    db.execute(
        "delete from memberships where organisation_id = $1 and user_id = $2",
        &[&org, &bob.user_id],
    )
    .await
    .unwrap();
    let data = revocation(&mut stream).await;
    assert_eq!(data["reason"], "membership_ended");
    // A call event written after the removal is never delivered to Bob.
    callbridge::events::append(
        &app.state.db.client().await.unwrap(),
        call.into(),
        "call.ended",
        serde_json::json!({"status": "ended"}),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(stream.next(Duration::from_secs(2)).await.is_none());
}

#[tokio::test]
async fn a_valid_session_keeps_its_stream() {
    let app = TestApp::spawn_with(&[("AUTH_STREAM_RECHECK_SECS", "1")]).await;
    let ada = app.sign_in("Ada").await;
    let call = call_in(&app, app.organisation_of(&ada).await).await;
    let mut stream = SseReader::new(app.get_as(&ada, &format!("/api/calls/{call}/events")).await);
    // Three intervals pass with nothing revoked: no auth.revoked, the stream still open.
    assert!(stream.next(Duration::from_millis(3500)).await.is_none());
    callbridge::events::append(
        &app.state.db.client().await.unwrap(),
        call.into(),
        "call.ended",
        serde_json::json!({"status": "ended"}),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let event = stream
        .next(Duration::from_secs(5))
        .await
        .expect("still streaming");
    assert_eq!(event.event.as_deref(), Some("call.ended"));
}
