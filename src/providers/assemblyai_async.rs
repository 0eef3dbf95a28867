//! AssemblyAI async (pre-recorded) transcripts: submit and fetch (docs/PROVIDERS.md §2.3).
//!
//! `POST /v2/transcript` with `audio_url` (a presigned GET of ours), `webhook_url` and the
//! auth header AssemblyAI echoes back on the webhook, `multichannel` for dual-channel Telnyx
//! recordings; `GET /v2/transcript/{id}` once the webhook says it is done. The key goes bare
//! in `Authorization`. Submitting is not idempotent, so it is never retried here (the job
//! records the transcript id before anything else can fail); fetching is, and is retried.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::config::{AssemblyAiConfig, Secret};
use crate::retry::{self, Failure, Policy};

/// The header AssemblyAI sends back on our webhook, carrying `ASSEMBLYAI_WEBHOOK_SECRET`.
pub const WEBHOOK_AUTH_HEADER: &str = "x-callbridge-webhook-secret";

#[derive(Debug, thiserror::Error)]
pub enum AsyncError {
    #[error("AssemblyAI request failed: {0}")]
    Transport(String),
    #[error("AssemblyAI answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("AssemblyAI answered something we cannot read: {0}")]
    Decode(String),
}

impl AsyncError {
    /// 4xx other than 408/429 will not get better by retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(self, AsyncError::Status { status, .. }
            if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// `POST /v2/transcript` body (the fields we use).
#[derive(Debug, Clone, Serialize)]
pub struct SubmitRequest {
    pub audio_url: String,
    pub webhook_url: String,
    pub webhook_auth_header_name: String,
    pub webhook_auth_header_value: String,
    pub multichannel: bool,
    pub language_detection: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub speaker_labels: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Submitted {
    pub id: String,
    pub status: String,
}

/// `GET /v2/transcript/{id}` (times in ms).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Transcript {
    pub id: String,
    /// `queued`, `processing`, `completed` or `error`.
    pub status: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub words: Option<Vec<Value>>,
    #[serde(default)]
    pub utterances: Option<Vec<Value>>,
    #[serde(default)]
    pub language_code: Option<String>,
    /// Seconds (AssemblyAI reports the duration in seconds).
    #[serde(default)]
    pub audio_duration: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct AsyncClient {
    http: reqwest::Client,
    base: Url,
    key: Secret<String>,
}

impl AsyncClient {
    pub fn new(config: &AssemblyAiConfig) -> Self {
        Self {
            http: super::http_client(Duration::from_secs(30)),
            base: config.api_base.clone(),
            key: config.api_key.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }

    /// Submits once (not retried: a second submit is a second transcript).
    pub async fn submit(&self, request: &SubmitRequest) -> Result<Submitted, AsyncError> {
        let response = self
            .http
            .post(self.url("/v2/transcript"))
            .header("authorization", self.key.expose())
            .json(request)
            .send()
            .await
            .map_err(|e| AsyncError::Transport(e.to_string()))?;
        decode(response).await
    }

    /// Fetches a transcript in up to three attempts (transport errors, decoding, 408, 429 and
    /// 5xx are retried).
    pub async fn get(&self, id: &str) -> Result<Transcript, AsyncError> {
        let encoded = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
        let url = self.url(&format!("/v2/transcript/{encoded}"));
        retry::run(
            &Policy::provider(3),
            "fetching an AssemblyAI transcript",
            |_| async {
                let result = match self
                    .http
                    .get(&url)
                    .header("authorization", self.key.expose())
                    .send()
                    .await
                {
                    Ok(response) => decode(response).await,
                    Err(error) => Err(AsyncError::Transport(error.to_string())),
                };
                result.map_err(|error| {
                    if error.is_permanent() {
                        Failure::Final(error)
                    } else {
                        Failure::Transient(error)
                    }
                })
            },
        )
        .await
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, AsyncError> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| AsyncError::Transport(e.to_string()))?;
    if !status.is_success() {
        return Err(AsyncError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| AsyncError::Decode(e.to_string()))
}
