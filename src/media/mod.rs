//! The realtime media bridge: Telnyx media streams ↔ AssemblyAI v3 streaming
//! (docs/MEDIA_BRIDGE.md). `frames` parses, `audio` reorders and batches, `bridge` runs one
//! task per stream (a one-leg call, or one leg of an interpreted call), `hub` joins an
//! interpreted call's two legs, `transcripts` stores what comes back,
//! `playout` speaks translations back and `utterances` reads how they went.

pub mod audio;
pub mod bridge;
pub mod browser;
pub mod frames;
pub mod hub;
pub mod mix;
pub mod playout;
pub mod reattach;
pub mod transcripts;
pub mod utterances;
