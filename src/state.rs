//! The state every handler and job can reach: configuration, database, storage, metrics,
//! sessions, the shared LISTEN connection, provider clients, and the shutdown signal.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::SessionResolver;
use crate::auth::debug_access::AccessVerifier;
use crate::config::{Config, ProviderDisabled};
use crate::db::{Db, Listener};
use crate::providers::assemblyai::AssemblyAiClient;
use crate::providers::telnyx::{TelnyxClient, WebhookVerifier};
use crate::storage::Storage;

/// Cloned for every request and job, so one reference count: the fields live in
/// [`Shared`], reached through `Deref` (`state.db` reads as before).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub config: Arc<Config>,
    pub db: Db,
    pub storage: Storage,
    pub metrics: PrometheusHandle,
    pub sessions: Arc<SessionResolver>,
    /// Cloudflare Access verification for `/internal/debug/*`, when configured.
    pub access: Option<Arc<AccessVerifier>>,
    /// Postgres notifications (job wake-ups, call events) for this process.
    pub listener: Listener,
    /// Cancelled when the process starts shutting down; long-lived streams end on it.
    pub shutdown: CancellationToken,
    pub telnyx: Option<TelnyxClient>,
    /// Built once: its HTTP client loads the TLS root store, which per call cost ~50 KiB
    /// and a few milliseconds (a heap profile of the media bench found it).
    pub assemblyai: Option<AssemblyAiClient>,
    pub telnyx_webhooks: Option<WebhookVerifier>,
    /// Live media bridges, so shutdown can wait for their last transcripts.
    pub bridges: tokio_util::task::TaskTracker,
    /// DeepL with OpenAI as fallback, cached in Postgres.
    pub translation: Arc<crate::translate::TranslationService>,
    pub tts: Option<crate::providers::elevenlabs::ElevenLabsClient>,
    /// Wakes job workers (here and on other replicas) after an enqueue commits.
    pub job_bell: crate::queue::bell::Bell,
    /// The replica's media stream heartbeats, written in batches.
    pub heartbeats: crate::heartbeats::Heartbeats,
    /// The replica's live partial turns, published in batches.
    pub partials: crate::partials::Partials,
    /// The replica's final turns, stored in batches (`crate::turns`).
    pub turns: crate::turns::TurnWriter,
    /// The replica's usage ledger writer: entries are written in batches.
    pub ledger: crate::usage::Recorder,
    /// Request rate limits (per replica, applied by `http::limits`).
    pub limiter: crate::limits::Limiter,
    /// Open SSE streams and WebSockets per user (per replica).
    pub streams: Arc<crate::limits::StreamSlots>,
}

impl AppState {
    /// The AssemblyAI client, or the 503 that names the variables to set.
    pub fn assemblyai(&self) -> Result<&AssemblyAiClient, ProviderDisabled> {
        match &self.assemblyai {
            Some(client) => Ok(client),
            None => Err(self
                .config
                .providers
                .assemblyai()
                .err()
                .unwrap_or(ProviderDisabled {
                    provider: "AssemblyAI",
                    variables: &["ASSEMBLYAI_API_KEY"],
                })),
        }
    }

    /// The Telnyx client, or the 503 that names the variables to set.
    pub fn telnyx(&self) -> Result<&TelnyxClient, ProviderDisabled> {
        match &self.telnyx {
            Some(client) => Ok(client),
            None => Err(self
                .config
                .providers
                .telnyx()
                .err()
                .unwrap_or(ProviderDisabled {
                    provider: "Telnyx",
                    variables: &["TELNYX_API_KEY"],
                })),
        }
    }
}
