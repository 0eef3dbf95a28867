//! Placing an outbound call, the use case behind `POST /api/calls`: the one-leg translated
//! call here, the interpreted call in [`super::interpreted`]; [`place`] takes either. Both
//! go through the toll-fraud guard and both fail a refused dial the same way
//! ([`super::fail`]).

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::Utc;
use serde_json::json;

use super::{Call, CallStatus, NewCall, guard, interpreted, stream_token};
use crate::db::DbError;
use crate::events;
use crate::ids::{CallId, OrgId};
use crate::providers::telnyx::{self, DialRequest, StreamSettings, TelnyxError};
use crate::state::AppState;

/// What to place.
#[derive(Debug, Clone)]
pub enum Request {
    /// Two parties, each on their own leg (docs/CALLS.md).
    Interpreted(interpreted::Dial),
    /// One leg; translations play back into it (deprecated).
    OneLeg(OneLeg),
}

/// A one-leg translated call: `to` is rung with one stream carrying both tracks.
#[derive(Debug, Clone)]
pub struct OneLeg {
    pub organisation_id: OrgId,
    pub created_by: String,
    pub from: String,
    pub to: String,
    pub source_language: String,
    pub target_language: String,
    pub voice_id: Option<String>,
    pub record: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The request cannot be placed as asked (422).
    #[error("{0}")]
    Invalid(String),
    /// Telnyx refused or was unreachable; the call is stored as failed.
    #[error(transparent)]
    Telnyx(#[from] TelnyxError),
    /// The toll-fraud guard refused (403/429), for either party's number.
    #[error(transparent)]
    Guard(#[from] guard::GuardError),
    #[error(transparent)]
    Disabled(#[from] crate::config::ProviderDisabled),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<tokio_postgres::Error> for DialError {
    fn from(error: tokio_postgres::Error) -> Self {
        DialError::Internal(error.into())
    }
}

impl From<DbError> for DialError {
    fn from(error: DbError) -> Self {
        DialError::Internal(error.into())
    }
}

/// Stores the call, rings its (first) party and returns the call as stored.
pub async fn place(state: &AppState, request: &Request) -> Result<Call, DialError> {
    match request {
        Request::Interpreted(dial) => interpreted::place(state, dial).await,
        Request::OneLeg(dial) => one_leg(state, dial).await,
    }
}

/// The caller id must be one of the organisation's numbers.
pub(super) const NOT_OUR_NUMBER: &str = "from must be one of the organisation's phone numbers";

/// Unix seconds now, for a stream token's expiry.
pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

async fn one_leg(state: &AppState, dial: &OneLeg) -> Result<Call, DialError> {
    let telnyx = state.telnyx()?;
    let mut client = state.db.client().await?;
    if !super::org_owns_number(&client, dial.organisation_id, &dial.from).await? {
        return Err(DialError::Invalid(NOT_OUR_NUMBER.into()));
    }
    let new = NewCall {
        organisation_id: dial.organisation_id,
        direction: "outbound",
        from: &dial.from,
        to: &dial.to,
        source_language: Some(&dial.source_language),
        target_language: Some(&dial.target_language),
        voice_id: dial.voice_id.as_deref(),
        record: dial.record,
        created_by: Some(&dial.created_by),
        status: CallStatus::Created,
        telnyx_call_control_id: None,
        interpreted: false,
        original_audio: "off",
    };
    // The toll-fraud guard: role, destinations, caps; the call is inserted under its locks.
    let permit = guard::admit(
        &mut client,
        &state.config.telephony,
        &state.config.usage,
        dial.organisation_id,
        &dial.created_by,
        &[&dial.to],
    )
    .await?;
    let call = super::insert(permit.transaction(), &new)
        .await?
        .ok_or_else(|| anyhow::anyhow!("new call conflicted"))?;
    events::append(
        permit.transaction(),
        call.id,
        "call.created",
        json!({"direction": "outbound", "to": call.to}),
        Utc::now(),
    )
    .await?;
    permit.commit(call.id).await?;

    let request = DialRequest {
        from: dial.from.clone(),
        to: dial.to.clone(),
        client_state: telnyx::encode_client_state(call.id),
        command_id: format!("dial:{}", call.id),
        stream: StreamSettings::bidirectional_pcmu(stream_token::stream_url(
            &state.config.media_base_url,
            state.config.auth.secret.expose().as_bytes(),
            call.id,
            now_unix(),
        )),
        record: dial.record,
        webhook_url: Some(crate::paths::url(
            &state.config.webhook_base_url,
            crate::paths::TELNYX_WEBHOOK,
        )),
        timeout_secs: None,
    };
    match telnyx.dial(&request).await {
        Ok(dialed) => {
            super::advance(
                &client,
                call.id,
                CallStatus::Dialing,
                (
                    Some(&dialed.call_control_id),
                    dialed.call_leg_id.as_deref(),
                    dialed.call_session_id.as_deref(),
                ),
            )
            .await?;
            events::append(
                &client,
                call.id,
                "call.dialing",
                json!({"status": "dialing"}),
                Utc::now(),
            )
            .await?;
        }
        Err(error) => {
            super::fail(&client, call.id, &error.to_string(), None).await?;
            return Err(error.into());
        }
    }
    Ok(super::get_unscoped(&client, call.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("call vanished"))?)
}

#[derive(Debug, thiserror::Error)]
pub enum HangUpError {
    /// No such call in this organisation.
    #[error("no such call")]
    NotFound,
    #[error("the call was never dialled")]
    NeverDialled,
    #[error(transparent)]
    Telnyx(#[from] TelnyxError),
    #[error(transparent)]
    Disabled(#[from] crate::config::ProviderDisabled),
    #[error(transparent)]
    Internal(#[from] DbError),
}

/// Asks Telnyx to hang up every live leg of an organisation's call, under stable command
/// ids, and records who asked. Returns the call as it was; an ended call is returned as is.
pub async fn hang_up(
    state: &AppState,
    organisation_id: OrgId,
    id: CallId,
    by: &str,
) -> Result<Call, HangUpError> {
    let client = state.db.client().await?;
    let call = super::get(&client, organisation_id, id)
        .await?
        .ok_or(HangUpError::NotFound)?;
    if call.status.is_terminal() {
        return Ok(call);
    }
    if call.interpreted {
        // Both parties: each live leg is hung up under its own command id.
        let live: Vec<_> = super::legs::for_call(&client, id)
            .await?
            .into_iter()
            .filter(|leg| !leg.status.is_terminal() && leg.telnyx_call_control_id.is_some())
            .collect();
        if live.is_empty() {
            return Err(HangUpError::NeverDialled);
        }
        for leg in live {
            let ccid = leg.telnyx_call_control_id.as_deref().unwrap_or_default();
            state
                .telnyx()?
                .hangup(ccid, &format!("hangup:{}", leg.id))
                .await?;
        }
    } else {
        let ccid = call
            .telnyx_call_control_id
            .as_deref()
            .ok_or(HangUpError::NeverDialled)?;
        state
            .telnyx()?
            .hangup(ccid, &format!("hangup:{id}"))
            .await?;
    }
    events::append(
        &client,
        id,
        "call.hangup_requested",
        json!({"by": by}),
        Utc::now(),
    )
    .await?;
    Ok(call)
}
