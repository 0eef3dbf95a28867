//! Logs (pretty in development, JSON elsewhere) and Sentry (only when `SENTRY_DSN` is set).
//!
//! Sentry events never carry cookies, authorization headers, signatures or query strings:
//! [`scrub_event`] removes them before anything leaves the process.

use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer, SpanLayer};
use tracing::Level;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{Config, LogConfig, LogFormat};

/// Keep alive for the life of the process: dropping it flushes Sentry.
pub struct TelemetryGuard {
    _sentry: Option<sentry::ClientInitGuard>,
}

const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "x-api-key",
    "xi-api-key",
    "telnyx-signature-ed25519",
    "cf-access-jwt-assertion",
    "x-edge-signature",
    "x-telnyx-streaming-auth-token",
];

/// Removes credentials from an event's request data.
pub fn scrub_event(
    mut event: sentry::protocol::Event<'static>,
) -> Option<sentry::protocol::Event<'static>> {
    if let Some(request) = event.request.as_mut() {
        request.cookies = None;
        request.query_string = None;
        request.data = None;
        request
            .headers
            .retain(|name, _| !SENSITIVE_HEADERS.contains(&name.to_ascii_lowercase().as_str()));
        if let Some(url) = request.url.as_mut() {
            url.set_query(None);
        }
    }
    Some(event)
}

/// Logs only, no Sentry: for `callbridge migrate`, which reads no other setting.
pub fn init_logs(log: &LogConfig) -> TelemetryGuard {
    init_with(log, None)
}

/// Must run before the Tokio runtime starts so its worker threads inherit the Sentry hub.
pub fn init(config: &Config) -> TelemetryGuard {
    let sentry_guard = config.sentry.as_ref().map(|sentry_config| {
        sentry::init((
            sentry_config.dsn.expose().as_str(),
            sentry::ClientOptions::new()
                .maybe_release(sentry::release_name!())
                .environment(config.app_env.as_str())
                .traces_sample_rate(sentry_config.traces_sample_rate)
                .send_default_pii(false)
                .before_send(scrub_event),
        ))
    });
    init_with(&config.log, sentry_guard)
}

fn init_with(log: &LogConfig, sentry_guard: Option<sentry::ClientInitGuard>) -> TelemetryGuard {
    let filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|error| {
        eprintln!(
            "LOG_LEVEL {:?} is not a valid filter ({error}); using info",
            log.filter
        );
        EnvFilter::new("info")
    });
    let format = match log.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().pretty().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let sentry_layers = sentry_guard.is_some().then(|| {
        // ERROR events become Sentry events, except panic log lines: the panic hook already
        // reported those. INFO and WARN ride along as breadcrumbs; spans become traces.
        let errors = ErrorLayer::new().with_filter(filter_fn(|metadata| {
            *metadata.level() == Level::ERROR && metadata.target() != "callbridge::panic"
        }));
        let breadcrumbs = BreadcrumbLayer::new().with_filter(LevelFilter::INFO);
        let spans = SpanLayer::new().with_filter(LevelFilter::INFO);
        errors.and_then(breadcrumbs).and_then(spans)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .with(sentry_layers)
        .init();
    TelemetryGuard {
        _sentry: sentry_guard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry::protocol::{Event, Request};

    #[test]
    fn scrub_removes_credentials_but_keeps_the_rest() {
        let mut request = Request {
            url: "https://api.example.com/api/calls?token=abc".parse().ok(),
            cookies: Some("authjs.session-token=s3cr3t".into()),
            query_string: Some("token=abc".into()),
            ..Default::default()
        };
        request
            .headers
            .insert("Authorization".into(), "Bearer s3cr3t".into());
        request
            .headers
            .insert("Cookie".into(), "authjs.session-token=s3cr3t".into());
        request.headers.insert("user-agent".into(), "test".into());
        let event = Event {
            request: Some(request),
            ..Default::default()
        };
        let scrubbed = scrub_event(event).unwrap();
        let dump = format!("{scrubbed:?}");
        assert!(!dump.contains("s3cr3t"));
        assert!(!dump.contains("token=abc"));
        assert!(dump.contains("user-agent"));
    }
}
