//! `callbridge serve` against the speech and translation simulators, as the live-translation
//! benches run it (`translated_calls`, `interpreted_calls`): one set-up, so the two measure
//! the same service.

use std::process::Stdio;

use callbridge::sim::translation as providers;

use super::{ChildGuard, measure};

/// The `AUTH_SECRET` the server signs stream tokens with (the benches mint their own).
pub const SECRET: &str = "bench-auth-secret-bench-auth-secret";

/// Starts the service on `port` with `database_url`, AssemblyAI at `streaming_url` and DeepL
/// and ElevenLabs at `speech_base`, on `cpu` when given (`measure::command_on`).
/// `BENCH_SERVER_BIN` runs another build of the server (e.g. main's, for a before/after with
/// the same load), `BENCH_SERVER_WRAPPER` runs it under a profiler (e.g.
/// `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p` for instructions per call).
pub fn serve(
    port: u16,
    database_url: &str,
    streaming_url: &str,
    speech_base: &str,
    cpu: Option<usize>,
) -> ChildGuard {
    let server_bin = std::env::var("BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_callbridge").into());
    let wrapper: Vec<String> = std::env::var("BENCH_SERVER_WRAPPER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = measure::command_on(cpu, program);
            command.args(args).arg(&server_bin);
            command
        }
        None => measure::command_on(cpu, &server_bin),
    };
    ChildGuard(
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs([
                ("APP_ENV", "development"),
                // Load generators: the per-session and per-IP request limits would throttle them.
                ("RATE_LIMIT_SESSION_PER_MIN", "0"),
                ("RATE_LIMIT_ANONYMOUS_PER_MIN", "0"),
                ("BIND_ADDRESS", "127.0.0.1"),
                ("PORT", &port.to_string()),
                ("DATABASE_URL", database_url),
                ("RUN_MIGRATIONS_ON_START", "true"),
                ("DATABASE_POOL_MAX_SIZE", "16"),
                ("R2_ENDPOINT", "http://127.0.0.1:9"),
                ("R2_CREATE_BUCKET", "false"),
                ("LOG_LEVEL", "error"),
                ("AUTH_SECRET", SECRET),
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
