//! The worker's cron: every `CRON_INTERVAL_SECS`, one replica — whichever takes the advisory
//! lock — runs, in order:
//!
//! 1. **Retention purge**, per organisation (`organisations.recording_retention_days`, else
//!    `RECORDINGS_RETENTION_DAYS`): objects of expired recordings are deleted first, then their
//!    rows (versions and post-call transcripts cascade). A failed object delete keeps its rows,
//!    so the next tick retries. Also: multipart uploads a dead process left (aborted), pending
//!    versions older than a day (objects and rows), staging objects older than a day. Text
//!    derived from calls follows the same retention: live transcript turns and gaps,
//!    translated utterances and the organisation's translation cache.
//! 2. **Stale calls**: a call in a non-terminal status untouched for `CRON_STALE_CALL_MINUTES`
//!    and without a live media bridge (heartbeat in the last 5 minutes) is failed
//!    (`failure_reason = 'stale: …'`) with a `call.failed` event.
//! 3. **Dead jobs report**: counts per kind logged at WARN (new ones since the last tick) and
//!    exported as the gauge `jobs_dead{kind}`.
//! 4. **Usage** (docs/USAGE.md): monthly quotas of live calls (`usage::quota::enforce`),
//!    stored recording bytes per day (`byte_days`), and the reconciliation of AssemblyAI
//!    streaming seconds (`usage::reconcile`).
//!
//! The lock is a session-level `pg_try_advisory_lock` on a dedicated unpooled connection
//! (`DATABASE_DIRECT_URL`; transaction-mode poolers cannot hold session locks), held for the
//! tick and released at its end or when the connection drops with the process.

use std::collections::HashMap;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::GenericClient;
use crate::ids::{CallId, OrgId};
use crate::recordings::keys;
use crate::recordings::store;
use crate::state::AppState;
use crate::storage::objects;

/// `pg_try_advisory_lock` key of the cron (arbitrary, fixed: "cbcron").
pub const LOCK_KEY: i64 = 0x6362_6372_6f6e;

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub recordings_purged: usize,
    pub objects_deleted: usize,
    pub uploads_aborted: usize,
    pub pending_versions_dropped: usize,
    pub staging_objects_deleted: usize,
    /// Transcript turns and gaps, utterances and translation cache rows past retention.
    pub text_rows_purged: u64,
    pub stale_calls_failed: usize,
    pub dead_jobs: HashMap<String, i64>,
    pub quotas: QuotasEnforced,
    pub storage_days_recorded: u64,
    pub usage_drift_found: u64,
}

/// Runs ticks until `shutdown`. The first tick runs at start-up.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.recordings.cron_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_dead: HashMap<String, i64> = HashMap::new();
    tracing::info!("cron started");
    while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
        match run_once(&state).await {
            Ok(Some(report)) => {
                for (kind, count) in &report.dead_jobs {
                    let before = last_dead.get(kind).copied().unwrap_or_default();
                    if *count > before {
                        tracing::warn!(kind, dead = count, new = count - before, "dead jobs");
                    }
                }
                last_dead = report.dead_jobs.clone();
                tracing::info!(?report, "cron tick");
            }
            Ok(None) => tracing::debug!("cron tick skipped: another replica holds the lock"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "cron tick failed"),
        }
    }
    tracing::info!("cron stopped");
}

/// One tick under the advisory lock; `None` when another replica holds it.
pub async fn run_once(state: &AppState) -> anyhow::Result<Option<Report>> {
    let lock = crate::db::connect_direct(state.config.database.direct_url.expose()).await?;
    let locked: bool = lock
        .query_one("select pg_try_advisory_lock($1) as locked", &[&LOCK_KEY])
        .await?
        .get("locked");
    if !locked {
        return Ok(None);
    }
    let result = tick(state).await;
    // Dropping the connection would release it too; unlock explicitly to be prompt.
    let _ = lock
        .execute("select pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result.map(Some)
}

/// The work of one tick, without the lock (tests call the parts directly): the tasks the
/// embedded manifest leaves to the container when the Worker runs work (`EDGE_RUNS_WORK`),
/// every task otherwise (ADR 0042).
pub async fn tick(state: &AppState) -> anyhow::Result<Report> {
    tick_for(
        state,
        crate::strangler::work_owners(state.config.edge.runs_work),
    )
    .await
}

/// One tick's tasks that `manifest` gives the container (`origin`); a task the manifest
/// gives the edge runs in the Worker's Cron Trigger instead, never here.
pub async fn tick_for(
    state: &AppState,
    manifest: &crate::strangler::Manifest,
) -> anyhow::Result<Report> {
    let ours = |task: &str| manifest.cron_owner(task) == "origin";
    let mut report = Report::default();
    if ours("retention.purge") {
        purge_expired_recordings(state, &mut report).await?;
        report.text_rows_purged = purge_expired_text(state).await?;
    }
    if ours("uploads.sweep") {
        sweep_uploads(state, &mut report).await?;
    }
    if ours("calls.stale_sweep") {
        report.stale_calls_failed = sweep_stale_calls(state).await?;
    }
    if ours("jobs.dead_report") {
        report.dead_jobs = dead_jobs(state).await?;
    }
    if ours("usage.quotas") {
        report.quotas = enforce_quotas(state).await?;
    }
    if ours("usage.metering") {
        let client = state.db.client().await?;
        report.storage_days_recorded = crate::usage::record_storage_days(&client).await?;
        report.usage_drift_found =
            crate::usage::reconcile::run(&client, state.config.usage.reconcile_drift_secs).await?;
    }
    for (kind, count) in &report.dead_jobs {
        metrics::gauge!("jobs_dead", "kind" => kind.clone()).set(*count as f64);
    }
    metrics::counter!("recordings_purged_total").increment(report.recordings_purged as u64);
    metrics::counter!("calls_swept_stale_total").increment(report.stale_calls_failed as u64);
    Ok(report)
}

/// What the quota pass did (docs/USAGE.md, "Quotas").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotasEnforced {
    pub warned: usize,
    pub reached: usize,
    pub announced: usize,
    pub ended: usize,
}

/// The monthly quotas of live calls: marks and events by `usage::quota::enforce`, then the
/// announcement into each live leg of a call to end, and its hang-up once it had time to play
/// (Telnyx command ids are stable per call and leg, so a repeated pass sends nothing twice).
pub async fn enforce_quotas(state: &AppState) -> anyhow::Result<QuotasEnforced> {
    use crate::usage::quota;
    let client = state.db.client().await?;
    let found = quota::enforce(&client, &state.config.usage).await?;
    let mut done = QuotasEnforced {
        warned: found.warned,
        reached: found.reached,
        ..QuotasEnforced::default()
    };
    if found.announce.is_empty() && found.hang_up.is_empty() {
        return Ok(done);
    }
    let telnyx = state.telnyx()?;
    for (call_id, _) in &found.announce {
        for (ccid, key) in crate::calls::legs::live_control_ids(&client, *call_id).await? {
            telnyx
                .speak(
                    &ccid,
                    &format!("quota-announcement:{key}"),
                    quota::ANNOUNCEMENT,
                )
                .await?;
        }
        done.announced += 1;
    }
    for (call_id, which) in &found.hang_up {
        for (ccid, key) in crate::calls::legs::live_control_ids(&client, *call_id).await? {
            telnyx.hangup(&ccid, &format!("quota-end:{key}")).await?;
        }
        if quota::hung_up(&client, *call_id, *which).await? {
            done.ended += 1;
        }
    }
    Ok(done)
}

/// Deletes recordings older than their organisation's retention: objects, then rows.
pub async fn purge_expired_recordings(state: &AppState, report: &mut Report) -> anyhow::Result<()> {
    let client = state.db.client().await?;
    loop {
        let expired = client
            .query(
                "select r.id, r.organisation_id,
                        coalesce(array_agg(v.object_key) filter (where v.object_key is not null), '{}')
                          as object_keys,
                        coalesce(array_agg(v.staging_key) filter (where v.staging_key is not null), '{}')
                          as staging_keys
                 from recordings r
                 join organisations o on o.id = r.organisation_id
                 left join recording_versions v on v.recording_id = r.id
                 where r.created_at < now() - make_interval(days => coalesce(o.recording_retention_days, $1))
                 group by r.id, r.organisation_id
                 order by r.created_at
                 limit 200",
                &[&state.config.recordings.retention_days],
            )
            .await?;
        if expired.is_empty() {
            return Ok(());
        }
        let mut purged = Vec::new();
        for row in &expired {
            let (id, organisation_id): (Uuid, OrgId) = (row.get("id"), row.get("organisation_id"));
            let mut objects: Vec<String> = row.get("object_keys");
            objects.extend(row.get::<_, Vec<String>>("staging_keys"));
            let mut all_deleted = true;
            for key in &objects {
                if !keys::belongs_to(key, organisation_id) {
                    tracing::error!(%key, %organisation_id, "refusing to delete a key outside its organisation");
                    all_deleted = false;
                    continue;
                }
                match objects::delete(&state.storage, key).await {
                    Ok(()) => report.objects_deleted += 1,
                    Err(error) => {
                        tracing::warn!(%key, %error, "could not delete an expired recording object; retried next tick");
                        all_deleted = false;
                    }
                }
            }
            if all_deleted {
                purged.push(id);
            }
        }
        if purged.is_empty() {
            // Every object delete failed: stop rather than spin on the same rows.
            return Ok(());
        }
        let deleted = client
            .execute("delete from recordings where id = any($1)", &[&purged])
            .await?;
        report.recordings_purged += deleted as usize;
        if expired.len() < 200 {
            return Ok(());
        }
    }
}

/// Deletes call-derived text older than its organisation's recording retention: live
/// transcripts (turns and gaps), translated utterances and cached translations. Each tick
/// deletes only what expired since the last one, so single statements stay small.
pub async fn purge_expired_text(state: &AppState) -> anyhow::Result<u64> {
    const EXPIRED: &str =
        "created_at < now() - make_interval(days => coalesce(o.recording_retention_days, $1))";
    let client = state.db.client().await?;
    let days = &state.config.recordings.retention_days;
    let mut purged = 0;
    for table in ["transcript_turns", "transcript_gaps", "utterances"] {
        let sql = format!(
            "delete from {table} t using calls c join organisations o on o.id = c.organisation_id
             where c.id = t.call_id and t.{EXPIRED}"
        );
        purged += client.execute(&sql, &[days]).await?;
    }
    let sql = format!(
        "delete from translation_cache t using organisations o
         where o.id = t.organisation_id and t.{EXPIRED}"
    );
    purged += client.execute(&sql, &[days]).await?;
    metrics::counter!("call_text_purged_total").increment(purged);
    Ok(purged)
}

/// Multipart uploads left by a dead process, pending versions older than a day (with their
/// objects), and staging objects older than a day.
pub async fn sweep_uploads(state: &AppState, report: &mut Report) -> anyhow::Result<()> {
    let client = state.db.client().await?;
    let orphans = client
        .query(
            "select upload_id, object_key from multipart_uploads
             where started_at < now() - interval '1 day' limit 500",
            &[],
        )
        .await?;
    for row in &orphans {
        let (upload_id, key): (String, String) = (row.get("upload_id"), row.get("object_key"));
        store::abort_upload(&state.storage, &state.db, &key, &upload_id, Vec::new()).await;
        report.uploads_aborted += 1;
    }
    let pending = client
        .query(
            "select v.recording_id, v.version, v.object_key, v.staging_key, r.organisation_id
             from recording_versions v join recordings r on r.id = v.recording_id
             where v.status = 'pending' and v.created_at < now() - interval '1 day' limit 500",
            &[],
        )
        .await?;
    for row in &pending {
        let (recording_id, version): (Uuid, i32) = (row.get("recording_id"), row.get("version"));
        let organisation_id: OrgId = row.get("organisation_id");
        let mut ok = true;
        for key in [
            Some(row.get::<_, String>("object_key")),
            row.get::<_, Option<String>>("staging_key"),
        ]
        .into_iter()
        .flatten()
        {
            if keys::belongs_to(&key, organisation_id) {
                ok &= objects::delete(&state.storage, &key).await.is_ok();
            }
        }
        if ok {
            crate::recordings::release(&client, recording_id, version).await?;
            report.pending_versions_dropped += 1;
        }
    }
    let cutoff = Utc::now() - chrono::Duration::days(1);
    let mut continuation: Option<String> = None;
    loop {
        let page = state
            .storage
            .client()
            .list_objects_v2()
            .bucket(state.storage.bucket())
            .prefix(keys::STAGING_ROOT)
            .set_continuation_token(continuation.take())
            .send()
            .await;
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&error), "listing staging objects failed");
                break;
            }
        };
        for object in page.contents() {
            let old = object
                .last_modified()
                .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), 0))
                .is_some_and(|t| t < cutoff);
            if let (true, Some(key)) = (old, object.key())
                && objects::delete(&state.storage, key).await.is_ok()
            {
                report.staging_objects_deleted += 1;
            }
        }
        match page.next_continuation_token() {
            Some(token) if page.is_truncated() == Some(true) => continuation = Some(token.into()),
            _ => break,
        }
    }
    Ok(())
}

/// Fails calls stuck in a non-terminal status; returns how many.
pub async fn sweep_stale_calls(state: &AppState) -> anyhow::Result<usize> {
    let mut client = state.db.client().await?;
    let after = state.config.recordings.stale_call_after;
    let reason = format!(
        "stale: no terminal event within {} minutes",
        after.as_secs() / 60
    );
    // Locked while they are failed, so a Telnyx event applied meanwhile waits and then
    // finds the call terminal (the state machine never moves a call back).
    let transaction = client.transaction().await?;
    let rows = transaction
        .query(
            "select id from calls
             where status not in ('ended', 'failed')
               and updated_at < now() - make_interval(secs => $1)
               -- A long call whose media bridge is alive is not stale.
               and not exists (select 1 from media_streams m
                               where m.call_id = calls.id and m.ended_at is null
                                 and m.heartbeat_at > now() - interval '5 minutes')
             for update skip locked",
            &[&after.as_secs_f64()],
        )
        .await?;
    let mut failed = 0;
    for row in &rows {
        let id: CallId = row.get("id");
        if crate::calls::fail(&transaction, id, &reason, None).await? {
            failed += 1;
            tracing::warn!(call_id = %id, "stale call failed by the cron");
        }
    }
    transaction.commit().await?;
    Ok(failed)
}

/// Dead jobs per kind.
pub async fn dead_jobs(state: &AppState) -> anyhow::Result<HashMap<String, i64>> {
    let client = state.db.client().await?;
    Ok(client
        .query(
            "select kind, count(*) as dead from jobs where status = 'dead' group by kind",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get("kind"), row.get("dead")))
        .collect())
}
