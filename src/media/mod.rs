//! The realtime media bridge: Telnyx media streams ↔ AssemblyAI v3 streaming
//! (docs/MEDIA_BRIDGE.md). `frames` parses, `audio` reorders and batches, `bridge` runs one
//! task per stream (a one-leg call, or one leg of an interpreted call), `hub` joins an
//! interpreted call's two legs, `mix` mixes a party's voice under translations, `replay` holds audio for a new session and accounts for what was lost,
//! `open_turn` holds an open turn's final words instead of their audio,
//! `resume` continues numbering and the call's clock across streams, `transcripts` stores
//! what comes back, `heartbeats` writes the replica's stream heartbeats in batches,
//! `playout` speaks translations back and `utterances` reads how they went.

pub mod bridge;
pub mod browser;
pub mod frames;
pub mod hub;
pub mod mix;
pub mod open_turn;
pub mod playout;
pub mod reattach;
pub mod replay;
pub mod resume;
pub mod shaping;
pub mod transcripts;
pub mod utterances;
