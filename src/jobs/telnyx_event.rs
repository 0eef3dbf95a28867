//! Job `telnyx.event`: applies one verified Telnyx webhook (from `webhook_inbox`) to the call
//! state machine, answers owned inbound calls, rejects calls to unknown numbers, and appends
//! what happened to the call's event log.
//!
//! Runs at least once per event; every effect is idempotent: state updates converge, the
//! answer is sent at most once per call (`answer_requested_at`) and carries a stable
//! `command_id`, so a retry after a crash cannot answer twice.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use chrono::Utc;
use serde_json::json;

use super::{Job, Permanent};
use crate::calls::{self, CallStatus, NewCall, stream_token};
use crate::events;
use crate::providers::telnyx::{self, StreamSettings, WebhookEvent};
use crate::state::AppState;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub async fn run(state: AppState, job: Job) -> anyhow::Result<()> {
    let event_id = job
        .payload
        .get("event_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Permanent("payload has no event_id".into()))?
        .to_owned();
    let client = state.db.client().await?;
    let row = client
        .query_opt(
            "select payload, occurred_at, received_at from webhook_inbox
             where provider = 'telnyx' and event_id = $1",
            &[&event_id],
        )
        .await?
        .ok_or_else(|| Permanent(format!("inbox has no event {event_id}")))?;
    let envelope: serde_json::Value = row.get(0);
    let event =
        WebhookEvent::parse(&envelope).map_err(|e| Permanent(format!("unparseable event: {e}")))?;
    let occurred_at = event.occurred_at.unwrap_or_else(|| row.get(2));

    let call = match event
        .field("client_state")
        .and_then(telnyx::decode_client_state)
    {
        Some(call_id) => calls::get_unscoped(&**client, call_id).await?,
        None => None,
    };
    let call = match (call, event.field("call_control_id")) {
        (Some(call), _) => Some(call),
        (None, Some(ccid)) => calls::by_call_control_id(&**client, ccid).await?,
        (None, None) => None,
    };

    let is_inbound_start = event.event_type == "call.initiated"
        && matches!(event.field("direction"), Some("incoming" | "inbound"));
    let call = match call {
        Some(call) => call,
        None if is_inbound_start => match route_inbound(&state, &event).await? {
            Some(call) => call,
            None => return mark_processed(&state, &event_id).await,
        },
        None => {
            tracing::info!(event_type = %event.event_type, %event_id, "event for a call we do not know; ignored");
            return mark_processed(&state, &event_id).await;
        }
    };

    calls::apply_event(
        &**client,
        call.id,
        &event.event_type,
        occurred_at,
        &event.payload,
    )
    .await?;
    if is_inbound_start && call.direction == "inbound" {
        answer_once(&state, &call, &event).await?;
    }
    let updated = calls::get_unscoped(&**client, call.id)
        .await?
        .context("call vanished")?;
    let mut data = json!({
        "telnyx_event_id": event.id,
        "status": updated.status,
        "occurred_at": occurred_at,
    });
    for field in [
        "hangup_cause",
        "hangup_source",
        "sip_hangup_cause",
        "stream_id",
        "failure_reason",
        "channels",
    ] {
        if let Some(value) = event.field(field) {
            data[field] = json!(value);
        }
    }
    events::append(&**client, call.id, &event.event_type, data, occurred_at).await?;
    if event.event_type == "call.recording.saved" {
        // Telnyx's links expire in 10 minutes: copy the recording now (docs/RECORDINGS.md).
        super::recording_import::enqueue(&**client, &updated, &event).await?;
    }
    mark_processed(&state, &event_id).await
}

async fn mark_processed(state: &AppState, event_id: &str) -> anyhow::Result<()> {
    let client = state.db.client().await?;
    client
        .execute(
            "update webhook_inbox set processed_at = now() where provider = 'telnyx' and event_id = $1",
            &[&event_id],
        )
        .await?;
    Ok(())
}

/// An incoming call: answered if one of our organisations owns the dialled number, else
/// hung up (rejected) and logged. Returns the call row when we own it.
async fn route_inbound(
    state: &AppState,
    event: &WebhookEvent,
) -> anyhow::Result<Option<calls::Call>> {
    let telnyx = state.telnyx()?;
    let ccid = event
        .field("call_control_id")
        .ok_or_else(|| Permanent("no call_control_id".into()))?;
    let to = event.field("to").unwrap_or_default();
    let from = event.field("from").unwrap_or_default();
    let client = state.db.client().await?;
    let Some(organisation_id) = calls::owner_of_number(&**client, to).await? else {
        tracing::warn!(
            to,
            from,
            "inbound call to a number no organisation owns: rejecting"
        );
        telnyx.hangup(ccid, &format!("reject:{ccid}")).await?;
        return Ok(None);
    };
    let new = NewCall {
        organisation_id,
        direction: "inbound",
        from,
        to,
        source_language: None,
        target_language: None,
        voice_id: None,
        record: false,
        created_by: None,
        status: CallStatus::Initiated,
        telnyx_call_control_id: Some(ccid),
    };
    let call = match calls::insert(&**client, &new).await? {
        Some(call) => {
            events::append(
                &**client,
                call.id,
                "call.created",
                json!({"direction": "inbound", "from": from, "to": to}),
                Utc::now(),
            )
            .await?;
            call
        }
        // A concurrent or earlier delivery created it.
        None => calls::by_call_control_id(&**client, ccid)
            .await?
            .context("inbound call row missing")?,
    };
    Ok(Some(call))
}

async fn answer_once(
    state: &AppState,
    call: &calls::Call,
    event: &WebhookEvent,
) -> anyhow::Result<()> {
    let client = state.db.client().await?;
    if calls::answer_requested(&**client, call.id).await? {
        return Ok(());
    }
    let ccid = event
        .field("call_control_id")
        .ok_or_else(|| Permanent("no call_control_id".into()))?;
    let stream = StreamSettings::bidirectional_pcmu(stream_token::stream_url(
        &state.config.media_base_url,
        state.config.auth.secret.expose().as_bytes(),
        call.id,
        now_unix(),
    ));
    state
        .telnyx()?
        .answer(
            ccid,
            &telnyx::encode_client_state(call.id),
            &format!("answer:{}", call.id),
            &stream,
        )
        .await?;
    calls::mark_answer_requested(&**client, call.id).await?;
    // Inbound minutes are paid for too: the same maximum duration as outbound calls
    // (deduplicated, so a redelivered call.initiated schedules nothing twice).
    calls::guard::schedule_max_duration(
        &**client,
        call.id,
        state.config.telephony.max_call_duration,
    )
    .await?;
    Ok(())
}
