//! Builds the whole service from a [`Config`]: shared by `main` and the tests, so the tests
//! run exactly what production runs (the zero-to-production `Application` pattern).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::SessionResolver;
use crate::auth::debug_access::AccessVerifier;
use crate::config::{AppEnv, Config, MigrateConfig};
use crate::db::{self, Db, Listener};
use crate::http;
use crate::jobs::{self, Worker, WorkerConfig};
use crate::providers::telnyx::{TelnyxClient, WebhookVerifier};
use crate::state::AppState;
use crate::storage::Storage;

/// Applies migrations and, in development only, creates the tables Auth.js would own
/// (staging and production get them from the frontend's Auth.js, never from us).
pub async fn migrate(config: &MigrateConfig) -> anyhow::Result<()> {
    db::migrate(config.direct_url.expose())
        .await
        .context("applying migrations")?;
    if config.app_env == AppEnv::Development {
        let client = db::connect_direct(config.direct_url.expose())
            .await
            .context("connecting to create the Auth.js development tables")?;
        db::authjs::ensure_dev_tables(&client, &config.auth_schema).await?;
    }
    Ok(())
}

/// [`migrate`] with a full configuration (start-up migrations, tests).
pub async fn prepare_database(config: &Config) -> anyhow::Result<()> {
    migrate(&config.migrate_config()).await
}

/// Connects everything a process needs, for any role.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    crate::tls::install_crypto_provider();
    if config.database.migrate_on_start {
        prepare_database(&config).await?;
    }
    let db = Db::connect(&config.database)?;
    // Half the pool: what a burst of stream upgrades and their first writes use at once.
    db.warm(config.database.pool_max_size.div_ceil(2));
    let storage = Storage::new(&config.storage);
    if config.storage.create_bucket_if_missing
        && let Err(error) = storage.ensure_bucket().await
    {
        // Not fatal: /readyz names storage until the server is reachable.
        tracing::warn!(error = %error, "could not create the development bucket");
    }
    let shutdown = CancellationToken::new();
    let listener = Listener::start(
        config.database.direct_url.clone(),
        &[
            crate::queue::NOTIFY_CHANNEL,
            crate::events::NOTIFY_CHANNEL,
            crate::events::PARTIALS_CHANNEL,
            crate::media::hub::NOTIFY_CHANNEL,
        ],
        shutdown.clone(),
    );
    let telnyx = config.providers.telnyx.as_ref();
    Ok(AppState::new(crate::state::Shared {
        sessions: Arc::new(SessionResolver::new(db.clone(), &config.auth)),
        access: match (
            &config.edge.cf_access_team_domain,
            &config.edge.cf_access_aud,
        ) {
            (Some(team), Some(aud)) => Some(AccessVerifier::new(team, aud)),
            _ => None,
        },
        telnyx: telnyx.map(TelnyxClient::new),
        assemblyai: config
            .providers
            .assemblyai
            .as_ref()
            .map(crate::providers::assemblyai::AssemblyAiClient::new),
        telnyx_webhooks: match telnyx {
            Some(telnyx) => Some(
                WebhookVerifier::from_base64(&telnyx.public_key)
                    .map_err(|e| anyhow::anyhow!("TELNYX_PUBLIC_KEY: {e}"))?,
            ),
            None => None,
        },
        listener,
        job_bell: crate::queue::bell::Bell::start(db.clone(), shutdown.clone()),
        heartbeats: crate::heartbeats::Heartbeats::start(
            db.clone(),
            crate::heartbeats::replica_name(config.hostname.as_deref()),
            shutdown.clone(),
        ),
        partials: crate::partials::Partials::start(db.clone(), shutdown.clone()),
        turns: crate::turns::TurnWriter::start(db.clone()),
        ledger: crate::usage::Recorder::start(db.clone(), config.usage.ledger),
        shutdown,
        bridges: tokio_util::task::TaskTracker::new(),
        limiter: Default::default(),
        streams: Default::default(),
        translation: Arc::new(translation_service(&config, &db)),
        tts: config.providers.elevenlabs.as_ref().map(|c| {
            crate::providers::elevenlabs::ElevenLabsClient::new(c, &c.voice_id, &c.model_id)
        }),
        config: Arc::new(config),
        db,
        storage,
        metrics: http::metrics::recorder(),
    }))
}

fn translation_service(config: &Config, db: &Db) -> crate::translate::TranslationService {
    use crate::translate::Translator;
    let primary = config
        .providers
        .deepl
        .as_ref()
        .map(|c| Arc::new(crate::providers::deepl::DeepLClient::new(c)) as Arc<dyn Translator>);
    let fallback =
        config.providers.openai.as_ref().map(|c| {
            Arc::new(crate::providers::openai::OpenAiClient::new(c)) as Arc<dyn Translator>
        });
    let breaker = crate::translate::breaker::Breaker::new(3, config.media.translation_cooldown);
    crate::translate::TranslationService::new(db.clone(), primary, fallback, breaker)
}

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// HTTP only.
    Serve,
    /// Jobs and cron only; binds no port.
    Worker,
    /// Both (small deployments, `make dev`).
    All,
}

pub struct Application {
    listener: Option<TcpListener>,
    router: Router,
    state: AppState,
    role: Role,
}

impl Application {
    /// Connects, prepares (development), and binds the port unless the role is `Worker`;
    /// `PORT=0` picks a free one.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_role(config, Role::Serve).await
    }

    pub async fn build_role(config: Config, role: Role) -> anyhow::Result<Self> {
        let (address, port) = (config.bind_address, config.port);
        let state = build_state(config).await?;
        let listener = match role {
            Role::Worker => None,
            Role::Serve | Role::All => Some(
                TcpListener::bind((address, port))
                    .await
                    .with_context(|| format!("binding {address}:{port}"))?,
            ),
        };
        let router = http::router(state.clone());
        Ok(Self {
            listener,
            router,
            state,
            role,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|addr| addr.port())
            .unwrap_or_default()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Runs the role until `shutdown` fires. HTTP stops accepting and lets in-flight
    /// requests finish for up to `SHUTDOWN_GRACE_SECS`; the worker finishes jobs in hand.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = self.state.clone();
        let internal = state.shutdown.clone();
        let forward = shutdown.clone();
        tokio::spawn(async move {
            forward.cancelled().await;
            internal.cancel();
        });

        let metrics = state.metrics.clone();
        let upkeep_stop = state.shutdown.clone();
        // Histograms buffer every sample until drained; drain them even if nobody scrapes.
        // Each second: the media bridge records a latency sample per batch (10 a second per
        // track at 100 ms batches; once per frame, five seconds of them were ~6 KiB of every
        // live call's memory: docs/BENCHMARKS.md, "Memory per live call"). A drain's cost
        // per sample does not depend on how often it runs.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while upkeep_stop.run_until_cancelled(tick.tick()).await.is_some() {
                metrics.run_upkeep();
            }
        });

        let worker = matches!(self.role, Role::Worker | Role::All).then(|| {
            let worker = Worker::new(
                state.clone(),
                jobs::handlers::registry(),
                WorkerConfig {
                    edge_kinds: crate::strangler::work_owners(state.config.edge.runs_work)
                        .edge_job_kinds(),
                    ..WorkerConfig::default()
                },
            );
            // Calls whose media bridge died with another replica are re-attached here.
            tokio::spawn(crate::media::reattach::run(
                state.clone(),
                state.shutdown.clone(),
            ));
            tokio::spawn(worker.run(state.listener.clone(), state.shutdown.clone()))
        });
        // Cron (retention purge, stale calls, dead-job report): one replica per tick, by
        // advisory lock (src/cron.rs).
        let cron = matches!(self.role, Role::Worker | Role::All)
            .then(|| tokio::spawn(crate::cron::run(state.clone(), state.shutdown.clone())));

        if let Some(listener) = self.listener {
            serve(listener, self.router, &state).await?;
        } else {
            state.shutdown.cancelled().await;
        }
        // Live calls send Terminate and store their last turns before we exit.
        state.bridges.close();
        if tokio::time::timeout(state.config.http.shutdown_grace, state.bridges.wait())
            .await
            .is_err()
        {
            tracing::warn!("media bridges outlived the shutdown grace period");
        }
        // Their last speech sessions (and anything else pending) reach the ledger.
        state.ledger.flush().await;
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        if let Some(cron) = cron {
            let _ = cron.await;
        }
        Ok(())
    }
}

/// The accept loop: HTTP/1.1 with upgrades (WebSockets), the peer address as `ConnectInfo`,
/// a header-read timeout (`HTTP_HEADER_READ_TIMEOUT_SECS`: a client trickling its request
/// head — slowloris — is cut off), and graceful shutdown within `SHUTDOWN_GRACE_SECS`.
async fn serve(listener: TcpListener, router: Router, state: &AppState) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use tower::ServiceExt as _;

    let grace = state.config.http.shutdown_grace;
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening");
    let shutdown = state.shutdown.clone();
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.http.header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // No Nagle: media frames and small JSON answers should leave at once.
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                router.clone().oneshot(request)
            });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the shutdown grace period; closing them");
        }
    }
    tracing::info!("HTTP server stopped");
    Ok(())
}
