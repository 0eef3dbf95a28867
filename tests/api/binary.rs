//! The `callbridge` binary as an operator runs it: configuration errors, secrets kept out of
//! logs, graceful shutdown on SIGTERM, `migrate` with only the database, `config check`, and
//! the first day: the binary started as `make dev` starts it takes a call through its life.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_callbridge");

fn base_command() -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// A running `callbridge serve` with every output line collected.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(env: &[(&str, String)]) -> Self {
        Self::start_role("serve", env)
    }

    fn start_role(role: &str, env: &[(&str, String)]) -> Self {
        let mut command = base_command();
        command
            .arg(role)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("binary starts");
        let (sender, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = sender.send(line);
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the "listening" log line and returns the port.
    fn port(&mut self) -> u16 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.seen.push(line.clone());
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == "listening"
                {
                    let address = json["address"].as_str().unwrap();
                    return address.rsplit(':').next().unwrap().parse().unwrap();
                }
            }
        }
        panic!("service did not start; output:\n{}", self.seen.join("\n"));
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100));
        self.seen.extend(self.lines.try_iter());
        (status, self.seen.join("\n"))
    }
}

fn dev_env(database: &str, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = vec![
        ("APP_ENV", "development".into()),
        ("LOG_FORMAT", "json".into()),
        ("BIND_ADDRESS", "127.0.0.1".into()),
        ("PORT", "0".into()),
        ("DATABASE_URL", common::database_url(database)),
        ("RUN_MIGRATIONS_ON_START", "false".into()),
        ("R2_ENDPOINT", common::s3_endpoint()),
        ("R2_ACCESS_KEY_ID", common::s3_access_key()),
        ("R2_SECRET_ACCESS_KEY", common::s3_secret_key()),
        (
            "R2_BUCKET",
            format!(
                "cbt-bin-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
        ),
    ];
    for (key, value) in extra {
        let key: &'static str = Box::leak(key.to_string().into_boxed_str());
        env.retain(|(k, _)| *k != key);
        env.push((key, value.to_string()));
    }
    env
}

#[test]
fn production_without_required_settings_exits_non_zero_naming_each_variable() {
    let output = base_command()
        .arg("serve")
        .env("APP_ENV", "production")
        .env("PUBLIC_BASE_URL", "https://api.example.com")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78), "EX_CONFIG");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for variable in ["DATABASE_URL", "AUTH_SECRET", "R2_BUCKET", "TELNYX_API_KEY"] {
        assert!(
            stderr.contains(&format!("{variable}: required when APP_ENV=production")),
            "{stderr}"
        );
    }
    assert!(
        !stderr.contains("PUBLIC_BASE_URL:"),
        "a set variable is not reported"
    );
}

#[tokio::test]
async fn known_secrets_never_appear_in_logs() {
    callbridge::tls::install_crypto_provider();
    let database = common::fresh_database().await;
    let secrets = [
        "pg-password-9f2c",
        "deepl-key-77aa",
        "auth-secret-31bd-auth-secret-31bd",
        "metrics-tok-55e1",
    ];
    let url =
        common::database_url(&database).replace("postgres@", &format!("postgres:{}@", secrets[0]));
    let mut env = dev_env(
        &database,
        &[
            ("LOG_LEVEL", "trace"),
            ("DEEPL_API_KEY", secrets[1]),
            ("AUTH_SECRET", secrets[2]),
            ("METRICS_TOKEN", secrets[3]),
        ],
    );
    env.retain(|(k, _)| *k != "DATABASE_URL");
    env.push(("DATABASE_URL", url));
    let mut running = Running::start(&env);
    let port = running.port();
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .bearer_auth(secrets[3])
        .send()
        .await
        .unwrap();
    running.terminate();
    let (status, output) = running.wait();
    assert!(status.success());
    assert!(output.contains("starting"), "the config summary was logged");
    for secret in secrets.iter().chain([&common::s3_secret_key().as_str()]) {
        assert!(!output.contains(secret), "{secret} leaked into the logs");
    }
    common::drop_database_blocking(&database);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    // A storage endpoint that accepts and never answers makes /readyz take ~2 s.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in black_hole.incoming() {
            held.push(stream);
        }
    });
    callbridge::tls::install_crypto_provider();
    let database = common::fresh_database().await;
    let endpoint = format!("http://{hole}");
    let env = dev_env(
        &database,
        &[("R2_ENDPOINT", &endpoint), ("R2_CREATE_BUCKET", "false")],
    );
    let mut running = Running::start(&env);
    let port = running.port();

    let slow = tokio::spawn(async move {
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no new connections are accepted while draining"
    );
    let status = slow
        .await
        .unwrap()
        .expect("the in-flight request completed");
    assert_eq!(
        status, 503,
        "it finished with its real answer (storage timed out)"
    );
    let (exit, output) = running.wait();
    assert!(exit.success(), "exit 0 after draining; output:\n{output}");
    common::drop_database_blocking(&database);
}

/// A test that fails midway must not leave its server running.
impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An empty database (not the migrated template): what a newcomer's machine has.
async fn empty_database() -> String {
    let name = format!("cbt_{}", uuid::Uuid::new_v4().simple());
    let (admin, connection) =
        tokio_postgres::connect(&common::admin_database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    name
}

async fn connect(database: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&common::database_url(database), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
}

async fn table_exists(client: &tokio_postgres::Client, table: &str) -> bool {
    client
        .query_one("select to_regclass($1) is not null as present", &[&table])
        .await
        .unwrap()
        .get("present")
}

#[tokio::test]
async fn migrate_needs_only_the_database_and_creates_auth_tables_only_in_development() {
    for (app_env, expect_auth_tables) in [
        ("production", false),
        ("staging", false),
        ("development", true),
    ] {
        let database = empty_database().await;
        // Exactly what CI has: the database URL and the environment name. No provider, R2,
        // AUTH_SECRET, PUBLIC_BASE_URL or EDGE_SHARED_SECRET (all required to *serve* in
        // production). A local database needs no sslmode=require.
        let output = base_command()
            .arg("migrate")
            .env("APP_ENV", app_env)
            .env("DATABASE_DIRECT_URL", common::database_url(&database))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{app_env}: migrate failed:\n{stdout}\n{stderr}"
        );
        let client = connect(&database).await;
        assert!(
            table_exists(&client, "public.calls").await,
            "{app_env}: migrations applied"
        );
        assert!(table_exists(&client, "public._sqlx_migrations").await);
        assert_eq!(
            table_exists(&client, "authjs.sessions").await,
            expect_auth_tables,
            "{app_env}: Auth.js tables belong to the frontend outside development"
        );
        // Idempotent: a second run (CI re-run) changes nothing and succeeds.
        let again = base_command()
            .arg("migrate")
            .env("APP_ENV", app_env)
            .env("DATABASE_DIRECT_URL", common::database_url(&database))
            .output()
            .unwrap();
        assert!(again.status.success());
        drop(client);
        common::drop_database_blocking(&database);
    }
}

#[test]
fn migrate_without_a_database_names_it_and_exits_78() {
    let output = base_command()
        .arg("migrate")
        .env("APP_ENV", "production")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("DATABASE_URL: required when APP_ENV=production"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("TELNYX_API_KEY") && !stderr.contains("AUTH_SECRET"),
        "migrate asks for nothing but the database: {stderr}"
    );
}

#[test]
fn config_check_names_every_missing_production_variable_and_exits_78() {
    let output = base_command()
        .args(["config", "check"])
        .env("APP_ENV", "production")
        .env("ALLOWED_ORIGINS", "*")
        .env("WEBHOOK_BASE_URL", "http://edge.example.com")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78), "EX_CONFIG");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for variable in [
        "PUBLIC_BASE_URL",
        "DATABASE_URL",
        "AUTH_SECRET",
        "R2_ENDPOINT",
        "R2_ACCESS_KEY_ID",
        "R2_SECRET_ACCESS_KEY",
        "R2_BUCKET",
        "TELNYX_API_KEY",
        "TELNYX_PUBLIC_KEY",
        "TELNYX_CONNECTION_ID",
        "ASSEMBLYAI_API_KEY",
        "ASSEMBLYAI_WEBHOOK_SECRET",
        "DEEPL_API_KEY",
        "OPENAI_API_KEY",
        "ELEVENLABS_API_KEY",
        "EDGE_SHARED_SECRET",
        "METRICS_TOKEN",
    ] {
        assert!(
            stderr.contains(&format!("{variable}: required when APP_ENV=production")),
            "{variable} not named:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("ALLOWED_ORIGINS: a bare \"*\" is refused"),
        "{stderr}"
    );
    assert!(
        stderr.contains("WEBHOOK_BASE_URL: must be https outside development"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing but the problems");
}

#[test]
fn config_check_passes_a_complete_production_environment_without_connecting() {
    // Hosts that do not resolve: the check must not try to reach any of them.
    let output = base_command()
        .args(["config", "check"])
        .envs(common::PRODUCTION_ENV.iter().copied())
        .env(
            "DATABASE_URL",
            "postgres://u:p@db.callbridge.invalid/app?sslmode=require",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("configuration is valid for APP_ENV=production"),
        "{stdout}"
    );
    assert!(
        stdout.contains("https://edge.callbridge.invalid/"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("0123456789abcdef"),
        "no secret in the summary"
    );
}

/// The first day: the binary started exactly as `make dev` starts it (the `all` role,
/// development defaults, migrations at start on an empty database), the Telnyx simulator
/// playing the far end as `callbridge sim` does. A call placed through the API is answered,
/// hung up and ends — every step a verified webhook processed by the worker inside that one
/// process, with nothing else started and no job run by the test.
#[cfg(feature = "sim")]
#[tokio::test]
async fn make_dev_takes_a_simulated_call_through_its_whole_life() {
    use callbridge::sim::telnyx::{Autopilot, TelnyxSim};
    use serde_json::{Value, json};

    let dev_script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/dev.sh")).unwrap();
    assert!(
        dev_script.contains(r#"role="${CALLBRIDGE_ROLE:-all}""#),
        "make dev must run the `all` role (HTTP and the worker) — this test starts it that way"
    );

    callbridge::tls::install_crypto_provider();
    let sim = TelnyxSim::start("sim-telnyx-key", 0).await.unwrap();
    sim.hold_dev_pool("sim-connection");
    sim.set_autopilot(Some(Autopilot {
        answer_after: Duration::from_millis(300),
        hangup_after: None,
    }));
    let database = empty_database().await;
    let bucket = format!(
        "cbt-dev-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let public_key = sim.public_key_base64();
    // `make dev` serves on PORT 8080 with PUBLIC_BASE_URL http://localhost:8080, the URL the
    // webhooks are sent back to; a free port here, so PUBLIC_BASE_URL names it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    // .ci/dev.sh's defaults, with this test's port, database and bucket, and the variables
    // `callbridge sim` prints.
    let env: Vec<(&str, String)> = vec![
        ("APP_ENV", "development".into()),
        ("LOG_FORMAT", "json".into()),
        ("BIND_ADDRESS", "127.0.0.1".into()),
        ("PORT", port.to_string()),
        ("PUBLIC_BASE_URL", base.clone()),
        ("DATABASE_URL", common::database_url(&database)),
        ("R2_ENDPOINT", common::s3_endpoint()),
        ("R2_ACCESS_KEY_ID", common::s3_access_key()),
        ("R2_SECRET_ACCESS_KEY", common::s3_secret_key()),
        ("R2_BUCKET", bucket),
        ("TELNYX_API_KEY", "sim-telnyx-key".into()),
        ("TELNYX_PUBLIC_KEY", public_key),
        ("TELNYX_CONNECTION_ID", "sim-connection".into()),
        ("TELNYX_API_BASE", sim.api_base()),
    ];
    let mut running = Running::start_role("all", &env);
    assert_eq!(running.port(), port);

    let db = connect(&database).await;
    let user: i32 = db
        .query_one(
            "insert into authjs.users (name, email) values ('Newcomer', 'newcomer@example.com') returning id",
            &[],
        )
        .await
        .expect("make dev created the development Auth.js tables")
        .get("id");
    let token = uuid::Uuid::new_v4().to_string();
    db.execute(
        r#"insert into authjs.sessions ("userId", expires, "sessionToken") values ($1, now() + interval '1 hour', $2)"#,
        &[&user, &token],
    )
    .await
    .unwrap();

    let http = reqwest::Client::new();
    let created = http
        .post(format!("{base}/api/phone-numbers"))
        .bearer_auth(&token)
        .json(&json!({"number": "+14155550100"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let placed = http
        .post(format!("{base}/api/calls"))
        .bearer_auth(&token)
        .json(&json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en", "target_language": "de"}))
        .send()
        .await
        .unwrap();
    let status = placed.status();
    let call: Value = placed.json().await.unwrap();
    assert!(status.is_success(), "{status}: {call}");
    let call_id = call["id"].as_str().expect("a call").to_owned();

    let status_of = || {
        let (http, base, token, call_id) = (&http, &base, &token, &call_id);
        async move {
            let call: Value = http
                .get(format!("{base}/api/calls/{call_id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            call["status"].as_str().unwrap_or_default().to_owned()
        }
    };
    let wait_for = |wanted: &'static str| {
        let status_of = &status_of;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let status = status_of().await;
                if status == wanted {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the call stayed {status}, never {wanted}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // call.initiated and call.answered: webhooks verified, stored, and processed by the
    // worker running in the same process.
    wait_for("answered").await;
    let hangup = http
        .post(format!("{base}/api/calls/{call_id}/hangup"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(hangup.status().is_success(), "{}", hangup.status());
    wait_for("ended").await;

    let inbox = db
        .query_one(
            "select count(*) as stored, count(processed_at) as processed from webhook_inbox where provider = 'telnyx'",
            &[],
        )
        .await
        .unwrap();
    let (stored, processed): (i64, i64) = (inbox.get("stored"), inbox.get("processed"));
    assert!(
        stored >= 4,
        "initiated, answered, streaming.started, hangup: {stored}"
    );
    assert_eq!(processed, stored, "every stored webhook was processed");
    let unfinished: i64 = db
        .query_one(
            "select count(*) from jobs where kind = $1 and status <> 'done'",
            &[&"telnyx.event"],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(unfinished, 0, "every webhook job ran to completion");
    let kinds: Vec<String> = db
        .query(
            "select kind from call_events where call_id = $1 order by seq",
            &[&uuid::Uuid::parse_str(&call_id).unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get("kind"))
        .collect();
    for kind in [
        "call.created",
        "call.initiated",
        "call.answered",
        "call.hangup",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }

    running.terminate();
    let (status, output) = running.wait();
    assert!(status.success(), "{output}");
    drop(db);
    common::drop_database_blocking(&database);
}

/// `make demo` as a newcomer runs it: the binary's `demo` role places one interpreted call
/// through the real API against the simulators and fails unless the conversation came out
/// whole (the call ended, each party's turns translated and played to the other, the remote
/// party's language detected). It once answered 403: the demo's dialing policy allowed a
/// country the remote party was not in.
#[cfg(feature = "sim")]
#[test]
fn make_demo_runs_one_interpreted_call_end_to_end() {
    let output = base_command()
        .args(["demo", "--database-url", &common::admin_database_url()])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("agent → remote"), "{stdout}");
    assert!(
        stdout.contains("· legs: agent ended (en), remote ended (es)"),
        "{stdout}"
    );
}
