//! Configuration: defaults in code < optional TOML file (`--config`) < environment.
//!
//! Every setting is read by its environment variable name (docs/SECRETS_TO_SET.md); a TOML file uses
//! the same names in lower case (`database_url = "…"`). Validation collects *every* problem
//! before failing, so an operator fixes a deployment in one pass. Secrets are wrapped in
//! [`Secret`] from the moment they are read.

mod origins;
mod secret;
pub mod speech;
pub mod usage;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

pub use origins::AllowedOrigins;
pub use secret::Secret;
use url::Url;

/// Which deployment this process is. Production and staging are strict; development fills
/// in local defaults and disables providers that have no credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppEnv {
    Development,
    Staging,
    Production,
}

impl AppEnv {
    pub fn as_str(self) -> &'static str {
        match self {
            AppEnv::Development => "development",
            AppEnv::Staging => "staging",
            AppEnv::Production => "production",
        }
    }

    /// Staging mirrors production's requirements so a deploy that passes staging passes prod.
    pub fn is_strict(self) -> bool {
        !matches!(self, AppEnv::Development)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// How Auth.js session tokens are stored in `{AUTH_SCHEMA}.sessions."sessionToken"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenStorage {
    /// The adapter's default: the token as issued.
    Raw,
    /// Hex SHA-256 of the token.
    Hashed,
    /// Either form is accepted (the zero-downtime migration window).
    Dual,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub app_env: AppEnv,
    pub bind_address: IpAddr,
    pub port: u16,
    pub public_base_url: Url,
    /// `WEBHOOK_BASE_URL` (default `PUBLIC_BASE_URL`): where providers send webhooks — the
    /// Worker's hostname once `/webhooks/*` are edge-owned.
    pub webhook_base_url: Url,
    /// `MEDIA_BASE_URL` (default `PUBLIC_BASE_URL`): the container's own hostname, which
    /// Telnyx media streams must reach directly (never through the Worker).
    pub media_base_url: Url,
    /// `HOSTNAME` (set by container platforms): names this process in job leases
    /// (`jobs.locked_by`) and in the media bridge's replica id.
    pub hostname: Option<String>,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub providers: ProvidersConfig,
    pub sentry: Option<SentryConfig>,
    pub edge: EdgeConfig,
    pub limits: LimitsConfig,
    pub media: MediaConfig,
    pub recordings: RecordingsConfig,
    pub telephony: TelephonyConfig,
    /// Prices, default quotas, reconciliation (docs/USAGE.md).
    pub usage: usage::UsageConfig,
}

/// Phone numbers and the toll-fraud guard on dialing (docs/SECURITY.md, "Phone numbers and
/// dialing"). The caps hold across replicas: they are counted in PostgreSQL.
#[derive(Debug, Clone)]
pub struct TelephonyConfig {
    /// `PHONE_NUMBERS_MAX_PER_ORG`: numbers one organisation may hold.
    pub max_numbers_per_org: i64,
    /// `DIAL_MAX_CONCURRENT_PER_ORG`: outbound calls not yet ended, per organisation.
    pub max_concurrent_per_org: i64,
    /// `DIAL_MAX_CONCURRENT_PER_USER`: outbound calls not yet ended, per user (all organisations).
    pub max_concurrent_per_user: i64,
    /// `DIAL_MAX_PER_MINUTE_PER_ORG`: calls placed in any 60 s, per organisation.
    pub max_per_minute_per_org: i64,
    /// `DIAL_MAX_PER_MINUTE_PER_USER`: calls placed in any 60 s, per user (all organisations).
    pub max_per_minute_per_user: i64,
    /// `DIAL_MAX_CALL_DURATION_SECS`: a call is hung up this long after it was placed.
    pub max_call_duration: Duration,
    /// `DIAL_PLATFORM_COUNTRIES`: when set, the only countries any organisation may dial
    /// (ISO 3166-1 alpha-2), whatever its own allow-list says.
    pub platform_countries: Option<Vec<String>>,
}

/// The settings `callbridge migrate` reads: the database, the Auth.js schema, logging.
#[derive(Debug, Clone)]
pub struct MigrateConfig {
    pub app_env: AppEnv,
    pub log: LogConfig,
    /// `DATABASE_DIRECT_URL`, else `DATABASE_URL` (migrations need a session, not a pooler).
    pub direct_url: Secret<String>,
    pub auth_schema: String,
}

/// Recordings, post-call transcripts and the cron (docs/RECORDINGS.md).
#[derive(Debug, Clone)]
pub struct RecordingsConfig {
    /// `RECORDINGS_MAX_BYTES`: the largest recording, enforced while streaming.
    pub max_bytes: u64,
    /// `RECORDINGS_PART_SIZE_BYTES`: multipart part size (all parts equal but the last).
    pub part_size: usize,
    /// `RECORDINGS_UPLOAD_CONCURRENCY`: parts in flight while the next one fills.
    pub upload_concurrency: usize,
    /// `RECORDINGS_UPLOAD_TIMEOUT_SECS`: whole-request limit of `POST /api/recordings`
    /// (instead of `HTTP_REQUEST_TIMEOUT_SECS`).
    pub upload_timeout: Duration,
    /// `RECORDINGS_UPLOAD_IDLE_SECS`: longest wait for the next chunk of an upload body.
    pub upload_idle: Duration,
    /// `RECORDINGS_PRESIGN_GET_SECS`: presigned GET lifetime for clients (at most 300).
    pub presign_get_ttl: Duration,
    /// `RECORDINGS_PRESIGN_PUT_SECS`: presigned PUT lifetime for direct uploads.
    pub presign_put_ttl: Duration,
    /// `RECORDINGS_TRANSCRIPTION_URL_SECS`: presigned GET lifetime handed to AssemblyAI.
    pub transcription_url_ttl: Duration,
    /// `RECORDINGS_RETENTION_DAYS`: default retention (organisations may override).
    pub retention_days: i32,
    /// `RECORDINGS_IMPORT_HOSTS`: hosts (and their subdomains) Telnyx recordings are
    /// downloaded from, over https only; redirects elsewhere are not followed.
    pub import_hosts: Vec<String>,
    /// Development only: `http://` on loopback addresses too (the local simulators).
    pub import_allow_loopback: bool,
    /// `RECORDINGS_QUOTA_BYTES_PER_ORG`: bytes of recording versions an organisation may
    /// store (0: no quota).
    pub quota_bytes_per_org: u64,
    /// `CRON_INTERVAL_SECS`: how often the worker's cron ticks.
    pub cron_interval: Duration,
    /// `CRON_STALE_CALL_MINUTES`: a non-terminal call untouched this long is failed.
    pub stale_call_after: Duration,
}

/// The realtime media bridge (docs/MEDIA_BRIDGE.md).
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// `ASSEMBLYAI_SPEECH_MODEL`: required by AssemblyAI v3 (one-leg calls and browsers).
    pub speech_model: String,
    /// `ASSEMBLYAI_SPEECH_MODELS`: the model per party language on interpreted calls
    /// (docs/CALLS.md).
    pub speech_models: speech::SpeechModels,
    /// `ORIGINAL_AUDIO_DUCKED_DB`: the level of the other party's own voice under the
    /// translation with `original_audio: ducked` (−60 to 0 dB).
    pub ducked_db: f64,
    /// `MEDIA_BATCH_MS`: audio per AssemblyAI chunk, 50–1000.
    pub batch_ms: usize,
    /// `MEDIA_REORDER_WINDOW`: frames held to put out-of-order frames back in order.
    pub reorder_window: usize,
    /// `MEDIA_REPLAY_BUFFER_SECS`: audio kept per track for replay after an AssemblyAI drop;
    /// what overflows becomes a recorded gap.
    pub replay_buffer_secs: usize,
    /// `MEDIA_IDLE_REPLAY_MS`: while no turn is open, how much of the newest audio a live
    /// session keeps for replay (AssemblyAI reports a turn's first words well within it).
    pub idle_replay_ms: usize,
    /// `MEDIA_TAIL_DELIVERY_SECS`: after a hang-up, how long a track keeps trying to reach
    /// AssemblyAI with the audio it still holds before recording it as a gap.
    pub tail_delivery: Duration,
    /// `TRANSLATION_BREAKER_COOLDOWN_SECS`: how long DeepL is skipped after its circuit opens.
    pub translation_cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive (`LOG_LEVEL`, else `RUST_LOG`).
    pub filter: String,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `ALLOWED_ORIGINS`: exact origins and `https://*.<domain>` preview patterns.
    pub allowed_origins: AllowedOrigins,
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    /// `HTTP_HEADER_READ_TIMEOUT_SECS`: a request head must arrive within this (slowloris).
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<Secret<String>>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Pooled URL (Neon's pooler in production).
    pub url: Secret<String>,
    /// Unpooled URL for migrations and LISTEN/NOTIFY.
    pub direct_url: Secret<String>,
    pub pool_max_size: usize,
    pub pool_timeout: Duration,
    /// Off for transaction-mode poolers that cannot keep named prepared statements.
    pub statement_cache: bool,
    /// `DATABASE_RANDOM_PAGE_COST`: the planner's `random_page_cost` on the service's
    /// session connections (`None`: the server's own). See `db::Db::connect`.
    pub random_page_cost: Option<f64>,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub schema: String,
    pub token_storage: TokenStorage,
    pub secret: Secret<String>,
    pub cookie_names: Vec<String>,
    /// How long a resolved session is trusted without asking the database again: also the
    /// longest a deleted session keeps working (the revocation delay).
    pub session_cache_ttl: Duration,
    pub session_cache_capacity: usize,
    /// `AUTH_NEGATIVE_CACHE_SECS`: how long an unknown token stays unknown without asking the
    /// database again (default 5, at most 30; off when the session cache is off).
    pub negative_cache_ttl: Duration,
    /// `AUTH_STREAM_RECHECK_SECS`: how often SSE streams and browser WebSockets re-validate
    /// their session and membership (default 30).
    pub stream_recheck: Duration,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub endpoint: Url,
    pub access_key_id: String,
    pub secret_access_key: Secret<String>,
    pub bucket: String,
    /// Path-style addressing for local S3 servers; R2 accepts both.
    pub force_path_style: bool,
    pub create_bucket_if_missing: bool,
}

#[derive(Debug, Clone)]
pub struct SentryConfig {
    pub dsn: Secret<String>,
    pub traces_sample_rate: f32,
}

/// Abuse limits (docs/SECURITY.md); 0 turns a limit off.
#[derive(Debug, Clone, Default)]
pub struct LimitsConfig {
    /// `RATE_LIMIT_ANONYMOUS_PER_MIN`: requests without a credential per client address.
    pub anonymous_per_min: u32,
    /// `RATE_LIMIT_SESSION_PER_MIN`: requests per session token.
    pub session_per_min: u32,
    /// `RATE_LIMIT_AUTH_FAILURES_PER_MIN`: unknown credentials per client address.
    pub auth_failures_per_min: u32,
    /// `STREAMS_PER_USER_MAX`: SSE streams and WebSockets open at once per user.
    pub streams_per_user: usize,
    /// `REALTIME_TOKENS_PER_MIN`: AssemblyAI temporary tokens minted per user.
    pub realtime_tokens_per_min: u32,
    /// `REALTIME_MAX_MESSAGE_BYTES`: largest browser transcription WebSocket message/frame.
    pub realtime_max_message_bytes: usize,
}

#[derive(Debug, Clone, Default)]
pub struct EdgeConfig {
    /// Set: every request must carry the shim's signature, except `unsigned_paths` and the
    /// media stream (`http::forwarded`).
    pub shared_secret: Option<Secret<String>>,
    /// `EDGE_UNSIGNED_PATHS`: path prefixes reachable without the edge's signature (probes and
    /// scrapers that reach the container directly). Default `/healthz,/readyz,/metrics`.
    pub unsigned_paths: Vec<String>,
    /// `EDGE_SIGNATURE_WINDOW_SECS`: how far `x-edge-timestamp` may be from now (default 60).
    pub signature_window: Duration,
    /// `EDGE_RUNS_WORK`: the Worker in front runs the job kinds and cron tasks
    /// `edge-shim/routes.json` gives the edge, so this container leaves them (ADR 0042). Off by
    /// default: the container alone (`make dev`, tests) runs every kind and task.
    pub runs_work: bool,
    pub cf_access_team_domain: Option<String>,
    pub cf_access_aud: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ProvidersConfig {
    pub telnyx: Option<TelnyxConfig>,
    pub assemblyai: Option<AssemblyAiConfig>,
    pub deepl: Option<DeepLConfig>,
    pub openai: Option<OpenAiConfig>,
    pub elevenlabs: Option<ElevenLabsConfig>,
}

#[derive(Debug, Clone)]
pub struct TelnyxConfig {
    pub api_key: Secret<String>,
    /// Base64 of the raw 32-byte Ed25519 key (docs/PROVIDERS.md §1.1).
    pub public_key: String,
    pub connection_id: String,
    pub api_base: Url,
}

#[derive(Debug, Clone)]
pub struct AssemblyAiConfig {
    pub api_key: Secret<String>,
    pub api_base: Url,
    pub streaming_url: Url,
    pub webhook_secret: Option<Secret<String>>,
}

#[derive(Debug, Clone)]
pub struct DeepLConfig {
    pub api_key: Secret<String>,
    pub api_base: Url,
}

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    pub api_key: Secret<String>,
    pub api_base: Url,
}

#[derive(Debug, Clone)]
pub struct ElevenLabsConfig {
    pub api_key: Secret<String>,
    pub api_base: Url,
    /// `ELEVENLABS_VOICE_ID`: the voice when a call or request names none.
    pub voice_id: String,
    /// `ELEVENLABS_MODEL_ID`: default `eleven_flash_v2_5`, the lowest-latency model.
    pub model_id: String,
}

/// A provider route was called while its credentials are not configured.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider} is not configured: set {}", variables.join(", "))]
pub struct ProviderDisabled {
    pub provider: &'static str,
    pub variables: &'static [&'static str],
}

impl ProvidersConfig {
    pub fn telnyx(&self) -> Result<&TelnyxConfig, ProviderDisabled> {
        self.telnyx.as_ref().ok_or(ProviderDisabled {
            provider: "Telnyx",
            variables: &[
                "TELNYX_API_KEY",
                "TELNYX_PUBLIC_KEY",
                "TELNYX_CONNECTION_ID",
            ],
        })
    }

    pub fn assemblyai(&self) -> Result<&AssemblyAiConfig, ProviderDisabled> {
        self.assemblyai.as_ref().ok_or(ProviderDisabled {
            provider: "AssemblyAI",
            variables: &["ASSEMBLYAI_API_KEY"],
        })
    }

    pub fn deepl(&self) -> Result<&DeepLConfig, ProviderDisabled> {
        self.deepl.as_ref().ok_or(ProviderDisabled {
            provider: "DeepL",
            variables: &["DEEPL_API_KEY"],
        })
    }

    pub fn openai(&self) -> Result<&OpenAiConfig, ProviderDisabled> {
        self.openai.as_ref().ok_or(ProviderDisabled {
            provider: "OpenAI",
            variables: &["OPENAI_API_KEY"],
        })
    }

    pub fn elevenlabs(&self) -> Result<&ElevenLabsConfig, ProviderDisabled> {
        self.elevenlabs.as_ref().ok_or(ProviderDisabled {
            provider: "ElevenLabs",
            variables: &["ELEVENLABS_API_KEY"],
        })
    }
}

/// One thing wrong with the configuration, named by its environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub variable: String,
    pub message: String,
}

/// Every problem found, reported together.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for problem in &self.problems {
            writeln!(f, "  - {}: {}", problem.variable, problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Default cookie names, newest Auth.js first (docs/ARCHITECTURE.md, "Auth").
pub const DEFAULT_SESSION_COOKIES: &[&str] = &[
    "__Secure-authjs.session-token",
    "authjs.session-token",
    "__Secure-next-auth.session-token",
    "next-auth.session-token",
];

/// `MEDIA_BATCH_MS` when unset: 100 ms of audio per AssemblyAI chunk. The bench's
/// generator and floor relay batch as the bridge does by default.
pub const DEFAULT_MEDIA_BATCH_MS: usize = 100;

const DEV_AUTH_SECRET: &str = "development-only-auth-secret-never-use-in-production";

impl Config {
    /// Load from the process environment and an optional TOML file.
    #[allow(clippy::disallowed_methods)] // the one place the environment is read
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Load from an explicit environment (tests use this to avoid process-global state).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Reader::new(layered_source(file, env)?).finish()
    }

    /// Only what migrations need (see [`MigrateConfig`]), from the same sources.
    #[allow(clippy::disallowed_methods)] // the one place the environment is read
    pub fn load_for_migrate(file: Option<&Path>) -> Result<MigrateConfig, ConfigError> {
        Self::load_migrate_from(file, std::env::vars())
    }

    pub fn load_migrate_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<MigrateConfig, ConfigError> {
        Reader::new(layered_source(file, env)?).finish_migrate()
    }

    /// The part of this configuration migrations use.
    pub fn migrate_config(&self) -> MigrateConfig {
        MigrateConfig {
            app_env: self.app_env,
            log: self.log.clone(),
            direct_url: self.database.direct_url.clone(),
            auth_schema: self.auth.schema.clone(),
        }
    }

    pub fn is_production(&self) -> bool {
        self.app_env == AppEnv::Production
    }

    /// A log-safe view of where we connect, with no credentials.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "app_env": self.app_env,
            "listen": format!("{}:{}", self.bind_address, self.port),
            "public_base_url": self.public_base_url.as_str(),
            "webhook_base_url": self.webhook_base_url.as_str(),
            "media_base_url": self.media_base_url.as_str(),
            "database": database_target(self.database.url.expose()),
            "storage": { "endpoint": self.storage.endpoint.as_str(), "bucket": self.storage.bucket },
            "auth": { "schema": self.auth.schema, "token_storage": self.auth.token_storage },
            "providers": {
                "telnyx": self.providers.telnyx.is_some(),
                "assemblyai": self.providers.assemblyai.is_some(),
                "deepl": self.providers.deepl.is_some(),
                "openai": self.providers.openai.is_some(),
                "elevenlabs": self.providers.elevenlabs.is_some(),
            },
            "sentry": self.sentry.is_some(),
        })
    }
}

/// Defaults < TOML file < environment, as one `config` source.
fn layered_source(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::Config, ConfigError> {
    let env: HashMap<String, String> = env
        .into_iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .collect();
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).required(true));
    }
    builder = builder.add_source(config::Environment::default().source(Some(env)));
    builder.build().map_err(|error| ConfigError {
        problems: vec![ConfigProblem {
            variable: "--config".into(),
            message: error.to_string(),
        }],
    })
}

/// The port `callbridge healthcheck` probes: `PORT`, else 8080. Read alone (the probe runs in
/// a distroless image with no configuration beyond the environment).
#[allow(clippy::disallowed_methods)] // the one place the environment is read
pub fn healthcheck_port() -> u16 {
    std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(8080)
}

/// `host:port/dbname` of a Postgres URL, never the user or password.
pub fn database_target(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => format!(
            "{}:{}{}",
            parsed.host_str().unwrap_or("?"),
            parsed.port().unwrap_or(5432),
            parsed.path()
        ),
        Err(_) => "<unparseable>".into(),
    }
}

/// Reads variables one by one, recording problems instead of stopping at the first.
struct Reader {
    source: config::Config,
    problems: Vec<ConfigProblem>,
    app_env: AppEnv,
}

impl Reader {
    fn new(source: config::Config) -> Self {
        let mut reader = Self {
            source,
            problems: Vec::new(),
            app_env: AppEnv::Development,
        };
        reader.app_env = match reader.string("APP_ENV").as_deref() {
            None | Some("development") => AppEnv::Development,
            Some("staging") => AppEnv::Staging,
            Some("production") => AppEnv::Production,
            Some(other) => {
                reader.problem(
                    "APP_ENV",
                    format!("must be development, staging or production, not {other:?}"),
                );
                AppEnv::Development
            }
        };
        reader
    }

    fn problem(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            variable: variable.to_owned(),
            message: message.into(),
        });
    }

    /// The trimmed value, or `None` when unset or empty.
    fn string(&mut self, variable: &str) -> Option<String> {
        match self.source.get_string(&variable.to_ascii_lowercase()) {
            Ok(value) => {
                let trimmed = value.trim();
                (!trimmed.is_empty()).then(|| trimmed.to_owned())
            }
            Err(config::ConfigError::NotFound(_)) => None,
            Err(error) => {
                self.problem(variable, error.to_string());
                None
            }
        }
    }

    /// Required in staging/production; in development falls back to `dev_default`.
    fn required(&mut self, variable: &str, dev_default: Option<&str>) -> Option<String> {
        match (self.string(variable), self.app_env.is_strict(), dev_default) {
            (Some(value), _, _) => Some(value),
            (None, false, Some(default)) => Some(default.to_owned()),
            (None, true, _) => {
                let env = self.app_env.as_str();
                self.problem(variable, format!("required when APP_ENV={env}"));
                None
            }
            (None, false, None) => {
                self.problem(variable, "required");
                None
            }
        }
    }

    fn parsed<T: std::str::FromStr>(&mut self, variable: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.string(variable) {
            None => default,
            Some(raw) => match raw.parse() {
                Ok(value) => value,
                Err(error) => {
                    self.problem(variable, format!("cannot parse {raw:?}: {error}"));
                    default
                }
            },
        }
    }

    fn boolean(&mut self, variable: &str, default: bool) -> bool {
        match self.string(variable).as_deref() {
            None => default,
            Some("1" | "true" | "yes" | "on") => true,
            Some("0" | "false" | "no" | "off") => false,
            Some(other) => {
                self.problem(variable, format!("must be true or false, not {other:?}"));
                default
            }
        }
    }

    fn url(&mut self, variable: &str, value: Option<String>) -> Option<Url> {
        let raw = value?;
        match Url::parse(&raw) {
            Ok(url) if url.cannot_be_a_base() => {
                self.problem(variable, "must be an absolute URL");
                None
            }
            Ok(url) => Some(url),
            Err(error) => {
                self.problem(variable, format!("not a URL: {error}"));
                None
            }
        }
    }

    fn url_or(&mut self, variable: &str, default: &str) -> Url {
        let value = self.string(variable);
        self.url(variable, value)
            .unwrap_or_else(|| Url::parse(default).expect("default URLs are valid"))
    }

    fn secret(&mut self, variable: &str) -> Option<Secret<String>> {
        self.string(variable).map(Secret::new)
    }

    /// A provider credential: required when strict, otherwise its absence disables it.
    fn provider_key(&mut self, variable: &str) -> Option<Secret<String>> {
        let value = self.secret(variable);
        if value.is_none() && self.app_env.is_strict() {
            let env = self.app_env.as_str();
            self.problem(variable, format!("required when APP_ENV={env}"));
        }
        value
    }

    fn finish(mut self) -> Result<Config, ConfigError> {
        let app_env = self.app_env;
        let strict = app_env.is_strict();
        let dev = |value: &'static str| (!strict).then_some(value);

        let bind_address = self.parsed("BIND_ADDRESS", IpAddr::from([0, 0, 0, 0]));
        let port = self.parsed("PORT", 8080u16);
        let public_base_url = self.required("PUBLIC_BASE_URL", dev("http://localhost:8080"));
        let public_base_url = self.url("PUBLIC_BASE_URL", public_base_url);
        if strict
            && public_base_url
                .as_ref()
                .is_some_and(|u| u.scheme() != "https")
        {
            self.problem("PUBLIC_BASE_URL", "must be https outside development");
        }
        let webhook_base_url = self.base_url_or_public("WEBHOOK_BASE_URL", &public_base_url);
        let media_base_url = self.base_url_or_public("MEDIA_BASE_URL", &public_base_url);
        let hostname = self.string("HOSTNAME");

        // Each section in the order its problems are reported.
        let log = self.log();
        let http = self.http();
        let database = self.database();
        let auth = self.auth();
        let storage = self.storage();
        let providers = self.providers();
        let usage = self.usage();
        let sentry = self.sentry();
        let limits = self.limits();
        let edge = self.edge();
        let media = self.media();
        let recordings = self.recordings();
        let telephony = self.telephony();

        if !self.problems.is_empty() {
            return Err(ConfigError {
                problems: self.problems,
            });
        }
        Ok(Config {
            app_env,
            bind_address,
            port,
            public_base_url: public_base_url.expect("checked above"),
            webhook_base_url: webhook_base_url.expect("checked above"),
            media_base_url: media_base_url.expect("checked above"),
            hostname,
            log,
            http,
            database,
            auth,
            storage,
            providers,
            sentry,
            edge,
            media,
            recordings,
            limits,
            telephony,
            usage,
        })
    }

    /// `ALLOWED_ORIGINS`, the HTTP server's limits and timeouts, `METRICS_TOKEN`.
    fn http(&mut self) -> HttpConfig {
        let strict = self.app_env.is_strict();
        let dev = |value: &'static str| (!strict).then_some(value);
        let allowed_origins = self
            .required("ALLOWED_ORIGINS", dev("http://localhost:3000"))
            .map(|raw| split_list(&raw))
            .unwrap_or_default();
        let allowed_origins = match AllowedOrigins::parse(&allowed_origins) {
            Ok(origins) => origins,
            Err(problems) => {
                for problem in problems {
                    self.problem("ALLOWED_ORIGINS", problem);
                }
                AllowedOrigins::default()
            }
        };
        let http = HttpConfig {
            allowed_origins,
            request_timeout: Duration::from_secs(self.parsed("HTTP_REQUEST_TIMEOUT_SECS", 30)),
            body_limit_bytes: self.parsed("HTTP_BODY_LIMIT_BYTES", 1024 * 1024),
            header_read_timeout: Duration::from_secs(self.bounded(
                "HTTP_HEADER_READ_TIMEOUT_SECS",
                10,
                1,
                120,
            )),
            shutdown_grace: Duration::from_secs(self.parsed("SHUTDOWN_GRACE_SECS", 25)),
            metrics_token: self.secret("METRICS_TOKEN"),
        };
        if self.app_env == AppEnv::Production && http.metrics_token.is_none() {
            // Metrics name routes, tenants' traffic and queue depths: not for the internet.
            self.problem("METRICS_TOKEN", "required when APP_ENV=production");
        }
        http
    }

    /// `AUTH_*`: the Auth.js schema, token storage, secret, cookie names and session cache.
    fn auth(&mut self) -> AuthConfig {
        let app_env = self.app_env;
        let strict = app_env.is_strict();
        let dev = |value: &'static str| (!strict).then_some(value);
        let schema = self.auth_schema();
        let token_storage = match self.string("AUTH_TOKEN_STORAGE").as_deref() {
            None | Some("raw") => TokenStorage::Raw,
            Some("hashed") => TokenStorage::Hashed,
            Some("dual") => TokenStorage::Dual,
            Some(other) => {
                self.problem(
                    "AUTH_TOKEN_STORAGE",
                    format!("must be raw, hashed or dual, not {other:?}"),
                );
                TokenStorage::Raw
            }
        };
        let auth_secret = self
            .required("AUTH_SECRET", dev(DEV_AUTH_SECRET))
            .unwrap_or_default();
        if strict && !auth_secret.is_empty() && auth_secret.len() < 32 {
            self.problem("AUTH_SECRET", "must be at least 32 characters");
        }
        let configured_cookies = self.string("AUTH_COOKIE_NAMES").map(|raw| split_list(&raw));
        // In production only `__Secure-`/`__Host-` names: the browser sets those only over
        // https from the site itself, so a sibling subdomain or a plain-http response cannot
        // plant a session cookie (fixation) under a name we would read.
        let secure_only = app_env == AppEnv::Production;
        let is_secure_name =
            |name: &str| name.starts_with("__Secure-") || name.starts_with("__Host-");
        if secure_only
            && let Some(names) = &configured_cookies
            && let Some(name) = names.iter().find(|name| !is_secure_name(name))
        {
            self.problem(
                "AUTH_COOKIE_NAMES",
                format!("{name:?}: only __Secure- or __Host- names when APP_ENV=production"),
            );
        }
        let cookie_names = configured_cookies.unwrap_or_else(|| {
            DEFAULT_SESSION_COOKIES
                .iter()
                .filter(|name| !secure_only || is_secure_name(name))
                .map(|s| s.to_string())
                .collect()
        });
        let session_cache_ttl =
            Duration::from_secs(self.bounded("AUTH_SESSION_CACHE_TTL_SECS", 15, 0, 60));
        AuthConfig {
            schema,
            token_storage,
            secret: Secret::new(auth_secret),
            cookie_names,
            // Bounded: the TTL is the revocation delay of every request.
            session_cache_ttl,
            negative_cache_ttl: if session_cache_ttl.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_secs(self.bounded("AUTH_NEGATIVE_CACHE_SECS", 5, 0, 30))
            },
            session_cache_capacity: self.parsed("AUTH_SESSION_CACHE_CAPACITY", 10_000usize),
            stream_recheck: Duration::from_secs(self.bounded(
                "AUTH_STREAM_RECHECK_SECS",
                30,
                1,
                300,
            )),
        }
    }

    /// `R2_*`: the object store.
    fn storage(&mut self) -> StorageConfig {
        let strict = self.app_env.is_strict();
        let dev = |value: &'static str| (!strict).then_some(value);
        let endpoint = self.required("R2_ENDPOINT", dev("http://127.0.0.1:9000"));
        let endpoint = self.url("R2_ENDPOINT", endpoint);
        let access_key_id = self.required("R2_ACCESS_KEY_ID", dev("callbridge-dev"));
        let secret_access_key = self.required("R2_SECRET_ACCESS_KEY", dev("callbridge-dev-secret"));
        let bucket = self.required("R2_BUCKET", dev("callbridge-dev"));
        if let Some(bucket) = &bucket
            && !is_bucket_name(bucket)
        {
            self.problem("R2_BUCKET", "must be 3-63 characters of a-z, 0-9 and -");
        }
        StorageConfig {
            endpoint: endpoint.unwrap_or_else(|| {
                Url::parse("http://invalid.localhost").expect("a literal, valid URL")
            }),
            access_key_id: access_key_id.unwrap_or_default(),
            secret_access_key: Secret::new(secret_access_key.unwrap_or_default()),
            bucket: bucket.unwrap_or_default(),
            force_path_style: self.boolean("R2_FORCE_PATH_STYLE", !strict),
            create_bucket_if_missing: self.boolean("R2_CREATE_BUCKET", !strict),
        }
    }

    /// `SENTRY_DSN` and its sample rate; `None` without a DSN.
    fn sentry(&mut self) -> Option<SentryConfig> {
        match self.secret("SENTRY_DSN") {
            Some(dsn) => {
                if dsn.expose().parse::<sentry::types::Dsn>().is_err() {
                    self.problem("SENTRY_DSN", "not a valid Sentry DSN");
                }
                Some(SentryConfig {
                    dsn,
                    traces_sample_rate: self.parsed("SENTRY_TRACES_SAMPLE_RATE", 0.0f32),
                })
            }
            None => None,
        }
    }

    /// Rate limits and per-user caps (`RATE_LIMIT_*`, `STREAMS_PER_USER_MAX`, `REALTIME_*`).
    fn limits(&mut self) -> LimitsConfig {
        LimitsConfig {
            anonymous_per_min: self.bounded("RATE_LIMIT_ANONYMOUS_PER_MIN", 120, 0, 100_000) as u32,
            session_per_min: self.bounded("RATE_LIMIT_SESSION_PER_MIN", 600, 0, 100_000) as u32,
            auth_failures_per_min: self.bounded("RATE_LIMIT_AUTH_FAILURES_PER_MIN", 30, 0, 100_000)
                as u32,
            streams_per_user: self.bounded("STREAMS_PER_USER_MAX", 8, 0, 1_000) as usize,
            realtime_tokens_per_min: self.bounded("REALTIME_TOKENS_PER_MIN", 10, 0, 10_000) as u32,
            realtime_max_message_bytes: self.bounded(
                "REALTIME_MAX_MESSAGE_BYTES",
                128 * 1024,
                1024,
                16 * 1024 * 1024,
            ) as usize,
        }
    }

    /// `EDGE_*` and Cloudflare Access: what the Worker in front signs and how.
    fn edge(&mut self) -> EdgeConfig {
        let unsigned_paths = self.path_prefixes("EDGE_UNSIGNED_PATHS", "/healthz,/readyz,/metrics");
        EdgeConfig {
            shared_secret: self.provider_key("EDGE_SHARED_SECRET"),
            unsigned_paths,
            signature_window: Duration::from_secs(self.bounded(
                "EDGE_SIGNATURE_WINDOW_SECS",
                60,
                5,
                300,
            )),
            runs_work: self.boolean("EDGE_RUNS_WORK", false),
            cf_access_team_domain: self.string("CF_ACCESS_TEAM_DOMAIN"),
            cf_access_aud: self.string("CF_ACCESS_AUD"),
        }
    }

    /// `MEDIA_*`, the speech models and the original-audio level of the media bridge.
    fn media(&mut self) -> MediaConfig {
        let batch_ms = self.parsed("MEDIA_BATCH_MS", DEFAULT_MEDIA_BATCH_MS);
        if !(50..=1000).contains(&batch_ms) {
            self.problem(
                "MEDIA_BATCH_MS",
                "must be between 50 and 1000 (AssemblyAI's chunk limits)",
            );
        }
        let speech_models = match self.string("ASSEMBLYAI_SPEECH_MODELS") {
            None => speech::SpeechModels::defaults(),
            Some(text) => speech::SpeechModels::parse(&text).unwrap_or_else(|e| {
                self.problem("ASSEMBLYAI_SPEECH_MODELS", e);
                speech::SpeechModels::defaults()
            }),
        };
        let ducked_db = self.parsed("ORIGINAL_AUDIO_DUCKED_DB", -18.0f64);
        if !(-60.0..=0.0).contains(&ducked_db) {
            self.problem("ORIGINAL_AUDIO_DUCKED_DB", "must be between -60 and 0 (dB)");
        }
        MediaConfig {
            speech_models,
            ducked_db,
            speech_model: self
                .string("ASSEMBLYAI_SPEECH_MODEL")
                .unwrap_or_else(|| "universal-streaming-english".into()),
            batch_ms,
            reorder_window: self.parsed("MEDIA_REORDER_WINDOW", 4usize).clamp(1, 50),
            replay_buffer_secs: self
                .parsed("MEDIA_REPLAY_BUFFER_SECS", 5usize)
                .clamp(1, 120),
            idle_replay_ms: self
                .parsed("MEDIA_IDLE_REPLAY_MS", 1000usize)
                .clamp(batch_ms, 120_000),
            tail_delivery: Duration::from_secs(
                self.parsed("MEDIA_TAIL_DELIVERY_SECS", 30u64).clamp(1, 600),
            ),
            translation_cooldown: Duration::from_secs(
                self.parsed("TRANSLATION_BREAKER_COOLDOWN_SECS", 30u64),
            ),
        }
    }

    /// A comma-separated list of path prefixes, each starting with `/` (empty entries skipped).
    fn path_prefixes(&mut self, variable: &str, default: &str) -> Vec<String> {
        let raw = self.string(variable).unwrap_or_else(|| default.to_owned());
        let prefixes: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if prefixes.iter().any(|p| !p.starts_with('/')) {
            self.problem(variable, "every entry must be a path starting with /");
        }
        prefixes
    }

    /// `LOG_FORMAT` and `LOG_LEVEL` (else `RUST_LOG`).
    fn log(&mut self) -> LogConfig {
        LogConfig {
            format: match self.string("LOG_FORMAT").as_deref() {
                Some("json") => LogFormat::Json,
                Some("pretty") => LogFormat::Pretty,
                None if self.app_env.is_strict() => LogFormat::Json,
                None => LogFormat::Pretty,
                Some(other) => {
                    self.problem(
                        "LOG_FORMAT",
                        format!("must be pretty or json, not {other:?}"),
                    );
                    LogFormat::Json
                }
            },
            filter: self
                .string("LOG_LEVEL")
                .or_else(|| self.string("RUST_LOG"))
                .unwrap_or_else(|| "info,tower_http=info".into()),
        }
    }

    /// The `DATABASE_*` variables and `RUN_MIGRATIONS_ON_START`.
    fn database(&mut self) -> DatabaseConfig {
        let strict = self.app_env.is_strict();
        let database_url = self.required(
            "DATABASE_URL",
            (!strict).then_some("postgres://postgres@127.0.0.1:5432/callbridge"),
        );
        let direct_url = self.string("DATABASE_DIRECT_URL");
        for (variable, value) in [
            ("DATABASE_URL", &database_url),
            ("DATABASE_DIRECT_URL", &direct_url),
        ] {
            let Some(url) = value else { continue };
            match url.parse::<tokio_postgres::Config>() {
                Err(_) => self.problem(variable, "not a valid postgres:// connection string"),
                Ok(parsed) if strict && !tls_required_or_local(&parsed) => self.problem(
                    variable,
                    "must set sslmode=require for a non-local database outside development",
                ),
                Ok(_) => {}
            }
        }
        let migrate_on_start = self.boolean("RUN_MIGRATIONS_ON_START", !strict);
        if migrate_on_start && self.app_env == AppEnv::Production {
            self.problem(
                "RUN_MIGRATIONS_ON_START",
                "not allowed in production: run `callbridge migrate` from CI",
            );
        }
        DatabaseConfig {
            direct_url: Secret::new(
                direct_url
                    .clone()
                    .or_else(|| database_url.clone())
                    .unwrap_or_default(),
            ),
            url: Secret::new(database_url.unwrap_or_default()),
            pool_max_size: self.parsed("DATABASE_POOL_MAX_SIZE", 16usize),
            pool_timeout: Duration::from_millis(self.parsed("DATABASE_POOL_TIMEOUT_MS", 3000)),
            statement_cache: self.boolean("DATABASE_STATEMENT_CACHE", true),
            random_page_cost: self.random_page_cost(),
            migrate_on_start,
        }
    }

    /// `DATABASE_RANDOM_PAGE_COST`: `1.1` unless set; `0` leaves the server's setting.
    fn random_page_cost(&mut self) -> Option<f64> {
        let cost: f64 = self.parsed("DATABASE_RANDOM_PAGE_COST", 1.1);
        if !cost.is_finite() || cost < 0.0 {
            self.problem(
                "DATABASE_RANDOM_PAGE_COST",
                format!("must be 0 (the server's setting) or a positive number, not {cost}"),
            );
            return Some(1.1);
        }
        (cost > 0.0).then_some(cost)
    }

    fn auth_schema(&mut self) -> String {
        let schema = self
            .string("AUTH_SCHEMA")
            .unwrap_or_else(|| "authjs".into());
        if !is_sql_identifier(&schema) {
            self.problem(
                "AUTH_SCHEMA",
                "must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63 bytes)",
            );
        }
        schema
    }

    /// What `callbridge migrate` needs and nothing else: no provider, storage or auth
    /// secret is read, so CI can migrate with only the database variables.
    fn finish_migrate(mut self) -> Result<MigrateConfig, ConfigError> {
        let log = self.log();
        let database = self.database();
        if self.string("DATABASE_DIRECT_URL").is_some() {
            // Migrations use the direct URL only: the pooled one may stay unset here.
            self.problems
                .retain(|p| !(p.variable == "DATABASE_URL" && p.message.starts_with("required")));
        }
        let auth_schema = self.auth_schema();
        if !self.problems.is_empty() {
            return Err(ConfigError {
                problems: self.problems,
            });
        }
        Ok(MigrateConfig {
            app_env: self.app_env,
            log,
            direct_url: database.direct_url,
            auth_schema,
        })
    }

    /// A base URL that defaults to `PUBLIC_BASE_URL`; https outside development, like it.
    fn base_url_or_public(&mut self, variable: &str, public: &Option<Url>) -> Option<Url> {
        let value = self.string(variable);
        let Some(raw) = value else {
            return public.clone();
        };
        let url = self.url(variable, Some(raw))?;
        if self.app_env.is_strict() && url.scheme() != "https" {
            self.problem(variable, "must be https outside development");
        }
        if !matches!(url.scheme(), "http" | "https") {
            self.problem(variable, "must be an http(s) URL");
        }
        Some(url)
    }

    /// A number in `min..=max`, else a problem (and the default).
    fn bounded(&mut self, variable: &str, default: u64, min: u64, max: u64) -> u64 {
        let value = self.parsed(variable, default);
        if !(min..=max).contains(&value) {
            self.problem(variable, format!("must be between {min} and {max}"));
            return default;
        }
        value
    }

    fn recordings(&mut self) -> RecordingsConfig {
        const MIB: u64 = 1024 * 1024;
        RecordingsConfig {
            max_bytes: self.bounded("RECORDINGS_MAX_BYTES", 2048 * MIB, 1, 5 * 1024 * MIB),
            // R2/S3: parts of 5 MiB – 5 GiB.
            part_size: self.bounded("RECORDINGS_PART_SIZE_BYTES", 8 * MIB, 5 * MIB, 512 * MIB)
                as usize,
            upload_concurrency: self.bounded("RECORDINGS_UPLOAD_CONCURRENCY", 2, 1, 8) as usize,
            upload_timeout: Duration::from_secs(self.bounded(
                "RECORDINGS_UPLOAD_TIMEOUT_SECS",
                3600,
                1,
                86_400,
            )),
            upload_idle: Duration::from_secs(self.bounded(
                "RECORDINGS_UPLOAD_IDLE_SECS",
                60,
                1,
                3600,
            )),
            presign_get_ttl: Duration::from_secs(self.bounded(
                "RECORDINGS_PRESIGN_GET_SECS",
                300,
                1,
                300,
            )),
            presign_put_ttl: Duration::from_secs(self.bounded(
                "RECORDINGS_PRESIGN_PUT_SECS",
                600,
                1,
                3600,
            )),
            // R2 presigned URLs live at most 7 days (docs/PROVIDERS.md §5).
            transcription_url_ttl: Duration::from_secs(self.bounded(
                "RECORDINGS_TRANSCRIPTION_URL_SECS",
                86_400,
                60,
                604_800,
            )),
            retention_days: self.bounded("RECORDINGS_RETENTION_DAYS", 90, 1, 3650) as i32,
            import_hosts: self
                .string("RECORDINGS_IMPORT_HOSTS")
                .map(|raw| split_list(&raw))
                .unwrap_or_else(|| vec!["telnyx.com".into(), "s3.amazonaws.com".into()])
                .into_iter()
                .map(|host| host.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            import_allow_loopback: !self.app_env.is_strict(),
            quota_bytes_per_org: self.bounded(
                "RECORDINGS_QUOTA_BYTES_PER_ORG",
                50 * 1024 * MIB,
                0,
                1024 * 1024 * 1024 * MIB,
            ),
            cron_interval: Duration::from_secs(self.bounded("CRON_INTERVAL_SECS", 300, 1, 86_400)),
            stale_call_after: Duration::from_secs(
                60 * self.bounded("CRON_STALE_CALL_MINUTES", 240, 1, 10_080),
            ),
        }
    }

    fn telephony(&mut self) -> TelephonyConfig {
        let platform_countries = self.string("DIAL_PLATFORM_COUNTRIES").map(|raw| {
            let countries: Vec<String> = split_list(&raw)
                .into_iter()
                .map(|c| c.to_ascii_uppercase())
                .collect();
            for country in &countries {
                if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
                    self.problem(
                        "DIAL_PLATFORM_COUNTRIES",
                        format!("{country:?} is not an ISO 3166-1 alpha-2 country code"),
                    );
                }
            }
            countries
        });
        TelephonyConfig {
            max_numbers_per_org: self.bounded("PHONE_NUMBERS_MAX_PER_ORG", 5, 0, 10_000) as i64,
            max_concurrent_per_org: self.bounded("DIAL_MAX_CONCURRENT_PER_ORG", 10, 1, 100_000)
                as i64,
            max_concurrent_per_user: self.bounded("DIAL_MAX_CONCURRENT_PER_USER", 3, 1, 10_000)
                as i64,
            max_per_minute_per_org: self.bounded("DIAL_MAX_PER_MINUTE_PER_ORG", 20, 1, 100_000)
                as i64,
            max_per_minute_per_user: self.bounded("DIAL_MAX_PER_MINUTE_PER_USER", 6, 1, 10_000)
                as i64,
            max_call_duration: Duration::from_secs(self.bounded(
                "DIAL_MAX_CALL_DURATION_SECS",
                7200,
                60,
                86_400,
            )),
            platform_countries,
        }
    }

    fn providers(&mut self) -> ProvidersConfig {
        let telnyx = {
            let api_key = self.provider_key("TELNYX_API_KEY");
            let public_key = self.provider_key("TELNYX_PUBLIC_KEY");
            let connection_id = self.provider_key("TELNYX_CONNECTION_ID");
            let api_base = self.url_or("TELNYX_API_BASE", "https://api.telnyx.com/v2");
            if let Some(key) = &public_key {
                use base64::Engine as _;
                let valid = base64::engine::general_purpose::STANDARD
                    .decode(key.expose())
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .is_some_and(|bytes| ed25519_dalek::VerifyingKey::from_bytes(&bytes).is_ok());
                if !valid {
                    self.problem(
                        "TELNYX_PUBLIC_KEY",
                        "must be standard base64 of the raw 32-byte Ed25519 public key",
                    );
                }
            }
            self.all_or_none(
                "Telnyx",
                &[
                    ("TELNYX_API_KEY", api_key.is_some()),
                    ("TELNYX_PUBLIC_KEY", public_key.is_some()),
                    ("TELNYX_CONNECTION_ID", connection_id.is_some()),
                ],
            );
            match (api_key, public_key, connection_id) {
                (Some(api_key), Some(public_key), Some(connection_id)) => Some(TelnyxConfig {
                    api_key,
                    public_key: public_key.expose().clone(),
                    connection_id: connection_id.expose().clone(),
                    api_base,
                }),
                _ => None,
            }
        };
        let assemblyai = {
            let api_key = self.provider_key("ASSEMBLYAI_API_KEY");
            let webhook_secret = self.provider_key("ASSEMBLYAI_WEBHOOK_SECRET");
            let api_base = self.url_or("ASSEMBLYAI_API_BASE", "https://api.assemblyai.com");
            let streaming_url = self.url_or(
                "ASSEMBLYAI_STREAMING_URL",
                "wss://streaming.assemblyai.com/v3/ws",
            );
            api_key.map(|api_key| AssemblyAiConfig {
                api_key,
                api_base,
                streaming_url,
                webhook_secret,
            })
        };
        let deepl = {
            let api_key = self.provider_key("DEEPL_API_KEY");
            // Free-plan keys end in ":fx" and only work on the free host (docs/PROVIDERS.md §4.1).
            let default_base = match &api_key {
                Some(key) if key.expose().ends_with(":fx") => "https://api-free.deepl.com",
                _ => "https://api.deepl.com",
            };
            let api_base = self.url_or("DEEPL_API_BASE", default_base);
            api_key.map(|api_key| DeepLConfig { api_key, api_base })
        };
        let openai = {
            let api_key = self.provider_key("OPENAI_API_KEY");
            let api_base = self.url_or("OPENAI_API_BASE", "https://api.openai.com/v1");
            api_key.map(|api_key| OpenAiConfig { api_key, api_base })
        };
        let elevenlabs = {
            let api_key = self.provider_key("ELEVENLABS_API_KEY");
            let api_base = self.url_or("ELEVENLABS_API_BASE", "https://api.elevenlabs.io");
            let voice_id = self
                .string("ELEVENLABS_VOICE_ID")
                .unwrap_or_else(|| "21m00Tcm4TlvDq8ikWAM".into());
            let model_id = self
                .string("ELEVENLABS_MODEL_ID")
                .unwrap_or_else(|| "eleven_flash_v2_5".into());
            api_key.map(|api_key| ElevenLabsConfig {
                api_key,
                api_base,
                voice_id,
                model_id,
            })
        };
        ProvidersConfig {
            telnyx,
            assemblyai,
            deepl,
            openai,
            elevenlabs,
        }
    }

    /// A half-configured provider is a mistake worth stopping for, even in development.
    fn all_or_none(&mut self, provider: &str, variables: &[(&str, bool)]) {
        let set: Vec<&str> = variables
            .iter()
            .filter(|(_, s)| *s)
            .map(|(v, _)| *v)
            .collect();
        if set.is_empty() || set.len() == variables.len() || self.app_env.is_strict() {
            return;
        }
        for (variable, is_set) in variables {
            if !is_set {
                self.problem(
                    variable,
                    format!("{provider} needs it when {} is set", set.join(", ")),
                );
            }
        }
    }
}

/// TLS is only negotiated for `sslmode=require` (see `db::pg_config`).
fn tls_required_or_local(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::{Host, SslMode};
    config.get_ssl_mode() == SslMode::Require
        || config.get_hosts().iter().all(|host| match host {
            Host::Tcp(name) => matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1"),
            Host::Unix(_) => true,
        })
}

fn split_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Safe to interpolate into SQL as an identifier: lower-case ASCII, digits, underscores.
pub fn is_sql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(
            None,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn development_starts_with_no_settings_and_disables_providers() {
        let config = load(&[]).expect("development defaults are complete");
        assert_eq!(config.app_env, AppEnv::Development);
        assert!(config.providers.telnyx().is_err());
        let disabled = config.providers.deepl().unwrap_err();
        assert_eq!(disabled.variables, ["DEEPL_API_KEY"]);
        assert_eq!(config.storage.bucket, "callbridge-dev");
        assert!(config.database.migrate_on_start);
    }

    #[test]
    fn production_reports_every_missing_variable_at_once() {
        let error = load(&[("APP_ENV", "production")]).unwrap_err();
        let named: Vec<&str> = error.problems.iter().map(|p| p.variable.as_str()).collect();
        for variable in [
            "DATABASE_URL",
            "PUBLIC_BASE_URL",
            "AUTH_SECRET",
            "ALLOWED_ORIGINS",
            "R2_ENDPOINT",
            "R2_BUCKET",
            "TELNYX_API_KEY",
            "ASSEMBLYAI_API_KEY",
            "DEEPL_API_KEY",
            "EDGE_SHARED_SECRET",
            "METRICS_TOKEN",
            "RUN_MIGRATIONS_ON_START",
        ] {
            if variable == "RUN_MIGRATIONS_ON_START" {
                assert!(!named.contains(&variable), "off by default in production");
            } else {
                assert!(
                    named.contains(&variable),
                    "{variable} missing from {named:?}"
                );
            }
        }
        assert!(
            error
                .to_string()
                .contains("DATABASE_URL: required when APP_ENV=production")
        );
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("cb-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("callbridge.toml");
        std::fs::write(&file, "port = 9999\nr2_bucket = \"from-file\"\n").unwrap();
        let config =
            Config::load_from(Some(&file), [("PORT".to_string(), "7777".to_string())]).unwrap();
        assert_eq!(config.port, 7777, "environment wins over the file");
        assert_eq!(
            config.storage.bucket, "from-file",
            "file wins over defaults"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn webhook_and_media_base_urls_default_to_the_public_one() {
        let config = load(&[("PUBLIC_BASE_URL", "https://api.example.com")]).unwrap();
        assert_eq!(config.webhook_base_url.as_str(), "https://api.example.com/");
        assert_eq!(config.media_base_url.as_str(), "https://api.example.com/");
        let config = load(&[
            ("PUBLIC_BASE_URL", "https://api.example.com"),
            ("WEBHOOK_BASE_URL", "https://edge.example.com"),
            ("MEDIA_BASE_URL", "https://origin.example.com/prefix"),
        ])
        .unwrap();
        assert_eq!(
            config.webhook_base_url.as_str(),
            "https://edge.example.com/"
        );
        assert_eq!(
            config.media_base_url.as_str(),
            "https://origin.example.com/prefix"
        );
        let error = load(&[
            ("MEDIA_BASE_URL", "not a url"),
            ("WEBHOOK_BASE_URL", "ftp://x.example.com"),
        ])
        .unwrap_err();
        let named: Vec<&str> = error.problems.iter().map(|p| p.variable.as_str()).collect();
        assert_eq!(named, ["WEBHOOK_BASE_URL", "MEDIA_BASE_URL"]);
    }

    #[test]
    fn migrate_reads_only_the_database_settings() {
        let migrate = |vars: &[(&str, &str)]| {
            Config::load_migrate_from(
                None,
                vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            )
        };
        let config = migrate(&[
            ("APP_ENV", "production"),
            (
                "DATABASE_DIRECT_URL",
                "postgres://u:p@db.example.com/app?sslmode=require",
            ),
        ])
        .expect("no provider, storage or auth secret is needed");
        assert_eq!(config.app_env, AppEnv::Production);
        assert_eq!(config.auth_schema, "authjs");
        let error = migrate(&[("APP_ENV", "production")]).unwrap_err();
        let named: Vec<&str> = error.problems.iter().map(|p| p.variable.as_str()).collect();
        assert_eq!(named, ["DATABASE_URL"]);
        let error = migrate(&[
            ("APP_ENV", "production"),
            ("DATABASE_URL", "postgres://u:p@db.example.com/app"),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("sslmode=require"), "{error}");
    }

    #[test]
    fn random_page_cost_defaults_to_memory_resident_and_zero_keeps_the_servers() {
        let cost = |value: Option<&str>| {
            let vars: Vec<(&str, &str)> = value
                .map(|v| vec![("DATABASE_RANDOM_PAGE_COST", v)])
                .unwrap_or_default();
            load(&vars).map(|config| config.database.random_page_cost)
        };
        assert_eq!(cost(None).unwrap(), Some(1.1));
        assert_eq!(cost(Some("2")).unwrap(), Some(2.0));
        assert_eq!(cost(Some("0")).unwrap(), None);
        for bad in ["-1", "NaN", "cheap"] {
            let error = cost(Some(bad)).unwrap_err();
            let named: Vec<&str> = error.problems.iter().map(|p| p.variable.as_str()).collect();
            assert_eq!(named, ["DATABASE_RANDOM_PAGE_COST"], "{bad}");
        }
    }

    #[test]
    fn half_configured_provider_names_the_missing_variables() {
        let error = load(&[("TELNYX_API_KEY", "KEY123")]).unwrap_err();
        let named: Vec<&str> = error.problems.iter().map(|p| p.variable.as_str()).collect();
        assert_eq!(named, ["TELNYX_PUBLIC_KEY", "TELNYX_CONNECTION_ID"]);
    }

    #[test]
    fn bad_values_are_named() {
        let error = load(&[
            ("PORT", "eighty"),
            ("AUTH_SCHEMA", "auth; drop table users"),
            (
                "ALLOWED_ORIGINS",
                "https://ok.example.com,https://bad.example.com/path",
            ),
            ("AUTH_TOKEN_STORAGE", "plain"),
        ])
        .unwrap_err();
        let named: Vec<&str> = error.problems.iter().map(|p| p.variable.as_str()).collect();
        assert_eq!(
            named,
            [
                "PORT",
                "ALLOWED_ORIGINS",
                "AUTH_SCHEMA",
                "AUTH_TOKEN_STORAGE"
            ]
        );
    }

    /// Issue 14 item 10: production reads only `__Secure-` session cookies.
    #[test]
    fn production_reads_only_secure_prefixed_session_cookies() {
        let production = |extra: &[(&'static str, &'static str)]| {
            let mut vars = vec![
                ("APP_ENV", "production"),
                ("PUBLIC_BASE_URL", "https://api.example.com"),
                (
                    "AUTH_SECRET",
                    "production-auth-secret-with-32-plus-characters",
                ),
            ];
            vars.extend_from_slice(extra);
            load(&vars).unwrap_err()
        };
        let error = production(&[]);
        assert!(
            !error
                .problems
                .iter()
                .any(|p| p.variable == "AUTH_COOKIE_NAMES")
        );
        let error = production(&[(
            "AUTH_COOKIE_NAMES",
            "__Secure-authjs.session-token,authjs.session-token",
        )]);
        assert!(
            error
                .problems
                .iter()
                .any(|p| p.variable == "AUTH_COOKIE_NAMES"
                    && p.message.contains("\"authjs.session-token\"")),
            "{error}"
        );
        let development = load(&[]).unwrap();
        assert_eq!(development.auth.cookie_names.len(), 4);
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let config = load(&[
            (
                "DATABASE_URL",
                "postgres://app:pg-password-123@db.example/app",
            ),
            ("DEEPL_API_KEY", "deepl-secret-456:fx"),
            ("AUTH_SECRET", "auth-secret-789"),
        ])
        .unwrap();
        let dump = format!("{config:?} {}", config.summary());
        for secret in ["pg-password-123", "deepl-secret-456", "auth-secret-789"] {
            assert!(!dump.contains(secret), "{secret} leaked");
        }
        assert_eq!(
            config.providers.deepl().unwrap().api_base.as_str(),
            "https://api-free.deepl.com/"
        );
    }
}
