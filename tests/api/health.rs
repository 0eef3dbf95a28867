//! `/healthz` and `/readyz`, including a database outage and recovery without a restart.

use crate::common;

use common::tcp_proxy::TcpProxy;
use common::{TestApp, assert_problem};

#[tokio::test]
async fn healthz_and_readyz_answer_when_everything_is_up() {
    let app = TestApp::spawn().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    assert_eq!(body["checks"]["storage"]["status"], "ok");
}

#[tokio::test]
async fn readyz_names_the_database_while_it_is_down_and_recovers_by_itself() {
    let database = common::fresh_database().await;
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = format!("postgres://postgres@{}/{database}", proxy.address);
    let app = TestApp::spawn_with(&[("DATABASE_URL", url.as_str())]).await;
    assert_eq!(app.get("/readyz").await.status(), 200);

    proxy.take_down();
    let body = assert_problem(app.get("/readyz").await, 503).await;
    assert_eq!(body["failed"], serde_json::json!(["database"]));
    assert_eq!(body["checks"]["database"]["status"], "failed");
    assert_eq!(body["checks"]["storage"]["status"], "ok");
    assert!(body["detail"].as_str().unwrap().contains("database"));
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "liveness does not depend on the database"
    );

    proxy.bring_up();
    let mut status = 0;
    for _ in 0..20 {
        status = app.get("/readyz").await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200, "readiness recovers without a restart");
    common::drop_database_blocking(&database);
}

#[tokio::test]
async fn readyz_names_storage_when_the_bucket_is_unreachable() {
    // Nothing listens on this port: storage fails, the database does not.
    let app = TestApp::spawn_with(&[
        ("R2_ENDPOINT", "http://127.0.0.1:9"),
        ("R2_CREATE_BUCKET", "false"),
    ])
    .await;
    let body = assert_problem(app.get("/readyz").await, 503).await;
    assert_eq!(body["failed"], serde_json::json!(["storage"]));
}
