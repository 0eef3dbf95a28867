//! The `callbridge` binary as an operator runs it: configuration errors, secrets kept out of
//! logs, and graceful shutdown on SIGTERM.

mod common;

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
        let mut command = base_command();
        command
            .arg("serve")
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
