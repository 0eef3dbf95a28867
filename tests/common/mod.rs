//! The shared test harness: `TestApp` runs the real service on port 0 against a fresh
//! PostgreSQL database (cloned from a migrated template) and a real S3 server (s3s-fs,
//! started by `make test`), with a bucket of its own.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

pub mod authjs;
pub mod edge;
#[cfg(feature = "sim")]
pub mod interpreted;
pub mod pg_wire;
#[cfg(feature = "sim")]
pub mod soak;
pub mod sse;
pub mod tcp_proxy;
#[cfg(feature = "sim")]
pub mod telnyx;

use std::collections::HashMap;
use std::time::Duration;

use callbridge::Application;
use callbridge::config::Config;
use callbridge::state::AppState;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn s3_endpoint() -> String {
    std::env::var("TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9100".into())
}
pub fn s3_access_key() -> String {
    std::env::var("TEST_S3_ACCESS_KEY").unwrap_or_else(|_| "cbtest".into())
}
pub fn s3_secret_key() -> String {
    std::env::var("TEST_S3_SECRET_KEY").unwrap_or_else(|_| "cbtest-secret-key".into())
}

/// A URL for database `name` on the test server.
pub fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&admin_database_url()).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A plain connection to `url`, outside any app's pool.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn admin_client() -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach PostgreSQL at TEST_DATABASE_URL ({e}); `make test` starts it")
            });
    tokio::spawn(connection);
    client
}

/// The migrated template's name changes whenever a migration or the Auth.js DDL changes.
fn template_name() -> String {
    let mut hasher = Sha256::new();
    for migration in callbridge::db::MIGRATOR.iter() {
        hasher.update(migration.version.to_le_bytes());
        hasher.update(&migration.checksum);
    }
    hasher.update(callbridge::db::authjs::ddl("authjs").as_bytes());
    format!("cbt_template_{}", &hex::encode(hasher.finalize())[..16])
}

/// Creates the template once per machine (an advisory lock serialises test processes).
async fn template() -> &'static str {
    static TEMPLATE: OnceCell<String> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let admin = admin_client().await;
            admin
                .execute("select pg_advisory_lock(7423002)", &[])
                .await
                .unwrap();
            let exists = admin
                .query_opt("select 1 from pg_database where datname = $1", &[&name])
                .await
                .unwrap()
                .is_some();
            if !exists {
                let building = format!("{name}_building");
                admin
                    .batch_execute(&format!("drop database if exists {building} with (force)"))
                    .await
                    .unwrap();
                admin
                    .batch_execute(&format!("create database {building}"))
                    .await
                    .unwrap();
                let url = database_url(&building);
                let config = test_config(&url, "cbt-template", &[]);
                callbridge::app::prepare_database(&config)
                    .await
                    .expect("migrating the template");
                // Renaming last makes the template appear only once complete.
                admin
                    .batch_execute(&format!("alter database {building} rename to {name}"))
                    .await
                    .unwrap();
            }
            admin
                .execute("select pg_advisory_unlock(7423002)", &[])
                .await
                .unwrap();
            name
        })
        .await
}

/// A new empty-but-migrated database for one test.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!("cbt_{}", uuid::Uuid::new_v4().simple());
    let admin = admin_client().await;
    admin
        .batch_execute(&format!("create database {name} template {template}"))
        .await
        .expect("cloning the template database");
    name
}

pub fn drop_database_blocking(name: &str) {
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let admin = admin_client().await;
            let _ = admin
                .batch_execute(&format!("drop database if exists {name} with (force)"))
                .await;
        });
    })
    .join();
}

/// A complete production environment (every required variable, valid, no host that answers)
/// but the database: what `callbridge config check` accepts.
pub const PRODUCTION_ENV: &[(&str, &str)] = &[
    ("APP_ENV", "production"),
    ("PUBLIC_BASE_URL", "https://api.callbridge.invalid"),
    ("WEBHOOK_BASE_URL", "https://edge.callbridge.invalid"),
    ("MEDIA_BASE_URL", "https://origin.callbridge.invalid"),
    (
        "ALLOWED_ORIGINS",
        "https://app.callbridge.invalid,https://*.callbridge-web.pages.dev",
    ),
    ("AUTH_SECRET", "0123456789abcdef0123456789abcdef"),
    ("R2_ENDPOINT", "https://account.r2.cloudflarestorage.com"),
    ("R2_ACCESS_KEY_ID", "key"),
    ("R2_SECRET_ACCESS_KEY", "secret"),
    ("R2_BUCKET", "callbridge-recordings"),
    ("TELNYX_API_KEY", "KEY"),
    (
        "TELNYX_PUBLIC_KEY",
        "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    ),
    ("TELNYX_CONNECTION_ID", "conn"),
    ("ASSEMBLYAI_API_KEY", "aai"),
    ("ASSEMBLYAI_WEBHOOK_SECRET", "aai-hook"),
    ("DEEPL_API_KEY", "deepl"),
    ("OPENAI_API_KEY", "openai"),
    ("ELEVENLABS_API_KEY", "eleven"),
    ("EDGE_SHARED_SECRET", "edge"),
    ("METRICS_TOKEN", "metrics"),
];

/// The configuration a test app runs with, plus overrides.
pub fn test_config(database_url: &str, bucket: &str, overrides: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = [
        ("APP_ENV", "development"),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("PORT", "0"),
        ("PUBLIC_BASE_URL", "http://127.0.0.1:8080"),
        (
            "ALLOWED_ORIGINS",
            "http://localhost:3000,https://app.example.com",
        ),
        ("RUN_MIGRATIONS_ON_START", "false"),
        ("DATABASE_POOL_TIMEOUT_MS", "1500"),
        ("R2_ENDPOINT", &s3_endpoint()),
        ("R2_ACCESS_KEY_ID", &s3_access_key()),
        ("R2_SECRET_ACCESS_KEY", &s3_secret_key()),
        ("R2_BUCKET", bucket),
        ("SHUTDOWN_GRACE_SECS", "5"),
        // Stories place calls back to back; the dial guard's caps have their own tests
        // (tests/api/dial_guard.rs), which set them.
        ("DIAL_MAX_CONCURRENT_PER_ORG", "1000"),
        ("DIAL_MAX_CONCURRENT_PER_USER", "1000"),
        ("DIAL_MAX_PER_MINUTE_PER_ORG", "1000"),
        ("DIAL_MAX_PER_MINUTE_PER_USER", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.insert("DATABASE_URL".into(), database_url.into());
    for (key, value) in overrides {
        env.insert(key.to_string(), value.to_string());
    }
    Config::load_from(None, env).expect("test configuration is valid")
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub database: String,
    pub bucket: String,
    pub state: AppState,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    owns_database: bool,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Starts the app with configuration overrides (environment variable names).
    pub async fn spawn_with(overrides: &[(&str, &str)]) -> Self {
        let bucket = format!("cbt-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
        // A test that brings its own DATABASE_URL (through a proxy, say) owns that database.
        if let Some((_, url)) = overrides.iter().find(|(k, _)| *k == "DATABASE_URL") {
            let name = url::Url::parse(url)
                .unwrap()
                .path()
                .trim_start_matches('/')
                .to_owned();
            let config = test_config(url, &bucket, overrides);
            let mut app = Self::start(config, name, bucket).await;
            app.owns_database = false;
            return app;
        }
        let database = fresh_database().await;
        let config = test_config(&database_url(&database), &bucket, overrides);
        Self::start(config, database, bucket).await
    }

    /// A second app on another app's database (it will not drop it).
    pub async fn spawn_on(database: &str, overrides: &[(&str, &str)]) -> Self {
        let bucket = format!("cbt-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
        let config = test_config(&database_url(database), &bucket, overrides);
        let mut app = Self::start(config, database.to_owned(), bucket).await;
        app.owns_database = false;
        app
    }

    pub async fn start(config: Config, database: String, bucket: String) -> Self {
        let app = Application::build(config).await.expect("the app builds");
        let port = app.port();
        let state = app.state().clone();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run(shutdown.clone()));
        Self {
            address: format!("http://127.0.0.1:{port}"),
            port,
            database,
            bucket,
            state,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            shutdown,
            server: Some(server),
            owns_database: true,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&database_url(&self.database)).await
    }

    /// The `count` column of `sql` (a `select count(*) …`) on a fresh connection.
    pub async fn count(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> i64 {
        self.db()
            .await
            .query_one(sql, params)
            .await
            .unwrap()
            .get("count")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self.owns_database {
            drop_database_blocking(&self.database);
        }
    }
}

/// Asserts an RFC 9457 problem response and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let header_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("x-request-id header");
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["type"].as_str().is_some());
    assert_eq!(
        body["request_id"],
        header_id.as_str(),
        "request_id matches the header"
    );
    body
}
