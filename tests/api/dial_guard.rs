//! The toll-fraud guard on dialing (issue 14 item 2), against the Telnyx simulator: premium
//! and satellite prefixes, the country allow-list, the minimum role, the per-minute and
//! concurrency caps (also across two replicas), and the maximum duration.
#![cfg(feature = "sim")]

use crate::common;

use common::authjs::Session;
use common::telnyx::TelnyxApp;
use common::{TestApp, assert_problem};
use reqwest::Method;
use serde_json::{Value, json};

const FROM: &str = "+14155550100";

fn call_to(to: &str) -> Value {
    json!({"to": to, "from": FROM, "source_language": "en", "target_language": "de"})
}

async fn dial(app: &TestApp, who: &Session, to: &str, org: Option<&str>) -> reqwest::Response {
    let mut request = app
        .request_as(Method::POST, who, "/api/calls")
        .json(&call_to(to));
    if let Some(org) = org {
        request = request.header("x-org-id", org);
    }
    request.send().await.unwrap()
}

/// Makes `who` a member of `org` with `role` (the membership API is another story's).
async fn join(app: &TestApp, who: &Session, org: &str, role: &str) {
    let org: uuid::Uuid = org.parse().unwrap();
    app.db()
        .await
        .execute(
            "insert into memberships (organisation_id, user_id, role) values ($1, $2, $3)",
            &[&org, &who.user_id, &role],
        )
        .await
        .unwrap();
}

async fn call_count(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one("select count(*) from calls", &[])
        .await
        .unwrap()
        .get("count")
}

#[tokio::test]
async fn premium_rate_and_satellite_numbers_are_never_dialled() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, FROM).await;
    let org = t.app.organisation_of(&ada).await.to_string();
    // Even an owner who allows every country cannot reach these.
    let everything = t
        .app
        .request_as(
            Method::PUT,
            &ada,
            &format!("/api/orgs/{org}/dialing-policy"),
        )
        .json(&json!({"allowed_countries": ["US", "GB", "DE"], "min_role": "member"}))
        .send()
        .await
        .unwrap();
    assert_eq!(everything.status(), 200);
    for (to, rule) in [
        ("+19005550100", "premium-rate"),
        ("+14159765555", "premium-rate"),
        ("+449012345678", "premium-rate"),
        ("+4990012345678", "premium-rate"),
        ("+881612345678", "satellite"),
        ("+870773112345", "satellite"),
    ] {
        let problem = assert_problem(dial(&t.app, &ada, to, None).await, 403).await;
        assert_eq!(
            problem["type"], "urn:callbridge:problem:dial-refused",
            "{to}"
        );
        assert_eq!(problem["rule"], rule, "{to}");
        assert!(problem["detail"].as_str().unwrap().contains(to));
    }
    assert!(
        t.sim.commands_named("dial").is_empty(),
        "nothing reached Telnyx"
    );
    assert_eq!(call_count(&t.app).await, 0, "refusals store no call");
}

#[tokio::test]
async fn only_the_countries_of_the_organisation_are_dialled_until_the_owner_allows_more() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    let bob = t.app.sign_in("Bob").await;
    t.own_number(&ada, FROM).await;
    let org = t.app.organisation_of(&ada).await.to_string();
    let policy_path = format!("/api/orgs/{org}/dialing-policy");

    let policy: Value = t.app.get_as(&ada, &policy_path).await.json().await.unwrap();
    assert_eq!(policy["allowed_countries"], Value::Null);
    assert_eq!(policy["effective_countries"], json!(["US"]));
    assert_eq!(policy["min_role"], "member");
    assert_eq!(policy["limits"]["max_call_duration_secs"], 7200);

    let problem = assert_problem(dial(&t.app, &ada, "+4930123456", None).await, 403).await;
    assert_eq!(problem["rule"], "destination-country");
    // +1 is not one country: Jamaica shares it with the US, and is refused.
    let problem = assert_problem(dial(&t.app, &ada, "+18765550100", None).await, 403).await;
    assert_eq!(problem["rule"], "destination-country");
    assert!(problem["detail"].as_str().unwrap().contains("JM"));
    assert_eq!(dial(&t.app, &ada, "+14155550123", None).await.status(), 201);

    // Only owners open a country; outsiders do not even see the policy.
    join(&t.app, &bob, &org, "admin").await;
    let open_de = json!({"allowed_countries": ["us", "de"], "min_role": "member"});
    let refused = t
        .app
        .request_as(Method::PUT, &bob, &policy_path)
        .json(&open_de)
        .send()
        .await
        .unwrap();
    assert_problem(refused, 403).await;
    let eve = t.app.sign_in("Eve").await;
    assert_problem(t.app.get_as(&eve, &policy_path).await, 404).await;
    let bad = t
        .app
        .request_as(Method::PUT, &ada, &policy_path)
        .json(&json!({"allowed_countries": ["XX"], "min_role": "member"}))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 422).await;

    let updated: Value = t
        .app
        .request_as(Method::PUT, &ada, &policy_path)
        .json(&open_de)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["allowed_countries"], json!(["DE", "US"]));
    assert_eq!(dial(&t.app, &ada, "+4930123456", None).await.status(), 201);
    assert_eq!(t.sim.commands_named("dial").len(), 2);
}

#[tokio::test]
async fn the_platform_country_ceiling_wins_over_an_organisation_list() {
    let t = TelnyxApp::spawn_with(&[("DIAL_PLATFORM_COUNTRIES", "US,CA")]).await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, FROM).await;
    let org = t.app.organisation_of(&ada).await.to_string();
    let response = t
        .app
        .request_as(
            Method::PUT,
            &ada,
            &format!("/api/orgs/{org}/dialing-policy"),
        )
        .json(&json!({"allowed_countries": ["US", "DE"], "min_role": "member"}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 422).await;
    assert!(problem["detail"].as_str().unwrap().contains("DE"));
    // A list stored before the ceiling was lowered is narrowed at dial time.
    t.app
        .db()
        .await
        .execute(
            "update organisations set dial_countries = '{US,DE}' where id = $1::text::uuid",
            &[&org],
        )
        .await
        .unwrap();
    let problem = assert_problem(dial(&t.app, &ada, "+4930123456", None).await, 403).await;
    assert_eq!(problem["rule"], "destination-country");
}

#[tokio::test]
async fn members_below_the_organisations_minimum_role_cannot_dial() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    let bob = t.app.sign_in("Bob").await;
    t.own_number(&ada, FROM).await;
    let org = t.app.organisation_of(&ada).await.to_string();
    join(&t.app, &bob, &org, "member").await;
    assert_eq!(
        dial(&t.app, &bob, "+14155550123", Some(&org))
            .await
            .status(),
        201,
        "members dial by default"
    );
    let raised = t
        .app
        .request_as(
            Method::PUT,
            &ada,
            &format!("/api/orgs/{org}/dialing-policy"),
        )
        .json(&json!({"min_role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raised.status(), 200);
    let problem = assert_problem(dial(&t.app, &bob, "+14155550123", Some(&org)).await, 403).await;
    assert_eq!(problem["rule"], "dial-role");
    assert_eq!(dial(&t.app, &ada, "+14155550123", None).await.status(), 201);
}

#[tokio::test]
async fn per_minute_caps_answer_429_with_retry_after_per_user_and_per_organisation() {
    let t = TelnyxApp::spawn_with(&[
        ("DIAL_MAX_PER_MINUTE_PER_USER", "3"),
        ("DIAL_MAX_PER_MINUTE_PER_ORG", "5"),
    ])
    .await;
    let ada = t.app.sign_in("Ada").await;
    let bob = t.app.sign_in("Bob").await;
    t.own_number(&ada, FROM).await;
    let org = t.app.organisation_of(&ada).await.to_string();
    join(&t.app, &bob, &org, "member").await;
    for _ in 0..3 {
        assert_eq!(dial(&t.app, &ada, "+14155550123", None).await.status(), 201);
    }
    let response = dial(&t.app, &ada, "+14155550123", None).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let problem = assert_problem(response, 429).await;
    assert_eq!(problem["type"], "urn:callbridge:problem:dial-rate-limited");
    assert_eq!(problem["rule"], "user-calls-per-minute");
    assert_eq!(problem["limit"], 3);
    assert_eq!(problem["retry_after"], retry_after);

    // Bob has his own allowance, but the organisation's is 5.
    for _ in 0..2 {
        assert_eq!(
            dial(&t.app, &bob, "+14155550123", Some(&org))
                .await
                .status(),
            201
        );
    }
    let problem = assert_problem(dial(&t.app, &bob, "+14155550123", Some(&org)).await, 429).await;
    assert_eq!(problem["rule"], "org-calls-per-minute");
    assert_eq!(t.sim.commands_named("dial").len(), 5);

    // The window slides: calls placed over a minute ago no longer count.
    t.app
        .db()
        .await
        .execute(
            "update calls set created_at = created_at - interval '61 seconds'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dial(&t.app, &ada, "+14155550123", None).await.status(), 201);
}

#[tokio::test]
async fn the_caps_hold_across_replicas_under_concurrent_dials() {
    let t = TelnyxApp::spawn_with(&[("DIAL_MAX_PER_MINUTE_PER_USER", "4")]).await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, FROM).await;
    let key = t.sim.public_key_base64();
    let base = t.sim.api_base();
    let replica = TestApp::spawn_on(
        &t.app.database,
        &[
            ("TELNYX_API_KEY", "sim-api-key"),
            ("TELNYX_PUBLIC_KEY", key.as_str()),
            ("TELNYX_CONNECTION_ID", "sim-connection"),
            ("TELNYX_API_BASE", base.as_str()),
            ("DIAL_MAX_PER_MINUTE_PER_USER", "4"),
        ],
    )
    .await;
    let attempts = (0..12).map(|i| {
        let app = if i % 2 == 0 { &t.app } else { &replica };
        dial(app, &ada, "+14155550123", None)
    });
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        8,
        "{statuses:?}"
    );
    assert_eq!(call_count(&t.app).await, 4);
}

#[tokio::test]
async fn concurrent_calls_are_capped_until_one_ends() {
    let t = TelnyxApp::spawn_with(&[("DIAL_MAX_CONCURRENT_PER_USER", "2")]).await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, FROM).await;
    let mut calls = Vec::new();
    for _ in 0..2 {
        let call: Value = dial(&t.app, &ada, "+14155550123", None)
            .await
            .json()
            .await
            .unwrap();
        calls.push(call);
    }
    let response = dial(&t.app, &ada, "+14155550123", None).await;
    assert!(response.headers().contains_key("retry-after"));
    let problem = assert_problem(response, 429).await;
    assert_eq!(problem["rule"], "user-concurrent-calls");
    assert_eq!(problem["limit"], 2);

    // The first call ends (Telnyx's call.hangup webhook): a place is free again.
    let dials = t.sim.commands_named("dial");
    let ccid = dials[0].call_control_id.clone().unwrap();
    let state = dials[0].body["client_state"].as_str().unwrap().to_owned();
    let payload = callbridge::sim::telnyx::call_payload(
        &ccid,
        Some(&state),
        FROM,
        "+14155550123",
        "outgoing",
    );
    let hangup = t.sim.event("call.hangup", payload);
    assert_eq!(t.sim.deliver(&t.webhook_url(), &hangup).await.unwrap(), 200);
    t.drain().await;
    assert_eq!(dial(&t.app, &ada, "+14155550123", None).await.status(), 201);
}

#[tokio::test]
async fn a_call_reaching_the_maximum_duration_is_warned_then_hung_up_once() {
    let t = TelnyxApp::spawn_with(&[("DIAL_MAX_CALL_DURATION_SECS", "600")]).await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, FROM).await;
    let long: Value = dial(&t.app, &ada, "+14155550123", None)
        .await
        .json()
        .await
        .unwrap();
    let short: Value = dial(&t.app, &ada, "+14155550124", None)
        .await
        .json()
        .await
        .unwrap();
    let (long_id, short_id) = (long["id"].as_str().unwrap(), short["id"].as_str().unwrap());
    let db = t.app.db().await;
    let scheduled: Vec<(String, f64)> = db
        .query(
            "select payload->>'step' as step, extract(epoch from run_at - now())::float8 as due_in from jobs
             where kind = 'call.max_duration' and payload->>'call_id' = $1 order by run_at",
            &[&long_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("step"), r.get("due_in")))
        .collect();
    assert_eq!(scheduled.len(), 2);
    assert_eq!(scheduled[0].0, "warn");
    assert!((530.0..=541.0).contains(&scheduled[0].1), "{scheduled:?}");
    assert_eq!(scheduled[1].0, "hangup");
    assert!((590.0..=601.0).contains(&scheduled[1].1), "{scheduled:?}");
    assert_eq!(t.drain().await, 0, "nothing is due yet");

    // The short call ends by itself.
    let dials = t.sim.commands_named("dial");
    let short_dial = dials
        .iter()
        .find(|d| d.body["to"] == "+14155550124")
        .unwrap();
    let payload = callbridge::sim::telnyx::call_payload(
        short_dial.call_control_id.as_deref().unwrap(),
        short_dial.body["client_state"].as_str(),
        FROM,
        "+14155550124",
        "outgoing",
    );
    let hangup = t.sim.event("call.hangup", payload);
    t.sim.deliver(&t.webhook_url(), &hangup).await.unwrap();
    t.drain().await;

    // Nine minutes pass (the warning is due), then the tenth (the hang-up).
    for step in ["warn", "hangup"] {
        db.execute(
            "update jobs set run_at = now() where kind = 'call.max_duration' and payload->>'step' = $1",
            &[&step],
        )
        .await
        .unwrap();
        assert_eq!(t.drain().await, 2, "{step}: one job per call");
    }
    let long_ccid = dials
        .iter()
        .find(|d| d.body["to"] == "+14155550123")
        .unwrap()
        .call_control_id
        .clone()
        .unwrap();
    let speaks = t.sim.commands_named("speak");
    assert_eq!(speaks.len(), 1, "the ended call hears nothing");
    assert_eq!(
        speaks[0].call_control_id.as_deref(),
        Some(long_ccid.as_str())
    );
    assert_eq!(
        speaks[0].body["command_id"],
        format!("max-duration-warning:{long_id}")
    );
    let hangups = t.sim.commands_named("hangup");
    assert_eq!(hangups.len(), 1, "only the call still up is hung up");
    assert_eq!(
        hangups[0].call_control_id.as_deref(),
        Some(long_ccid.as_str())
    );
    assert_eq!(
        hangups[0].body["command_id"],
        format!("max-duration:{long_id}")
    );

    // A re-run (at-least-once delivery) sends the same command id and logs nothing twice.
    db.execute(
        "update jobs set status = 'pending', run_at = now(), attempts = 0
         where kind = 'call.max_duration' and payload->>'call_id' = $1",
        &[&long_id],
    )
    .await
    .unwrap();
    t.drain().await;
    assert_eq!(
        t.sim.commands_named("speak").len(),
        1,
        "a warning that runs after the hang-up speaks into nothing"
    );
    let kinds: Vec<String> = db
        .query(
            "select kind from call_events where call_id = $1::text::uuid order by seq",
            &[&long_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("kind"))
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.starts_with("call.max_duration"))
            .collect::<Vec<_>>(),
        ["call.max_duration_warning", "call.max_duration_reached"]
    );
    let short_events: i64 = db
        .query_one(
            "select count(*) from call_events where call_id = $1::text::uuid and kind like 'call.max_duration%'",
            &[&short_id],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(short_events, 0);
}

#[tokio::test]
async fn an_answered_inbound_call_gets_the_same_maximum_duration() {
    let t = TelnyxApp::spawn_with(&[("DIAL_MAX_CALL_DURATION_SECS", "600")]).await;
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, FROM).await;
    let payload = callbridge::sim::telnyx::call_payload(
        "v3:inbound-1",
        None,
        "+4930123456",
        FROM,
        "incoming",
    );
    let initiated = t.sim.event("call.initiated", payload);
    for _ in 0..2 {
        assert_eq!(
            t.sim.deliver(&t.webhook_url(), &initiated).await.unwrap(),
            200
        );
    }
    t.drain().await;
    assert_eq!(t.sim.commands_named("answer").len(), 1);
    let steps: Vec<String> = t
        .app
        .db()
        .await
        .query(
            "select j.payload->>'step' as step from jobs j join calls c on c.id::text = j.payload->>'call_id'
             where j.kind = 'call.max_duration' and c.direction = 'inbound' order by j.run_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("step"))
        .collect();
    assert_eq!(
        steps,
        ["warn", "hangup"],
        "scheduled once despite the redelivery"
    );
}
