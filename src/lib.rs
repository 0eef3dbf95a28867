//! callbridge: the container backend of a live phone-call translation platform.
//!
//! [`Application::build`] assembles the whole service from a [`config::Config`]; `main` and
//! the integration tests both go through it.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod orgs;
pub mod shutdown;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod tls;

pub use app::Application;
