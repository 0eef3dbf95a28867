//! DeepL `POST /v2/translate` (docs/PROVIDERS.md §4.1): `Authorization: DeepL-Auth-Key`, the host
//! chosen from the key (`:fx` = free), deprecated targets `EN`/`PT` mapped to regional codes,
//! ≤ 50 texts and ≤ 128 KiB per request, 429 and 5xx retried with backoff, 456 (quota) never
//! retried — the caller fails over.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{DeepLConfig, Secret};
use crate::retry::{self, Failure, Policy};

pub const MAX_TEXTS: usize = 50;
pub const MAX_BODY_BYTES: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DeepLError {
    #[error("DeepL quota exceeded (456)")]
    Quota,
    #[error("DeepL refused the request ({0})")]
    Rejected(u16),
    #[error("DeepL is unavailable: {0}")]
    Unavailable(String),
}

/// DeepL wants regional targets for English and Portuguese; sources never have a region.
pub fn target_code(language: &str) -> String {
    let upper = language.to_ascii_uppercase();
    match upper.as_str() {
        "EN" => "EN-US".into(),
        "PT" => "PT-BR".into(),
        _ => upper,
    }
}

pub fn source_code(language: &str) -> String {
    language
        .split('-')
        .next()
        .unwrap_or(language)
        .to_ascii_uppercase()
}

#[derive(Clone)]
pub struct DeepLClient {
    http: reqwest::Client,
    base: String,
    key: Secret<String>,
    attempts: u32,
}

impl DeepLClient {
    pub fn new(config: &DeepLConfig) -> Self {
        Self {
            http: super::http_client(Duration::from_secs(10)),
            base: config.api_base.as_str().trim_end_matches('/').to_owned(),
            key: config.api_key.clone(),
            attempts: 4,
        }
    }

    /// Translates `texts` in order, splitting into requests within DeepL's limits.
    pub async fn translate(
        &self,
        texts: &[String],
        source: Option<&str>,
        target: &str,
    ) -> Result<Vec<String>, DeepLError> {
        let mut out = Vec::with_capacity(texts.len());
        let mut batch: Vec<&String> = Vec::new();
        let mut bytes = 0;
        for text in texts {
            if !batch.is_empty()
                && (batch.len() == MAX_TEXTS || bytes + text.len() + 64 > MAX_BODY_BYTES)
            {
                out.extend(self.request(&batch, source, target).await?);
                batch.clear();
                bytes = 0;
            }
            bytes += text.len() + 8;
            batch.push(text);
        }
        if !batch.is_empty() {
            out.extend(self.request(&batch, source, target).await?);
        }
        Ok(out)
    }

    async fn request(
        &self,
        texts: &[&String],
        source: Option<&str>,
        target: &str,
    ) -> Result<Vec<String>, DeepLError> {
        let mut body = json!({"text": texts, "target_lang": target_code(target), "model_type": "latency_optimized"});
        if let Some(source) = source {
            body["source_lang"] = json!(source_code(source));
        }
        // DeepL's SDK waits 1 s × 1.6^n; we start lower because a live call is waiting.
        retry::run(
            &Policy::provider(self.attempts),
            "a DeepL translation",
            |_| async {
                let response = self
                    .http
                    .post(format!("{}/v2/translate", self.base))
                    .header(
                        "authorization",
                        format!("DeepL-Auth-Key {}", self.key.expose()),
                    )
                    .json(&body)
                    .send()
                    .await
                    .map_err(|error| {
                        Failure::Transient(DeepLError::Unavailable(error.to_string()))
                    })?;
                let status = response.status().as_u16();
                match status {
                    200 => {
                        let value: Value = response
                            .json()
                            .await
                            .map_err(|e| Failure::Final(DeepLError::Unavailable(e.to_string())))?;
                        let translations = value["translations"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        if translations.len() != texts.len() {
                            return Err(Failure::Final(DeepLError::Unavailable(
                                "translation count mismatch".into(),
                            )));
                        }
                        Ok(translations
                            .iter()
                            .map(|t| t["text"].as_str().unwrap_or_default().to_owned())
                            .collect())
                    }
                    456 => Err(Failure::Final(DeepLError::Quota)),
                    429 | 500..=599 => Err(Failure::Transient(DeepLError::Unavailable(format!(
                        "status {status}"
                    )))),
                    other => Err(Failure::Final(DeepLError::Rejected(other))),
                }
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deprecated_targets_get_regions_and_sources_lose_them() {
        assert_eq!(target_code("en"), "EN-US");
        assert_eq!(target_code("pt"), "PT-BR");
        assert_eq!(target_code("en-gb"), "EN-GB");
        assert_eq!(target_code("de"), "DE");
        assert_eq!(source_code("pt-BR"), "PT");
    }
}
