//! Post-call transcripts (docs/PROVIDERS.md §2.3), two jobs:
//!
//! - `recording.transcribe`: submits a stored version to AssemblyAI async with `audio_url` =
//!   a presigned GET that outlives the queue (`RECORDINGS_TRANSCRIPTION_URL_SECS`), the
//!   webhook `PUBLIC_BASE_URL/webhooks/assemblyai` with our auth header, and `multichannel`
//!   for dual-channel recordings. Skipped (done) when AssemblyAI or its webhook secret is not
//!   configured, or when the version was already submitted.
//! - `assemblyai.event`: enqueued by `POST /webhooks/assemblyai` through `webhook_inbox`;
//!   fetches `GET /v2/transcript/{id}` and stores text, words and utterances (with their
//!   channel/speaker). Exactly once: the transcript update, its call event, the inbox row's
//!   `processed_at` and the job's `done` commit in one transaction (docs/JOBS.md), and only a
//!   `submitted` row changes, so a re-run appends nothing.

use anyhow::Context as _;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::db::GenericClient;
use crate::events;
use crate::ids::CallId;
use crate::inbox::{AssemblyAiEventJob, EventRef};
use crate::providers::assemblyai_async::{self, AsyncClient, SubmitRequest};
use crate::queue::{Job, JobKind, Permanent};
use crate::recordings;
use crate::state::AppState;
use crate::storage::objects;

/// Job `recording.transcribe`: one per stored recording version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscribeJob {
    pub recording_id: Uuid,
    pub version: i32,
}

impl JobKind for TranscribeJob {
    const KIND: &'static str = "recording.transcribe";

    fn dedupe_key(&self) -> Option<String> {
        Some(format!(
            "{}:{}:{}",
            Self::KIND,
            self.recording_id,
            self.version
        ))
    }
}

pub async fn transcribe(state: AppState, job: Job) -> anyhow::Result<()> {
    let TranscribeJob {
        recording_id,
        version,
    } = job.payload()?;
    let Ok(config) = state.config.providers.assemblyai() else {
        tracing::info!(%recording_id, "AssemblyAI is not configured: no post-call transcript");
        return Ok(());
    };
    let Some(secret) = &config.webhook_secret else {
        tracing::warn!(%recording_id, "ASSEMBLYAI_WEBHOOK_SECRET is not set: no post-call transcript");
        return Ok(());
    };
    let client = state.db.client().await?;
    let already = client
        .query_opt(
            "select 1 from post_call_transcripts where recording_id = $1 and version = $2",
            &[&recording_id, &version],
        )
        .await?;
    if already.is_some() {
        return Ok(());
    }
    let row = recordings::version_unscoped(&client, recording_id, version)
        .await?
        .ok_or_else(|| Permanent("recording version is gone (purged?)".into()))?;
    if row.status != "stored" {
        return Err(Permanent("recording version is not stored".into()).into());
    }
    let audio_url = objects::presign_get(
        &state.storage,
        &row.object_key,
        state.config.recordings.transcription_url_ttl,
    )
    .await?;
    let multichannel = row.channels.as_deref() == Some("dual");
    let request = SubmitRequest {
        audio_url,
        webhook_url: crate::paths::url(
            &state.config.webhook_base_url,
            crate::paths::ASSEMBLYAI_WEBHOOK,
        ),
        webhook_auth_header_name: assemblyai_async::WEBHOOK_AUTH_HEADER.into(),
        webhook_auth_header_value: secret.expose().clone(),
        multichannel,
        language_detection: true,
        // One speaker per channel already; labels only for single-channel audio.
        speaker_labels: !multichannel,
    };
    drop(client);
    let submitted = match AsyncClient::new(config).submit(&request).await {
        Ok(submitted) => submitted,
        Err(error) if error.is_permanent() => return Err(Permanent(error.to_string()).into()),
        Err(error) => return Err(error.into()),
    };
    let mut client = state.db.client().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "insert into post_call_transcripts
                (recording_id, version, call_id, organisation_id, assemblyai_transcript_id, status, multichannel)
             values ($1, $2, $3, $4, $5, 'submitted', $6)
             on conflict do nothing",
            &[&recording_id, &version, &row.call_id, &row.organisation_id, &submitted.id, &multichannel],
        )
        .await?;
    job.complete_in(&transaction).await?;
    transaction.commit().await?;
    metrics::counter!("post_call_transcripts_submitted_total").increment(1);
    tracing::info!(%recording_id, transcript_id = %submitted.id, "submitted for post-call transcription");
    Ok(())
}

pub async fn fetch(state: AppState, job: Job) -> anyhow::Result<()> {
    let AssemblyAiEventJob(EventRef { event_id, .. }) = job.payload()?;
    let (payload, processed) = {
        let client = state.db.client().await?;
        let row = client
            .query_opt(
                "select payload, processed_at is not null as processed from webhook_inbox
                 where provider = 'assemblyai' and event_id = $1",
                &[&event_id],
            )
            .await?
            .ok_or_else(|| Permanent(format!("inbox has no event {event_id}")))?;
        (
            row.get::<_, Value>("payload"),
            row.get::<_, bool>("processed"),
        )
    };
    if processed {
        return Ok(());
    }
    let transcript_id = payload
        .get("transcript_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Permanent("webhook has no transcript_id".into()))?
        .to_owned();
    let row = {
        let client = state.db.client().await?;
        client
            .query_opt(
                "select recording_id, version, call_id from post_call_transcripts where assemblyai_transcript_id = $1",
                &[&transcript_id],
            )
            .await?
    };
    let Some(row) = row else {
        // The webhook can overtake our own insert after submitting: retried with backoff.
        anyhow::bail!("no submitted transcript {transcript_id} yet");
    };
    let (recording_id, version, call_id): (Uuid, i32, Option<CallId>) = (
        row.get("recording_id"),
        row.get("version"),
        row.get("call_id"),
    );
    // No connection is held while AssemblyAI answers.
    let config = state.config.providers.assemblyai()?;
    let transcript = match AsyncClient::new(config).get(&transcript_id).await {
        Ok(transcript) => transcript,
        Err(error) if error.is_permanent() => return Err(Permanent(error.to_string()).into()),
        Err(error) => return Err(error.into()),
    };
    if !matches!(transcript.status.as_str(), "completed" | "error") {
        // A webhook is only sent when done; anything else is worth another look later.
        anyhow::bail!("transcript {transcript_id} is still {}", transcript.status);
    }

    let mut client = state.db.client().await?;
    let transaction = client.transaction().await?;
    let tx = &transaction;
    // The row lock serialises runs of this event; `processed_at` says one already committed.
    let processed: bool = tx
        .query_one(
            "select processed_at is not null as processed from webhook_inbox
             where provider = 'assemblyai' and event_id = $1
             for update",
            &[&event_id],
        )
        .await?
        .get("processed");
    if processed {
        return Ok(());
    }
    let changed = if transcript.status == "completed" {
        let words = json!(transcript.words.unwrap_or_default());
        let utterances = json!(transcript.utterances.unwrap_or_default());
        let duration_ms = transcript
            .audio_duration
            .map(|s| (s * 1000.0).round() as i64);
        tx.execute(
            "update post_call_transcripts set status = 'completed', text = $2, words = $3,
                    utterances = $4, language_code = $5, audio_duration_ms = $6, error = null,
                    completed_at = coalesce(completed_at, now())
             where assemblyai_transcript_id = $1 and status = 'submitted'",
            &[
                &transcript_id,
                &transcript.text,
                &words,
                &utterances,
                &transcript.language_code,
                &duration_ms,
            ],
        )
        .await?
    } else {
        tx.execute(
            "update post_call_transcripts set status = 'error', error = $2, completed_at = coalesce(completed_at, now())
             where assemblyai_transcript_id = $1 and status = 'submitted'",
            &[&transcript_id, &transcript.error.clone().unwrap_or_else(|| "unknown error".into())],
        )
        .await?
    };
    if changed == 1
        && let Some(seconds) = transcript.audio_duration
        && let Some(row) = tx
            .query_opt(
                "select organisation_id, call_id from post_call_transcripts where assemblyai_transcript_id = $1",
                &[&transcript_id],
            )
            .await?
    {
        // AssemblyAI bills async transcription by the audio's duration; in this
        // transaction, so the transcript and its cost commit together, once.
        let entry = crate::usage::Entry {
            owner: crate::usage::Owner::Object {
                organisation_id: row.get("organisation_id"),
                call_id: row.get("call_id"),
            },
            vendor: crate::usage::unit::ASSEMBLYAI,
            unit: crate::usage::unit::ASYNC_AUDIO_SECONDS,
            quantity: seconds,
            source_key: format!("assemblyai:transcript:{transcript_id}"),
            occurred_at: Utc::now(),
            metadata: json!({"recording_id": recording_id, "version": version, "transcript_id": transcript_id}),
        };
        crate::usage::record(tx, &[entry]).await?;
    }
    if let Some(call_id) = call_id.filter(|_| changed == 1) {
        events::append(
            tx,
            call_id,
            "transcript.post_call",
            json!({"recording_id": recording_id, "version": version, "status": transcript.status}),
            Utc::now(),
        )
        .await
        .context("appending the call event")?;
    }
    tx.execute(
        "update webhook_inbox set processed_at = now() where provider = 'assemblyai' and event_id = $1",
        &[&event_id],
    )
    .await?;
    job.complete_in(tx).await?;
    transaction.commit().await?;
    metrics::counter!("post_call_transcripts_total", "status" => transcript.status).increment(1);
    Ok(())
}
