//! The state every handler can reach: configuration, database, storage, metrics.

use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::SessionResolver;
use crate::auth::debug_access::AccessVerifier;
use crate::config::Config;
use crate::db::Db;
use crate::storage::Storage;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub storage: Storage,
    pub metrics: PrometheusHandle,
    pub sessions: Arc<SessionResolver>,
    /// Cloudflare Access verification for `/internal/debug/*`, when configured.
    pub access: Option<Arc<AccessVerifier>>,
}

impl FromRef<AppState> for Db {
    fn from_ref(state: &AppState) -> Self {
        state.db.clone()
    }
}

impl FromRef<AppState> for Arc<Config> {
    fn from_ref(state: &AppState) -> Self {
        state.config.clone()
    }
}
