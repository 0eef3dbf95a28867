//! Inbound interpreted lines: one of the organisation's numbers configured to answer its
//! callers, greet them in their language, ring the organisation's agent (`forward_to`) and
//! carry the call as an interpreted call (docs/CALLS.md, "Inbound lines"). If the agent does
//! not answer in time the caller hears an apology in their language and both legs end.
//!
//! What a caller hears is fixed when the line is saved (the greeting and apology translated
//! into each caller language) and copied onto each call when it arrives (`line_script`), so
//! a call never waits for a translation and editing a line never changes a call in progress.
//! Prompts are spoken by Telnyx (`speak`) one after the other: each carries its place in
//! `client_state`, and its `call.speak.ended` webhook starts the next.

use crate::db::GenericClient;
use crate::ids::{CallId, OrgId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::guard::{self, Refusal};
use super::legs::{self, Leg, NewLeg, Role};
use super::{Call, CallStatus, NewCall, destinations, stream_token};
use crate::config::TelephonyConfig;
use crate::db::DbError;
use crate::events;
use crate::providers::telnyx::{self, StreamSettings, WebhookEvent};
use crate::state::AppState;
use crate::translate::TranslateError;

/// What a caller hears when the agent does not answer and the line sets no apology (English,
/// translated into each caller language when the line is saved).
pub const DEFAULT_APOLOGY: &str =
    "We are sorry, nobody can take your call right now. Please call again later.";

/// Longest greeting or apology: a short prompt, not a recorded message.
pub const MAX_PROMPT_CHARS: usize = 300;
pub const DEFAULT_AGENT_TIMEOUT_SECS: u32 = 30;

/// A line's settings as the organisation sets them.
#[derive(Debug, Clone)]
pub struct LineSettings {
    pub forward_to: String,
    pub caller_language: String,
    pub caller_languages: Vec<String>,
    pub agent_language: String,
    pub caller_voice_id: Option<String>,
    pub agent_voice_id: Option<String>,
    pub greeting: String,
    pub apology: Option<String>,
    pub agent_timeout_secs: u32,
    pub original_audio: String,
    pub record: bool,
}

/// What a caller speaking `language` hears.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Prompt {
    /// BCP-47.
    pub language: String,
    /// The greeting, in this language.
    pub greeting: String,
    /// The apology when the agent does not answer, in this language.
    pub apology: String,
}

/// A number configured as an inbound interpreted line.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Line {
    pub phone_number_id: Uuid,
    /// The line's number (E.164): what callers dial.
    pub number: String,
    /// E.164 of the agent rung for each caller.
    pub forward_to: String,
    /// BCP-47, or `auto`: detected from what the caller says.
    pub caller_language: String,
    /// With `auto`: the languages the greeting and apology are spoken in, in order.
    pub caller_languages: Vec<String>,
    /// BCP-47 language of the agent, and of `greeting` and `apology` as written.
    pub agent_language: String,
    /// ElevenLabs voice the caller hears translations in.
    pub caller_voice_id: Option<String>,
    /// ElevenLabs voice the agent hears translations in.
    pub agent_voice_id: Option<String>,
    pub greeting: String,
    /// Null: the default apology.
    pub apology: Option<String>,
    /// How long the agent is rung before the caller hears the apology.
    pub agent_timeout_secs: i32,
    /// `off`, `ducked` or `full` for the line's calls.
    pub original_audio: String,
    /// Whether the line's calls are recorded (each party's leg on its own).
    pub record: bool,
    /// What callers hear, per caller language, as translated when the line was saved.
    pub prompts: Vec<Prompt>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub updated_at: DateTime<Utc>,
}

const LINE_COLUMNS: &str = "l.phone_number_id, n.e164 as number, l.forward_to, l.caller_language, \
     l.caller_languages, l.agent_language, l.caller_voice_id, l.agent_voice_id, l.greeting, \
     l.apology, l.agent_timeout_secs, l.original_audio, l.prompts, l.created_at, l.updated_at, \
     l.organisation_id, l.record";

fn line_from_row(row: &Row) -> Line {
    Line {
        phone_number_id: row.get("phone_number_id"),
        number: row.get("number"),
        forward_to: row.get("forward_to"),
        caller_language: row.get("caller_language"),
        caller_languages: row.get("caller_languages"),
        agent_language: row.get("agent_language"),
        caller_voice_id: row.get("caller_voice_id"),
        agent_voice_id: row.get("agent_voice_id"),
        greeting: row.get("greeting"),
        apology: row.get("apology"),
        agent_timeout_secs: row.get("agent_timeout_secs"),
        original_audio: row.get("original_audio"),
        record: row.get("record"),
        prompts: serde_json::from_value(row.get("prompts")).unwrap_or_default(),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The settings cannot make a line (422).
    #[error("{0}")]
    Invalid(String),
    /// No such number in the organisation (404).
    #[error("no such phone number")]
    NotFound,
    /// `forward_to` is a number the organisation may not dial (403).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The prompts could not be translated (502, or 503 with no engine).
    #[error(transparent)]
    Translation(#[from] TranslateError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for LineError {
    fn from(error: tokio_postgres::Error) -> Self {
        LineError::Db(error.into())
    }
}

fn primary(language: &str) -> String {
    language
        .split('-')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Every reason the settings cannot make a line, at once; and `forward_to`'s dial check.
async fn check(
    state: &AppState,
    client: &impl GenericClient,
    limits: &TelephonyConfig,
    organisation_id: OrgId,
    settings: &LineSettings,
) -> Result<(), LineError> {
    let mut problems = Vec::new();
    let models = &state.config.media.speech_models;
    if !super::is_e164(&settings.forward_to) {
        problems.push("forward_to must be E.164, like +14155550111".to_owned());
    }
    if !super::is_language_code(&settings.agent_language) {
        problems.push("agent_language must be a language code like en or pt-BR".to_owned());
    } else if let Err(why) = models.choose(&settings.agent_language) {
        problems.push(format!("agent_language: {why}"));
    }
    let auto = settings.caller_language == "auto";
    if !auto && !super::is_language_code(&settings.caller_language) {
        problems
            .push("caller_language must be a language code like es or pt-BR, or auto".to_owned());
    }
    if let Err(why) = models.choose(&settings.caller_language) {
        problems.push(format!("caller_language: {why}"));
    }
    if auto {
        let mut seen = std::collections::HashSet::new();
        if !(2..=4).contains(&settings.caller_languages.len()) {
            problems.push(
                "caller_languages must list 2 to 4 languages when caller_language is auto"
                    .to_owned(),
            );
        }
        for language in &settings.caller_languages {
            if !super::is_language_code(language) {
                problems.push(format!(
                    "caller_languages: {language:?} is not a language code"
                ));
            } else if !seen.insert(primary(language)) {
                problems.push(format!("caller_languages: {language} is listed twice"));
            }
        }
    } else if !settings.caller_languages.is_empty() {
        problems.push("caller_languages is only for caller_language auto".to_owned());
    }
    for language in caller_languages(settings) {
        if super::is_language_code(language) && telnyx::speak_locale(language).is_none() {
            problems.push(format!(
                "the greeting cannot be spoken in {language}: Telnyx has no voice for it"
            ));
        }
    }
    for (name, text) in [
        ("greeting", Some(&settings.greeting)),
        ("apology", settings.apology.as_ref()),
    ] {
        if let Some(text) = text {
            let length = text.trim().chars().count();
            if length == 0 || length > MAX_PROMPT_CHARS {
                problems.push(format!("{name} must be 1 to {MAX_PROMPT_CHARS} characters"));
            }
        }
    }
    for (name, voice) in [
        ("caller_voice_id", &settings.caller_voice_id),
        ("agent_voice_id", &settings.agent_voice_id),
    ] {
        if voice
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.len() > 100)
        {
            problems.push(format!("{name} must be 1 to 100 characters"));
        }
    }
    if !(5..=120).contains(&settings.agent_timeout_secs) {
        problems.push("agent_timeout_secs must be between 5 and 120".to_owned());
    }
    if !matches!(settings.original_audio.as_str(), "off" | "ducked" | "full") {
        problems.push("original_audio must be off, ducked or full".to_owned());
    }
    if !problems.is_empty() {
        return Err(LineError::Invalid(problems.join("; ")));
    }
    // A call to the line must never ring another number of the platform: two lines
    // forwarding to each other would ring each other forever.
    if super::owner_of_number(client, &settings.forward_to)
        .await?
        .is_some()
    {
        return Err(LineError::Invalid(
            "forward_to must not be a number of this platform".into(),
        ));
    }
    // The agent is dialed for every caller: the same destination rules as any dial.
    guard::check_prefix(&settings.forward_to)?;
    let allowed = guard::allowed_countries(client, limits, organisation_id).await?;
    let country = destinations::classify(&settings.forward_to).map_or("unknown", |d| d.country);
    if !allowed.iter().any(|c| c == country) {
        return Err(Refusal::DestinationCountry {
            number: settings.forward_to.clone(),
            country: country.to_owned(),
            allowed,
        }
        .into());
    }
    Ok(())
}

/// The languages a caller of the line is greeted in.
fn caller_languages(settings: &LineSettings) -> Vec<&String> {
    if settings.caller_language == "auto" {
        settings.caller_languages.iter().collect()
    } else {
        vec![&settings.caller_language]
    }
}

/// The greeting and apology in each caller language.
async fn translate_prompts(
    state: &AppState,
    organisation_id: OrgId,
    settings: &LineSettings,
) -> Result<Vec<Prompt>, LineError> {
    let (apology, apology_language) = match &settings.apology {
        Some(apology) => (apology.trim().to_owned(), settings.agent_language.as_str()),
        None => (DEFAULT_APOLOGY.to_owned(), "en"),
    };
    let greeting = settings.greeting.trim().to_owned();
    let mut prompts = Vec::new();
    for language in caller_languages(settings) {
        let into = |text: &String, from: &str| {
            let text = text.clone();
            let from = from.to_owned();
            async move {
                if primary(&from) == primary(language) {
                    return Ok::<_, TranslateError>(text);
                }
                let mut translated = state
                    .translation
                    .translate(organisation_id, &[text], Some(&from), language)
                    .await?;
                // The line's prompts are translated once per setting: billed to the
                // organisation like any translation (docs/USAGE.md).
                let owner = crate::usage::Owner::Organisation {
                    organisation_id,
                    user_id: None,
                };
                let key = format!("line-prompt:{}", uuid::Uuid::now_v7());
                state.ledger.record(crate::usage::translation_entries(
                    owner,
                    &key,
                    &translated.usage,
                    serde_json::json!({"target_language": language}),
                ));
                Ok(translated.texts.pop().unwrap_or_default())
            }
        };
        prompts.push(Prompt {
            language: language.clone(),
            greeting: into(&greeting, &settings.agent_language).await?,
            apology: into(&apology, apology_language).await?,
        });
    }
    Ok(prompts)
}

/// Makes `phone_number_id` a line with `settings` (or replaces its settings).
pub async fn put(
    state: &AppState,
    organisation_id: OrgId,
    phone_number_id: Uuid,
    settings: &LineSettings,
) -> Result<Line, LineError> {
    let client = state.db.client().await?;
    let owned = client
        .query_opt(
            "select 1 from phone_numbers where id = $1 and organisation_id = $2",
            &[&phone_number_id, &organisation_id],
        )
        .await?;
    if owned.is_none() {
        return Err(LineError::NotFound);
    }
    check(
        state,
        &client,
        &state.config.telephony,
        organisation_id,
        settings,
    )
    .await?;
    let prompts = translate_prompts(state, organisation_id, settings).await?;
    client
        .execute(
            "insert into lines (phone_number_id, organisation_id, forward_to, caller_language,
                                caller_languages, agent_language, caller_voice_id, agent_voice_id,
                                greeting, apology, prompts, agent_timeout_secs, original_audio, record)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             on conflict (phone_number_id) do update set
                forward_to = excluded.forward_to, caller_language = excluded.caller_language,
                caller_languages = excluded.caller_languages, agent_language = excluded.agent_language,
                caller_voice_id = excluded.caller_voice_id, agent_voice_id = excluded.agent_voice_id,
                greeting = excluded.greeting, apology = excluded.apology, prompts = excluded.prompts,
                agent_timeout_secs = excluded.agent_timeout_secs,
                original_audio = excluded.original_audio, record = excluded.record,
                updated_at = now()",
            &[
                &phone_number_id,
                &organisation_id,
                &settings.forward_to,
                &settings.caller_language,
                &settings.caller_languages,
                &settings.agent_language,
                &settings.caller_voice_id,
                &settings.agent_voice_id,
                &settings.greeting.trim(),
                &settings.apology.as_deref().map(str::trim),
                &json!(prompts),
                &(settings.agent_timeout_secs as i32),
                &settings.original_audio,
                &settings.record,
            ],
        )
        .await?;
    get(&client, organisation_id, phone_number_id)
        .await?
        .ok_or(LineError::NotFound)
}

/// The line on this organisation's number, if the number is one.
pub async fn get(
    client: &impl GenericClient,
    organisation_id: OrgId,
    phone_number_id: Uuid,
) -> Result<Option<Line>, DbError> {
    let sql = format!(
        "select {LINE_COLUMNS} from lines l join phone_numbers n on n.id = l.phone_number_id
         where l.phone_number_id = $1 and l.organisation_id = $2"
    );
    Ok(client
        .query_opt(&sql, &[&phone_number_id, &organisation_id])
        .await?
        .as_ref()
        .map(line_from_row))
}

/// The number stops being a line: its next caller gets a one-leg call again.
pub async fn delete(
    client: &impl GenericClient,
    organisation_id: OrgId,
    phone_number_id: Uuid,
) -> Result<bool, DbError> {
    Ok(client
        .execute(
            "delete from lines where phone_number_id = $1 and organisation_id = $2",
            &[&phone_number_id, &organisation_id],
        )
        .await?
        == 1)
}

/// The line a caller dialed, and its organisation.
async fn by_number(
    client: &impl GenericClient,
    e164: &str,
) -> Result<Option<(Line, OrgId)>, DbError> {
    let sql = format!(
        "select {LINE_COLUMNS} from lines l join phone_numbers n on n.id = l.phone_number_id
         where n.e164 = $1 and n.organisation_id = l.organisation_id"
    );
    Ok(client
        .query_opt(&sql, &[&e164])
        .await?
        .map(|row| (line_from_row(&row), row.get("organisation_id"))))
}

/// What one call of a line plays to its caller, copied from the line when it arrived.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Script {
    agent_timeout_secs: u32,
    caller_language: String,
    prompts: Vec<Prompt>,
}

async fn script(client: &impl GenericClient, call_id: CallId) -> Result<Option<Script>, DbError> {
    Ok(client
        .query_opt("select line_script from calls where id = $1", &[&call_id])
        .await?
        .and_then(|row| row.get::<_, Option<serde_json::Value>>("line_script"))
        .and_then(|value| serde_json::from_value(value).ok()))
}

/// How long a line's agent is rung, for a call that came in on a line.
pub async fn agent_timeout(
    client: &impl GenericClient,
    call_id: CallId,
) -> Result<Option<u32>, DbError> {
    Ok(script(client, call_id).await?.map(|s| s.agent_timeout_secs))
}

/// An incoming call (`call.initiated`) to a line: the interpreted call and both legs are
/// stored and the caller's leg is answered with its own media stream, all in `client`'s
/// transaction (the job's). `None` when the dialed number is not a line: today's path.
/// The greeting and the agent's dial follow the caller's `call.answered` ([`legs::settle`]).
pub async fn answer_inbound(
    state: &AppState,
    client: &impl GenericClient,
    event: &WebhookEvent,
    occurred_at: DateTime<Utc>,
) -> anyhow::Result<Option<Call>> {
    let to = event.field("to").unwrap_or_default();
    let Some((line, organisation_id)) = by_number(client, to).await? else {
        return Ok(None);
    };
    let ccid = event
        .field("call_control_id")
        .ok_or_else(|| anyhow::anyhow!("an inbound call.initiated without call_control_id"))?;
    let from = event.field("from").unwrap_or_default();
    let telnyx = state.telnyx()?;
    let call = super::insert(
        client,
        &NewCall {
            organisation_id,
            direction: "inbound",
            from,
            to,
            source_language: Some(&line.caller_language),
            target_language: Some(&line.agent_language),
            voice_id: None,
            // The agent's leg is dialed recording from the call's `record`; the caller's leg
            // is recorded from the answer command below.
            record: line.record,
            created_by: None,
            status: CallStatus::Initiated,
            telnyx_call_control_id: None,
            interpreted: true,
            original_audio: &line.original_audio,
        },
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("new call conflicted"))?;
    let script = Script {
        agent_timeout_secs: line.agent_timeout_secs as u32,
        caller_language: line.caller_language.clone(),
        prompts: line.prompts.clone(),
    };
    client
        .execute(
            "update calls set line_number_id = $2, line_script = $3 where id = $1",
            &[&call.id, &line.phone_number_id, &json!(script)],
        )
        .await?;
    let caller = legs::insert(
        client,
        &NewLeg {
            call_id: call.id,
            role: Role::Remote,
            number: from,
            language: Some(&line.caller_language),
            voice_id: line.caller_voice_id.as_deref(),
            status: CallStatus::Initiated,
            telnyx_call_control_id: Some(ccid),
        },
    )
    .await?;
    legs::insert(
        client,
        &NewLeg {
            call_id: call.id,
            role: Role::Agent,
            number: &line.forward_to,
            language: Some(&line.agent_language),
            voice_id: line.agent_voice_id.as_deref(),
            status: CallStatus::Created,
            telnyx_call_control_id: None,
        },
    )
    .await?;
    legs::apply_event(
        client,
        caller,
        &event.event_type,
        occurred_at,
        &event.payload,
    )
    .await?;
    legs::settle(client, call.id).await?;
    events::append(
        client,
        call.id,
        "call.created",
        json!({"direction": "inbound", "interpreted": true, "line": line.number,
               "from": from, "agent": line.forward_to}),
        Utc::now(),
    )
    .await?;
    events::append(
        client,
        call.id,
        &event.event_type,
        json!({"telnyx_event_id": event.id, "leg": "remote", "status": "initiated",
               "occurred_at": occurred_at}),
        occurred_at,
    )
    .await?;
    // The caller's leg gets its own stream (their voice in, translations out), as a
    // dialed leg does; the command id is the leg's, so a re-run answers once.
    let stream = StreamSettings::inbound_pcmu(stream_token::stream_url(
        &state.config.media_base_url,
        state.config.auth.secret.expose().as_bytes(),
        caller,
        now_unix(),
    ));
    telnyx
        .answer(
            ccid,
            &telnyx::encode_leg_client_state(call.id, Role::Remote.as_str()),
            &format!("answer:{caller}"),
            &stream,
            line.record,
        )
        .await?;
    super::mark_answer_requested(client, call.id).await?;
    guard::schedule_max_duration(client, call.id, state.config.telephony.max_call_duration).await?;
    Ok(Some(call))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A prompt's place: `greeting:2/3` is the third of three greeting parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    apology: bool,
    index: usize,
    count: usize,
}

impl Place {
    fn tag(self) -> String {
        let kind = if self.apology { "apology" } else { "greeting" };
        format!("{kind}:{}/{}", self.index, self.count)
    }

    fn parse(tag: &str) -> Option<Self> {
        let (kind, rest) = tag.split_once(':')?;
        let (index, count) = rest.split_once('/')?;
        Some(Self {
            apology: match kind {
                "apology" => true,
                "greeting" => false,
                _ => return None,
            },
            index: index.parse().ok()?,
            count: count.parse().ok()?,
        })
    }
}

/// Speaks one prompt part to the caller. For an apology spoken in one detected language,
/// `index` picks that language's prompt and `count` is `index + 1`.
async fn speak(
    state: &AppState,
    call: &Call,
    caller: &Leg,
    script: &Script,
    place: Place,
) -> anyhow::Result<()> {
    let Some(ccid) = caller.telnyx_call_control_id.as_deref() else {
        return Ok(());
    };
    let Some(prompt) = script.prompts.get(place.index) else {
        return Ok(());
    };
    let text = if place.apology {
        &prompt.apology
    } else {
        &prompt.greeting
    };
    let locale = telnyx::speak_locale(&prompt.language).unwrap_or("en-US");
    state
        .telnyx()?
        .speak_in(
            ccid,
            &format!("line-{}:{}", place.tag(), caller.id),
            text,
            locale,
            Some(&telnyx::encode_prompt_client_state(
                call.id,
                Role::Remote.as_str(),
                &place.tag(),
            )),
        )
        .await?;
    Ok(())
}

/// The line answered its caller: speak the greeting (each caller language in turn when
/// the caller's language is `auto`). Once per call.
pub async fn greet(
    state: &AppState,
    client: &impl GenericClient,
    call: &Call,
    caller: &Leg,
) -> anyhow::Result<()> {
    let Some(script) = script(client, call.id).await? else {
        return Ok(());
    };
    let claimed = client
        .execute(
            "update calls set line_greeting_at = now() where id = $1 and line_greeting_at is null",
            &[&call.id],
        )
        .await?
        == 1;
    if !claimed || script.prompts.is_empty() {
        return Ok(());
    }
    let first = Place {
        apology: false,
        index: 0,
        count: script.prompts.len(),
    };
    // A failure rolls the claim back with the job's transaction; the job retries with the
    // same command id.
    speak(state, call, caller, &script, first).await?;
    let languages: Vec<&str> = script.prompts.iter().map(|p| p.language.as_str()).collect();
    events::append(
        client,
        call.id,
        "line.greeting",
        json!({"leg": "remote", "languages": languages}),
        Utc::now(),
    )
    .await?;
    Ok(())
}

/// The agent did not answer (or could not be dialed): the caller hears the apology in
/// their language — the one detected from what they said, else each caller language in
/// turn — and is hung up once it has been spoken. Once per call.
pub async fn apologise(
    state: &AppState,
    client: &impl GenericClient,
    call: &Call,
    caller: &Leg,
) -> anyhow::Result<()> {
    let Some(script) = script(client, call.id).await? else {
        return Ok(());
    };
    let claimed = client
        .execute(
            "update calls set line_apology_at = now() where id = $1 and line_apology_at is null",
            &[&call.id],
        )
        .await?
        == 1;
    if !claimed {
        return Ok(());
    }
    // The call's failure names why, in place of Telnyx's bare `timeout`.
    if let Some(agent) = legs::by_role(client, call.id, Role::Agent).await?
        && agent.telnyx_call_control_id.is_some()
    {
        client
            .execute(
                "update call_legs set failure_reason = coalesce(failure_reason, $2) where id = $1",
                &[
                    &agent.id,
                    &format!("no answer within {} s", script.agent_timeout_secs),
                ],
            )
            .await?;
    }
    let detected = caller.detected_language.as_deref().map(primary);
    let first = match detected.and_then(|d| {
        script
            .prompts
            .iter()
            .position(|p| primary(&p.language) == d)
    }) {
        Some(index) => Place {
            apology: true,
            index,
            count: index + 1,
        },
        None => Place {
            apology: true,
            index: 0,
            count: script.prompts.len(),
        },
    };
    let spoken = if script.prompts.is_empty() {
        Ok(())
    } else {
        speak(state, call, caller, &script, first).await
    };
    // A failure rolls the claim back with the job's transaction.
    spoken?;
    events::append(
        client,
        call.id,
        "line.agent_no_answer",
        json!({"leg": "remote", "agent_timeout_secs": script.agent_timeout_secs,
               "apology_language": script.prompts.get(first.index).map(|p| p.language.clone())}),
        Utc::now(),
    )
    .await?;
    if script.prompts.is_empty() {
        hang_up_caller(state, client, call, caller).await?;
    }
    Ok(())
}

async fn hang_up_caller(
    state: &AppState,
    client: &impl GenericClient,
    call: &Call,
    caller: &Leg,
) -> anyhow::Result<()> {
    let Some(ccid) = caller.telnyx_call_control_id.as_deref() else {
        return Ok(());
    };
    if !legs::claim_hangup(client, caller.id).await? {
        return Ok(());
    }
    // A failure rolls the claim back with the job's transaction (same command id next run).
    state
        .telnyx()?
        .hangup(ccid, &format!("hangup:{}", caller.id))
        .await?;
    events::append(
        client,
        call.id,
        "call.hangup_requested",
        json!({"leg": "remote", "because": "the agent did not answer"}),
        Utc::now(),
    )
    .await?;
    Ok(())
}

/// A prompt finished (`call.speak.ended` on the caller's leg): the next part, or — after
/// the apology's last part — the caller's hang-up. A greeting stops once the agent has
/// answered or the apology has begun.
pub async fn on_leg_event(
    state: &AppState,
    client: &impl GenericClient,
    call: &Call,
    leg: &Leg,
    event: &WebhookEvent,
) -> anyhow::Result<()> {
    if event.event_type != "call.speak.ended" || call.direction != "inbound" {
        return Ok(());
    }
    let Some(place) = event
        .field("client_state")
        .and_then(telnyx::decode_client_state_prompt)
        .and_then(|tag| Place::parse(&tag))
    else {
        return Ok(());
    };
    let Some(script) = script(client, call.id).await? else {
        return Ok(());
    };
    let Some(caller) = legs::get(client, leg.id).await? else {
        return Ok(());
    };
    if caller.status.is_terminal() {
        return Ok(());
    }
    let next = Place {
        index: place.index + 1,
        ..place
    };
    if place.apology {
        if next.index < next.count.min(script.prompts.len()) {
            speak(state, call, &caller, &script, next).await?;
        } else {
            hang_up_caller(state, client, call, &caller).await?;
        }
        return Ok(());
    }
    let row = client
        .query_one(
            "select line_apology_at is null and status <> 'answered' as keep_apologising from calls where id = $1",
            &[&call.id],
        )
        .await?;
    if row.get::<_, bool>("keep_apologising") && next.index < next.count.min(script.prompts.len()) {
        speak(state, call, &caller, &script, next).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_places_round_trip() {
        let place = Place {
            apology: true,
            index: 1,
            count: 2,
        };
        assert_eq!(place.tag(), "apology:1/2");
        assert_eq!(Place::parse("apology:1/2"), Some(place));
        assert_eq!(Place::parse("greeting:0/1").map(|p| p.apology), Some(false));
        assert_eq!(Place::parse("hello:0/1"), None);
        assert_eq!(Place::parse("greeting:x/1"), None);
    }
}
