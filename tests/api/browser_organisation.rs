//! The organisation as a browser can choose it: an `EventSource` (or a link, or a WebSocket)
//! sends no custom header, so `X-Org-Id` is not an option there. It names the organisation
//! with the `org_id` query parameter, or relies on the stored active organisation
//! (`PUT /api/me/active-organisation`).
#![cfg(feature = "sim")]

use crate::common;

use std::time::Duration;

use callbridge::sim::telnyx as sim;
use common::authjs::Session;
use common::sse::SseReader;
use common::telnyx::TelnyxApp;
use common::{TestApp, assert_problem};
use reqwest::Method;
use serde_json::{Value, json};

/// What `new EventSource(url, { withCredentials: true })` sends: the cookie and nothing
/// the page could add (no X-Org-Id, no Authorization).
async fn event_source(app: &TestApp, session: &Session, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header("cookie", format!("authjs.session-token={}", session.token))
        .header("accept", "text/event-stream")
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap()
}

struct TeamCall {
    team: String,
    call_id: String,
    ccid: String,
    client_state: String,
}

/// Ada creates "Team" (not her personal organisation) and places a call in it.
async fn call_in_a_team(t: &TelnyxApp, ada: &Session) -> TeamCall {
    let team: Value = t
        .app
        .request_as(Method::POST, ada, "/api/orgs")
        .json(&json!({"name": "Team"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let team = team["id"].as_str().unwrap().to_owned();
    t.sim.hold_number("+14155550100", Some("sim-connection"));
    let number = t
        .app
        .request_as(Method::POST, ada, "/api/phone-numbers")
        .header("x-org-id", &team)
        .json(&json!({"number": "+14155550100"}))
        .send()
        .await
        .unwrap();
    assert_eq!(number.status(), 201);
    let call: Value = t
        .app
        .request_as(Method::POST, ada, "/api/calls")
        .header("x-org-id", &team)
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(call["organisation_id"], team.as_str());
    let dial = t.sim.commands_named("dial")[0].clone();
    TeamCall {
        team,
        call_id: call["id"].as_str().unwrap().to_owned(),
        ccid: dial.call_control_id.unwrap(),
        client_state: dial.body["client_state"].as_str().unwrap().to_owned(),
    }
}

/// Reads events until `kind` arrives (or fails after 5 s of silence).
async fn until(stream: &mut SseReader, kind: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let event = stream
            .next(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{kind} never came; saw {seen:?}"));
        let name = event.event.unwrap_or_default();
        seen.push(name.clone());
        if name == kind {
            return seen;
        }
    }
}

#[tokio::test]
async fn an_event_source_follows_a_call_in_a_non_default_organisation_by_query_parameter() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    let call = call_in_a_team(&t, &ada).await;
    let path = format!("/api/calls/{}/events", call.call_id);

    // No header, no parameter, nothing stored: the personal organisation, which has no
    // such call.
    assert_problem(event_source(&t.app, &ada, &path).await, 404).await;

    let response = event_source(&t.app, &ada, &format!("{path}?org_id={}", call.team)).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = SseReader::new(response);
    until(&mut stream, "call.dialing").await;
    // Live: a webhook processed now reaches the open stream.
    let lifecycle = sim::outbound_lifecycle(
        &t.sim,
        &call.ccid,
        &call.client_state,
        "+14155550100",
        "+14155550123",
    );
    t.sim
        .deliver(&t.webhook_url(), &lifecycle[0])
        .await
        .unwrap();
    t.drain().await;
    until(&mut stream, "call.initiated").await;

    // The parameter and the header must agree; a malformed one is a 400, not a fallback.
    let personal: Value = t.app.get_as(&ada, "/api/me").await.json().await.unwrap();
    let personal = personal["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mismatch = t
        .app
        .client
        .get(t.app.url(&format!("{path}?org_id={}", call.team)))
        .header("cookie", format!("authjs.session-token={}", ada.token))
        .header("x-org-id", &personal)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(mismatch, 400).await;
    assert!(problem["detail"].as_str().unwrap().contains("org_id"));
    assert_problem(
        event_source(&t.app, &ada, &format!("{path}?org_id=team")).await,
        400,
    )
    .await;

    // Someone else naming the team by parameter gets nothing.
    let eve = t.app.sign_in("Eve").await;
    assert_problem(
        event_source(&t.app, &eve, &format!("{path}?org_id={}", call.team)).await,
        404,
    )
    .await;
}

#[tokio::test]
async fn a_stored_active_organisation_is_used_when_a_request_names_none() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    let call = call_in_a_team(&t, &ada).await;
    let path = format!("/api/calls/{}/events", call.call_id);

    let stored = t
        .app
        .request_as(Method::PUT, &ada, "/api/me/active-organisation")
        .json(&json!({"organisation_id": call.team}))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    let stored: Value = stored.json().await.unwrap();
    assert_eq!(stored["active_organisation_id"], call.team.as_str());

    // The plainest EventSource: no parameter either.
    let response = event_source(&t.app, &ada, &path).await;
    assert_eq!(response.status(), 200);
    let mut stream = SseReader::new(response);
    until(&mut stream, "call.dialing").await;

    // Every route that takes an organisation uses it; /api/me reports it.
    let me: Value = t.app.get_as(&ada, "/api/me").await.json().await.unwrap();
    assert_eq!(me["active_organisation_id"], call.team.as_str());
    let calls: Value = t.app.get_as(&ada, "/api/calls").await.json().await.unwrap();
    assert_eq!(calls["calls"][0]["id"], call.call_id.as_str());

    // Persisted: a replica that never saw the PUT (and has no cache) uses it too.
    let other = TestApp::spawn_on(&t.app.database, &[]).await;
    let me: Value = other.get_as(&ada, "/api/me").await.json().await.unwrap();
    assert_eq!(me["active_organisation_id"], call.team.as_str());

    // Only one's own organisations; the body is checked.
    let eve = t.app.sign_in("Eve").await;
    let eves: Value = t.app.get_as(&eve, "/api/me").await.json().await.unwrap();
    let eves = eves["organisations"][0]["id"].as_str().unwrap().to_owned();
    let refused = t
        .app
        .request_as(Method::PUT, &ada, "/api/me/active-organisation")
        .json(&json!({"organisation_id": eves}))
        .send()
        .await
        .unwrap();
    assert_problem(refused, 404).await;
    let malformed = t
        .app
        .request_as(Method::PUT, &ada, "/api/me/active-organisation")
        .json(&json!({"organisation_id": "team"}))
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 422).await;
    // A cookie PUT from a foreign site is refused (CSRF), and changes nothing.
    let foreign = t
        .app
        .client
        .put(t.app.url("/api/me/active-organisation"))
        .header("cookie", format!("authjs.session-token={}", ada.token))
        .header("origin", "https://evil.example.net")
        .json(&json!({"organisation_id": me["organisations"][0]["id"]}))
        .send()
        .await
        .unwrap();
    assert_problem(foreign, 403).await;
    let me: Value = t.app.get_as(&ada, "/api/me").await.json().await.unwrap();
    assert_eq!(me["active_organisation_id"], call.team.as_str());

    // Leaving the organisation makes the stored choice void, not a way back in.
    let removed = t
        .app
        .db()
        .await
        .execute(
            "delete from memberships where organisation_id = $1::text::uuid and user_id = $2",
            &[&call.team, &ada.user_id],
        )
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let fresh = TestApp::spawn_on(&t.app.database, &[]).await;
    let me: Value = fresh.get_as(&ada, "/api/me").await.json().await.unwrap();
    assert_eq!(me["active_organisation_id"], me["organisations"][0]["id"]);
    assert_problem(event_source(&fresh, &ada, &path).await, 404).await;
}

#[tokio::test]
async fn allowed_origins_admits_pages_previews_by_pattern_and_nothing_else() {
    let app = TestApp::spawn_with(&[(
        "ALLOWED_ORIGINS",
        "https://app.example.com,https://*.callbridge-web.pages.dev",
    )])
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/api/me/active-organisation"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let preview = preflight("https://feature-x.callbridge-web.pages.dev")
        .await
        .unwrap();
    assert_eq!(
        preview.headers()["access-control-allow-origin"],
        "https://feature-x.callbridge-web.pages.dev"
    );
    assert_eq!(
        preview.headers()["access-control-allow-credentials"],
        "true"
    );
    for foreign in [
        "https://attacker.pages.dev",
        "https://a.b.callbridge-web.pages.dev",
        "http://feature-x.callbridge-web.pages.dev",
    ] {
        let response = preflight(foreign).await.unwrap();
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{foreign} was allowed"
        );
    }

    // The CSRF check reads the same list: a cookie PUT from a preview host is accepted.
    let ada = app.sign_in("Ada").await;
    let me: Value = app.get_as(&ada, "/api/me").await.json().await.unwrap();
    let personal = me["organisations"][0]["id"].clone();
    let from_preview = app
        .client
        .put(app.url("/api/me/active-organisation"))
        .header("cookie", format!("authjs.session-token={}", ada.token))
        .header("origin", "https://3f2a91c.callbridge-web.pages.dev")
        .json(&json!({"organisation_id": personal}))
        .send()
        .await
        .unwrap();
    assert_eq!(from_preview.status(), 200);
}
