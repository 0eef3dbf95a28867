//! Calls: `POST|GET /api/calls`, `GET /api/calls/{id}`, `POST /api/calls/{id}/hangup`,
//! `GET /api/calls/{id}/events` (Server-Sent Events). All scoped to the active organisation.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{BrowserOrgContext, OrgContext, recheck};
use crate::calls::dial::{self, DialError, HangUpError};
use crate::calls::legs::{self, Leg};
use crate::calls::{self, Call, CallStatus, ListFilter, interpreted};
use crate::events::{self, CallEvent, FollowItem};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Json, Path, Query};
use crate::ids::{CallId, OrgId};
use crate::media::utterances::{self, TranslationSummary};
use crate::state::AppState;
use crate::usage::{self, CallUsage};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCallRequest {
    /// E.164 number to call.
    #[schema(example = "+14155550123")]
    pub to: String,
    /// E.164 caller id: one of the organisation's phone numbers.
    #[schema(example = "+14155550100")]
    pub from: String,
    /// Language the callee speaks, e.g. `en`, `pt-BR`.
    pub source_language: String,
    /// Language to translate into, e.g. `de`.
    pub target_language: String,
    /// ElevenLabs voice id for the spoken translation.
    pub voice_id: Option<String>,
    #[serde(default)]
    pub record: bool,
}

/// One party of an interpreted call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartyRequest {
    /// E.164 number to ring.
    #[schema(example = "+14155550123")]
    pub number: String,
    /// BCP-47 language this party speaks (`en`, `es-MX`), or `auto` (remote party only):
    /// detected from what they say.
    #[schema(example = "en")]
    pub language: String,
    /// ElevenLabs voice this party hears translations in (default `ELEVENLABS_VOICE_ID`).
    pub voice_id: Option<String>,
}

/// Whether each party also hears the other's original voice under the translation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OriginalAudio {
    /// Only the translations.
    Off,
    /// The other's own voice at a low gain (`ORIGINAL_AUDIO_DUCKED_DB`, default −18 dB)
    /// under the translation, so each knows when the other is speaking (the default).
    #[default]
    Ducked,
    /// The other's own voice at full level under the translation.
    Full,
}

impl OriginalAudio {
    fn as_str(self) -> &'static str {
        match self {
            OriginalAudio::Off => "off",
            OriginalAudio::Ducked => "ducked",
            OriginalAudio::Full => "full",
        }
    }
}

/// An interpreted call: the agent is rung first, the remote party once the agent answers;
/// each hears the other translated into their own language (docs/CALLS.md).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InterpretedCallRequest {
    /// E.164 caller id: one of the organisation's phone numbers (used on both legs).
    #[schema(example = "+14155550100")]
    pub from: String,
    /// The organisation's side: a language, not `auto`.
    pub agent: PartyRequest,
    /// The other party.
    pub remote: PartyRequest,
    /// Record each leg (one recording per leg).
    #[serde(default)]
    pub record: bool,
    #[serde(default)]
    pub original_audio: OriginalAudio,
}

/// `POST /api/calls` body: an interpreted call (`agent` and `remote`), or the older one-leg
/// translated call (`to`, `source_language`, `target_language`; deprecated).
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum CreateCallRequest {
    Interpreted(InterpretedCallRequest),
    OneLeg(NewCallRequest),
}

impl<'de> Deserialize<'de> for CreateCallRequest {
    /// Chooses the shape by its keys so the error names the field that is wrong, instead
    /// of serde's "data did not match any variant".
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(deserializer)?;
        let interpreted = value
            .as_object()
            .is_some_and(|o| o.contains_key("agent") || o.contains_key("remote"));
        if interpreted {
            serde_json::from_value(value)
                .map(CreateCallRequest::Interpreted)
                .map_err(D::Error::custom)
        } else {
            serde_json::from_value(value)
                .map(CreateCallRequest::OneLeg)
                .map_err(D::Error::custom)
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallPage {
    pub calls: Vec<Call>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallQuery {
    /// Only calls in this status.
    pub status: Option<CallStatus>,
    /// Created at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1–100, default 50.
    pub limit: Option<i64>,
}

fn encode_cursor(call: &Call) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", call.created_at.to_rfc3339(), call.id))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let invalid = || ApiError::BadRequest("cursor is not one this API returned".into());
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?)
        .map_err(|_| invalid())?;
    let (at, id) = text.split_once('|').ok_or_else(invalid)?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| invalid())?
        .with_timezone(&Utc);
    Ok((at, id.parse().map_err(|_| invalid())?))
}

fn validate_interpreted(body: &InterpretedCallRequest) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    if !calls::is_e164(&body.from) {
        problems.push("from must be an E.164 number like +14155550100".to_owned());
    }
    for (name, party) in [("agent", &body.agent), ("remote", &body.remote)] {
        if !calls::is_e164(&party.number) {
            problems.push(format!(
                "{name}.number must be an E.164 number like +14155550123"
            ));
        }
        if party.language != "auto" && !calls::is_language_code(&party.language) {
            problems.push(format!(
                "{name}.language must be a language code like en or pt-BR, or auto"
            ));
        }
        if party
            .voice_id
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.len() > 64)
        {
            problems.push(format!("{name}.voice_id must be 1 to 64 characters"));
        }
    }
    if body.agent.number == body.remote.number && calls::is_e164(&body.agent.number) {
        problems.push("agent.number and remote.number must differ".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(problems.join("; ")))
    }
}

impl From<HangUpError> for ApiError {
    fn from(error: HangUpError) -> Self {
        match error {
            HangUpError::NotFound => ApiError::NotFound,
            HangUpError::NeverDialled => ApiError::Conflict("the call was never dialled".into()),
            HangUpError::Telnyx(error) => error.into(),
            HangUpError::Disabled(disabled) => disabled.into(),
            HangUpError::Internal(error) => ApiError::internal(error),
        }
    }
}

impl From<DialError> for ApiError {
    fn from(error: DialError) -> Self {
        match error {
            DialError::Invalid(why) => ApiError::Unprocessable(why),
            DialError::Telnyx(error) => error.into(),
            DialError::Guard(refused) => refused.into(),
            DialError::Disabled(disabled) => disabled.into(),
            DialError::Internal(error) => ApiError::internal(error),
        }
    }
}

/// The interpreted call as the domain takes it.
fn interpreted_dial(org: &OrgContext, body: InterpretedCallRequest) -> interpreted::Dial {
    let party = |p: PartyRequest| interpreted::Party {
        number: p.number,
        language: p.language,
        voice_id: p.voice_id,
    };
    interpreted::Dial {
        organisation_id: org.organisation_id,
        created_by: Some(org.user.id().to_owned()),
        from: body.from,
        agent: party(body.agent),
        remote: party(body.remote),
        record: body.record,
        original_audio: body.original_audio.as_str().to_owned(),
    }
}

/// The one-leg call as the domain takes it.
fn one_leg_dial(org: &OrgContext, body: NewCallRequest) -> dial::OneLeg {
    dial::OneLeg {
        organisation_id: org.organisation_id,
        created_by: org.user.id().to_owned(),
        from: body.from,
        to: body.to,
        source_language: body.source_language,
        target_language: body.target_language,
        voice_id: body.voice_id,
        record: body.record,
    }
}

fn validate(body: &NewCallRequest) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    if !calls::is_e164(&body.to) {
        problems.push("to must be an E.164 number like +14155550123");
    }
    if !calls::is_e164(&body.from) {
        problems.push("from must be an E.164 number like +14155550100");
    }
    if !calls::is_language_code(&body.source_language) {
        problems.push("source_language must be a language code like en or pt-BR");
    }
    if !calls::is_language_code(&body.target_language) {
        problems.push("target_language must be a language code like de or en-GB");
    }
    if body
        .voice_id
        .as_deref()
        .is_some_and(|v| v.is_empty() || v.len() > 64)
    {
        problems.push("voice_id must be 1 to 64 characters");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(problems.join("; ")))
    }
}

/// Places an outbound call. Interpreted (`agent` + `remote`): the agent's leg is dialed now
/// and the remote party's once the agent answers, each with its own media stream. One-leg
/// (deprecated): dials `to` with one stream carrying both tracks.
#[utoipa::path(post, path = "/api/calls", operation_id = "createCall", tag = "calls", request_body = CreateCallRequest,
    params(("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 201, description = "Dialing (the agent's leg, for an interpreted call)", body = CallDetail),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "A monthly usage quota is spent (`urn:callbridge:problem:quota-exceeded`; `rule`: `quota-monthly-minutes` or `quota-monthly-spend`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Refused by the toll-fraud guard (`urn:callbridge:problem:dial-refused`; `rule`: `dial-role`, `premium-rate`, `satellite` or `destination-country`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid numbers or languages, a language no speech model transcribes (named), or `from` is not the organisation's", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A calls cap was reached (`urn:callbridge:problem:dial-rate-limited`; `rule`: `org-concurrent-calls`, `user-concurrent-calls`, `org-calls-per-minute` or `user-calls-per-minute`), or the organisation's concurrent-calls quota (`urn:callbridge:problem:quota-exceeded`, `rule`: `quota-concurrent-calls`); `Retry-After` says when to try again", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds before a call may be placed again"))),
        (status = 502, description = "Telnyx refused the dial; the call is stored as failed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Telnyx is not configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    org: OrgContext,
    Json(body): Json<CreateCallRequest>,
) -> Result<(StatusCode, Json<CallDetail>), ApiError> {
    let request = match body {
        CreateCallRequest::Interpreted(body) => {
            validate_interpreted(&body)?;
            dial::Request::Interpreted(interpreted_dial(&org, body))
        }
        CreateCallRequest::OneLeg(body) => {
            validate(&body)?;
            dial::Request::OneLeg(one_leg_dial(&org, body))
        }
    };
    let call = dial::place(&state, &request).await?;
    let detail = detail(&state, org.organisation_id, call.id).await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

/// The organisation's calls, newest first.
#[utoipa::path(get, path = "/api/calls", operation_id = "listCalls", tag = "calls",
    params(CallQuery, ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "A page of calls", body = CallPage),
        (status = 400, description = "Bad cursor or filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<CallQuery>, ApiError>,
) -> Result<Json<CallPage>, ApiError> {
    // The filter is checked after the caller, as with any other extractor order: a request
    // without a valid session is a 401 whatever its query.
    let filter = query.and_then(|Query(query)| list_filter(query));
    let page = filter.as_ref().ok().map(calls::ListPage::new);
    let (org, ridden) = caller.org_context_riding(&state, page.as_ref()).await?;
    let filter = filter?;
    let limit = filter.limit - 1;
    let mut page = match ridden {
        Some(calls) => calls,
        None => {
            let client = state.db.client().await?;
            calls::list(&state.db, &client, org.organisation_id, &filter).await?
        }
    };
    let next_cursor = if page.len() as i64 > limit {
        page.truncate(limit as usize);
        page.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(CallPage {
        calls: page,
        next_cursor,
    }))
}

/// The page `query` asks for, one row more than its limit (to know whether a next exists).
fn list_filter(query: CallQuery) -> Result<ListFilter, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 100".into(),
        ));
    }
    Ok(ListFilter {
        status: query.status,
        since: query.since,
        until: query.until,
        before: query.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: limit + 1,
    })
}

/// One call with how its spoken translations went.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallDetail {
    #[serde(flatten)]
    pub call: Call,
    /// The parties' legs, agent first: an interpreted call has two (`agent`, `remote`), a
    /// one-leg call one (`remote`).
    pub legs: Vec<Leg>,
    /// Utterances by playout outcome and each stage's latency (p50, p95, max) over this
    /// call; per-utterance figures are in `GET /api/calls/{id}/transcript`.
    pub translation: TranslationSummary,
    /// Units per vendor and their estimated cost (docs/USAGE.md); telephony seconds appear
    /// when a leg hangs up, a speech session's when it ends.
    pub usage: CallUsage,
}

async fn detail(
    state: &AppState,
    organisation_id: OrgId,
    id: CallId,
) -> Result<CallDetail, ApiError> {
    let client = state.db.client().await?;
    let call = calls::get(&client, organisation_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let legs = legs::for_call(&client, id).await?;
    let translation = utterances::summary(&client, id).await?;
    let usage = usage::for_call(&client, &state.config.usage.prices, organisation_id, id).await?;
    Ok(CallDetail {
        call,
        legs,
        translation,
        usage,
    })
}

/// One call of the organisation, with its translation stage-latency summary.
#[utoipa::path(get, path = "/api/calls/{id}", operation_id = "getCall", tag = "calls",
    params(("id" = Uuid, Path, description = "Call id"), ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "The call", body = CallDetail),
        (status = 404, description = "No such call in this organisation", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<CallId>,
) -> Result<Json<CallDetail>, ApiError> {
    Ok(Json(detail(&state, org.organisation_id, id).await?))
}

/// Asks Telnyx to hang up. Idempotent: hanging up an ended call succeeds.
#[utoipa::path(post, path = "/api/calls/{id}/hangup", operation_id = "hangUpCall", tag = "calls",
    params(("id" = Uuid, Path, description = "Call id"), ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 202, description = "Hangup requested (or the call already ended)", body = Call),
        (status = 404, description = "No such call in this organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The call was never dialled", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Telnyx refused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Telnyx is not configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn hangup(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<CallId>,
) -> Result<(StatusCode, Json<Call>), ApiError> {
    let call = dial::hang_up(&state, org.organisation_id, id, org.user.id()).await?;
    Ok((StatusCode::ACCEPTED, Json(call)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this sequence number (the `Last-Event-ID` header wins when both are sent).
    pub after: Option<i64>,
}

/// Live call events as Server-Sent Events (`id` = per-call sequence). Reconnect with
/// `Last-Event-ID` to resume without loss or duplicates, on any replica.
#[utoipa::path(get, path = "/api/calls/{id}/events", operation_id = "streamCallEvents", tag = "calls",
    params(("id" = Uuid, Path, description = "Call id"), EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event"),
        ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in"),
        ("org_id" = Option<Uuid>, Query, description = "Organisation to act in, for clients that cannot send X-Org-Id (EventSource); must equal X-Org-Id when both are sent")),
    responses(
        (status = 200, description = "text/event-stream of CallEvent (event name = kind, data = JSON). The session and membership are re-checked every AUTH_STREAM_RECHECK_SECS; when either is gone the stream ends with one `auth.revoked` event (data = RevokedEvent)", body = CallEvent, content_type = "text/event-stream"),
        (status = 404, description = "No such call in this organisation", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "STREAMS_PER_USER_MAX live streams already open", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn events(
    State(state): State<AppState>,
    BrowserOrgContext(org): BrowserOrgContext,
    Path(id): Path<CallId>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let client = state.db.client().await?;
    calls::get(&client, org.organisation_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    drop(client);
    let slot = state
        .streams
        .acquire(org.user.id(), state.config.limits.streams_per_user)?;
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::BadRequest("Last-Event-ID must be an event sequence number".into())
            })?,
        None => query.after.unwrap_or(0),
    };
    let stream = events::follow(
        state.db.clone(),
        &state.listener,
        id,
        after,
        state.shutdown.clone(),
    )
    .map(|item| match item {
        FollowItem::Durable(event) => Event::default()
            .id(event.seq.to_string())
            .event(event.kind.clone())
            .json_data(&event)
            .unwrap_or_else(|_| Event::default().comment("unserialisable event")),
        // No id: partials are not part of the resumable log.
        FollowItem::Partial(partial) => Event::default()
            .event("transcript.partial")
            .json_data(&partial)
            .unwrap_or_else(|_| Event::default().comment("unserialisable partial")),
    });
    let revoked = recheck::watch(
        &state.sessions,
        state.config.auth.stream_recheck,
        &org.user,
        Some(org.organisation_id),
    );
    // The slot is held as long as the stream lives.
    let stream = until_revoked(Box::pin(stream), revoked).map(move |event| {
        let _held = &slot;
        Ok(event)
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `events` until the caller's authorisation ends, then one `auth.revoked` event and the end.
fn until_revoked(
    events: std::pin::Pin<Box<dyn futures_util::Stream<Item = Event> + Send>>,
    revoked: tokio::sync::oneshot::Receiver<recheck::Revoked>,
) -> impl futures_util::Stream<Item = Event> {
    futures_util::stream::unfold(
        (events, Some(revoked), false),
        |(mut events, mut revoked, done)| async move {
            if done {
                return None;
            }
            let outcome = match revoked.as_mut() {
                Some(watch) => tokio::select! {
                    item = events.next() => Ok(item),
                    reason = watch => Err(reason.ok()),
                },
                None => Ok(events.next().await),
            };
            match outcome {
                Ok(item) => item.map(|event| (event, (events, revoked, false))),
                Err(Some(reason)) => {
                    let last = Event::default()
                        .event("auth.revoked")
                        .json_data(reason.event())
                        .unwrap_or_else(|_| Event::default().event("auth.revoked"));
                    Some((last, (events, None, true)))
                }
                // The watcher is gone without a verdict: keep streaming unwatched.
                Err(None) => events
                    .next()
                    .await
                    .map(|event| (event, (events, None, false))),
            }
        },
    )
}
