//! Protocol-faithful provider simulators for tests, `make dev` and benchmarks
//! (docs/ARCHITECTURE.md, "Tests"). Built only with the `sim` feature; never in the production image.

pub mod assemblyai;
pub mod assemblyai_async;
pub mod demo;
pub mod loadgen;
pub mod recordings;
pub mod telnyx;
pub mod telnyx_media;
pub mod tls;
pub mod translation;
