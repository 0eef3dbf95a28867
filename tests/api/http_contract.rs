//! The HTTP contract every route shares: problem+json errors with request ids, the request id
//! rules, CORS, metrics and the OpenAPI document.

use crate::common;

use axum::routing::get;
use common::{TestApp, assert_problem};

#[tokio::test]
async fn unknown_path_is_a_404_problem_with_request_id() {
    let app = TestApp::spawn().await;
    let body = assert_problem(app.get("/no/such/route").await, 404).await;
    assert!(body["detail"].as_str().unwrap().contains("/no/such/route"));
}

#[tokio::test]
async fn wrong_method_is_a_405_problem_with_allow_header() {
    let app = TestApp::spawn().await;
    let response = app.client.post(app.url("/healthz")).send().await.unwrap();
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_problem(response, 405).await;
    assert!(allow.unwrap_or_default().contains("GET"));
}

#[tokio::test]
async fn request_id_is_honoured_else_cf_ray_else_generated() {
    let app = TestApp::spawn().await;
    let echoed = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };

    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "client-id-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed(&response), "client-id-123");

    let response = app
        .client
        .get(app.url("/missing"))
        .header("cf-ray", "8a1b2c3d4e5f-AMS")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed(&response), "8a1b2c3d4e5f-AMS");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], "8a1b2c3d4e5f-AMS");

    // Both present: x-request-id wins.
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "mine")
        .header("cf-ray", "ray")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed(&response), "mine");

    // Unusable input (spaces, too long) is replaced, not echoed into logs and headers.
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "has spaces; and=stuff")
        .send()
        .await
        .unwrap();
    let generated = echoed(&response);
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "a".repeat(200))
        .send()
        .await
        .unwrap();
    assert!(uuid::Uuid::parse_str(&echoed(&response)).is_ok());

    let first = echoed(&app.get("/healthz").await);
    let second = echoed(&app.get("/healthz").await);
    assert_ne!(first, second);
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let app = TestApp::spawn().await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/healthz"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-org-id")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let refused = preflight("https://evil.example.net").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = TestApp::spawn().await;
    app.get("/healthz").await;
    app.get("/definitely/not/here").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/healthz",status="200"}"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#));
    assert!(text.contains("http_request_duration_seconds_bucket"));
    assert!(
        !text.contains("/definitely/not/here"),
        "raw paths never become labels"
    );
}

#[tokio::test]
async fn metrics_token_when_set_is_required() {
    let app = TestApp::spawn_with(&[("METRICS_TOKEN", "scrape-me")]).await;
    assert_problem(app.get("/metrics").await, 401).await;
    let ok = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn openapi_document_is_3_1_and_lists_every_route_with_error_schemas() {
    let app = TestApp::spawn().await;
    let spec: serde_json::Value = app.get("/api/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/api/docs",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from the document"
        );
    }
    assert!(spec["components"]["schemas"].get("Problem").is_some());
    assert!(
        spec["paths"]["/readyz"]["get"]["responses"]
            .get("503")
            .is_some()
    );

    let html = app.get("/api/docs").await.text().await.unwrap();
    for path in spec["paths"].as_object().unwrap().keys() {
        assert!(
            html.contains(path.as_str()),
            "{path} missing from /api/docs"
        );
    }
}

#[tokio::test]
async fn a_panicking_handler_becomes_a_500_problem_that_hides_the_cause() {
    let app = TestApp::spawn().await;
    async fn boom() -> &'static str {
        panic!("secret internal detail")
    }
    let routes = callbridge::http::api_routes(true).route("/test/boom", get(boom));
    let router = callbridge::http::with_middleware(routes, app.state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let response = app
        .client
        .get(format!("http://{address}/test/boom"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, 500).await;
    assert!(!body.to_string().contains("secret internal detail"));
    // The server is still alive after the panic.
    let response = app
        .client
        .get(format!("http://{address}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn responses_are_compressed_when_asked() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/api/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
}
