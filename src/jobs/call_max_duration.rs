//! Job `call.max_duration`: a call placed through the dial guard ends at
//! `DIAL_MAX_CALL_DURATION_SECS`. Step `warn` (a minute before) speaks a notice into the call;
//! step `hangup` hangs it up through Telnyx. Both are scheduled when the call is admitted
//! (`calls::guard::Permit::commit`), so the limit survives restarts and holds whichever
//! replica runs the job.
//!
//! At least once and harmless to repeat: a call already ended is left alone (and a warning
//! that runs once the hang-up is due or done does nothing), Telnyx commands
//! carry stable `command_id`s (`max-duration-warning:<id>`, `max-duration:<id>`), and each
//! step is logged to the call's events once (`max_duration_warned_at`/`_hangup_at`).

use serde_json::json;

use crate::calls;
use crate::calls::guard::{MaxDurationJob, MaxDurationStep};
use crate::db::GenericClient;
use crate::events;
use crate::ids::CallId;
use crate::queue::Job;
use crate::state::AppState;

/// What the parties hear a minute before the end (Telnyx text-to-speech).
pub const WARNING_TEXT: &str =
    "This call has almost reached its maximum length and will end in one minute.";

pub async fn run(state: AppState, job: Job) -> anyhow::Result<()> {
    let MaxDurationJob {
        call_id,
        step,
        limit_secs,
    } = job.payload()?;
    let client = state.db.client().await?;
    let Some(call) = calls::get_unscoped(&client, call_id).await? else {
        return Ok(());
    };
    // Never dialled (its dial failed or is still in flight): nothing to hang up; a dial
    // that never completes is failed by the stale-call sweep.
    if call.status.is_terminal() {
        return Ok(());
    }
    // An interpreted call's parties are on their own legs: each live leg is warned and
    // hung up (command ids per leg); a one-leg call has its one call control id.
    let targets = calls::legs::live_control_ids(&client, call_id).await?;
    if targets.is_empty() {
        return Ok(());
    }
    let telnyx = state.telnyx()?;
    let (column, kind) = match step {
        // Late enough that the hang-up is due or done (a backlog after an outage): a warning
        // a minute before an end that is already here would only log an event out of order,
        // and whether it did would depend on which step a worker picked first.
        MaxDurationStep::Warn if hang_up_due(&client, call_id).await? => return Ok(()),
        MaxDurationStep::Warn => {
            for (ccid, key) in &targets {
                telnyx
                    .speak(ccid, &format!("max-duration-warning:{key}"), WARNING_TEXT)
                    .await?;
            }
            ("max_duration_warned_at", "call.max_duration_warning")
        }
        MaxDurationStep::Hangup => {
            for (ccid, key) in &targets {
                telnyx.hangup(ccid, &format!("max-duration:{key}")).await?;
            }
            ("max_duration_hangup_at", "call.max_duration_reached")
        }
    };
    let mut client = client;
    let transaction = client.transaction().await?;
    let first = transaction
        .execute(
            &format!("update calls set {column} = now() where id = $1 and {column} is null"),
            &[&call_id],
        )
        .await?
        == 1;
    if first {
        events::append(
            &transaction,
            call_id,
            kind,
            json!({"limit_secs": limit_secs}),
            chrono::Utc::now(),
        )
        .await?;
        tracing::info!(%call_id, step = step.as_str(), "maximum call duration enforced");
    }
    // Done with the step's record, in one transaction (docs/JOBS.md, exactly-once effects).
    job.complete_in(&transaction).await?;
    transaction.commit().await?;
    Ok(())
}

/// Whether the call's `hangup` step has been enforced or is itself due now.
async fn hang_up_due(client: &impl GenericClient, call_id: CallId) -> anyhow::Result<bool> {
    let row = client
        .query_one(HANG_UP_DUE_SQL, &[&call_id.to_string()])
        .await?;
    Ok(row.get("due"))
}

/// Also run by the edge (edge-shim/src/max-duration.ts), word for word.
const HANG_UP_DUE_SQL: &str =
    "select exists (select 1 from calls where id = $1::text::uuid and max_duration_hangup_at is not null)
        or exists (select 1 from jobs where kind = 'call.max_duration' and payload->>'call_id' = $1::text
                   and coalesce(payload->>'step', 'hangup') = 'hangup' and run_at <= now()) as due";
