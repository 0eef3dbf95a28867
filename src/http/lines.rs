//! Inbound interpreted lines: `PUT|GET|DELETE /api/phone-numbers/{id}/line`. The rules
//! (what a line is, how its calls go) live in `calls::lines`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::OrgContext;
use crate::calls::lines::{self, DEFAULT_AGENT_TIMEOUT_SECS, Line, LineError, LineSettings};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Json, Path};
use crate::orgs::Role;
use crate::state::AppState;
use crate::translate::TranslateError;

/// A line's settings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    /// E.164 of the agent rung for each caller: not a number of this platform, and in a
    /// country the organisation may dial.
    #[schema(example = "+14155550111")]
    pub forward_to: String,
    /// BCP-47 language callers speak (`es`, `pt-BR`), or `auto`: detected from what they say.
    #[schema(example = "auto")]
    pub caller_language: String,
    /// With `auto` (and only then): 2 to 4 languages the greeting and apology are spoken
    /// in, in order.
    #[serde(default)]
    pub caller_languages: Vec<String>,
    /// BCP-47 language of the agent, in which `greeting` and `apology` are written.
    #[schema(example = "en")]
    pub agent_language: String,
    /// ElevenLabs voice the caller hears translations in (default `ELEVENLABS_VOICE_ID`).
    pub caller_voice_id: Option<String>,
    /// ElevenLabs voice the agent hears translations in (default `ELEVENLABS_VOICE_ID`).
    pub agent_voice_id: Option<String>,
    /// Spoken to each caller, translated into their language, while the agent is rung
    /// (1–300 characters).
    #[schema(
        example = "Thank you for calling the clinic. Connecting you to an interpreter-assisted agent."
    )]
    pub greeting: String,
    /// Spoken when the agent does not answer, translated likewise (1–300 characters;
    /// default: a short apology asking them to call again later).
    pub apology: Option<String>,
    /// How long the agent is rung before the caller hears the apology: 5–120 s, default 30.
    pub agent_timeout_secs: Option<u32>,
    /// `off`, `ducked` (default) or `full`: whether each party also hears the other's own
    /// voice under the translation.
    pub original_audio: Option<String>,
    /// Record each call of the line, one dual-channel recording per party (default false;
    /// docs/RECORDINGS.md).
    pub record: Option<bool>,
}

impl From<LineError> for ApiError {
    fn from(error: LineError) -> Self {
        match error {
            LineError::Invalid(why) => ApiError::Unprocessable(why),
            LineError::NotFound => ApiError::NotFound,
            LineError::Refused(refusal) => refusal.into(),
            LineError::Translation(TranslateError::NotConfigured) => {
                ApiError::ProviderDisabled(crate::config::ProviderDisabled {
                    provider: "DeepL or OpenAI",
                    variables: &["DEEPL_API_KEY", "OPENAI_API_KEY"],
                })
            }
            LineError::Translation(error) => ApiError::BadGateway(error.to_string()),
            LineError::Db(error) => ApiError::internal(error),
        }
    }
}

/// Make the number an inbound interpreted line, or change its settings (admins and
/// owners). Callers are greeted in their language, the agent is rung, and the call is
/// interpreted; the greeting and apology are translated now, and `prompts` shows what
/// callers will hear.
#[utoipa::path(put, path = "/api/phone-numbers/{id}/line", tag = "phone-numbers", request_body = LineRequest,
    operation_id = "putPhoneNumberLine",
    params(("id" = Uuid, Path, description = "Phone number id"), ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "The line as saved", body = Line),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Members cannot configure lines, or the organisation may not dial `forward_to` (`urn:callbridge:problem:dial-refused`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such number in this organisation", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid settings, naming each: numbers, a language without a speech model or a Telnyx voice, prompt lengths, timeout", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Every translation engine failed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No translation engine is configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<Uuid>,
    Json(body): Json<LineRequest>,
) -> Result<Json<Line>, ApiError> {
    org.require(Role::Admin)?;
    let settings = LineSettings {
        forward_to: body.forward_to,
        caller_language: body.caller_language,
        caller_languages: body.caller_languages,
        agent_language: body.agent_language,
        caller_voice_id: body.caller_voice_id,
        agent_voice_id: body.agent_voice_id,
        greeting: body.greeting,
        apology: body.apology,
        agent_timeout_secs: body
            .agent_timeout_secs
            .unwrap_or(DEFAULT_AGENT_TIMEOUT_SECS),
        original_audio: body.original_audio.unwrap_or_else(|| "ducked".into()),
        record: body.record.unwrap_or(false),
    };
    Ok(Json(
        lines::put(&state, org.organisation_id, id, &settings).await?,
    ))
}

/// The number's line settings.
#[utoipa::path(get, path = "/api/phone-numbers/{id}/line", tag = "phone-numbers",
    operation_id = "getPhoneNumberLine",
    params(("id" = Uuid, Path, description = "Phone number id"), ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "The line", body = Line),
        (status = 404, description = "No such number in this organisation, or it is not a line", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<Uuid>,
) -> Result<Json<Line>, ApiError> {
    let client = state.db.client().await?;
    lines::get(&client, org.organisation_id, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

/// Stop the number being a line (admins and owners): its callers get a one-leg call again.
#[utoipa::path(delete, path = "/api/phone-numbers/{id}/line", tag = "phone-numbers",
    operation_id = "deletePhoneNumberLine",
    params(("id" = Uuid, Path, description = "Phone number id"), ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 204, description = "No longer a line"),
        (status = 403, description = "Members cannot configure lines", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such number in this organisation, or it is not a line", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    org.require(Role::Admin)?;
    let client = state.db.client().await?;
    if lines::delete(&client, org.organisation_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
