//! Builds the whole service from a [`Config`]: shared by `main` and the tests, so the tests
//! run exactly what production runs (the zero-to-production `Application` pattern).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::SessionResolver;
use crate::auth::debug_access::AccessVerifier;
use crate::config::Config;
use crate::db::{self, Db};
use crate::http;
use crate::state::AppState;
use crate::storage::Storage;

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

/// Applies migrations and, outside production, creates the Auth.js tables Auth.js would own.
pub async fn prepare_database(config: &Config) -> anyhow::Result<()> {
    db::migrate(config.database.direct_url.expose())
        .await
        .context("applying migrations")?;
    if !config.is_production() {
        let client = db::connect_direct(config.database.direct_url.expose())
            .await
            .context("connecting to create the Auth.js development tables")?;
        db::authjs::ensure_dev_tables(&client, &config.auth.schema).await?;
    }
    Ok(())
}

impl Application {
    /// Connects, prepares (development), and binds the port; `PORT=0` picks a free one.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::tls::install_crypto_provider();
        if config.database.migrate_on_start {
            prepare_database(&config).await?;
        }
        let db = Db::connect(&config.database)?;
        let storage = Storage::new(&config.storage);
        if config.storage.create_bucket_if_missing
            && let Err(error) = storage.ensure_bucket().await
        {
            // Not fatal: /readyz names storage until the server is reachable.
            tracing::warn!(error = %error, "could not create the development bucket");
        }
        let listener = TcpListener::bind((config.bind_address, config.port))
            .await
            .with_context(|| format!("binding {}:{}", config.bind_address, config.port))?;
        let sessions = Arc::new(SessionResolver::new(db.clone(), &config.auth));
        let state = AppState {
            db,
            storage,
            metrics: http::metrics::recorder(),
            sessions,
            access: match (&config.edge.cf_access_team_domain, &config.edge.cf_access_aud) {
                (Some(team), Some(aud)) => Some(AccessVerifier::new(team, aud)),
                _ => None,
            },
            config: Arc::new(config),
        };
        let router = http::router(state.clone());
        Ok(Self {
            listener,
            router,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|addr| addr.port())
            .unwrap_or_default()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` fires, then stops accepting and lets in-flight requests
    /// finish for up to `SHUTDOWN_GRACE_SECS` before returning.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let grace = self.state.config.http.shutdown_grace;
        let address = self.listener.local_addr()?;
        tracing::info!(%address, "listening");

        let metrics = self.state.metrics.clone();
        let upkeep_stop = shutdown.clone();
        // Histograms buffer samples until drained; drain them even if nobody scrapes.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while upkeep_stop.run_until_cancelled(tick.tick()).await.is_some() {
                metrics.run_upkeep();
            }
        });

        let server = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());

        tokio::select! {
            result = server => result.context("HTTP server")?,
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the shutdown grace period; closing them");
            }
        }
        tracing::info!("HTTP server stopped");
        Ok(())
    }
}
