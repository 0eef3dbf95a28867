//! Job `recording.import`: copies a Telnyx recording into storage as soon as
//! `call.recording.saved` arrives — its `recording_urls` expire after 10 minutes
//! (docs/PROVIDERS.md §1.3) — then enqueues `recording.transcribe` in the same transaction that
//! marks the version stored.
//!
//! Idempotent: one job per Telnyx recording (dedupe key), and a recording already imported
//! (unique `telnyx_recording_id` with a stored version) is not imported again. Downloads are
//! retried in the job (3 attempts, `crate::retry`) and then by the queue's backoff; an expired link
//! (403) is permanent.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::calls::Call;
use crate::calls::legs::Role;
use crate::ids::{CallId, OrgId};
use crate::providers::telnyx::WebhookEvent;
use crate::queue::{self, Job, JobKind, Permanent};
use crate::recordings::format::AudioFormat;
use crate::recordings::store::{self, Limits, Sniffed, StoreError, Stored};
use crate::recordings::{self, Reserved, Target};
use crate::retry::{self, Failure, Policy};
use crate::state::AppState;

use super::transcript_fetch::TranscribeJob;

/// Job `recording.import`: one per Telnyx recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingImportJob {
    pub call_id: Option<CallId>,
    pub organisation_id: OrgId,
    pub telnyx_recording_id: String,
    /// `recording_urls` of `call.recording.saved`: `wav`/`mp3` links valid 10 minutes.
    #[serde(default)]
    pub urls: Value,
    /// `single` or `dual`.
    #[serde(default)]
    pub channels: Option<String>,
    /// `agent` or `remote` when the recording is of one leg of an interpreted call (ADR 0036);
    /// absent for a one-leg call (and in jobs enqueued before legs were recorded).
    #[serde(default)]
    pub leg: Option<String>,
}

impl JobKind for RecordingImportJob {
    const KIND: &'static str = "recording.import";
    const MAX_ATTEMPTS: Option<i32> = Some(6);

    fn dedupe_key(&self) -> Option<String> {
        Some(format!("{}:{}", Self::KIND, self.telnyx_recording_id))
    }
}

/// Telnyx's identity for a recording: `recording_id` when sent, else the call session and
/// start time (both stable across redeliveries), else the event id.
pub fn telnyx_recording_id(event: &WebhookEvent) -> String {
    if let Some(id) = event.field("recording_id") {
        return id.to_owned();
    }
    match (
        event.field("call_session_id"),
        event.field("recording_started_at"),
    ) {
        (Some(session), Some(started)) => format!("{session}@{started}"),
        _ => format!("event:{}", event.id),
    }
}

/// Called by the `telnyx.event` job for `call.recording.saved` of a known call; `leg` is the
/// leg the event came on when the call is interpreted (each leg records itself).
pub async fn enqueue(
    client: &impl crate::db::GenericClient,
    call: &Call,
    leg: Option<Role>,
    event: &WebhookEvent,
) -> Result<(), crate::db::DbError> {
    let recording_id = telnyx_recording_id(event);
    let urls = event
        .payload
        .get("recording_urls")
        .cloned()
        .unwrap_or(Value::Null);
    let job = RecordingImportJob {
        call_id: Some(call.id),
        organisation_id: call.organisation_id,
        telnyx_recording_id: recording_id,
        urls,
        channels: event.field("channels").map(str::to_owned),
        leg: leg.map(|role| role.as_str().to_owned()),
    };
    queue::enqueue(client, &job.envelope()).await?;
    Ok(())
}

fn limits(state: &AppState) -> Limits {
    let config = &state.config.recordings;
    Limits {
        max_bytes: config.max_bytes,
        part_size: config.part_size,
        concurrency: config.upload_concurrency,
        idle: Duration::from_secs(60),
    }
}

/// Where recordings may be downloaded from: https on `RECORDINGS_IMPORT_HOSTS` (a host or a
/// subdomain of one), plus http on loopback in development (the simulators). Anything else —
/// an internal address, another host, plain http — is refused before any request, and a
/// redirect is followed only to an allowed source (docs/SECURITY.md).
#[derive(Clone)]
pub struct Sources {
    hosts: Vec<String>,
    loopback: bool,
}

impl Sources {
    pub fn of(state: &AppState) -> Self {
        Self {
            hosts: state.config.recordings.import_hosts.clone(),
            loopback: state.config.recordings.import_allow_loopback,
        }
    }

    pub fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        let loopback = match url.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if self.loopback && loopback && matches!(url.scheme(), "http" | "https") {
            return Ok(());
        }
        if url.scheme() != "https" {
            return Err(format!(
                "recordings are imported over https only, not {}",
                url.scheme()
            ));
        }
        let allowed = match url.host() {
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.hosts.iter().any(|host| {
                    name == *host
                        || name
                            .strip_suffix(host.as_str())
                            .is_some_and(|rest| rest.ends_with('.'))
                })
            }
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "the recording host {} is not in RECORDINGS_IMPORT_HOSTS",
                url.host_str().unwrap_or("(none)")
            ))
        }
    }

    /// A client that follows at most 3 redirects, each only to an allowed source.
    fn client(&self) -> reqwest::Client {
        let sources = self.clone();
        crate::tls::install_crypto_provider();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("callbridge/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 3 {
                    attempt.error("too many redirects")
                } else if let Err(refused) = sources.check(attempt.url()) {
                    attempt.error(refused)
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .unwrap_or_default()
    }
}

pub async fn run(state: AppState, job: Job) -> anyhow::Result<()> {
    let RecordingImportJob {
        call_id,
        organisation_id,
        telnyx_recording_id: telnyx_id,
        urls,
        channels,
        leg,
    } = job.payload()?;
    let url = ["wav", "mp3"]
        .iter()
        .find_map(|format| urls.get(format).and_then(Value::as_str))
        .ok_or_else(|| Permanent("call.recording.saved has no recording_urls".into()))?
        .to_owned();

    let existing = {
        let client = state.db.client().await?;
        recordings::by_telnyx_id(&client, &telnyx_id).await?
    };
    if let Some((_, Some(_))) = existing {
        tracing::info!(%telnyx_id, "recording already imported");
        return Ok(());
    }

    let source = reqwest::Url::parse(&url)
        .map_err(|_| Permanent("the recording URL is not a URL".into()))?;
    let sources = Sources::of(&state);
    sources.check(&source).map_err(Permanent)?;
    let http = sources.client();
    let limits = limits(&state);
    let import = Import {
        state: &state,
        job: &job,
        telnyx_id: &telnyx_id,
        organisation_id,
        call_id,
        channels: &channels,
        leg: &leg,
        source: &source,
        http: &http,
        limits: &limits,
    };
    // Three attempts here, then the queue's backoff.
    retry::run(&Policy::provider(3), "importing a Telnyx recording", |_| {
        import.once()
    })
    .await
}

/// What one download-and-store attempt needs.
struct Import<'a> {
    state: &'a AppState,
    job: &'a Job,
    telnyx_id: &'a str,
    organisation_id: OrgId,
    call_id: Option<CallId>,
    channels: &'a Option<String>,
    leg: &'a Option<String>,
    source: &'a reqwest::Url,
    http: &'a reqwest::Client,
    limits: &'a Limits,
}

/// The result of one step of an attempt: a [`Failure::Transient`] is worth another attempt.
type Attempt<T> = Result<T, Failure<anyhow::Error>>;

/// Ends the run: the queue's own backoff (or `Permanent`) decides what happens next.
fn stop(error: anyhow::Error) -> Failure<anyhow::Error> {
    Failure::Final(error)
}

impl Import<'_> {
    /// One attempt: download, sniff, reserve a version, upload, mark it stored and enqueue
    /// its transcription with the job's completion. A failed download or upload is worth
    /// another attempt; an expired link, a non-audio body, a database error (the queue
    /// retries those) end the run.
    async fn once(&self) -> Attempt<()> {
        let sniffed = self.download().await?;
        // No pooled connection is held while the download streams.
        let Some(reserved) = self.reserve(sniffed.format).await? else {
            return Ok(());
        };
        let stored = self.upload(&reserved, sniffed).await?;
        self.commit(&reserved, &stored).await?;
        metrics::counter!("recordings_imported_total", "provider" => "telnyx").increment(1);
        tracing::info!(recording_id = %reserved.recording_id, bytes = stored.size, "Telnyx recording imported");
        Ok(())
    }

    /// Starts the download and reads enough of it to recognise the audio. An expired link
    /// (403/404), a redirect or a body that is not audio is permanent.
    async fn download(
        &self,
    ) -> Attempt<Sniffed<impl Stream<Item = reqwest::Result<Bytes>> + Unpin>> {
        let response = match self.http.get(self.source.clone()).send().await {
            Ok(response) => response,
            Err(error) if error.is_redirect() => {
                return Err(stop(
                    Permanent(format!("the recording URL redirected: {error}")).into(),
                ));
            }
            Err(error) => {
                return Err(Failure::Transient(anyhow::anyhow!(
                    "downloading the recording: {error}"
                )));
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::NOT_FOUND {
            // Telnyx's links are presigned for 10 minutes: a 403 will not get better.
            return Err(stop(
                Permanent(format!(
                    "the recording URL answered {status} (expired? Telnyx links last 10 minutes)"
                ))
                .into(),
            ));
        }
        if !status.is_success() {
            return Err(Failure::Transient(anyhow::anyhow!(
                "the recording URL answered {status}"
            )));
        }
        match store::sniff(response.bytes_stream(), None, self.limits).await {
            Ok(sniffed) => Ok(sniffed),
            Err(StoreError::NotAudio | StoreError::Empty) => Err(stop(
                Permanent("the recording URL did not return audio".into()).into(),
            )),
            Err(error) => Err(Failure::Transient(error.into())),
        }
    }

    /// Reserves the next version of this Telnyx recording; `None` when one is stored already.
    async fn reserve(&self, format: AudioFormat) -> Attempt<Option<Reserved>> {
        let mut client = self.state.db.client().await.map_err(|e| stop(e.into()))?;
        // Looked up again: a failed attempt may have released what the last one made.
        let target = match recordings::by_telnyx_id(&client, self.telnyx_id)
            .await
            .map_err(|e| stop(e.into()))?
        {
            Some((_, Some(_))) => return Ok(None),
            Some((recording_id, None)) => Target::Existing {
                organisation_id: self.organisation_id,
                recording_id,
            },
            _ => Target::New {
                organisation_id: self.organisation_id,
                call_id: self.call_id,
                source: "telnyx",
                telnyx_recording_id: Some(self.telnyx_id.to_owned()),
                channels: self.channels.clone(),
                leg: self.leg.clone(),
            },
        };
        recordings::reserve(&mut client, &target, format, None, false)
            .await
            .context("reserving the recording version")
            .map_err(stop)?
            .ok_or_else(|| stop(Permanent("recording vanished".into()).into()))
            .map(Some)
    }

    /// Streams the body into the reserved version's object. On failure the version is
    /// released; a body over the limit is permanent.
    async fn upload<S>(&self, reserved: &Reserved, sniffed: Sniffed<S>) -> Attempt<Stored>
    where
        S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
    {
        let stored = store::upload(
            &self.state.storage,
            &self.state.db,
            &reserved.object_key,
            sniffed.format,
            sniffed.prefix,
            sniffed.rest,
            self.limits,
        )
        .await;
        match stored {
            Ok(stored) => Ok(stored),
            Err(error) => {
                let client = self.state.db.client().await.map_err(|e| stop(e.into()))?;
                recordings::release(&client, reserved.recording_id, reserved.version)
                    .await
                    .map_err(|e| stop(e.into()))?;
                if matches!(error, StoreError::TooLarge { .. }) {
                    return Err(stop(Permanent(error.to_string()).into()));
                }
                Err(Failure::Transient(error.into()))
            }
        }
    }

    /// Marks the version stored, enqueues its transcription and completes this job, in one
    /// transaction.
    async fn commit(&self, reserved: &Reserved, stored: &Stored) -> Attempt<()> {
        let commit = async {
            let mut client = self.state.db.client().await?;
            let transaction = client.transaction().await?;
            recordings::mark_stored(
                &transaction,
                reserved.recording_id,
                reserved.version,
                stored.size as i64,
                &stored.sha256,
            )
            .await?;
            let transcribe = TranscribeJob {
                recording_id: reserved.recording_id,
                version: reserved.version,
            };
            queue::enqueue(&transaction, &transcribe.envelope()).await?;
            self.job.complete_in(&transaction).await?;
            transaction.commit().await?;
            anyhow::Ok(())
        };
        commit.await.map_err(stop)
    }
}

#[cfg(test)]
mod tests {
    use super::Sources;

    fn check(url: &str, loopback: bool) -> Result<(), String> {
        let sources = Sources {
            hosts: vec!["telnyx.com".into(), "s3.amazonaws.com".into()],
            loopback,
        };
        sources.check(&url.parse().unwrap())
    }

    #[test]
    fn only_https_on_listed_hosts_outside_development() {
        assert!(
            check(
                "https://s3.amazonaws.com/telephony-recorder-prod/a.wav?X-Amz-Expires=600",
                false
            )
            .is_ok()
        );
        assert!(
            check(
                "https://telephony-recorder-prod.s3.amazonaws.com/a.wav",
                false
            )
            .is_ok()
        );
        assert!(check("https://api.telnyx.com/v2/recordings/a.wav", false).is_ok());
        for refused in [
            "http://s3.amazonaws.com/a.wav",
            "https://evilamazonaws.com/a.wav",
            "https://s3.amazonaws.com.evil.example/a.wav",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]/a.wav",
            "http://127.0.0.1:9000/a.wav",
            "file:///etc/passwd",
        ] {
            assert!(check(refused, false).is_err(), "{refused}");
        }
        assert!(
            check("http://127.0.0.1:9000/a.wav", true).is_ok(),
            "the simulator in development"
        );
        assert!(check("http://10.0.0.1/a.wav", true).is_err());
    }
}
