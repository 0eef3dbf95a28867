//! Job `telnyx.event`: applies one verified Telnyx webhook (from `webhook_inbox`) to the call
//! state machine, answers owned inbound calls, rejects calls to unknown numbers, and appends
//! what happened to the call's event log.
//!
//! Exactly once per event: every write of a run — the call row, its event log entry, a
//! follow-up job, the inbox row's `processed_at` and the job's own `done` — commits in one
//! transaction that starts by locking the inbox row, and a run that finds the row processed
//! does nothing. So a crash or a database restart after the effect can never apply it twice
//! (docs/JOBS.md). Commands sent to Telnyx inside the transaction carry a stable
//! `command_id`, so the re-run of a rolled-back attempt cannot answer or hang up twice.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::db::GenericClient;
use anyhow::Context as _;
use chrono::Utc;
use serde_json::json;

use crate::calls::legs::{self, Role};
use crate::calls::{self, CallStatus, NewCall, interpreted, stream_token};
use crate::events;
use crate::inbox::{EventRef, TelnyxEventJob};
use crate::providers::telnyx::{self, StreamSettings, WebhookEvent};
use crate::queue::{Job, Permanent};
use crate::state::AppState;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub async fn run(state: AppState, job: Job) -> anyhow::Result<()> {
    let TelnyxEventJob(EventRef { event_id, .. }) = job.payload()?;
    let mut client = state.db.client().await?;
    let transaction = client.transaction().await?;
    let tx = &transaction;
    // The row lock serialises runs of this event; `processed_at` says one already committed.
    let row = tx
        .query_opt(
            "select payload, occurred_at, received_at, processed_at is not null as processed from webhook_inbox
             where provider = 'telnyx' and event_id = $1
             for update",
            &[&event_id],
        )
        .await?
        .ok_or_else(|| Permanent(format!("inbox has no event {event_id}")))?;
    if row.get::<_, bool>("processed") {
        tracing::info!(%event_id, "event already applied; nothing to do");
        return finish(transaction, &job, &event_id).await;
    }
    let envelope: serde_json::Value = row.get("payload");
    let event =
        WebhookEvent::parse(&envelope).map_err(|e| Permanent(format!("unparseable event: {e}")))?;
    // The instant PostgreSQL read from `data.occurred_at` when the event was stored (the one
    // parser, inbox::INBOX_INSERT_SQL), else when it arrived.
    let occurred_at = row
        .get::<_, Option<chrono::DateTime<Utc>>>("occurred_at")
        .unwrap_or_else(|| row.get("received_at"));

    let call = match event
        .field("client_state")
        .and_then(telnyx::decode_client_state)
    {
        Some(call_id) => calls::get_unscoped(tx, call_id).await?,
        None => None,
    };
    let call = match (call, event.field("call_control_id")) {
        (Some(call), _) => Some(call),
        (None, Some(ccid)) => match calls::by_call_control_id(tx, ccid).await? {
            Some(call) => Some(call),
            None => match legs::by_call_control_id(tx, ccid).await? {
                Some(leg) => calls::get_unscoped(tx, leg.call_id).await?,
                None => None,
            },
        },
        (None, None) => None,
    };

    let is_inbound_start = event.event_type == "call.initiated"
        && matches!(event.field("direction"), Some("incoming" | "inbound"));
    let call = match call {
        Some(call) => call,
        // A call to an inbound line is stored, answered and logged in this transaction.
        None if is_inbound_start
            && calls::lines::answer_inbound(&state, tx, &event, occurred_at)
                .await?
                .is_some() =>
        {
            return finish(transaction, &job, &event_id).await;
        }
        None if is_inbound_start => match route_inbound(&state, tx, &event).await? {
            Some(call) => call,
            None => return finish(transaction, &job, &event_id).await,
        },
        None => {
            tracing::info!(event_type = %event.event_type, %event_id, "event for a call we do not know; ignored");
            return finish(transaction, &job, &event_id).await;
        }
    };

    if call.interpreted {
        // Every write of the leg path — the leg, the derived call, the claims of the
        // commands it sends, its events and follow-up jobs — commits here with the inbox
        // and done marks, like the one-leg path below.
        run_for_leg(&state, tx, &call, &event, &event_id, occurred_at).await?;
        return finish(transaction, &job, &event_id).await;
    }
    calls::apply_event(tx, call.id, &event.event_type, occurred_at, &event.payload).await?;
    if event.event_type == "call.hangup" {
        // Answer → hang-up per leg, in this transaction: billed once with the event.
        crate::usage::record_telephony(tx, call.id).await?;
    }
    if is_inbound_start && call.direction == "inbound" {
        answer_once(&state, tx, &call, &event).await?;
    }
    let updated = calls::get_unscoped(tx, call.id)
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
    events::append(tx, call.id, &event.event_type, data, occurred_at).await?;
    if event.event_type == "call.recording.saved" {
        // Telnyx's links expire in 10 minutes: copy the recording now (docs/RECORDINGS.md).
        super::recording_import::enqueue(tx, &updated, None, &event).await?;
    }
    finish(transaction, &job, &event_id).await
}

/// An event of one leg of an interpreted call: the leg moves forward, the call is derived
/// from its legs, and what that requires (dial the remote party, hang up the other leg) is
/// done before the event is logged, so a failed command retries the whole job. Everything
/// is written with the job's transaction `tx`.
async fn run_for_leg(
    state: &AppState,
    tx: &impl GenericClient,
    call: &calls::Call,
    event: &WebhookEvent,
    event_id: &str,
    occurred_at: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    // The events of one call's two legs arrive together and each run writes both legs and
    // the call: taking the call row first orders every run of this call the same way
    // (no lock-order deadlock between the agent's and the remote party's events), and the
    // second run sees the first one's legs when it settles.
    tx.execute("select 1 from calls where id = $1 for update", &[&call.id])
        .await?;
    let named = event
        .field("client_state")
        .and_then(telnyx::decode_client_state_leg)
        .and_then(|role| Role::parse(&role));
    let leg = match (named, event.field("call_control_id")) {
        (Some(role), _) => legs::by_role(tx, call.id, role).await?,
        (None, Some(ccid)) => legs::by_call_control_id(tx, ccid).await?,
        (None, None) => None,
    };
    let Some(leg) = leg else {
        tracing::info!(event_type = %event.event_type, %event_id, call_id = %call.id, "event for no leg of the call; ignored");
        return Ok(());
    };
    legs::apply_event(tx, leg.id, &event.event_type, occurred_at, &event.payload).await?;
    let next = legs::settle(tx, call.id).await?;
    if event.event_type == "call.hangup" {
        crate::usage::record_telephony(tx, call.id).await?;
    }
    interpreted::follow_up(state, tx, call, next).await?;
    calls::lines::on_leg_event(state, tx, call, &leg, event).await?;
    let updated = calls::get_unscoped(tx, call.id)
        .await?
        .context("call vanished")?;
    let mut data = json!({
        "telnyx_event_id": event.id,
        "leg": leg.role.as_str(),
        "status": updated.status,
        "occurred_at": occurred_at,
    });
    for field in [
        "hangup_cause",
        "hangup_source",
        "sip_hangup_cause",
        "stream_id",
        "failure_reason",
    ] {
        if let Some(value) = event.field(field) {
            data[field] = json!(value);
        }
    }
    if let Some(reason) = &updated.failure_reason {
        data["call_failure_reason"] = json!(reason);
    }
    events::append(tx, call.id, &event.event_type, data, occurred_at).await?;
    if event.event_type == "call.recording.saved" {
        super::recording_import::enqueue(tx, &updated, Some(leg.role), event).await?;
    }
    Ok(())
}

/// Marks the event processed and the job done with the run's effects, and commits them all.
async fn finish(
    transaction: tokio_postgres::Transaction<'_>,
    job: &Job,
    event_id: &str,
) -> anyhow::Result<()> {
    transaction
        .execute(
            "update webhook_inbox set processed_at = coalesce(processed_at, now())
             where provider = 'telnyx' and event_id = $1",
            &[&event_id],
        )
        .await?;
    job.complete_in(&transaction).await?;
    transaction.commit().await?;
    Ok(())
}

/// An incoming call: answered if one of our organisations owns the dialled number, else
/// hung up (rejected) and logged. Returns the call row when we own it.
async fn route_inbound(
    state: &AppState,
    client: &impl GenericClient,
    event: &WebhookEvent,
) -> anyhow::Result<Option<calls::Call>> {
    let telnyx = state.telnyx()?;
    let ccid = event
        .field("call_control_id")
        .ok_or_else(|| Permanent("no call_control_id".into()))?;
    let to = event.field("to").unwrap_or_default();
    let from = event.field("from").unwrap_or_default();
    let Some(organisation_id) = calls::owner_of_number(client, to).await? else {
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
        interpreted: false,
        original_audio: "off",
    };
    let call = match calls::insert(client, &new).await? {
        Some(call) => {
            events::append(
                client,
                call.id,
                "call.created",
                json!({"direction": "inbound", "from": from, "to": to}),
                Utc::now(),
            )
            .await?;
            call
        }
        // A concurrent or earlier delivery created it.
        None => calls::by_call_control_id(client, ccid)
            .await?
            .context("inbound call row missing")?,
    };
    Ok(Some(call))
}

async fn answer_once(
    state: &AppState,
    client: &impl GenericClient,
    call: &calls::Call,
    event: &WebhookEvent,
) -> anyhow::Result<()> {
    if calls::answer_requested(client, call.id).await? {
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
            call.record,
        )
        .await?;
    calls::mark_answer_requested(client, call.id).await?;
    // Inbound minutes are paid for too: the same maximum duration as outbound calls
    // (deduplicated, so a redelivered call.initiated schedules nothing twice).
    calls::guard::schedule_max_duration(client, call.id, state.config.telephony.max_call_duration)
        .await?;
    Ok(())
}
