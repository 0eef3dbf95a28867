//! The integration suites, one module per story, in one test binary so a change links once
//! (a binary per file linked the whole crate and its dependencies ~30 times). Run one story
//! with `cargo nextest run --features sim --test api calls_api::`.
//!
//! Separate binaries, on purpose: `tests/soak_*.rs` (stress runs that `make soak` runs at
//! full scale by binary name, with `CALLBRIDGE_SOAK=long`) and `tests/layering.rs` (a static
//! check of `src/` that needs neither the service nor its harness).
#![allow(clippy::disallowed_methods)] // the suites read their TEST_* settings

#[path = "../common/mod.rs"]
mod common;

mod auth_sessions;
mod base_urls;
mod binary;
mod browser_organisation;
mod call_events_sse;
mod calls_api;
mod debug_endpoints;
mod deployment_checklist;
mod dial_guard;
mod edge_signature;
mod health;
mod http_contract;
mod interpreted_calls;
mod interpreted_lines;
mod interpreted_reattach;
mod interpreted_recordings;
mod interpreted_split;
mod invitations;
mod jobs_exactly_once;
mod jobs_queue;
mod limits;
mod live_translation;
mod loadgen_invariants;
mod media_bridge;
mod media_reattach;
mod nul_input;
mod openapi_contract;
mod organisations;
mod phone_number_provisioning;
mod realtime;
mod recordings;
mod round_trips;
mod stream_recheck;
mod telemetry_scrub;
mod telnyx_webhooks;
mod translation;
mod usage;
