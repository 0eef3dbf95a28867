//! Clients for the vendors we call, one file per vendor, each with its base URL from config
//! (so tests and `make dev` point it at a simulator) and the docs/PROVIDERS.md section it follows.

pub mod assemblyai;
pub mod assemblyai_async;
pub mod deepl;
pub mod elevenlabs;
pub mod openai;
pub mod telnyx;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// An HTTP client with the timeouts every provider call needs. Building one copies the TLS
/// root store (tens of KiB, milliseconds), so one is built per timeout and shared: a clone
/// shares its connection pool. Jobs and per-call code may call this freely.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    static CLIENTS: OnceLock<Mutex<HashMap<Duration, reqwest::Client>>> = OnceLock::new();
    let mut clients = CLIENTS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    clients
        .entry(timeout)
        .or_insert_with(|| {
            crate::tls::install_crypto_provider();
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .pool_idle_timeout(Duration::from_secs(60))
                .user_agent(concat!("callbridge/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default()
        })
        .clone()
}
