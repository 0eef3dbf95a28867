//! Logs (pretty in development, JSON elsewhere) and Sentry (only when `SENTRY_DSN` is set).
//!
//! Sentry events never carry cookies, authorization headers, webhook or debug secrets,
//! signatures, query strings or the media stream token in `/media/telnyx/{token}` paths:
//! [`scrub_event`] removes them before anything leaves the process, and [`redact_text`] keeps
//! the token out of log lines (the request span logs a route template, or a redacted path).

use std::borrow::Cow;

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
    "x-callbridge-webhook-secret",
    "x-debug-token",
];

/// Path prefixes whose next segment is a credential.
const TOKEN_PATHS: &[&str] = &["/media/telnyx/"];
pub const REDACTED: &str = "[redacted]";

/// `text` with the credential segment after each [`TOKEN_PATHS`] prefix replaced by
/// `[redacted]` (up to the next `/`, `?`, `#`, quote or whitespace).
pub fn redact_text(text: &str) -> Cow<'_, str> {
    if !TOKEN_PATHS.iter().any(|prefix| text.contains(prefix)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, prefix)) = TOKEN_PATHS
        .iter()
        .filter_map(|prefix| rest.find(prefix).map(|at| (at, *prefix)))
        .min_by_key(|(at, _)| *at)
    {
        let start = at + prefix.len();
        out.push_str(&rest[..start]);
        let token_len = rest[start..]
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(rest.len() - start);
        if token_len > 0 {
            out.push_str(REDACTED);
        }
        rest = &rest[start + token_len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn redact_in_place(text: &mut String) {
    if let Cow::Owned(redacted) = redact_text(text) {
        *text = redacted;
    }
}

/// Removes credentials from an event: request data, and stream tokens anywhere in its text.
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
            if let Cow::Owned(path) = redact_text(url.path()) {
                url.set_path(&path);
            }
        }
    }
    if let Some(transaction) = event.transaction.as_mut() {
        redact_in_place(transaction);
    }
    if let Some(message) = event.message.as_mut() {
        redact_in_place(message);
    }
    if let Some(entry) = event.logentry.as_mut() {
        redact_in_place(&mut entry.message);
    }
    for exception in event.exception.values.iter_mut() {
        if let Some(value) = exception.value.as_mut() {
            redact_in_place(value);
        }
    }
    for breadcrumb in event.breadcrumbs.values.iter_mut() {
        if let Some(message) = breadcrumb.message.as_mut() {
            redact_in_place(message);
        }
        for value in breadcrumb.data.values_mut() {
            if let Some(text) = value.as_str()
                && let Cow::Owned(redacted) = redact_text(text)
            {
                *value = redacted.into();
            }
        }
    }
    Some(event)
}

fn scrub_breadcrumb(
    mut breadcrumb: sentry::protocol::Breadcrumb,
) -> Option<sentry::protocol::Breadcrumb> {
    if let Some(message) = breadcrumb.message.as_mut() {
        redact_in_place(message);
    }
    Some(breadcrumb)
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
                .before_send(scrub_event)
                .before_breadcrumb(scrub_breadcrumb),
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

    /// Issue 14 item 9: the webhook secret, the debug token and a media stream token in the
    /// path never reach Sentry.
    #[test]
    fn scrub_removes_webhook_and_debug_secrets_and_stream_tokens_in_paths() {
        let token = "eyJjYWxsIjoiMDE5MyJ9.c2lnbmF0dXJl";
        let mut request = Request {
            url: format!("https://api.example.com/media/telnyx/{token}")
                .parse()
                .ok(),
            ..Default::default()
        };
        for (name, value) in [
            ("X-Callbridge-Webhook-Secret", "aai-webhook-s3cr3t"),
            ("x-debug-token", "debug-s3cr3t"),
            ("accept", "application/json"),
        ] {
            request.headers.insert(name.into(), value.into());
        }
        let mut event = Event {
            request: Some(request),
            transaction: Some(format!("GET /media/telnyx/{token}/extra")),
            message: Some(format!("stream /media/telnyx/{token} failed")),
            ..Default::default()
        };
        event.exception.values.push(sentry::protocol::Exception {
            ty: "Error".into(),
            value: Some(format!("upgrade of \"/media/telnyx/{token}\" refused")),
            ..Default::default()
        });
        event.breadcrumbs.values.push(sentry::protocol::Breadcrumb {
            message: Some(format!("GET /media/telnyx/{token}?x=1")),
            ..Default::default()
        });
        let scrubbed = scrub_event(event).unwrap();
        let dump = format!("{scrubbed:?}");
        for secret in [token, "aai-webhook-s3cr3t", "debug-s3cr3t"] {
            assert!(!dump.contains(secret), "{secret} leaked: {dump}");
        }
        assert!(dump.contains("/media/telnyx/[redacted]"));
        assert!(dump.contains("accept"));
        assert_eq!(
            scrubbed.transaction.as_deref(),
            Some("GET /media/telnyx/[redacted]/extra")
        );
    }

    #[test]
    fn redact_text_leaves_other_text_alone() {
        assert!(matches!(redact_text("/api/calls/1"), Cow::Borrowed(_)));
        assert_eq!(redact_text("/media/telnyx/"), "/media/telnyx/");
        assert_eq!(
            redact_text("a /media/telnyx/t1 b /media/telnyx/t2?q"),
            "a /media/telnyx/[redacted] b /media/telnyx/[redacted]?q"
        );
    }
}
