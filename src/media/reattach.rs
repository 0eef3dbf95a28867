//! Calls survive a deploy: a live call whose media bridge died with its replica (crash: the
//! heartbeat stops; deploy: the bridge marks its stream detached) gets its media stream
//! restarted through Telnyx `streaming_start` on the same `call_control_id` (each leg of an
//! interpreted call on its own), with a fresh stream URL, so Telnyx reconnects to whichever replica is healthy. The new stream's bridge
//! continues each track's clock from the old stream's last frame and records the audio in
//! between as a gap (`resume`): measured from frames, not from heartbeats.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::calls::stream_token;
use crate::events;
use crate::ids::{CallId, LegId};
use crate::providers::telnyx::StreamSettings;
use crate::state::AppState;

/// A bridge heart-beats every 5 s; three missed beats mean it is gone.
pub const STALE_AFTER_SECS: i64 = 15;
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Restarts the streams of calls whose bridge is gone: a one-leg call's stream on the
/// call's `call_control_id`, each leg's of an interpreted call on the leg's own (a leg that
/// lost its bridge is restarted alone; its party's stream token names the leg). Returns how
/// many it restarted. Safe on several replicas at once: rows are claimed with
/// `FOR UPDATE SKIP LOCKED`.
pub async fn sweep(state: &AppState) -> anyhow::Result<usize> {
    let telnyx = state.telnyx()?;
    let mut client = state.db.client().await?;
    let transaction = client.transaction().await?;
    let rows = transaction
        .query(
            "select ms.call_id, ms.leg,
                    coalesce(l.telnyx_call_control_id, c.telnyx_call_control_id) as ccid, l.id as leg_id,
                    (select (extract(epoch from now() - max(p.frame_at)) * 1000)::bigint
                     from media_stream_positions p
                     where p.call_id = ms.call_id and (ms.leg = 'call' or p.track = ms.leg)) as lost_ms
             from media_streams ms join calls c on c.id = ms.call_id
             left join call_legs l on ms.leg <> 'call' and l.call_id = ms.call_id and l.role = ms.leg
             where ms.ended_at is null
               and case when ms.leg = 'call'
                        then c.status = 'answered' and not c.interpreted and c.telnyx_call_control_id is not null
                        else coalesce(l.status = 'answered' and l.telnyx_call_control_id is not null, false)
                   end
               and (ms.replica = 'detached' or ms.heartbeat_at < now() - make_interval(secs => $1))
             for update of ms skip locked",
            &[&(STALE_AFTER_SECS as f64)],
        )
        .await?;
    let mut claimed = Vec::new();
    for row in &rows {
        let (call_id, leg): (CallId, String) = (row.get("call_id"), row.get("leg"));
        // Claim it: nobody else retries it for another STALE_AFTER_SECS.
        transaction
            .execute(
                "update media_streams set replica = 'reattach-requested', heartbeat_at = now()
                 where call_id = $1 and leg = $2",
                &[&call_id, &leg],
            )
            .await?;
        claimed.push(Lost {
            call_id,
            leg,
            ccid: row.get("ccid"),
            leg_id: row.get("leg_id"),
            lost_ms: row.get("lost_ms"),
        });
    }
    transaction.commit().await?;
    drop(client);

    let secret = state.config.auth.secret.expose().as_bytes();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    for lost in &claimed {
        let (call_id, lost_ms) = (lost.call_id, lost.lost_ms);
        // A leg's stream: its party's voice in, bound to the leg (as when it was dialed).
        let (stream, command_id) = match lost.leg_id {
            Some(leg_id) => (
                StreamSettings::inbound_pcmu(stream_token::stream_url(
                    &state.config.media_base_url,
                    secret,
                    leg_id,
                    now,
                )),
                format!("reattach:{call_id}:{}:{now}", lost.leg),
            ),
            None => (
                StreamSettings::bidirectional_pcmu(stream_token::stream_url(
                    &state.config.media_base_url,
                    secret,
                    call_id,
                    now,
                )),
                format!("reattach:{call_id}:{now}"),
            ),
        };
        if let Err(error) = telnyx
            .streaming_start(&lost.ccid, &command_id, &stream)
            .await
        {
            tracing::warn!(%call_id, leg = %lost.leg, %error, "restarting the media stream failed; will retry");
            continue;
        }
        tracing::warn!(%call_id, leg = %lost.leg, ?lost_ms, "media bridge lost; stream restarted on a healthy replica");
        metrics::counter!("media_reattaches_total").increment(1);
        let client = state.db.client().await?;
        let mut data = json!({"lost_ms": lost_ms});
        if lost.leg_id.is_some() {
            data["leg"] = json!(lost.leg);
        }
        events::append(
            &client,
            call_id,
            "media.reattached",
            // Time since the old stream's last frame, so far; the gap itself is recorded by
            // the new stream's bridge once its frames arrive.
            data,
            chrono::Utc::now(),
        )
        .await?;
    }
    Ok(claimed.len())
}

/// A stream whose bridge is gone, claimed for restarting.
struct Lost {
    call_id: CallId,
    /// `call`, or the leg's role.
    leg: String,
    ccid: String,
    /// The leg's id when the stream is a leg's.
    leg_id: Option<LegId>,
    lost_ms: Option<i64>,
}

/// Runs `sweep` every few seconds until `shutdown` (part of `callbridge worker`).
pub async fn run(state: AppState, shutdown: CancellationToken) {
    if state.telnyx.is_none() {
        return;
    }
    while shutdown
        .run_until_cancelled(tokio::time::sleep(SWEEP_EVERY))
        .await
        .is_some()
    {
        if let Err(error) = sweep(&state).await {
            tracing::warn!(%error, "media re-attach sweep failed");
        }
    }
}

/// Called by a bridge that stops because this process is shutting down: its call is still
/// live, so mark the stream (of `leg`: `call` or a leg's role) for immediate re-attachment
/// instead of ended. The heartbeat is left as it was: nothing is measured from it.
pub async fn detach(
    state: &AppState,
    call_id: CallId,
    leg: &str,
) -> Result<(), crate::db::DbError> {
    let client = state.db.client().await?;
    client
        .execute(
            "update media_streams set replica = 'detached'
             where call_id = $1 and leg = $2 and ended_at is null",
            &[&call_id, &leg],
        )
        .await?;
    Ok(())
}
