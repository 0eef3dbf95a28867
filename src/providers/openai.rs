//! OpenAI chat completions as the translation fallback (docs/PROVIDERS.md §4.2): `gpt-4o-mini`,
//! temperature 0, a system prompt that allows the translation only.

use std::time::Duration;

use serde_json::json;

use crate::config::{OpenAiConfig, Secret};

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
        let mut last = String::new();
        for attempt in 1..=3u32 {
            if attempt > 1 {
                tokio::time::sleep(super::retry_delay(attempt - 1)).await;
            }
            let response = match self
                .http
                .post(format!("{}/chat/completions", self.base))
                .bearer_auth(self.key.expose())
                .json(&body)
                .send()
                .await
            {
                Ok(response) => response,
                Err(error) => {
                    last = error.to_string();
                    continue;
                }
            };
            let status = response.status().as_u16();
            let value: serde_json::Value = response.json().await.unwrap_or_default();
            match status {
                200 => {
                    let text = value["choices"][0]["message"]["content"]
                        .as_str()
                        .map(|t| t.trim().to_owned())
                        .ok_or_else(|| OpenAiError::Unavailable("no content".into()))?;
                    return Ok(Completion {
                        text,
                        prompt_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                        completion_tokens: value["usage"]["completion_tokens"]
                            .as_u64()
                            .unwrap_or(0),
                    });
                }
                // 429 is a rate limit (retry) unless the account is out of quota (do not).
                429 if value["error"]["code"] == "insufficient_quota" => {
                    return Err(OpenAiError::Rejected(429));
                }
                429 | 500..=599 => last = format!("status {status}"),
                other => return Err(OpenAiError::Rejected(other)),
            }
        }
        Err(OpenAiError::Unavailable(last))
    }
}
