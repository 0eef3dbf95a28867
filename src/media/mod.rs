//! The realtime media bridge: Telnyx media streams ↔ AssemblyAI v3 streaming
//! (docs/MEDIA_BRIDGE.md). `frames` parses, `audio` reorders and batches, `bridge` runs one
//! task per call, `transcripts` stores what comes back,
//! `playout` speaks translations back and `utterances` reads how they went.

pub mod audio;
pub mod bridge;
pub mod browser;
pub mod frames;
pub mod playout;
pub mod reattach;
pub mod transcripts;
pub mod utterances;
