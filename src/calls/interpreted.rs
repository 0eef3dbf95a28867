//! Placing an interpreted call: two parties, each on their own Telnyx leg with their own
//! media stream, language and voice. The agent is rung first; the remote party is dialed
//! by the `telnyx.event` job once the agent answers (docs/adr, "interpreted calls"), and
//! either party hanging up ends the other leg ([`super::legs::settle`]).

use std::collections::VecDeque;

use crate::db::GenericClient;
use crate::ids::OrgId;
use chrono::Utc;
use serde_json::json;

use super::dial::{DialError, NOT_OUR_NUMBER, now_unix};
use super::legs::{self, Leg, NewLeg, Role};
use super::{Call, CallStatus, NewCall, stream_token};
use crate::config::speech::SpeechChoice;
use crate::events;
use crate::providers::telnyx::{self, DialRequest, StreamSettings, TelnyxError};
use crate::state::AppState;

/// One party as the caller of the API describes them.
#[derive(Debug, Clone)]
pub struct Party {
    pub number: String,
    /// BCP-47 or `auto`.
    pub language: String,
    pub voice_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Dial {
    pub organisation_id: OrgId,
    pub created_by: Option<String>,
    pub from: String,
    pub agent: Party,
    pub remote: Party,
    pub record: bool,
    pub original_audio: String,
}

/// The speech model for a party's language, or a 422 naming the language.
pub fn speech_for(state: &AppState, role: Role, language: &str) -> Result<SpeechChoice, DialError> {
    state
        .config
        .media
        .speech_models
        .choose(language)
        .map_err(|why| DialError::Invalid(format!("{}.language: {why}", role.as_str())))
}

/// Stores the call and both legs, then rings the agent. The remote party is dialed when
/// the agent answers.
pub async fn place(state: &AppState, dial: &Dial) -> Result<Call, DialError> {
    if dial.agent.language == "auto" {
        return Err(DialError::Invalid(
            "agent.language must be a language, not auto: the agent's language is the organisation's choice".into(),
        ));
    }
    speech_for(state, Role::Agent, &dial.agent.language)?;
    speech_for(state, Role::Remote, &dial.remote.language)?;
    let telnyx = state.telnyx()?;
    let mut client = state.db.client().await?;
    if !super::org_owns_number(&client, dial.organisation_id, &dial.from).await? {
        return Err(DialError::Invalid(NOT_OUR_NUMBER.into()));
    }
    // The toll-fraud guard, for both parties' numbers: the call is inserted under its locks.
    let permit = super::guard::admit(
        &mut client,
        &state.config.telephony,
        &state.config.usage,
        dial.organisation_id,
        dial.created_by.as_deref().unwrap_or_default(),
        &[&dial.agent.number, &dial.remote.number],
    )
    .await?;
    let transaction = permit.transaction();
    let call = super::insert(
        transaction,
        &NewCall {
            organisation_id: dial.organisation_id,
            direction: "outbound",
            from: &dial.from,
            to: &dial.remote.number,
            source_language: Some(&dial.remote.language),
            target_language: Some(&dial.agent.language),
            voice_id: None,
            record: dial.record,
            created_by: dial.created_by.as_deref(),
            status: CallStatus::Created,
            telnyx_call_control_id: None,
            interpreted: true,
            original_audio: &dial.original_audio,
        },
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("new call conflicted"))?;
    for (role, party) in [(Role::Agent, &dial.agent), (Role::Remote, &dial.remote)] {
        legs::insert(
            transaction,
            &NewLeg {
                call_id: call.id,
                role,
                number: &party.number,
                language: Some(&party.language),
                voice_id: party.voice_id.as_deref(),
                status: CallStatus::Created,
                telnyx_call_control_id: None,
            },
        )
        .await?;
    }
    events::append(
        transaction,
        call.id,
        "call.created",
        json!({"direction": "outbound", "interpreted": true, "agent": dial.agent.number, "remote": dial.remote.number}),
        Utc::now(),
    )
    .await?;
    permit.commit(call.id).await?;

    let agent = legs::by_role(&client, call.id, Role::Agent)
        .await?
        .ok_or_else(|| anyhow::anyhow!("agent leg vanished"))?;
    if let Err(error) = dial_leg(state, &client, telnyx, &call, &agent).await {
        if let DialError::Telnyx(telnyx_error) = &error {
            let reason = format!("the agent could not be dialed: {telnyx_error}");
            legs::mark_failed(&client, agent.id, &reason).await?;
            super::fail(&client, call.id, &reason, Some(Role::Agent)).await?;
            // The remote party is then never dialed.
            legs::settle(&client, call.id).await?;
        }
        return Err(error);
    }
    super::advance(&client, call.id, CallStatus::Dialing, (None, None, None)).await?;
    Ok(super::get_unscoped(&client, call.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("call vanished"))?)
}

/// Dials one leg with its own media stream (inbound track, µ-law both ways) and our ids in
/// `client_state`, and records the dial with `client` (the caller's transaction, when it
/// holds the leg's row). Idempotent at Telnyx: the command id is the leg's.
pub async fn dial_leg(
    state: &AppState,
    client: &impl GenericClient,
    telnyx: &telnyx::TelnyxClient,
    call: &Call,
    leg: &Leg,
) -> Result<(), DialError> {
    // A line's agent is rung from the line's number, for as long as the line allows.
    let (from, timeout_secs) = if call.direction == "inbound" {
        (
            call.to.clone(),
            super::lines::agent_timeout(client, call.id).await?,
        )
    } else {
        (call.from.clone(), None)
    };
    let request = DialRequest {
        from,
        to: leg.number.clone(),
        client_state: telnyx::encode_leg_client_state(call.id, leg.role.as_str()),
        command_id: format!("dial:{}", leg.id),
        stream: StreamSettings::inbound_pcmu(stream_token::stream_url(
            &state.config.media_base_url,
            state.config.auth.secret.expose().as_bytes(),
            leg.id,
            now_unix(),
        )),
        record: call.record,
        webhook_url: Some(crate::paths::url(
            &state.config.webhook_base_url,
            crate::paths::TELNYX_WEBHOOK,
        )),
        timeout_secs,
    };
    let dialed = telnyx.dial(&request).await?;
    legs::dialed(
        client,
        leg.id,
        (
            &dialed.call_control_id,
            dialed.call_leg_id.as_deref(),
            dialed.call_session_id.as_deref(),
        ),
    )
    .await?;
    events::append(
        client,
        call.id,
        "call.dialing",
        json!({"status": "dialing", "leg": leg.role.as_str()}),
        Utc::now(),
    )
    .await?;
    Ok(())
}

/// Carries out what [`legs::settle`] decided: ring the second party, greet or apologise to
/// a line's caller, or end a leg whose party is gone; a refused remote dial fails that leg, which ends the agent's in turn.
///
/// Runs inside the `telnyx.event` job's transaction (`client`), which holds the call's row:
/// each command is claimed, sent and recorded there, so the claim, the command's record and
/// the event commit together or not at all. A rolled-back run sends the command again with
/// the same `command_id`, which Telnyx treats as the same command.
pub async fn follow_up(
    state: &AppState,
    client: &impl GenericClient,
    call: &Call,
    next: Vec<legs::Next>,
) -> anyhow::Result<()> {
    let telnyx = state.telnyx()?;
    let mut steps: VecDeque<legs::Next> = next.into();
    while let Some(step) = steps.pop_front() {
        match step {
            legs::Next::Dial(leg) => {
                if !legs::claim_dial(client, leg.id).await? {
                    continue;
                }
                match dial_leg(state, client, telnyx, call, &leg).await {
                    Ok(()) => {}
                    Err(DialError::Telnyx(error @ TelnyxError::Rejected { .. })) => {
                        let who = match leg.role {
                            Role::Agent => "the agent",
                            Role::Remote => "the remote party",
                        };
                        let reason = format!("{who} could not be dialed: {error}");
                        legs::mark_failed(client, leg.id, &reason).await?;
                        events::append(
                            client,
                            call.id,
                            "call.leg_failed",
                            json!({"leg": leg.role.as_str(), "failure_reason": reason}),
                            Utc::now(),
                        )
                        .await?;
                        steps.extend(legs::settle(client, call.id).await?);
                    }
                    // Unavailable after retries: the job runs again (same command id), and
                    // the claim rolls back with this run.
                    Err(error) => return Err(error.into()),
                }
            }
            legs::Next::Greet(caller) => super::lines::greet(state, client, call, &caller).await?,
            legs::Next::Apologise(caller) => {
                super::lines::apologise(state, client, call, &caller).await?
            }
            legs::Next::HangUp(leg) => {
                let Some(ccid) = leg.telnyx_call_control_id.as_deref() else {
                    continue;
                };
                if !legs::claim_hangup(client, leg.id).await? {
                    continue;
                }
                telnyx.hangup(ccid, &format!("hangup:{}", leg.id)).await?;
                events::append(
                    client,
                    call.id,
                    "call.hangup_requested",
                    json!({"leg": leg.role.as_str(), "because": "the other party's leg ended"}),
                    Utc::now(),
                )
                .await?;
            }
        }
    }
    Ok(())
}
