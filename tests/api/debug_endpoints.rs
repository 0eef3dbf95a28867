//! `/internal/debug/session`: absent in production; elsewhere it needs a Cloudflare Access
//! JWT (RS256, verified against a JWKS served here) or a short-lived debug token.

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TestApp, assert_problem};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};

/// A test-only RSA key (generated for this suite; never used anywhere else).
const TEST_KEY: &[u8] = include_bytes!("../fixtures/cf-access-test-key.pk8");
const AUDIENCE: &str = "aud-callbridge-test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign_jwt(header: serde_json::Value, claims: serde_json::Value) -> String {
    let key = RsaKeyPair::from_pkcs8(TEST_KEY).unwrap();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Serves `/cdn-cgi/access/certs` like a Cloudflare Access team domain.
async fn jwks_server() -> String {
    let key = RsaKeyPair::from_pkcs8(TEST_KEY).unwrap();
    let components = RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
    let jwks = serde_json::json!({"keys": [{
        "kid": "test-kid", "kty": "RSA", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(&components.n), "e": URL_SAFE_NO_PAD.encode(&components.e),
    }]});
    let router = axum::Router::new().route(
        "/cdn-cgi/access/certs",
        get(move || async move { axum::Json(jwks) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

const EDGE: &str = common::edge::PRODUCTION_EDGE_SECRET;

#[tokio::test]
async fn debug_routes_do_not_exist_in_production() {
    let key = base64::engine::general_purpose::STANDARD.encode(
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
            .verifying_key()
            .as_bytes(),
    );
    let secret = "production-auth-secret-with-32-plus-characters";
    let app = TestApp::spawn_with(&common::edge::production(secret, &key)).await;
    let token = callbridge::auth::debug_access::mint_debug_token(
        secret.as_bytes(),
        Duration::from_secs(60),
        now(),
    );
    // Production has EDGE_SHARED_SECRET: only requests signed by the edge get through.
    let response = app
        .signed(EDGE, reqwest::Method::GET, "/internal/debug/session", b"")
        .header("x-debug-token", token)
        .send()
        .await
        .unwrap();
    assert_problem(response, 404).await;
    let spec: serde_json::Value = app
        .signed(EDGE, reqwest::Method::GET, "/api/openapi.json", b"")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"].get("/internal/debug/session").is_none());
}

#[tokio::test]
async fn a_debug_token_unlocks_the_session_report() {
    let app = TestApp::spawn_with(&[("AUTH_TOKEN_STORAGE", "dual")]).await;
    let secret = app.state.config.auth.secret.expose().clone();
    let session = app.sign_in("Debbie").await;
    let report = |token: String, cookie: String| {
        app.client
            .get(app.url("/internal/debug/session"))
            .header("x-debug-token", token)
            .header("cookie", cookie)
            .send()
    };
    let token = || {
        callbridge::auth::debug_access::mint_debug_token(
            secret.as_bytes(),
            Duration::from_secs(120),
            now(),
        )
    };

    assert_problem(app.get("/internal/debug/session").await, 401).await;
    let expired = callbridge::auth::debug_access::mint_debug_token(
        secret.as_bytes(),
        Duration::from_secs(0),
        now(),
    );
    assert_problem(report(expired, String::new()).await.unwrap(), 401).await;
    let forged = callbridge::auth::debug_access::mint_debug_token(
        b"not-the-secret",
        Duration::from_secs(60),
        now(),
    );
    assert_problem(report(forged, String::new()).await.unwrap(), 401).await;

    let cookie = format!("__Secure-next-auth.session-token={}", session.token);
    let first: serde_json::Value = report(token(), cookie.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["resolved"], true);
    assert_eq!(
        first["credential"]["cookie_name"],
        "__Secure-next-auth.session-token"
    );
    assert_eq!(first["token_storage"], "dual");
    assert_eq!(first["stored_form"], "raw");
    assert_eq!(first["cache_hit"], false);
    assert_eq!(first["user"]["id"], session.user_id.as_str());
    assert!(
        !first.to_string().contains(&session.token),
        "the token is never echoed"
    );
    let second: serde_json::Value = report(token(), cookie).await.unwrap().json().await.unwrap();
    assert_eq!(second["cache_hit"], true);

    let malformed: serde_json::Value = report(token(), "authjs.session-token=%2541".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(malformed["resolved"], false);
    assert!(
        malformed["credential"]["malformed"]
            .as_str()
            .unwrap()
            .contains("more than once")
    );
}

#[tokio::test]
async fn a_cloudflare_access_jwt_unlocks_debug_and_bad_ones_do_not() {
    let team = jwks_server().await;
    let app = TestApp::spawn_with(&[
        ("CF_ACCESS_TEAM_DOMAIN", team.as_str()),
        ("CF_ACCESS_AUD", AUDIENCE),
    ])
    .await;
    let call = |jwt: String| {
        app.client
            .get(app.url("/internal/debug/session"))
            .header("cf-access-jwt-assertion", jwt)
            .send()
    };
    let header = serde_json::json!({"alg": "RS256", "kid": "test-kid", "typ": "JWT"});
    let claims = |aud: &str, iss: &str, exp: u64| {
        serde_json::json!({
            "aud": [aud], "iss": iss, "exp": exp, "iat": now(), "email": "ops@example.com", "sub": "x"
        })
    };

    let valid = sign_jwt(header.clone(), claims(AUDIENCE, &team, now() + 300));
    let response = call(valid.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["debug_caller"], "ops@example.com");
    assert_eq!(body["credential"]["present"], false);

    assert_problem(
        call(sign_jwt(
            header.clone(),
            claims("other-app", &team, now() + 300),
        ))
        .await
        .unwrap(),
        401,
    )
    .await;
    assert_problem(
        call(sign_jwt(
            header.clone(),
            claims(AUDIENCE, "https://evil.cloudflareaccess.com", now() + 300),
        ))
        .await
        .unwrap(),
        401,
    )
    .await;
    assert_problem(
        call(sign_jwt(
            header.clone(),
            claims(AUDIENCE, &team, now() - 10),
        ))
        .await
        .unwrap(),
        401,
    )
    .await;
    let unknown_kid = serde_json::json!({"alg": "RS256", "kid": "rotated-away"});
    assert_problem(
        call(sign_jwt(unknown_kid, claims(AUDIENCE, &team, now() + 300)))
            .await
            .unwrap(),
        401,
    )
    .await;

    // Tampered payload, and an unsigned "alg: none" token.
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims(AUDIENCE, &team, now() + 9999).to_string());
    assert_problem(call(parts.join(".")).await.unwrap(), 401).await;
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"test-kid"}"#),
        URL_SAFE_NO_PAD.encode(claims(AUDIENCE, &team, now() + 300).to_string())
    );
    assert_problem(call(none).await.unwrap(), 401).await;
}
