//! Membership by invitation (issue 14 item 5, docs/adr/0032-membership-by-invitation.md):
//! nobody joins an organisation without accepting, the answer to inviting says nothing about
//! whether the address has an account, only the addressee can accept, and a pending or
//! accepted invitation never becomes the invitee's default organisation. Each test performs
//! the attack and shows it refused.

use crate::common;

use common::authjs::Session;
use common::{TestApp, assert_problem};
use reqwest::Method;
use serde_json::{Value, json};

async fn invite(
    app: &TestApp,
    inviter: &Session,
    org: &str,
    email: &str,
    role: &str,
) -> reqwest::Response {
    app.request_as(
        Method::POST,
        inviter,
        &format!("/api/orgs/{org}/invitations"),
    )
    .json(&json!({"email": email, "role": role}))
    .send()
    .await
    .unwrap()
}

async fn answer(
    app: &TestApp,
    invitee: &Session,
    id: &str,
    verb: &str,
    token: Option<&str>,
) -> reqwest::Response {
    app.request_as(
        Method::POST,
        invitee,
        &format!("/api/invitations/{id}/{verb}"),
    )
    .json(&json!({ "token": token }))
    .send()
    .await
    .unwrap()
}

async fn member_ids(app: &TestApp, session: &Session, org: &str) -> Vec<String> {
    let members: Value = app
        .get_as(session, &format!("/api/orgs/{org}/members"))
        .await
        .json()
        .await
        .unwrap();
    members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn verify_email(app: &TestApp, session: &Session) {
    let id: i32 = session.user_id.parse().unwrap();
    app.db()
        .await
        .execute(
            r#"update authjs.users set "emailVerified" = now() where id = $1"#,
            &[&id],
        )
        .await
        .unwrap();
}

/// Before invitations, `POST /api/orgs/{id}/members` made anyone who had ever signed in a
/// member at once, without asking them.
#[tokio::test]
async fn nobody_joins_without_accepting() {
    let app = TestApp::spawn().await;
    let owner = app.sign_in("Owner").await;
    let bob = app.sign_in("Bob").await;
    let org = app.organisation_of(&owner).await.to_string();

    let response = invite(&app, &owner, &org, &app.email_of(&bob).await, "admin").await;
    assert_eq!(response.status(), 201);
    let invitation: Value = response.json().await.unwrap();
    assert_eq!(invitation["role"], "admin");
    assert_eq!(invitation["invited_by"], owner.user_id.as_str());

    // Invited is not a member: Bob sees nothing of the organisation, and its members list
    // does not name him.
    assert_problem(
        app.get_as(&bob, &format!("/api/orgs/{org}/members")).await,
        404,
    )
    .await;
    assert_eq!(
        member_ids(&app, &owner, &org).await,
        vec![owner.user_id.clone()]
    );
    assert!(
        !app.me(&bob).await["organisations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == org.as_str())
    );
    // The old way in is gone.
    let direct = app
        .request_as(Method::POST, &owner, &format!("/api/orgs/{org}/members"))
        .json(&json!({"user_id": bob.user_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 405);

    let accepted = answer(
        &app,
        &bob,
        invitation["id"].as_str().unwrap(),
        "accept",
        invitation["token"].as_str(),
    )
    .await;
    assert_eq!(accepted.status(), 200);
    let membership: Value = accepted.json().await.unwrap();
    assert_eq!(membership["id"], org.as_str());
    assert_eq!(membership["role"], "admin");
    assert_eq!(
        membership["personal"], true,
        "the owner's personal organisation"
    );
    let members = member_ids(&app, &bob, &org).await;
    assert!(members.contains(&bob.user_id), "{members:?}");
    // Pending invitations are listed to admins; an accepted one is gone.
    let pending: Value = app
        .get_as(&owner, &format!("/api/orgs/{org}/invitations"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending, json!([]));
}

/// The answer to inviting must not tell whether an address has an account here.
#[tokio::test]
async fn inviting_reveals_nothing_about_the_address() {
    let app = TestApp::spawn().await;
    let owner = app.sign_in("Owner").await;
    let known = app.sign_in("Known").await;
    let org = app.organisation_of(&owner).await.to_string();
    let unknown = format!("nobody-{}@example.com", uuid::Uuid::new_v4().simple());

    let a = invite(&app, &owner, &org, &app.email_of(&known).await, "member").await;
    let b = invite(&app, &owner, &org, &unknown, "member").await;
    assert_eq!(a.status(), b.status());
    assert_eq!(a.status(), 201);
    let header_names = |r: &reqwest::Response| {
        let mut names: Vec<String> = r.headers().keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names
    };
    assert_eq!(header_names(&a), header_names(&b));
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    let shape = |v: &Value| {
        let object = v.as_object().unwrap();
        let mut keys: Vec<&String> = object.keys().collect();
        keys.sort();
        let kinds: Vec<String> = keys
            .iter()
            .map(|k| format!("{k}:{}", kind(&object[k.as_str()])))
            .collect();
        kinds
    };
    assert_eq!(shape(&a), shape(&b));
    for field in ["organisation_id", "role", "invited_by"] {
        assert_eq!(a[field], b[field], "{field}");
    }
    assert_eq!(
        a["token"].as_str().unwrap().len(),
        b["token"].as_str().unwrap().len()
    );
    // No user id of the invitee anywhere in the answer.
    assert!(!a.to_string().contains(&format!("\"{}\"", known.user_id)));
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Only the person signed in with the invited address accepts: someone else holding the
/// link, the addressee without proof of the mailbox, a wrong token, a second use.
#[tokio::test]
async fn only_the_addressee_accepts() {
    let app = TestApp::spawn().await;
    let owner = app.sign_in("Owner").await;
    let bob = app.sign_in("Bob").await;
    let eve = app.sign_in("Eve").await;
    let org = app.organisation_of(&owner).await.to_string();
    let invitation: Value = invite(&app, &owner, &org, &app.email_of(&bob).await, "member")
        .await
        .json()
        .await
        .unwrap();
    let id = invitation["id"].as_str().unwrap();
    let token = invitation["token"].as_str().unwrap();

    // Eve has the link (token and all) but not Bob's address: exactly like no invitation.
    let stolen = assert_problem(answer(&app, &eve, id, "accept", Some(token)).await, 404).await;
    let nowhere = assert_problem(
        answer(
            &app,
            &eve,
            &uuid::Uuid::new_v4().to_string(),
            "accept",
            Some(token),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(stolen["detail"], nowhere["detail"]);
    assert_problem(answer(&app, &eve, id, "decline", Some(token)).await, 404).await;
    // Bob's address is not verified: the token is the proof, and only the right one.
    assert_problem(answer(&app, &bob, id, "accept", None).await, 404).await;
    let wrong = format!("{}x", &token[..token.len() - 1]);
    assert_problem(answer(&app, &bob, id, "accept", Some(&wrong)).await, 404).await;
    assert!(!member_ids(&app, &owner, &org).await.contains(&eve.user_id));

    assert_eq!(
        answer(&app, &bob, id, "accept", Some(token)).await.status(),
        200
    );
    // Used up.
    assert_problem(answer(&app, &bob, id, "accept", Some(token)).await, 404).await;
    assert_problem(answer(&app, &bob, id, "decline", Some(token)).await, 404).await;
}

/// With an address Auth.js verified, the invitee sees their invitations in the app and
/// answers without the token; an unverified address sees none (anyone can type one).
#[tokio::test]
async fn a_verified_invitee_lists_and_answers_without_the_token() {
    let app = TestApp::spawn().await;
    let acme_owner = app.sign_in("Acme").await;
    let globex_owner = app.sign_in("Globex").await;
    let bob = app.sign_in("Bob").await;
    let acme = app.organisation_of(&acme_owner).await.to_string();
    let globex = app.organisation_of(&globex_owner).await.to_string();
    // Upper case: addresses match case-insensitively.
    let bob_email = app.email_of(&bob).await.to_uppercase();
    invite(&app, &acme_owner, &acme, &bob_email, "member").await;
    invite(&app, &globex_owner, &globex, &bob_email, "admin").await;

    let unverified: Value = app
        .get_as(&bob, "/api/invitations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unverified, json!([]));
    verify_email(&app, &bob).await;
    let received: Value = app
        .get_as(&bob, "/api/invitations")
        .await
        .json()
        .await
        .unwrap();
    let received = received.as_array().unwrap();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0]["organisation_id"], acme.as_str());
    assert_eq!(received[0]["organisation_name"], "Acme's workspace");
    assert_eq!(received[1]["role"], "admin");

    let to_acme = received[0]["id"].as_str().unwrap();
    let to_globex = received[1]["id"].as_str().unwrap();
    assert_eq!(
        answer(&app, &bob, to_acme, "accept", None).await.status(),
        200
    );
    assert_eq!(
        answer(&app, &bob, to_globex, "decline", None)
            .await
            .status(),
        204
    );
    assert_problem(answer(&app, &bob, to_globex, "accept", None).await, 404).await;
    assert!(
        !member_ids(&app, &globex_owner, &globex)
            .await
            .contains(&bob.user_id)
    );
    let left: Value = app
        .get_as(&bob, "/api/invitations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(left, json!([]));

    // Already a member: the invitation is used up and says so.
    let again: Value = invite(&app, &acme_owner, &acme, &bob_email, "member")
        .await
        .json()
        .await
        .unwrap();
    assert_problem(
        answer(&app, &bob, again["id"].as_str().unwrap(), "accept", None).await,
        409,
    )
    .await;
}

/// Roles bound who invites whom, other tenants see 404, and an invitation dies with its
/// inviter's power to grant it.
#[tokio::test]
async fn roles_and_tenancy_bound_invitations() {
    let app = TestApp::spawn().await;
    let owner = app.sign_in("Owner").await;
    let admin = app.sign_in("Admin").await;
    let member = app.sign_in("Member").await;
    let outsider = app.sign_in("Outsider").await;
    let org = app.organisation_of(&owner).await.to_string();
    for (who, role) in [(&admin, "admin"), (&member, "member")] {
        let invitation: Value = invite(&app, &owner, &org, &app.email_of(who).await, role)
            .await
            .json()
            .await
            .unwrap();
        let accepted = answer(
            &app,
            who,
            invitation["id"].as_str().unwrap(),
            "accept",
            invitation["token"].as_str(),
        )
        .await;
        assert_eq!(accepted.status(), 200);
    }

    assert_problem(
        invite(&app, &member, &org, "x@example.com", "member").await,
        403,
    )
    .await;
    assert_problem(
        invite(&app, &admin, &org, "x@example.com", "admin").await,
        403,
    )
    .await;
    assert_problem(
        invite(&app, &admin, &org, "x@example.com", "owner").await,
        403,
    )
    .await;
    assert_problem(
        invite(&app, &outsider, &org, "x@example.com", "member").await,
        404,
    )
    .await;
    assert_problem(
        invite(&app, &owner, &org, "not an address", "member").await,
        422,
    )
    .await;
    let invitations = format!("/api/orgs/{org}/invitations");
    assert_problem(app.get_as(&member, &invitations).await, 403).await;
    assert_problem(app.get_as(&outsider, &invitations).await, 404).await;

    let carol = app.sign_in("Carol").await;
    let by_admin: Value = invite(&app, &admin, &org, &app.email_of(&carol).await, "member")
        .await
        .json()
        .await
        .unwrap();
    let revoke_path = format!("{invitations}/{}", by_admin["id"].as_str().unwrap());
    assert_problem(
        app.request_as(Method::DELETE, &outsider, &revoke_path)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(
        app.request_as(Method::DELETE, &member, &revoke_path)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    // The admin who invited Carol is removed: the invitation no longer lets her in.
    let removed = app
        .request_as(
            Method::DELETE,
            &owner,
            &format!("/api/orgs/{org}/members/{}", admin.user_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    assert_problem(
        answer(
            &app,
            &carol,
            by_admin["id"].as_str().unwrap(),
            "accept",
            by_admin["token"].as_str(),
        )
        .await,
        404,
    )
    .await;
    // Revoked by the owner: gone.
    let revoked = app
        .request_as(Method::DELETE, &owner, &revoke_path)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert_problem(
        app.request_as(Method::DELETE, &owner, &revoke_path)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(
        !member_ids(&app, &owner, &org)
            .await
            .contains(&carol.user_id)
    );
}

/// An expired invitation is neither listed nor accepted; inviting again renews it.
#[tokio::test]
async fn an_expired_invitation_lets_nobody_in() {
    let app = TestApp::spawn().await;
    let owner = app.sign_in("Owner").await;
    let bob = app.sign_in("Bob").await;
    verify_email(&app, &bob).await;
    let org = app.organisation_of(&owner).await.to_string();
    let email = app.email_of(&bob).await;
    let invitation: Value = invite(&app, &owner, &org, &email, "member")
        .await
        .json()
        .await
        .unwrap();
    let id = invitation["id"].as_str().unwrap();
    app.db()
        .await
        .execute(
            "update invitations set expires_at = now() - interval '1 second' where id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    let listed: Value = app
        .get_as(&bob, "/api/invitations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]));
    assert_problem(
        answer(&app, &bob, id, "accept", invitation["token"].as_str()).await,
        404,
    )
    .await;

    let renewed: Value = invite(&app, &owner, &org, &email, "member")
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(renewed["token"], invitation["token"]);
    assert_ne!(
        renewed["id"], invitation["id"],
        "an expired invitation is replaced, not revived"
    );
    // Without the verified address, the old token is worthless even where the id survives.
    let bob_id: i32 = bob.user_id.parse().unwrap();
    app.db()
        .await
        .execute(
            r#"update authjs.users set "emailVerified" = null where id = $1"#,
            &[&bob_id],
        )
        .await
        .unwrap();
    assert_problem(
        answer(
            &app,
            &bob,
            renewed["id"].as_str().unwrap(),
            "accept",
            invitation["token"].as_str(),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(
        answer(
            &app,
            &bob,
            renewed["id"].as_str().unwrap(),
            "accept",
            renewed["token"].as_str(),
        )
        .await
        .status(),
        200
    );
}

/// Someone who invites a user before that user's first request does not become their
/// default organisation, before or after they accept: their default is the personal
/// organisation they own, or the one they chose.
#[tokio::test]
async fn a_new_users_default_organisation_cannot_be_pre_empted() {
    let app = TestApp::spawn().await;
    let mallory = app.sign_in("Mallory").await;
    let mallorys_org = app.organisation_of(&mallory).await.to_string();
    // The victim has signed in to the frontend (Auth.js made the user and session) but has
    // not called the API yet.
    let victim_id = app
        .create_user("Victim", "victim-preempt@example.com")
        .await;
    let token = uuid::Uuid::new_v4().to_string();
    app.create_session(
        &victim_id,
        &token,
        chrono::Utc::now() + chrono::Duration::days(1),
    )
    .await;
    let victim = Session {
        user_id: victim_id,
        token,
    };
    let invitation: Value = invite(
        &app,
        &mallory,
        &mallorys_org,
        "victim-preempt@example.com",
        "member",
    )
    .await
    .json()
    .await
    .unwrap();

    let before = app.me(&victim).await;
    let organisations = before["organisations"].as_array().unwrap();
    assert_eq!(organisations.len(), 1, "{before}");
    assert_eq!(organisations[0]["role"], "owner", "{before}");
    assert_eq!(organisations[0]["personal"], true, "{before}");
    assert_eq!(organisations[0]["name"], "Victim's workspace");
    let own = organisations[0]["id"].clone();
    assert_eq!(before["active_organisation_id"], own);

    let accepted = answer(
        &app,
        &victim,
        invitation["id"].as_str().unwrap(),
        "accept",
        invitation["token"].as_str(),
    )
    .await;
    assert_eq!(accepted.status(), 200);
    let after = app.me(&victim).await;
    assert_eq!(
        after["organisations"].as_array().unwrap().len(),
        2,
        "{after}"
    );
    assert_eq!(after["organisations"][0]["id"], own, "{after}");
    assert_eq!(after["active_organisation_id"], own, "{after}");
}

/// One organisation cannot make us store invitations without bound (nor spam addresses).
#[tokio::test]
async fn pending_invitations_per_organisation_are_capped() {
    let app = TestApp::spawn().await;
    let owner = app.sign_in("Owner").await;
    let org = app.organisation_of(&owner).await.to_string();
    assert_eq!(
        invite(&app, &owner, &org, "x1@example.com", "member")
            .await
            .status(),
        201
    );
    app.db()
        .await
        .execute(
            "insert into invitations (id, organisation_id, email, role, token_sha256, invited_by, expires_at)
             select gen_random_uuid(), $1::text::uuid, 'y' || g || '@example.com', 'member',
                    sha256(g::text::bytea), $2, now() + interval '1 day'
             from generate_series(2, 200) g",
            &[&org, &owner.user_id],
        )
        .await
        .unwrap();
    let refused = assert_problem(
        invite(&app, &owner, &org, "one-too-many@example.com", "member").await,
        409,
    )
    .await;
    assert!(
        refused["detail"].as_str().unwrap().contains("200"),
        "{refused}"
    );
    // Renewing a pending invitation is not a new one.
    assert_eq!(
        invite(&app, &owner, &org, "X1@example.com", "member")
            .await
            .status(),
        201
    );
    // Expired ones do not count.
    app.db()
        .await
        .execute(
            "update invitations set expires_at = now() - interval '1 second' where email like 'y%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        invite(&app, &owner, &org, "one-too-many@example.com", "member")
            .await
            .status(),
        201
    );
}
