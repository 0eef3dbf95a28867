//! The realtime media bridge: Telnyx media streams ↔ AssemblyAI v3 streaming
//! (docs/MEDIA_BRIDGE.md). `frames` parses, `audio` reorders and batches, `bridge` runs one
//! task per call, `replay` holds audio for a new session and accounts for what was lost,
//! `resume` continues numbering and the call's clock across streams, `transcripts` stores
//! what comes back,
//! `playout` speaks translations back and `utterances` reads how they went.

pub mod audio;
pub mod bridge;
pub mod browser;
pub mod frames;
pub mod playout;
pub mod reattach;
pub mod replay;
pub mod resume;
pub mod transcripts;
pub mod utterances;
