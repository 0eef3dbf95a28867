//! ElevenLabs streaming TTS (docs/PROVIDERS.md §3): `POST /v1/text-to-speech/{voice}/stream?output_format=…`
//! with `xi-api-key`; the response body is raw audio streamed as it is generated. For calls we
//! ask for `ulaw_8000`: headerless µ-law that goes into Telnyx PCMU frames as is.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use serde_json::json;

use crate::config::{ElevenLabsConfig, Secret};

/// Formats we accept from clients, with the content type we answer with.
pub const FORMATS: &[(&str, &str)] = &[
    ("ulaw_8000", "audio/basic"),
    ("alaw_8000", "audio/x-alaw-basic"),
    ("pcm_16000", "audio/L16;rate=16000"),
    ("pcm_24000", "audio/L16;rate=24000"),
    ("mp3_44100_128", "audio/mpeg"),
    ("mp3_22050_32", "audio/mpeg"),
    ("opus_48000_64", "audio/ogg"),
];

pub fn content_type(format: &str) -> Option<&'static str> {
    FORMATS
        .iter()
        .find(|(name, _)| *name == format)
        .map(|(_, ct)| *ct)
}

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("ElevenLabs refused the request ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    #[error("ElevenLabs is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct ElevenLabsClient {
    http: reqwest::Client,
    base: String,
    key: Secret<String>,
    pub default_voice: String,
    pub default_model: String,
}

impl ElevenLabsClient {
    pub fn new(config: &ElevenLabsConfig, default_voice: &str, default_model: &str) -> Self {
        Self {
            // No overall timeout: a long sentence streams for seconds. Connect and first byte
            // are bounded by `first_byte_timeout`.
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .user_agent(concat!("callbridge/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            base: config.api_base.as_str().trim_end_matches('/').to_owned(),
            key: config.api_key.clone(),
            default_voice: default_voice.to_owned(),
            default_model: default_model.to_owned(),
        }
    }

    /// Starts synthesis and returns the audio as a stream of chunks, as they arrive.
    pub async fn stream(
        &self,
        text: &str,
        voice: Option<&str>,
        language: Option<&str>,
        format: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, TtsError>> + Send + 'static + use<>, TtsError>
    {
        // `format` is one of our known names (checked by callers), safe in a query string.
        let voice = voice.unwrap_or(&self.default_voice);
        let voice: String = url::form_urlencoded::byte_serialize(voice.as_bytes()).collect();
        let mut body = json!({"text": text, "model_id": self.default_model});
        if let Some(language) = language {
            body["language_code"] = json!(language.split('-').next().unwrap_or(language));
        }
        let request = self
            .http
            .post(format!(
                "{}/v1/text-to-speech/{voice}/stream?output_format={format}&optimize_streaming_latency=3",
                self.base
            ))
            .header("xi-api-key", self.key.expose())
            .json(&body)
            .send();
        let response = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .map_err(|_| TtsError::Unavailable("no response within 10 s".into()))?
            .map_err(|e| TtsError::Unavailable(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            let detail = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            return Err(if status >= 500 || status == 429 {
                TtsError::Unavailable(format!("status {status}"))
            } else {
                TtsError::Rejected { status, detail }
            });
        }
        Ok(response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| TtsError::Unavailable(e.to_string()))))
    }
}
