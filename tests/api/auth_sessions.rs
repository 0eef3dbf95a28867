//! Auth.js session resolution: cookie names, bearer, decoding rules, expiry, sign-out, the
//! storage modes and their backfill, and the cache's revocation window.

use crate::common;

use chrono::{Duration, Utc};
use common::{TestApp, assert_problem};

fn hashed(token: &str) -> String {
    callbridge::auth::sessions::hash_token(token)
}

async fn me_with_cookie(app: &TestApp, cookie: &str) -> reqwest::Response {
    app.client
        .get(app.url("/api/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_auth_js_cookie_name_resolves_the_session() {
    let app = TestApp::spawn().await;
    let session = app.sign_in("Ada").await;
    for name in [
        "authjs.session-token",
        "__Secure-authjs.session-token",
        "next-auth.session-token",
        "__Secure-next-auth.session-token",
    ] {
        let response = me_with_cookie(&app, &format!("theme=dark; {name}={}", session.token)).await;
        assert_eq!(response.status(), 200, "{name}");
        let me: serde_json::Value = response.json().await.unwrap();
        assert_eq!(me["user"]["id"], session.user_id.as_str());
        assert_eq!(me["user"]["name"], "Ada");
        assert_eq!(me["session"]["source"], "cookie");
    }
}

#[tokio::test]
async fn a_bearer_token_resolves_the_session() {
    let app = TestApp::spawn().await;
    let session = app.sign_in("Grace").await;
    let response = app
        .client
        .get(app.url("/api/me"))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let me: serde_json::Value = response.json().await.unwrap();
    assert_eq!(me["session"]["source"], "bearer");
}

#[tokio::test]
async fn the_first_visit_creates_exactly_one_personal_organisation() {
    let app = TestApp::spawn().await;
    let session = app.sign_in("Linus").await;
    let requests = (0..6).map(|_| app.get_as(&session, "/api/me"));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
    }
    let me: serde_json::Value = app.get_as(&session, "/api/me").await.json().await.unwrap();
    let organisations = me["organisations"].as_array().unwrap();
    assert_eq!(organisations.len(), 1);
    assert_eq!(organisations[0]["role"], "owner");
    assert_eq!(organisations[0]["personal"], true);
    assert_eq!(organisations[0]["name"], "Linus's workspace");
    assert_eq!(me["active_organisation_id"], organisations[0]["id"]);
}

#[tokio::test]
async fn no_unknown_expired_or_signed_out_sessions() {
    let app = TestApp::spawn_with(&[("AUTH_SESSION_CACHE_TTL_SECS", "0")]).await;
    let body = assert_problem(app.get("/api/me").await, 401).await;
    assert!(body["detail"].as_str().unwrap().contains("no session"));

    let unknown = me_with_cookie(
        &app,
        &format!("authjs.session-token={}", uuid::Uuid::new_v4()),
    )
    .await;
    assert_problem(unknown, 401).await;

    let user = app.create_user("Old", "old@example.com").await;
    let expired = uuid::Uuid::new_v4().to_string();
    app.create_session(&user, &expired, Utc::now() - Duration::seconds(1))
        .await;
    assert_problem(
        me_with_cookie(&app, &format!("authjs.session-token={expired}")).await,
        401,
    )
    .await;

    let session = app.sign_in("Leaving").await;
    assert_eq!(app.get_as(&session, "/api/me").await.status(), 200);
    app.delete_session(&session.token).await;
    assert_problem(app.get_as(&session, "/api/me").await, 401).await;
}

#[tokio::test]
async fn malformed_credentials_are_rejected_not_treated_as_anonymous() {
    let app = TestApp::spawn().await;
    let session = app.sign_in("Mal").await;
    let encoded_twice = session.token.replace('-', "%252D");
    let cases = [
        format!("authjs.session-token=\"{}\"", session.token),
        format!("authjs.session-token={encoded_twice}"),
        "authjs.session-token=".to_string(),
        format!("authjs.session-token={}", "a".repeat(400)),
        "authjs.session-token=%C3%28".to_string(),
    ];
    for cookie in cases {
        let body = assert_problem(me_with_cookie(&app, &cookie).await, 401).await;
        assert!(
            body["detail"].as_str().unwrap().starts_with("Malformed"),
            "{cookie}: {body}"
        );
    }
    // Raw non-UTF-8 bytes in the header.
    let raw = reqwest::header::HeaderValue::from_bytes(b"authjs.session-token=ab\xffcd").unwrap();
    let response = app
        .client
        .get(app.url("/api/me"))
        .header("cookie", raw)
        .send()
        .await
        .unwrap();
    assert_problem(response, 401).await;
}

#[tokio::test]
async fn percent_encoded_cookie_is_decoded_exactly_once() {
    let app = TestApp::spawn().await;
    let user = app.create_user("Enc", "enc@example.com").await;
    // A custom generateSessionToken may produce characters encodeURIComponent escapes.
    let token = "tok+en/with=chars";
    app.create_session(&user, token, Utc::now() + Duration::days(1))
        .await;
    let cookie = "authjs.session-token=tok%2Ben%2Fwith%3Dchars";
    assert_eq!(me_with_cookie(&app, cookie).await.status(), 200);
}

#[tokio::test]
async fn first_cookie_wins_when_a_name_repeats() {
    let app = TestApp::spawn().await;
    let alice = app.sign_in("Alice").await;
    let bob = app.sign_in("Bob").await;
    let cookie = format!(
        "authjs.session-token={}; authjs.session-token={}",
        alice.token, bob.token
    );
    let me: serde_json::Value = me_with_cookie(&app, &cookie).await.json().await.unwrap();
    assert_eq!(me["user"]["id"], alice.user_id.as_str());
}

#[tokio::test]
async fn storage_modes_raw_hashed_and_dual() {
    let raw_app = TestApp::spawn_with(&[
        ("AUTH_TOKEN_STORAGE", "raw"),
        ("AUTH_SESSION_CACHE_TTL_SECS", "0"),
    ])
    .await;
    let user = raw_app.create_user("Modes", "modes@example.com").await;
    let raw_token = uuid::Uuid::new_v4().to_string();
    let hashed_token = uuid::Uuid::new_v4().to_string();
    raw_app
        .create_session(&user, &raw_token, Utc::now() + Duration::days(1))
        .await;
    raw_app
        .create_session(
            &user,
            &hashed(&hashed_token),
            Utc::now() + Duration::days(1),
        )
        .await;

    let database = raw_app.database.clone();
    let hashed_app = TestApp::spawn_on(
        &database,
        &[
            ("AUTH_TOKEN_STORAGE", "hashed"),
            ("AUTH_SESSION_CACHE_TTL_SECS", "0"),
        ],
    )
    .await;
    let dual_app = TestApp::spawn_on(
        &database,
        &[
            ("AUTH_TOKEN_STORAGE", "dual"),
            ("AUTH_SESSION_CACHE_TTL_SECS", "0"),
        ],
    )
    .await;

    let status = |app: &TestApp, token: &str| {
        let request = app.client.get(app.url("/api/me")).bearer_auth(token).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    assert_eq!(status(&raw_app, &raw_token).await, 200);
    assert_eq!(status(&raw_app, &hashed_token).await, 401);
    assert_eq!(status(&hashed_app, &raw_token).await, 401);
    assert_eq!(status(&hashed_app, &hashed_token).await, 200);
    assert_eq!(status(&dual_app, &raw_token).await, 200);
    assert_eq!(status(&dual_app, &hashed_token).await, 200);
    // Presenting the stored hash itself is not a credential in hashed mode.
    assert_eq!(status(&hashed_app, &hashed(&hashed_token)).await, 401);
}

/// Issue 14 item 4: with `dual` storage, the stored SHA-256 of a backfilled session (what
/// anyone who reads the sessions table or a backup sees) must not work as a bearer or cookie.
#[tokio::test]
async fn dual_storage_never_accepts_a_stored_hash_as_a_login() {
    let app = TestApp::spawn_with(&[
        ("AUTH_TOKEN_STORAGE", "dual"),
        ("AUTH_SESSION_CACHE_TTL_SECS", "0"),
    ])
    .await;
    // A session as @auth/pg-adapter creates it (a random UUID stored raw) ...
    let session = app.sign_in("Victim").await;
    // ... then hashed in place by the backfill.
    let client = app.db().await;
    let done = callbridge::auth::migrate_tokens::run(&client, "authjs", 100, |_, _| {})
        .await
        .unwrap();
    assert!(done >= 1);
    let stored: String = client
        .query_one(
            r#"select "sessionToken" from authjs.sessions where "userId" = $1::text::int"#,
            &[&session.user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, hashed(&session.token));

    let bearer = |token: String| {
        let request = app.client.get(app.url("/api/me")).bearer_auth(token).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    assert_eq!(bearer(session.token.clone()).await, 200, "the real token");
    assert_eq!(bearer(stored.clone()).await, 401, "the stored hash");
    assert_eq!(
        bearer(stored.to_uppercase()).await,
        401,
        "its upper-cased copy"
    );
    let cookie = me_with_cookie(&app, &format!("authjs.session-token={stored}")).await;
    assert_problem(cookie, 401).await;
}

#[tokio::test]
async fn backfill_hashes_every_raw_token_resumably_while_dual_keeps_serving() {
    let app = TestApp::spawn_with(&[
        ("AUTH_TOKEN_STORAGE", "dual"),
        ("AUTH_SESSION_CACHE_TTL_SECS", "0"),
    ])
    .await;
    let user = app.create_user("Many", "many@example.com").await;
    let mut tokens = Vec::new();
    for _ in 0..25 {
        let token = uuid::Uuid::new_v4().to_string();
        app.create_session(&user, &token, Utc::now() + Duration::days(1))
            .await;
        tokens.push(token);
    }
    let already = uuid::Uuid::new_v4().to_string();
    app.create_session(&user, &hashed(&already), Utc::now() + Duration::days(1))
        .await;

    let client = app.db().await;
    assert_eq!(
        callbridge::auth::migrate_tokens::remaining(&client, "authjs")
            .await
            .unwrap(),
        25
    );
    let mut reports = Vec::new();
    let rewritten = callbridge::auth::migrate_tokens::run(&client, "authjs", 10, |done, total| {
        reports.push((done, total))
    })
    .await
    .unwrap();
    assert_eq!(rewritten, 25);
    assert_eq!(reports.last(), Some(&(25, 25)));
    assert_eq!(reports.len(), 4, "0, 10, 20, 25: batches of 10");
    // Re-running is a no-op.
    assert_eq!(
        callbridge::auth::migrate_tokens::run(&client, "authjs", 10, |_, _| {})
            .await
            .unwrap(),
        0
    );

    let stored: Vec<String> = client
        .query(r#"select "sessionToken" from authjs.sessions"#, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        stored.contains(&hashed(&tokens[0])),
        "hashed in SQL exactly as in Rust"
    );
    assert!(
        stored.contains(&hashed(&already)),
        "already-hashed rows untouched"
    );
    for token in tokens.iter().chain([&already]) {
        let response = app
            .client
            .get(app.url("/api/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "sessions keep working through the move"
        );
    }
}

#[tokio::test]
async fn the_backfill_command_refuses_raw_mode_and_runs_in_dual() {
    let app = TestApp::spawn().await;
    let user = app.create_user("Cli", "cli@example.com").await;
    let token = uuid::Uuid::new_v4().to_string();
    app.create_session(&user, &token, Utc::now() + Duration::days(1))
        .await;
    let run = |mode: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_callbridge"))
            .args(["auth", "migrate-tokens", "--batch-size", "2"])
            .env_clear()
            .env("DATABASE_URL", common::database_url(&app.database))
            .env("AUTH_TOKEN_STORAGE", mode)
            .env("LOG_LEVEL", "warn")
            .output()
            .unwrap()
    };
    let refused = run("raw");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("AUTH_TOKEN_STORAGE is raw"));
    let done = run("dual");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("hashed 1 session token(s)"));
    assert!(String::from_utf8_lossy(&done.stderr).contains("1/1 sessions (100%)"));
}

#[tokio::test]
async fn a_deleted_session_stops_working_within_the_cache_ttl() {
    let app = TestApp::spawn_with(&[("AUTH_SESSION_CACHE_TTL_SECS", "1")]).await;
    let session = app.sign_in("Cached").await;
    assert_eq!(app.get_as(&session, "/api/me").await.status(), 200);
    app.delete_session(&session.token).await;
    // Within the TTL the cached resolution may still answer; after it, never.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_problem(app.get_as(&session, "/api/me").await, 401).await;
}

#[tokio::test]
async fn cached_resolution_answers_without_the_database() {
    // Proves the cache is used: after one lookup, the session keeps resolving while the
    // database is unreachable.
    let database = common::fresh_database().await;
    let proxy = common::tcp_proxy::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = format!("postgres://postgres@{}/{database}", proxy.address);
    let app = TestApp::spawn_with(&[
        ("DATABASE_URL", url.as_str()),
        ("AUTH_SESSION_CACHE_TTL_SECS", "60"),
    ])
    .await;
    let session = {
        let seeding = TestApp::spawn_on(&database, &[]).await;
        seeding.sign_in("Offline").await
    };
    assert_eq!(app.get_as(&session, "/api/me").await.status(), 200);
    proxy.take_down();
    assert_eq!(
        app.get_as(&session, "/api/me").await.status(),
        200,
        "served from the cache"
    );
    common::drop_database_blocking(&database);
}

/// Issue 14 item 10: in production only `__Secure-` cookie names are read, so a cookie planted
/// by a sibling subdomain or over plain http (session fixation) is not a credential; and
/// `/metrics` requires its token.
#[tokio::test]
async fn production_reads_only_secure_cookie_names_and_guards_metrics() {
    use base64::Engine as _;
    use common::edge::{PRODUCTION_EDGE_SECRET as EDGE, PRODUCTION_METRICS_TOKEN};
    let key = base64::engine::general_purpose::STANDARD.encode(
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
            .verifying_key()
            .as_bytes(),
    );
    let env = common::edge::production("production-auth-secret-with-32-plus-characters", &key);
    let app = TestApp::spawn_with(&env).await;
    let session = app.sign_in("Secure").await;
    let me = |cookie: String| {
        app.signed(EDGE, reqwest::Method::GET, "/api/me", b"")
            .header("cookie", cookie)
            .send()
    };
    for name in ["authjs.session-token", "next-auth.session-token"] {
        let response = me(format!("{name}={}", session.token)).await.unwrap();
        assert_problem(response, 401).await;
    }
    for name in [
        "__Secure-authjs.session-token",
        "__Secure-next-auth.session-token",
    ] {
        let response = me(format!("{name}={}", session.token)).await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
    }

    // /metrics is on the unsigned allow-list (the scraper), so only its token guards it.
    assert_problem(app.get("/metrics").await, 401).await;
    let scraped = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(PRODUCTION_METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
}

/// Replicas starting together each create the Auth.js tables in development: all of them
/// must succeed (a session-level advisory lock released inside the batch's implicit
/// transaction let the second in before the first had committed its schema).
#[tokio::test]
async fn replicas_creating_the_auth_js_tables_at_once_all_succeed() {
    let database = common::fresh_database().await;
    let url = common::database_url(&database);
    let mut starts = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        starts.push(tokio::spawn(async move {
            let client = callbridge::db::connect_direct(&url).await.unwrap();
            callbridge::db::authjs::ensure_dev_tables(&client, "authjs_race").await
        }));
    }
    for start in starts {
        start
            .await
            .unwrap()
            .expect("every replica creates or finds the tables");
    }
    let client = callbridge::db::connect_direct(&url).await.unwrap();
    let tables: i64 = client
        .query_one(
            "select count(*) from information_schema.tables where table_schema = 'authjs_race'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tables >= 4, "the adapter's tables exist: {tables}");
    drop(client);
    common::drop_database_blocking(&database);
}
