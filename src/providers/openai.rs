//! OpenAI chat completions as the translation fallback (docs/PROVIDERS.md §4.2): `gpt-4o-mini`,
//! temperature 0, a system prompt that allows the translation only.

use std::time::Duration;

use serde_json::json;

use crate::config::{OpenAiConfig, Secret};
use crate::retry::{self, Failure, Policy};

pub const MODEL: &str = "gpt-4o-mini";

#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    #[error("OpenAI refused the request ({0})")]
    Rejected(u16),
    #[error("OpenAI is unavailable: {0}")]
    Unavailable(String),
}

/// A translation and the tokens OpenAI billed for it (the response's `usage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base: String,
    key: Secret<String>,
}

impl OpenAiClient {
    pub fn new(config: &OpenAiConfig) -> Self {
        Self {
            http: super::http_client(Duration::from_secs(15)),
            base: config.api_base.as_str().trim_end_matches('/').to_owned(),
            key: config.api_key.clone(),
        }
    }

    pub async fn translate(
        &self,
        text: &str,
        source: Option<&str>,
        target: &str,
    ) -> Result<Completion, OpenAiError> {
        let from = source.map(|s| format!(" from {s}")).unwrap_or_default();
        let body = json!({
            "model": MODEL,
            "temperature": 0,
            "max_completion_tokens": (text.len() / 2 + 64).min(4096),
            "messages": [
                {"role": "system", "content": format!("Translate the user text{from} to {target}. Reply with the translation only.")},
                {"role": "user", "content": text},
            ],
        });
        retry::run(&Policy::provider(3), "an OpenAI translation", |_| async {
            let response = self
                .http
                .post(format!("{}/chat/completions", self.base))
                .bearer_auth(self.key.expose())
                .json(&body)
                .send()
                .await
                .map_err(|error| Failure::Transient(OpenAiError::Unavailable(error.to_string())))?;
            let status = response.status().as_u16();
            let value: serde_json::Value = response.json().await.unwrap_or_default();
            match status {
                200 => {
                    let text = value["choices"][0]["message"]["content"]
                        .as_str()
                        .map(|t| t.trim().to_owned())
                        .ok_or_else(|| {
                            Failure::Final(OpenAiError::Unavailable("no content".into()))
                        })?;
                    Ok(Completion {
                        text,
                        prompt_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                        completion_tokens: value["usage"]["completion_tokens"]
                            .as_u64()
                            .unwrap_or(0),
                    })
                }
                // 429 is a rate limit (retry) unless the account is out of quota (do not).
                429 if value["error"]["code"] == "insufficient_quota" => {
                    Err(Failure::Final(OpenAiError::Rejected(429)))
                }
                429 | 500..=599 => Err(Failure::Transient(OpenAiError::Unavailable(format!(
                    "status {status}"
                )))),
                other => Err(Failure::Final(OpenAiError::Rejected(other))),
            }
        })
        .await
    }
}
