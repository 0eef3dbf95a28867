//! Translation behind a trait: DeepL first, OpenAI `gpt-4o-mini` as the fallback, a circuit
//! breaker around DeepL (a 456 quota error or repeated failures open it; it half-opens after
//! a cool-down), and a Postgres cache keyed by organisation, text and language pair.
//!
//! The cache is per organisation on purpose: a shared one would let any tenant learn, from
//! `engine: "cache"` or from the latency, that an exact sentence was spoken in another
//! tenant's call. Its rows are purged with the organisation's recording retention (`cron`).

pub mod breaker;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::db::Db;
use crate::ids::OrgId;
use crate::providers::deepl::{DeepLClient, DeepLError};
use crate::providers::openai::OpenAiClient;
use breaker::Breaker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Deepl,
    Openai,
    Cache,
}

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("no translation engine is configured (set DEEPL_API_KEY or OPENAI_API_KEY)")]
    NotConfigured,
    #[error("translation failed: {0}")]
    Failed(String),
}

/// What an engine returned: the translations, and the tokens it billed (OpenAI; DeepL
/// bills the characters sent, which the service counts itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineOutput {
    pub texts: Vec<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What one `translate` call cost, for the usage ledger (docs/USAGE.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranslationUsage {
    /// Characters sent to DeepL (what DeepL bills).
    pub deepl_characters: u64,
    pub openai_prompt_tokens: u64,
    pub openai_completion_tokens: u64,
    /// Characters answered from the cache: no vendor, no cost.
    pub cached_characters: u64,
}

/// Translations in order, which engine produced them (`cache` when all were cached), and
/// what they cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub texts: Vec<String>,
    pub engine: Engine,
    pub usage: TranslationUsage,
}

fn characters(texts: &[String]) -> u64 {
    texts.iter().map(|t| t.chars().count() as u64).sum()
}

/// Anything that translates a batch of texts.
pub trait Translator: Send + Sync {
    fn translate<'a>(
        &'a self,
        texts: &'a [String],
        source: Option<&'a str>,
        target: &'a str,
    ) -> BoxFuture<'a, Result<EngineOutput, String>>;
}

impl Translator for DeepLClient {
    fn translate<'a>(
        &'a self,
        texts: &'a [String],
        source: Option<&'a str>,
        target: &'a str,
    ) -> BoxFuture<'a, Result<EngineOutput, String>> {
        Box::pin(async move {
            DeepLClient::translate(self, texts, source, target)
                .await
                .map(|texts| EngineOutput {
                    texts,
                    ..EngineOutput::default()
                })
                .map_err(|e| match e {
                    DeepLError::Quota => "quota".to_owned(),
                    other => other.to_string(),
                })
        })
    }
}

impl Translator for OpenAiClient {
    fn translate<'a>(
        &'a self,
        texts: &'a [String],
        source: Option<&'a str>,
        target: &'a str,
    ) -> BoxFuture<'a, Result<EngineOutput, String>> {
        Box::pin(async move {
            let mut out = EngineOutput {
                texts: Vec::with_capacity(texts.len()),
                ..EngineOutput::default()
            };
            for text in texts {
                let completion = OpenAiClient::translate(self, text, source, target)
                    .await
                    .map_err(|e| e.to_string())?;
                out.texts.push(completion.text);
                out.prompt_tokens += completion.prompt_tokens;
                out.completion_tokens += completion.completion_tokens;
            }
            Ok(out)
        })
    }
}

pub struct TranslationService {
    db: Db,
    primary: Option<Arc<dyn Translator>>,
    fallback: Option<Arc<dyn Translator>>,
    breaker: Breaker,
}

fn cache_key(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

impl TranslationService {
    pub fn new(
        db: Db,
        primary: Option<Arc<dyn Translator>>,
        fallback: Option<Arc<dyn Translator>>,
        breaker: Breaker,
    ) -> Self {
        Self {
            db,
            primary,
            fallback,
            breaker,
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Translations in order, which engine produced them (`cache` when all were cached),
    /// and what they cost.
    pub async fn translate(
        &self,
        organisation_id: OrgId,
        texts: &[String],
        source: Option<&str>,
        target: &str,
    ) -> Result<Translated, TranslateError> {
        if self.primary.is_none() && self.fallback.is_none() {
            return Err(TranslateError::NotConfigured);
        }
        let source_key = source.unwrap_or("auto").to_owned();
        let mut results: Vec<Option<String>> = vec![None; texts.len()];
        if let Ok(client) = self.db.client().await {
            let keys: Vec<Vec<u8>> = texts.iter().map(|t| cache_key(t)).collect();
            if let Ok(rows) = client
                .query(
                    "select text_sha256, translation from translation_cache
                     where organisation_id = $4 and text_sha256 = any($1)
                       and source_language = $2 and target_language = $3",
                    &[&keys, &source_key, &target, &organisation_id],
                )
                .await
            {
                for row in rows {
                    let key: Vec<u8> = row.get("text_sha256");
                    let translation: String = row.get("translation");
                    for (i, k) in keys.iter().enumerate() {
                        if *k == key {
                            results[i] = Some(translation.clone());
                        }
                    }
                }
            }
        }
        let missing: Vec<usize> = (0..texts.len()).filter(|i| results[*i].is_none()).collect();
        let mut usage = TranslationUsage {
            cached_characters: (0..texts.len())
                .filter(|i| results[*i].is_some())
                .map(|i| texts[i].chars().count() as u64)
                .sum(),
            ..TranslationUsage::default()
        };
        if missing.is_empty() {
            return Ok(Translated {
                texts: results.into_iter().map(Option::unwrap_or_default).collect(),
                engine: Engine::Cache,
                usage,
            });
        }
        let pending: Vec<String> = missing.iter().map(|i| texts[*i].clone()).collect();
        let (output, engine) = self.uncached(&pending, source, target).await?;
        match engine {
            Engine::Deepl => usage.deepl_characters = characters(&pending),
            Engine::Openai => {
                usage.openai_prompt_tokens = output.prompt_tokens;
                usage.openai_completion_tokens = output.completion_tokens;
            }
            Engine::Cache => {}
        }
        let translated = output.texts;
        self.remember(
            organisation_id,
            &pending,
            &translated,
            source_key,
            target,
            engine,
        );
        for (index, translation) in missing.into_iter().zip(translated) {
            results[index] = Some(translation);
        }
        Ok(Translated {
            texts: results.into_iter().map(Option::unwrap_or_default).collect(),
            engine,
            usage,
        })
    }

    /// Writes new translations to the cache in the background, in one statement: the caller
    /// (a listener waiting for speech) must not wait for a cache write, and a lost one only
    /// costs a provider call later.
    fn remember(
        &self,
        organisation_id: OrgId,
        texts: &[String],
        translations: &[String],
        source_key: String,
        target: &str,
        engine: Engine,
    ) {
        let keys: Vec<Vec<u8>> = texts.iter().map(|t| cache_key(t)).collect();
        let translations = translations.to_vec();
        let (db, target, engine) = (
            self.db.clone(),
            target.to_owned(),
            format!("{engine:?}").to_lowercase(),
        );
        tokio::spawn(async move {
            let Ok(client) = db.client().await else {
                return;
            };
            let written = client
                .execute(
                    "insert into translation_cache (organisation_id, text_sha256, source_language, target_language, translation, engine)
                     select $6, key, $2, $3, translation, $5 from unnest($1::bytea[], $4::text[]) as t (key, translation)
                     on conflict do nothing",
                    &[&keys, &source_key, &target, &translations, &engine, &organisation_id],
                )
                .await;
            if let Err(error) = written {
                tracing::warn!(%error, "writing the translation cache failed");
            }
        });
    }

    async fn uncached(
        &self,
        texts: &[String],
        source: Option<&str>,
        target: &str,
    ) -> Result<(EngineOutput, Engine), TranslateError> {
        let mut failure = String::new();
        if let Some(primary) = &self.primary
            && self.breaker.allow()
        {
            match primary.translate(texts, source, target).await {
                Ok(translations) => {
                    self.breaker.success();
                    metrics::counter!("translations_total", "engine" => "deepl").increment(1);
                    return Ok((translations, Engine::Deepl));
                }
                Err(error) => {
                    // A quota error will not heal in seconds: open at once.
                    if error == "quota" {
                        self.breaker.trip();
                    } else {
                        self.breaker.failure();
                    }
                    tracing::warn!(%error, "DeepL failed; trying the fallback");
                    failure = error;
                }
            }
        }
        if let Some(fallback) = &self.fallback {
            let translations = fallback
                .translate(texts, source, target)
                .await
                .map_err(TranslateError::Failed)?;
            metrics::counter!("translations_total", "engine" => "openai").increment(1);
            return Ok((translations, Engine::Openai));
        }
        Err(TranslateError::Failed(if failure.is_empty() {
            "DeepL circuit open and no fallback".into()
        } else {
            failure
        }))
    }
}
