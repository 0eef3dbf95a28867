//! Interpreted calls as the multi-replica stories set them up: the simulated vendors
//! (AssemblyAI, DeepL, ElevenLabs), a second replica on the same database, and a call
//! placed by Ada (agent in English, remote party in Spanish) with both legs answered and
//! streaming.
#![cfg(feature = "sim")]

use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx::RecordedCommand;
use callbridge::sim::translation::{self as sim, TranslationSim};
use serde_json::{Value, json};
use uuid::Uuid;

use super::TestApp;
use super::authjs::Session;
use super::telnyx::TelnyxApp;

/// The simulated vendors of an interpreted call, and the settings that point a replica at
/// them.
pub struct Vendors {
    pub aai: AssemblyAiSim,
    pub providers: TranslationSim,
    env: Vec<(&'static str, String)>,
}

impl Vendors {
    /// Started, with each party's words scripted per speech model (English for the agent,
    /// Spanish for the remote party).
    pub async fn start(agent_says: &[&str], remote_says: &[&str]) -> Self {
        let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
        if !agent_says.is_empty() {
            aai.set_model_script("universal-streaming-english", "en", agent_says);
        }
        if !remote_says.is_empty() {
            aai.set_model_script("universal-streaming-multilingual", "es", remote_says);
        }
        let providers = TranslationSim::start(0).await.unwrap();
        let base = providers.base();
        let env = vec![
            ("ASSEMBLYAI_API_KEY", "sim-aai-key".to_owned()),
            ("ASSEMBLYAI_STREAMING_URL", aai.streaming_url()),
            ("DEEPL_API_KEY", sim::DEEPL_KEY.to_owned()),
            ("DEEPL_API_BASE", base.clone()),
            ("ELEVENLABS_API_KEY", sim::ELEVENLABS_KEY.to_owned()),
            ("ELEVENLABS_API_BASE", base),
        ];
        Self {
            aai,
            providers,
            env,
        }
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// Replica A, with the Telnyx simulator.
    pub async fn replica(&self) -> TelnyxApp {
        TelnyxApp::spawn_with(&self.env()).await
    }

    /// Another replica on `a`'s database, talking to the same simulators.
    pub async fn second_replica(&self, a: &TelnyxApp) -> TestApp {
        let mut env = self.env();
        let (key, telnyx_base) = (a.sim.public_key_base64(), a.sim.api_base());
        env.extend([
            ("TELNYX_API_KEY", "sim-api-key"),
            ("TELNYX_PUBLIC_KEY", key.as_str()),
            ("TELNYX_CONNECTION_ID", "sim-connection"),
            ("TELNYX_API_BASE", telnyx_base.as_str()),
        ]);
        TestApp::spawn_on(&a.app.database, &env).await
    }
}

/// A call placed on `a` whose legs have both answered and started streaming.
pub struct AnsweredCall {
    pub ada: Session,
    pub call_id: Uuid,
    /// The agent's leg, then the remote party's.
    pub leg_ids: Vec<Uuid>,
    pub agent: RecordedCommand,
    pub remote: RecordedCommand,
}

/// Ada places an interpreted call (agent `en`, remote `es`, `original_audio` as given) and
/// Telnyx reports each leg initiated, answered and streaming.
pub async fn place_answered(a: &TelnyxApp, original_audio: &str) -> AnsweredCall {
    let ada = a.app.sign_in("Ada").await;
    a.own_number(&ada, "+14155550100").await;
    let call: Value = a
        .app
        .request_as(reqwest::Method::POST, &ada, "/api/calls")
        .json(&json!({
            "from": "+14155550100",
            "agent": {"number": "+14155550111", "language": "en"},
            "remote": {"number": "+14155550122", "language": "es"},
            "original_audio": original_audio,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let call_id: Uuid = call["id"].as_str().unwrap().parse().unwrap();
    let leg_ids = call["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let agent = a.sim.dial_of_leg("agent").unwrap();
    a.deliver_leg(&agent, 0..3, "callee").await;
    let remote = a.sim.dial_of_leg("remote").unwrap();
    a.deliver_leg(&remote, 0..3, "callee").await;
    AnsweredCall {
        ada,
        call_id,
        leg_ids,
        agent,
        remote,
    }
}

/// `url` (a stream URL Telnyx was given) on the replica listening on `port`.
pub fn stream_url_on(url: &str, port: u16) -> String {
    let token = url.rsplit('/').next().unwrap();
    format!("ws://127.0.0.1:{port}/media/telnyx/{token}")
}
