//! `POST /api/translate` (DeepL, OpenAI fallback, cached) and `POST /api/tts` (ElevenLabs,
//! streamed to the client as it arrives). Both scoped to the caller's organisation.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::OrgContext;
use crate::calls;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Json;
use crate::providers::elevenlabs;
use crate::state::AppState;
use crate::translate::{Engine, TranslateError};

/// Per request: DeepL's own text limit, and 16 KiB of text in all.
const MAX_TEXTS: usize = 50;
const MAX_TEXT_BYTES: usize = 16 * 1024;
const MAX_TTS_CHARS: usize = 2_500;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TranslateRequest {
    /// 1–50 texts, 16 KiB in all.
    pub texts: Vec<String>,
    /// Omit to let the engine detect it.
    pub source_language: Option<String>,
    pub target_language: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TranslateResponse {
    pub translations: Vec<String>,
    /// Which engine answered: `deepl`, `openai`, or `cache` (every text was translated before
    /// in this organisation; the cache is never shared between organisations).
    pub engine: Engine,
}

/// Translate texts (DeepL first, OpenAI when DeepL fails or is out of quota).
#[utoipa::path(post, path = "/api/translate", operation_id = "translateTexts", tag = "translation", request_body = TranslateRequest,
    responses(
        (status = 200, description = "Translations in order, and the engine", body = TranslateResponse),
        (status = 413, description = "Too many texts or too much text", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid language codes", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Every engine failed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No engine configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn translate(
    State(state): State<AppState>,
    org: OrgContext,
    Json(body): Json<TranslateRequest>,
) -> Result<Json<TranslateResponse>, ApiError> {
    if body.texts.is_empty()
        || body.texts.len() > MAX_TEXTS
        || body.texts.iter().map(String::len).sum::<usize>() > MAX_TEXT_BYTES
    {
        return Err(ApiError::PayloadTooLarge(format!(
            "send 1 to {MAX_TEXTS} texts, at most {MAX_TEXT_BYTES} bytes in all"
        )));
    }
    if !calls::is_language_code(&body.target_language)
        || body
            .source_language
            .as_deref()
            .is_some_and(|s| !calls::is_language_code(s))
    {
        return Err(ApiError::Unprocessable(
            "languages must be codes like en, de, pt-BR".into(),
        ));
    }
    match state
        .translation
        .translate(
            org.organisation_id,
            &body.texts,
            body.source_language.as_deref(),
            &body.target_language,
        )
        .await
    {
        Ok(translated) => {
            crate::usage::record_translation_request(
                &state.ledger,
                org.organisation_id,
                org.user.id(),
                &translated.usage,
                &body.target_language,
            );
            Ok(Json(TranslateResponse {
                translations: translated.texts,
                engine: translated.engine,
            }))
        }
        Err(TranslateError::NotConfigured) => Err(ApiError::ProviderDisabled(
            crate::config::ProviderDisabled {
                provider: "DeepL or OpenAI",
                variables: &["DEEPL_API_KEY", "OPENAI_API_KEY"],
            },
        )),
        Err(error) => Err(ApiError::BadGateway(error.to_string())),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtsRequest {
    pub text: String,
    pub voice_id: Option<String>,
    pub language: Option<String>,
    /// `ulaw_8000` (default, what calls use), `alaw_8000`, `pcm_16000`, `pcm_24000`,
    /// `mp3_44100_128`, `mp3_22050_32`, `opus_48000_64`.
    pub format: Option<String>,
}

/// Speak text: the audio streams to the client as ElevenLabs produces it.
#[utoipa::path(post, path = "/api/tts", operation_id = "synthesizeSpeech", tag = "translation", request_body = TtsRequest,
    responses(
        (status = 200, description = "Audio in the requested `format`, streamed",
            content(("audio/basic"), ("audio/x-alaw-basic"), ("audio/L16"), ("audio/mpeg"), ("audio/ogg"))),
        (status = 422, description = "Empty or too long text, or an unknown format", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "ElevenLabs failed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "ElevenLabs is not configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn tts(
    State(state): State<AppState>,
    _org: OrgContext,
    Json(body): Json<TtsRequest>,
) -> Result<Response, ApiError> {
    let client = match &state.tts {
        Some(client) => client,
        None => {
            return Err(state
                .config
                .providers
                .elevenlabs()
                .err()
                .map(ApiError::from)
                .unwrap_or(ApiError::NotFound));
        }
    };
    let text = body.text.trim();
    if text.is_empty() || text.chars().count() > MAX_TTS_CHARS {
        return Err(ApiError::Unprocessable(format!(
            "text must be 1 to {MAX_TTS_CHARS} characters"
        )));
    }
    let format = body.format.as_deref().unwrap_or("ulaw_8000");
    let content_type = elevenlabs::content_type(format)
        .ok_or_else(|| ApiError::Unprocessable(format!("unknown format {format:?}")))?;
    let audio = client
        .stream(
            text,
            body.voice_id.as_deref(),
            body.language.as_deref(),
            format,
        )
        .await
        .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    // Chunks are forwarded as they arrive: nothing buffers the whole clip.
    let body = Body::from_stream(audio.map(|chunk| chunk.map_err(std::io::Error::other)));
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
