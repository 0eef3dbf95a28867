//! callbridge: the container backend of a live phone-call translation platform.
//!
//! [`Application::build`] assembles the whole service from a [`config::Config`]; `main` and
//! the integration tests both go through it.

pub mod app;
pub mod auth;
pub mod calls;
pub mod config;
pub mod cron;
pub mod db;
pub mod events;
pub mod heartbeats;
pub mod http;
pub mod ids;
pub mod inbox;
pub mod jobs;
pub mod limits;
pub mod media;
pub mod orgs;
pub mod partials;
pub mod paths;
pub mod providers;
pub mod queue;
pub mod recordings;
pub mod retry;
pub mod shutdown;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod storage;
pub mod strangler;
pub mod telemetry;
pub mod timestamps;
pub mod tls;
pub mod transcripts;
pub mod translate;
pub mod turns;
pub mod usage;
pub mod ws_client;

pub use app::Application;
