//! The `callbridge` binary: one executable, several roles (docs/ARCHITECTURE.md, "Roles").

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use callbridge::app::Role;
use callbridge::config::Config;
use callbridge::usage::quota::Setting;
use callbridge::{Application, app, shutdown, telemetry};

/// Many small, short-lived allocations on many threads (requests, frames, JSON): glibc's
/// malloc spent a quarter of the CPU on them under load; mimalloc's thread-local free lists
/// do not.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process, before it touches much memory. mimalloc
/// reserves its arenas eagerly committed and aligned, so with THP `always` (common on Linux
/// hosts) every touched 2 MiB region became resident whole: idle RSS 36 MiB and a 1 GiB
/// upload peaking at 73 MiB, against 24 and 50 MiB without THP (docs/BENCHMARKS.md). What
/// `MIMALLOC_ALLOW_THP=0` does, without depending on the environment.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // A kernel without PR_SET_THP_DISABLE answers EINVAL, which changes nothing.
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// Exit status for a configuration error (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "callbridge",
    version,
    about = "Live phone-call translation backend"
)]
struct Cli {
    /// Optional TOML file; environment variables override it.
    #[arg(long, global = true, env = "CALLBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP API, webhooks and the media bridge.
    Serve,
    /// Background jobs and cron (binds no port).
    Worker,
    /// `serve` and `worker` in one process.
    All,
    /// Apply database migrations (and, in development only, the Auth.js tables). Reads only
    /// the database variables, `AUTH_SCHEMA` and logging: no provider secret is needed.
    Migrate {
        /// List applied and pending migrations; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Provider simulators for tests and local development (feature `sim`).
    #[cfg(feature = "sim")]
    Sim {
        /// Port of the Telnyx Call Control simulator.
        #[arg(long, default_value_t = 9101)]
        telnyx_port: u16,
        /// API key the Telnyx simulator accepts.
        #[arg(long, default_value = "sim-telnyx-key")]
        telnyx_api_key: String,
        /// Milliseconds a dialled call rings before the simulated callee answers.
        #[arg(long, default_value_t = 1000)]
        answer_after_ms: u64,
        /// Seconds after answering that the simulated callee hangs up (0: never; hang up
        /// with `POST /api/calls/{id}/hangup`).
        #[arg(long, default_value_t = 30)]
        hangup_after_secs: u64,
        /// Do not play dialled calls (webhooks are then delivered by hand or by tests).
        #[arg(long)]
        no_autopilot: bool,
    },
    /// Place one simulated translated call end to end and print what happened (feature `sim`).
    #[cfg(feature = "sim")]
    Demo {
        /// An admin connection to PostgreSQL (a scratch database is created and dropped).
        #[arg(
            long,
            env = "DEMO_DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        database_url: String,
    },
    /// Print every route and who serves it (the edge manifest), and check the manifest.
    Routes {
        /// A manifest other than the one built in (edge-shim/routes.json).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Exit 0 if the local server answers `/healthz` (the container HEALTHCHECK).
    Healthcheck,
    /// Print a short-lived token for `/internal/debug/*` (X-Debug-Token header).
    DebugToken {
        /// Lifetime in seconds (at most 900).
        #[arg(long, default_value_t = 300)]
        ttl_secs: u64,
    },
    /// Auth.js session maintenance.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// An organisation's usage quotas (docs/USAGE.md): operators cap what a tenant can spend.
    #[command(subcommand)]
    Quotas(QuotasCommand),
}

#[derive(Subcommand)]
enum QuotasCommand {
    /// Print the quotas in effect and this month so far.
    Show {
        /// The organisation's id.
        #[arg(long)]
        org: uuid::Uuid,
    },
    /// Change some of an organisation's quotas; the others stay. Each takes a value (`0`: no
    /// quota) or `default` (the deployment's `USAGE_DEFAULT_*`).
    Set {
        /// The organisation's id.
        #[arg(long)]
        org: uuid::Uuid,
        /// Call minutes per calendar month (UTC), every leg counted.
        #[arg(long, value_name = "MINUTES|default", allow_negative_numbers = true)]
        monthly_minutes: Option<Setting<i64>>,
        /// Calls live at once.
        #[arg(long, value_name = "CALLS|default", allow_negative_numbers = true)]
        concurrent_calls: Option<Setting<i64>>,
        /// Estimated spend per calendar month, in USAGE_CURRENCY.
        #[arg(long, value_name = "AMOUNT|default", allow_negative_numbers = true)]
        monthly_spend_cap: Option<Setting<f64>>,
        /// At 100 % of a monthly quota: `end` live calls (with an announcement) or `continue`
        /// them, flagged.
        #[arg(long, value_name = "end|continue|default")]
        at_limit: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (environment and `--config`) without connecting to
    /// anything: prints every problem by variable name and exits 78, or prints a summary.
    Check,
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Hash raw session tokens in place (resumable; needs AUTH_TOKEN_STORAGE=dual first).
    MigrateTokens {
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
        /// Only count what would be rewritten.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    if let Command::Healthcheck = cli.command {
        return healthcheck();
    }
    if let Command::Routes { manifest } = &cli.command {
        return print_routes(manifest.as_deref());
    }
    #[cfg(feature = "sim")]
    if let Command::Demo { database_url } = &cli.command {
        callbridge::tls::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build();
        return match runtime.map(|r| r.block_on(callbridge::sim::demo::run(database_url))) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(error)) => {
                eprintln!("callbridge demo: {error:#}");
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("callbridge demo: {error}");
                ExitCode::FAILURE
            }
        };
    }
    #[cfg(feature = "sim")]
    if let Command::Sim {
        telnyx_port,
        telnyx_api_key,
        answer_after_ms,
        hangup_after_secs,
        no_autopilot,
    } = &cli.command
    {
        let autopilot = (!no_autopilot).then(|| callbridge::sim::telnyx::Autopilot {
            answer_after: std::time::Duration::from_millis(*answer_after_ms),
            hangup_after: (*hangup_after_secs > 0)
                .then(|| std::time::Duration::from_secs(*hangup_after_secs)),
        });
        return run_simulators(*telnyx_port, telnyx_api_key, autopilot);
    }
    if let Command::Config(ConfigCommand::Check) = &cli.command {
        return check_config(cli.config.as_deref());
    }
    if let Command::Migrate { dry_run } = &cli.command {
        return migrate(cli.config.as_deref(), *dry_run);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("callbridge: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Before any HTTP client exists: Sentry's transport builds one in `telemetry::init`.
    callbridge::tls::install_crypto_provider();
    // Sentry before the runtime, so worker threads inherit its hub (docs/PROVIDERS.md, Sentry).
    let _telemetry = telemetry::init(&config);
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "callbridge stopped with an error"
            );
            eprintln!("callbridge: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    tracing::info!(config = %config.summary(), "starting");
    match command {
        Command::Serve => run_role(config, Role::Serve).await,
        Command::Worker => run_role(config, Role::Worker).await,
        Command::All => run_role(config, Role::All).await,
        Command::Healthcheck
        | Command::Routes { .. }
        | Command::Migrate { .. }
        | Command::Config(ConfigCommand::Check) => {
            unreachable!("handled before configuration is loaded")
        }
        #[cfg(feature = "sim")]
        Command::Sim { .. } | Command::Demo { .. } => {
            unreachable!("handled before configuration is loaded")
        }
        Command::DebugToken { ttl_secs } => {
            anyhow::ensure!(
                !config.is_production(),
                "debug endpoints do not exist in production"
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let token = callbridge::auth::debug_access::mint_debug_token(
                config.auth.secret.expose().as_bytes(),
                std::time::Duration::from_secs(ttl_secs),
                now,
            );
            println!("{token}");
            Ok(())
        }
        Command::Auth(AuthCommand::MigrateTokens {
            batch_size,
            dry_run,
        }) => migrate_tokens(&config, batch_size, dry_run).await,
        Command::Quotas(command) => quotas(&config, command).await,
    }
}

/// `callbridge quotas`: show or change one organisation's quotas, then print them.
async fn quotas(config: &Config, command: QuotasCommand) -> anyhow::Result<()> {
    use callbridge::usage::quota::{self, QuotaChange};

    let client = callbridge::db::connect_direct(config.database.direct_url.expose()).await?;
    let organisation_id = match &command {
        QuotasCommand::Show { org } | QuotasCommand::Set { org, .. } => *org,
    };
    let in_effect = match command {
        QuotasCommand::Show { .. } => {
            let known = client
                .query_opt(
                    "select 1 from organisations where id = $1",
                    &[&organisation_id],
                )
                .await?;
            anyhow::ensure!(known.is_some(), "no organisation {organisation_id}");
            quota::quotas(&client, &config.usage, organisation_id.into()).await?
        }
        QuotasCommand::Set {
            monthly_minutes,
            concurrent_calls,
            monthly_spend_cap,
            at_limit,
            ..
        } => {
            let end_at_limit = match at_limit.as_deref() {
                None => Setting::Keep,
                Some("default") => Setting::Default,
                Some("end") => Setting::To(true),
                Some("continue") => Setting::To(false),
                Some(other) => {
                    anyhow::bail!("--at-limit must be end, continue or default, not {other:?}")
                }
            };
            let change = QuotaChange {
                monthly_minutes: monthly_minutes.unwrap_or(Setting::Keep),
                concurrent_calls: concurrent_calls.unwrap_or(Setting::Keep),
                monthly_spend_cap: monthly_spend_cap.unwrap_or(Setting::Keep),
                end_at_limit,
            };
            quota::set(&client, &config.usage, organisation_id.into(), change).await?
        }
    };
    let so_far = quota::month_to_date(&client, &config.usage, organisation_id.into()).await?;
    let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    println!("organisation       {organisation_id}");
    println!(
        "monthly minutes    {} (used {:.1})",
        show(in_effect.monthly_minutes.map(|v| v.to_string())),
        so_far.minutes
    );
    println!(
        "concurrent calls   {}",
        show(in_effect.concurrent_calls.map(|v| v.to_string()))
    );
    println!(
        "monthly spend cap  {} {} (spent {:.2})",
        show(in_effect.monthly_spend.map(|v| format!("{v:.2}"))),
        config.usage.currency,
        so_far.spend
    );
    println!(
        "at the limit       {}",
        if in_effect.end_at_limit {
            "end"
        } else {
            "continue"
        }
    );
    Ok(())
}

/// The multi-threaded Tokio runtime every async role runs on.
fn async_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("callbridge: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        })
}

/// `callbridge config check`: loads exactly as `serve` would, connects to nothing.
fn check_config(file: Option<&std::path::Path>) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            println!(
                "configuration is valid for APP_ENV={}",
                config.app_env.as_str()
            );
            println!("{:#}", config.summary());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("callbridge config check: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `callbridge migrate`: only the database settings are read (CI holds no provider secret).
fn migrate(file: Option<&std::path::Path>, dry_run: bool) -> ExitCode {
    let config = match Config::load_for_migrate(file) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("callbridge: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    callbridge::tls::install_crypto_provider();
    let _telemetry = telemetry::init_logs(&config.log);
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let target = callbridge::config::database_target(config.direct_url.expose());
    if dry_run {
        return match runtime.block_on(callbridge::db::migration_status(config.direct_url.expose()))
        {
            Ok(status) => {
                let pending = status.iter().filter(|m| !m.applied).count();
                for migration in &status {
                    let state = if migration.applied {
                        "applied"
                    } else {
                        "pending"
                    };
                    println!(
                        "{:<8} {} {}",
                        state, migration.version, migration.description
                    );
                }
                println!(
                    "{target}: {pending} pending migration(s); nothing was changed (--dry-run)"
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("callbridge migrate --dry-run: {error}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(app::migrate(&config)) {
        Ok(()) => {
            tracing::info!(
                database = target,
                app_env = config.app_env.as_str(),
                "migrations applied"
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "migration failed");
            eprintln!("callbridge migrate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_role(config: Config, role: Role) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    Application::build_role(config, role)
        .await?
        .run(shutdown)
        .await
}

async fn migrate_tokens(config: &Config, batch_size: i64, dry_run: bool) -> anyhow::Result<()> {
    use callbridge::auth::migrate_tokens;
    use callbridge::config::TokenStorage;
    use std::io::Write as _;

    let schema = &config.auth.schema;
    let client = callbridge::db::connect_direct(config.database.direct_url.expose()).await?;
    if dry_run {
        let remaining = migrate_tokens::remaining(&client, schema).await?;
        println!("{remaining} raw session token(s) would be hashed");
        return Ok(());
    }
    if config.auth.token_storage == TokenStorage::Raw {
        anyhow::bail!(
            "AUTH_TOKEN_STORAGE is raw: set it to dual on every reader (container, edge, frontend wrapper) \
             and in this command's environment before hashing tokens (docs/NEON_DATA_MIGRATION_RUNBOOK.md)"
        );
    }
    let rewritten = migrate_tokens::run(&client, schema, batch_size, |done, total| {
        eprint!("{}", migrate_tokens::render_progress(done, total));
        let _ = std::io::stderr().flush();
    })
    .await?;
    eprintln!();
    println!("hashed {rewritten} session token(s)");
    Ok(())
}

/// `callbridge routes`: the route, job kind and cron task tables with edge/origin ownership;
/// fails on a manifest route the container does not serve, or a job kind or cron task it
/// cannot run (rolling back to origin must always be possible).
fn print_routes(manifest_path: Option<&std::path::Path>) -> ExitCode {
    use callbridge::strangler::{self, Manifest};
    let text = match manifest_path {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("callbridge: cannot read {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => strangler::EMBEDDED_MANIFEST.to_owned(),
    };
    let manifest = match Manifest::parse(&text) {
        Ok(manifest) => manifest,
        Err(error) => {
            eprintln!("callbridge: invalid manifest: {error}");
            return ExitCode::FAILURE;
        }
    };
    let spec = callbridge::http::openapi_document();
    println!("{:<7} {:<40} owner", "method", "path");
    for (method, path) in strangler::container_routes(&spec) {
        println!("{method:<7} {path:<40} {}", manifest.owner(&method, &path));
    }
    let kinds = callbridge::jobs::handlers::registry().kinds();
    let mut kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    kinds.sort_unstable();
    println!();
    println!("{:<48} owner", "job kind");
    for kind in &kinds {
        println!("{kind:<48} {}", manifest.job_owner(kind));
    }
    println!();
    println!("{:<48} owner", "cron task");
    for task in strangler::CRON_TASKS {
        println!("{task:<48} {}", manifest.cron_owner(task));
    }
    println!();
    println!(
        "(the container leaves edge-owned kinds and tasks to the Worker only with EDGE_RUNS_WORK=true; \
         alone it runs them all: ADR 0042)"
    );
    let missing = strangler::missing_in_container(&manifest, &spec);
    let unknown = strangler::unknown_to_container(&manifest, &kinds);
    if !missing.is_empty() {
        eprintln!(
            "callbridge: the manifest names routes the container does not serve: {}",
            missing.join(", ")
        );
    }
    if !unknown.is_empty() {
        eprintln!(
            "callbridge: the manifest names work the container cannot run: {}",
            unknown.join(", ")
        );
    }
    if missing.is_empty() && unknown.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the simulators until ctrl-c, printing the settings that point callbridge at them.
#[cfg(feature = "sim")]
fn run_simulators(
    telnyx_port: u16,
    telnyx_api_key: &str,
    autopilot: Option<callbridge::sim::telnyx::Autopilot>,
) -> ExitCode {
    callbridge::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("callbridge sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telnyx =
            match callbridge::sim::telnyx::TelnyxSim::start(telnyx_api_key, telnyx_port).await {
                Ok(sim) => sim,
                Err(error) => {
                    eprintln!("callbridge sim: Telnyx simulator: {error}");
                    return ExitCode::FAILURE;
                }
            };
        telnyx.set_autopilot(autopilot);
        println!(
            "Telnyx simulator on http://{} (commands: GET /_sim/commands)",
            telnyx.address
        );
        if let Some(autopilot) = autopilot {
            println!(
                "  dialled calls answer after {:?} and send their webhooks to the dial's webhook_url; \
                 the callee hangs up after {}",
                autopilot.answer_after,
                autopilot
                    .hangup_after
                    .map_or("your hangup command".to_owned(), |d| format!("{d:?}")),
            );
        }
        println!("  TELNYX_API_BASE={}", telnyx.api_base());
        println!("  TELNYX_API_KEY={telnyx_api_key}");
        println!("  TELNYX_PUBLIC_KEY={}", telnyx.public_key_base64());
        println!("  TELNYX_CONNECTION_ID=sim-connection");
        // The platform's pool: numbers the account holds on the connection, free to claim.
        telnyx.hold_dev_pool("sim-connection");
        println!(
            "  pool numbers to claim: {}",
            callbridge::sim::telnyx::TelnyxSim::DEV_POOL.join(", ")
        );
        // The other providers on the next free ports (every base URL is configurable).
        let started = async {
            let streaming =
                callbridge::sim::assemblyai::AssemblyAiSim::start("sim-assemblyai-key", 0).await?;
            let batch = callbridge::sim::assemblyai_async::AssemblyAiAsyncSim::start(
                "sim-assemblyai-key",
                0,
            )
            .await?;
            let speech = callbridge::sim::translation::TranslationSim::start(0).await?;
            let recordings = callbridge::sim::recordings::RecordingServerSim::start(0).await?;
            Ok::<_, std::io::Error>((streaming, batch, speech, recordings))
        };
        match started.await {
            Ok((streaming, batch, speech, recordings)) => {
                use callbridge::sim::translation as t;
                println!("AssemblyAI (streaming + async), DeepL, OpenAI, ElevenLabs simulators:");
                println!("  ASSEMBLYAI_API_KEY=sim-assemblyai-key");
                println!("  ASSEMBLYAI_STREAMING_URL={}", streaming.streaming_url());
                println!("  ASSEMBLYAI_API_BASE={}", batch.api_base());
                println!(
                    "  DEEPL_API_KEY={} DEEPL_API_BASE={}",
                    t::DEEPL_KEY,
                    speech.base()
                );
                println!(
                    "  OPENAI_API_KEY={} OPENAI_API_BASE={}/v1",
                    t::OPENAI_KEY,
                    speech.base()
                );
                println!(
                    "  ELEVENLABS_API_KEY={} ELEVENLABS_API_BASE={}",
                    t::ELEVENLABS_KEY,
                    speech.base()
                );
                println!(
                    "Telnyx recording URL server on http://{}",
                    recordings.address
                );
            }
            Err(error) => eprintln!("callbridge sim: {error}"),
        }
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}

/// A dependency-free probe: distroless images have no curl. Reads only `PORT`.
fn healthcheck() -> ExitCode {
    use std::io::{Read as _, Write as _};
    let port = callbridge::config::healthcheck_port();
    let timeout = std::time::Duration::from_secs(2);
    let probe = || -> std::io::Result<bool> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    match probe() {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
