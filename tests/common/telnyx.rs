//! A `TestApp` wired to the Telnyx simulator, plus helpers to drain the job queue.
#![cfg(feature = "sim")]

use callbridge::jobs::{Worker, WorkerConfig, handlers};
use callbridge::sim::telnyx::TelnyxSim;

use super::TestApp;
use super::authjs::Session;

pub struct TelnyxApp {
    pub app: TestApp,
    pub sim: TelnyxSim,
}

impl TelnyxApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let sim = TelnyxSim::start("sim-api-key", 0).await.unwrap();
        let base = sim.api_base();
        let key = sim.public_key_base64();
        let mut overrides = vec![
            ("TELNYX_API_KEY", "sim-api-key"),
            ("TELNYX_PUBLIC_KEY", key.as_str()),
            ("TELNYX_CONNECTION_ID", "sim-connection"),
            ("TELNYX_API_BASE", base.as_str()),
        ];
        overrides.extend_from_slice(extra);
        let app = TestApp::spawn_with(&overrides).await;
        Self { app, sim }
    }

    pub fn webhook_url(&self) -> String {
        self.app.url("/webhooks/telnyx")
    }

    /// Runs every ready job now (what `callbridge worker` does continuously).
    pub async fn drain(&self) -> usize {
        drain(&self.app).await
    }

    /// Delivers each of Telnyx's `events` (each must be acknowledged 200), then runs the
    /// jobs they queued.
    pub async fn deliver_all(&self, events: &[serde_json::Value]) {
        for event in events {
            assert_eq!(
                self.sim.deliver(&self.webhook_url(), event).await.unwrap(),
                200
            );
        }
        self.drain().await;
    }

    /// Telnyx's events for the leg `dial` placed (`range` of initiated, answered,
    /// streaming.started, hangup, as `source` sees them), delivered and processed.
    pub async fn deliver_leg(
        &self,
        dial: &callbridge::sim::telnyx::RecordedCommand,
        range: std::ops::Range<usize>,
        source: &str,
    ) {
        self.deliver_all(&self.sim.leg_lifecycle(dial, source)[range])
            .await;
    }

    /// Registers `number` for the session's personal organisation: the operator adds it to
    /// the platform's Telnyx account (on the app's connection), then the user claims it.
    pub async fn own_number(&self, session: &Session, number: &str) {
        self.sim.hold_number(number, Some("sim-connection"));
        let response = self
            .app
            .request_as(reqwest::Method::POST, session, "/api/phone-numbers")
            .json(&serde_json::json!({"number": number}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
}

pub fn test_worker(app: &TestApp) -> Worker {
    Worker::new(
        app.state.clone(),
        handlers::registry(),
        WorkerConfig {
            base_backoff: std::time::Duration::from_millis(5),
            ..WorkerConfig::default()
        },
    )
}

pub async fn drain(app: &TestApp) -> usize {
    test_worker(app).drain().await.expect("draining the queue")
}

/// One party of a call played into its media stream as the interpreted-call stories do: the
/// inbound track only, in real time, `pattern` as speech-like audio (milliseconds, speaking
/// or not), the socket kept open `linger_ms` after the audio.
pub fn party(
    url: String,
    pattern: &[(u64, bool)],
    linger_ms: u64,
) -> callbridge::sim::telnyx_media::PlayOptions {
    use callbridge::sim::telnyx_media::{self, PlayOptions};
    let mut options = PlayOptions::new(url, telnyx_media::speech_like(pattern));
    options.inbound_only = true;
    options.realtime = true;
    options.linger = std::time::Duration::from_millis(linger_ms);
    options
}
