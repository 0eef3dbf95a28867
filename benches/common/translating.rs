//! `callbridge serve` against the speech and translation simulators, as the live-translation
//! benches run it (`translated_calls`, `interpreted_calls`): one set-up, so the two measure
//! the same service.

use std::process::Stdio;

use callbridge::sim::translation as providers;

use super::{ChildGuard, measure};

/// The `AUTH_SECRET` the server signs stream tokens with (the benches mint their own).
pub const SECRET: &str = "bench-auth-secret-bench-auth-secret";

/// Starts the service on `port` with `database_url`, AssemblyAI at `streaming_url` and DeepL
/// and ElevenLabs at `speech_base`, on `cpu` when given (`measure::serve_command`, which also
/// reads `BENCH_SERVER_BIN` and `BENCH_SERVER_WRAPPER`).
pub fn serve(
    port: u16,
    database_url: &str,
    streaming_url: &str,
    speech_base: &str,
    cpu: Option<usize>,
) -> ChildGuard {
    ChildGuard(
        measure::serve_command(cpu, port, database_url, SECRET)
            .envs([
                ("ASSEMBLYAI_API_KEY", "bench-aai-key"),
                ("ASSEMBLYAI_STREAMING_URL", streaming_url),
                ("DEEPL_API_KEY", providers::DEEPL_KEY),
                ("DEEPL_API_BASE", speech_base),
                ("ELEVENLABS_API_KEY", providers::ELEVENLABS_KEY),
                ("ELEVENLABS_API_BASE", speech_base),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start callbridge serve"),
    )
}
