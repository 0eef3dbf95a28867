//! Organisations, members and roles; CSRF on cookie sessions; tenant isolation (another
//! organisation's resources are 404); and the JSON error contract on a real endpoint.

use crate::common;

use common::authjs::Session;
use common::{TestApp, assert_problem};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn creating_an_organisation_makes_the_caller_owner() {
    let app = TestApp::spawn().await;
    let ada = app.sign_in("Ada").await;
    let response = app
        .request_as(Method::POST, &ada, "/api/orgs")
        .json(&json!({"name": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let org: serde_json::Value = response.json().await.unwrap();
    assert_eq!(org["role"], "owner");
    assert_eq!(org["personal"], false);

    let me: serde_json::Value = app.get_as(&ada, "/api/me").await.json().await.unwrap();
    assert_eq!(
        me["organisations"].as_array().unwrap().len(),
        2,
        "visible at once on this replica"
    );
    // X-Org-Id selects the active organisation.
    let response = app
        .client
        .get(app.url("/api/me"))
        .header("cookie", format!("authjs.session-token={}", ada.token))
        .header("x-org-id", org["id"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let me: serde_json::Value = response.json().await.unwrap();
    assert_eq!(me["active_organisation_id"], org["id"]);
}

#[tokio::test]
async fn csrf_cookie_writes_need_an_allowed_origin_bearer_writes_do_not() {
    let app = TestApp::spawn().await;
    let ada = app.sign_in("Ada").await;
    let cookie = format!("authjs.session-token={}", ada.token);
    let post = || {
        app.client
            .post(app.url("/api/orgs"))
            .header("cookie", &cookie)
            .json(&json!({"name": "X"}))
    };

    let body = assert_problem(post().send().await.unwrap(), 403).await;
    assert!(body["detail"].as_str().unwrap().contains("Cross-site"));
    assert_problem(
        post()
            .header("origin", "https://evil.example.net")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_problem(post().header("origin", "null").send().await.unwrap(), 403).await;
    assert_eq!(
        post()
            .header("origin", "https://app.example.com")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        post()
            .header("referer", "http://localhost:3000/settings")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );

    let bearer = app
        .client
        .post(app.url("/api/orgs"))
        .bearer_auth(&ada.token)
        .json(&json!({"name": "Y"}));
    assert_eq!(
        bearer.send().await.unwrap().status(),
        201,
        "bearer requests are exempt"
    );
    // Safe methods never need an origin.
    assert_eq!(app.get_as(&ada, "/api/me").await.status(), 200);
}

#[tokio::test]
async fn another_organisations_resources_are_404_on_every_endpoint() {
    let app = TestApp::spawn().await;
    let ada = app.sign_in("Ada").await;
    let eve = app.sign_in("Eve").await;
    let adas_org = app.organisation_of(&ada).await.to_string();
    let members = format!("/api/orgs/{adas_org}/members");

    assert_problem(app.get_as(&eve, &members).await, 404).await;
    let add = app
        .request_as(
            Method::POST,
            &eve,
            &format!("/api/orgs/{adas_org}/invitations"),
        )
        .json(&json!({"email": "eve@example.com", "role": "owner"}));
    assert_problem(add.send().await.unwrap(), 404).await;
    let remove = app.request_as(Method::DELETE, &eve, &format!("{members}/{}", ada.user_id));
    assert_problem(remove.send().await.unwrap(), 404).await;
    let remove = app.request_as(
        Method::DELETE,
        &eve,
        &format!("{members}?user_id={}", ada.user_id),
    );
    assert_problem(remove.send().await.unwrap(), 404).await;
    let me = app
        .client
        .get(app.url("/api/me"))
        .header("cookie", format!("authjs.session-token={}", eve.token))
        .header("x-org-id", &adas_org)
        .send()
        .await
        .unwrap();
    assert_problem(me, 404).await;
    // A non-existent organisation looks exactly the same.
    let nowhere = format!("/api/orgs/{}/members", uuid::Uuid::new_v4());
    let a = assert_problem(app.get_as(&eve, &members).await, 404).await;
    let b = assert_problem(app.get_as(&eve, &nowhere).await, 404).await;
    assert_eq!(a["detail"], b["detail"]);
}

/// Invites `who` with `role` on behalf of `inviter` and accepts as `who` (with the token).
async fn join(
    app: &TestApp,
    inviter: &Session,
    org: &str,
    who: &Session,
    role: &str,
) -> reqwest::StatusCode {
    let response = app
        .request_as(
            Method::POST,
            inviter,
            &format!("/api/orgs/{org}/invitations"),
        )
        .json(&json!({"email": app.email_of(who).await, "role": role}))
        .send()
        .await
        .unwrap();
    if !response.status().is_success() {
        return response.status();
    }
    let invitation: serde_json::Value = response.json().await.unwrap();
    app.request_as(
        Method::POST,
        who,
        &format!(
            "/api/invitations/{}/accept",
            invitation["id"].as_str().unwrap()
        ),
    )
    .json(&json!({"token": invitation["token"]}))
    .send()
    .await
    .unwrap()
    .status()
}

#[tokio::test]
async fn roles_decide_who_may_add_and_remove_whom() {
    let app = TestApp::spawn().await;
    let owner = app.sign_in("Owner").await;
    let admin = app.sign_in("Admin").await;
    let member = app.sign_in("Member").await;
    let newcomer = app.sign_in("Newcomer").await;
    let org = app.organisation_of(&owner).await.to_string();
    let members = format!("/api/orgs/{org}/members");

    assert_eq!(join(&app, &owner, &org, &admin, "admin").await, 200);
    assert_eq!(join(&app, &owner, &org, &member, "member").await, 200);
    assert_eq!(
        join(&app, &owner, &org, &member, "member").await,
        409,
        "already a member"
    );
    assert_eq!(join(&app, &member, &org, &newcomer, "member").await, 403);
    assert_eq!(join(&app, &admin, &org, &newcomer, "admin").await, 403);
    assert_eq!(join(&app, &admin, &org, &newcomer, "member").await, 200);

    let listed: serde_json::Value = app.get_as(&member, &members).await.json().await.unwrap();
    let roles: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles.len(), 4);
    assert!(roles.contains(&(owner.user_id.as_str(), "owner")));
    assert!(roles.contains(&(admin.user_id.as_str(), "admin")));

    let delete = |who: &Session, target: &str| {
        app.request_as(Method::DELETE, who, &format!("{members}/{target}"))
            .send()
    };
    assert_problem(delete(&member, &newcomer.user_id).await.unwrap(), 403).await;
    assert_problem(delete(&admin, &owner.user_id).await.unwrap(), 403).await;
    assert_eq!(
        delete(&admin, &newcomer.user_id).await.unwrap().status(),
        204
    );
    assert_eq!(
        delete(&member, &member.user_id).await.unwrap().status(),
        204,
        "anyone may leave"
    );
    assert_problem(delete(&owner, &owner.user_id).await.unwrap(), 409).await;
    // A removed member loses access at once on this replica.
    assert_problem(app.get_as(&member, &members).await, 404).await;
}

#[tokio::test]
async fn json_errors_are_problems_that_say_what_went_wrong() {
    let app = TestApp::spawn_with(&[("HTTP_BODY_LIMIT_BYTES", "1024")]).await;
    let ada = app.sign_in("Ada").await;
    let post = || app.request_as(Method::POST, &ada, "/api/orgs");

    let malformed = post()
        .header("content-type", "application/json")
        .body("{\"name\": \"x\",}")
        .send()
        .await
        .unwrap();
    let body = assert_problem(malformed, 400).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("line 1 column"), "{detail}");

    let wrong_type = post()
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(wrong_type, 415).await;

    let unknown_field = post()
        .json(&json!({"name": "x", "color": "red"}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(unknown_field, 422).await;
    assert!(body["detail"].as_str().unwrap().contains("color"));

    let too_big = post()
        .json(&json!({"name": "x".repeat(5000)}))
        .send()
        .await
        .unwrap();
    assert_problem(too_big, 413).await;

    let invalid = post().json(&json!({"name": "   "})).send().await.unwrap();
    assert_problem(invalid, 422).await;
}
