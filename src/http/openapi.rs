//! The API contract: OpenAPI 3.1 generated from the handlers' annotations, served as JSON at
//! `/api/openapi.json` and rendered as a self-contained reference page at `/api/docs`.
//!
//! The page is rendered here, server-side, with no third-party script, so it works offline
//! and under a strict CSP; any OpenAPI viewer can also load the JSON.
//!
//! [`finish`] completes the annotations with what every route shares (docs/API_CONTRACT.md):
//! `servers` from `PUBLIC_BASE_URL`, the security schemes (one per accepted session cookie, the
//! bearer), the session requirement on every operation that does not declare its own, and the
//! problem answers the shared extractors give (401, the `X-Org-Id` and path-id 400s, the body
//! 400/413/415/422, 500), so a handler's annotation lists only what is particular to it.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Extension;
use axum::response::{Html, IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Server};

use crate::auth::X_ORG_ID;
use crate::config::Config;
use crate::http::error::{PROBLEM_JSON, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "callbridge",
        description = "Live phone-call translation backend. Every error is RFC 9457 \
                       `application/problem+json` carrying a `request_id`.",
    ),
    tags(
        (name = "ops", description = "Health, readiness, metrics and this contract"),
        (name = "auth", description = "The signed-in user (Auth.js sessions: cookie or bearer)"),
        (name = "organisations", description = "Tenants, members and roles"),
        (name = "internal", description = "Operator diagnostics; absent in production"),
        (name = "calls", description = "Calls, their live events and transcripts"),
        (name = "phone-numbers", description = "Numbers from the platform's Telnyx account: search, claim, release (inbound routing, caller id)"),
        (name = "webhooks", description = "Provider callbacks, verified before anything is stored"),
        (name = "media", description = "Realtime media WebSockets"),
        (name = "recordings", description = "Call recordings: streamed and direct uploads, immutable versions, presigned access"),
        (name = "realtime", description = "Browser transcription: direct tokens or a proxy"),
        (name = "translation", description = "Translation (DeepL, OpenAI fallback) and speech (ElevenLabs)"),
        (name = "usage", description = "Units per vendor, estimated cost and quotas"),
    ),
    components(schemas(Problem)),
)]
pub struct ApiDoc;

/// The generated document, shared with the handlers below.
pub type Spec = Arc<utoipa::openapi::OpenApi>;

/// The bearer scheme: the Auth.js session token in `Authorization: Bearer`.
pub const BEARER_SCHEME: &str = "bearerAuth";
/// `/metrics` when `METRICS_TOKEN` is set.
pub const METRICS_SCHEME: &str = "metricsToken";
/// `/internal/debug/*`: a `callbridge debug-token` token, or a Cloudflare Access JWT.
pub const DEBUG_TOKEN_SCHEME: &str = "debugToken";
pub const ACCESS_SCHEME: &str = "cloudflareAccess";

/// The security scheme name of a session cookie: the cookie's own name, with any character a
/// component name may not hold (`^[a-zA-Z0-9._-]+$`) replaced by `_`.
pub fn cookie_scheme(cookie: &str) -> String {
    cookie
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Completes the generated document for this deployment (see the module docs). Idempotent.
pub fn finish(spec: &mut utoipa::openapi::OpenApi, config: &Config) {
    // Server URLs end without a slash (paths start with one).
    let base = config.public_base_url.as_str().trim_end_matches('/');
    spec.servers = Some(vec![Server::new(base)]);

    let components = spec.components.get_or_insert_with(Default::default);
    let mut session_schemes = Vec::new();
    for cookie in &config.auth.cookie_names {
        let name = cookie_scheme(cookie);
        components.security_schemes.insert(
            name.clone(),
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                cookie.as_str(),
                "The Auth.js session cookie (its value is the session token, URL-encoded once). \
                 Each accepted cookie name is its own scheme; a browser sends whichever Auth.js set.",
            ))),
        );
        session_schemes.push(name);
    }
    components.security_schemes.insert(
        BEARER_SCHEME.into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The Auth.js session token (the session cookie's decoded value) as a bearer \
                     token; it wins over any cookie.",
                ))
                .build(),
        ),
    );
    session_schemes.push(BEARER_SCHEME.into());
    components.security_schemes.insert(
        METRICS_SCHEME.into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("METRICS_TOKEN, required only when it is set."))
                .build(),
        ),
    );
    components.security_schemes.insert(
        DEBUG_TOKEN_SCHEME.into(),
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-Debug-Token",
            "A short-lived token from `callbridge debug-token`.",
        ))),
    );
    components.security_schemes.insert(
        ACCESS_SCHEME.into(),
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Cf-Access-Jwt-Assertion",
            "A Cloudflare Access JWT for the operators' application.",
        ))),
    );
    let session: Vec<SecurityRequirement> = session_schemes
        .iter()
        .map(|name| SecurityRequirement::new(name, Vec::<String>::new()))
        .collect();

    for (path, item) in spec.paths.paths.iter_mut() {
        let rate_limited = !crate::http::limits::exempt(path);
        for (method, operation) in operations_mut(item) {
            let operation = operation.as_mut().expect("filtered to present operations");
            // Not declared in the annotation: the route needs the session.
            let uses_session = match &operation.security {
                None => {
                    operation.security = Some(session.clone());
                    true
                }
                Some(requirements) => requirements.iter().any(|r| {
                    serde_json::to_value(r)
                        .is_ok_and(|v| session_schemes.iter().any(|name| v.get(name).is_some()))
                }),
            };
            let mut answers = shared_answers(method, operation, uses_session);
            if rate_limited && !operation.responses.responses.contains_key("429") {
                answers.push((429, "A request rate limit was reached (docs/SECURITY.md); `Retry-After` gives the seconds to wait".into()));
            }
            for (status, reason) in answers {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| match status {
                        429 => rate_limited_response(&reason),
                        _ => problem_response(&reason),
                    });
            }
        }
    }
}

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

/// A 429 problem with its `Retry-After` header.
fn rate_limited_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    let RefOr::T(mut response) = problem_response(description) else {
        unreachable!("problem_response builds an inline response")
    };
    let mut retry_after = utoipa::openapi::header::Header::new(
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .minimum(Some(0)),
    );
    retry_after.description = Some("Seconds before the request may be sent again".into());
    response.headers.insert("Retry-After".into(), retry_after);
    RefOr::T(response)
}

/// Whether a parameter's schema is a plain string (which any value satisfies).
fn is_plain_string(parameter: &utoipa::openapi::path::Parameter) -> bool {
    let Some(schema) = parameter
        .schema
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
    else {
        return false;
    };
    let string_type = match &schema["type"] {
        serde_json::Value::String(t) => t == "string",
        serde_json::Value::Array(types) => types.iter().all(|t| t == "string" || t == "null"),
        _ => false,
    };
    string_type && schema.get("format").is_none() && schema.get("enum").is_none()
}

/// The answers the shared extractors and layers give, by status, with why.
fn shared_answers(method: &str, operation: &Operation, uses_session: bool) -> Vec<(u16, String)> {
    let mut reasons: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    let mut add =
        |status: u16, reason: &'static str| reasons.entry(status).or_default().push(reason);
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    if uses_session {
        add(
            401,
            "No session credential, or an unknown, expired or malformed one",
        );
        if method != "GET" {
            add(
                403,
                "A cookie session from an origin not in ALLOWED_ORIGINS (CSRF)",
            );
        }
    }
    if parameters.iter().any(|p| {
        p.parameter_in == ParameterIn::Header && p.name.eq_ignore_ascii_case(X_ORG_ID.as_str())
    }) {
        add(400, "`X-Org-Id` is not a UUID");
        add(
            403,
            "No `X-Org-Id` and the caller belongs to no organisation",
        );
        add(
            404,
            "`X-Org-Id` names an organisation the caller is not a member of",
        );
    }
    if parameters
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Path && !is_plain_string(p))
    {
        add(
            400,
            "A path parameter does not parse (e.g. an id that is not a UUID)",
        );
    }
    if parameters
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Query)
    {
        add(
            400,
            "A query parameter does not parse, or a required one is missing",
        );
    }
    if operation.responses.responses.contains_key("101") {
        add(
            400,
            "Not a WebSocket handshake (`Upgrade: websocket` and its headers)",
        );
    }
    if let Some(body) = &operation.request_body {
        add(413, "The body is larger than HTTP_BODY_LIMIT_BYTES");
        if let Some(json) = body.content.get("application/json") {
            add(400, "The body is not well-formed JSON");
            // A named schema is read by the `Json` extractor: it checks the content type and
            // the body's shape.
            if matches!(json.schema, Some(RefOr::Ref(_))) {
                add(415, "`Content-Type` is not `application/json`");
                add(422, "The JSON does not match the request schema");
            }
        }
    }
    add(
        500,
        "An unexpected error; quote the `request_id` when reporting it",
    );
    reasons
        .into_iter()
        .map(|(status, why)| (status, why.join(". ")))
        .collect()
}

fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&'static str, &mut Option<Operation>)> {
    [
        ("GET", &mut item.get),
        ("POST", &mut item.post),
        ("PUT", &mut item.put),
        ("PATCH", &mut item.patch),
        ("DELETE", &mut item.delete),
        ("HEAD", &mut item.head),
        ("OPTIONS", &mut item.options),
    ]
    .into_iter()
    .filter(|(_, op)| op.is_some())
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", operation_id = "getOpenApiDocument", security(), tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn spec(Extension(spec): Extension<Spec>) -> Response {
    axum::Json(spec.as_ref()).into_response()
}

/// Human-readable reference rendered from the same document.
#[utoipa::path(get, path = "/api/docs", operation_id = "getApiReference", security(), tag = "ops",
    responses((status = 200, description = "HTML reference page", content_type = "text/html")))]
pub async fn docs(Extension(spec): Extension<Spec>) -> Html<String> {
    Html(render_html(&spec))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn operations(item: &utoipa::openapi::PathItem) -> Vec<(&'static str, &Operation)> {
    [
        ("GET", &item.get),
        ("POST", &item.post),
        ("PUT", &item.put),
        ("PATCH", &item.patch),
        ("DELETE", &item.delete),
        ("HEAD", &item.head),
        ("OPTIONS", &item.options),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_ref().map(|op| (method, op)))
    .collect()
}

pub fn render_html(spec: &utoipa::openapi::OpenApi) -> String {
    let mut html = String::new();
    let title = escape(&spec.info.title);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} API</title>\
         <style>body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}\
         code,.m{{font-family:ui-monospace,monospace}}.op{{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}}\
         .m{{font-weight:bold;margin-right:.5rem}}td{{padding:0 .75rem 0 0;vertical-align:top}}</style></head><body>\
         <h1>{title} <small>{}</small></h1><p>{}</p><p>Machine-readable: <a href=\"/api/openapi.json\">/api/openapi.json</a></p>",
        escape(&spec.info.version),
        escape(spec.info.description.as_deref().unwrap_or("")),
    );
    for (path, item) in &spec.paths.paths {
        for (method, op) in operations(item) {
            let _ = write!(
                html,
                "<div class=\"op\" id=\"{method}-{}\"><h3><span class=\"m\">{method}</span><code>{}</code></h3>",
                escape(path),
                escape(path)
            );
            if let Some(summary) = op.summary.as_deref().or(op.description.as_deref()) {
                let _ = write!(html, "<p>{}</p>", escape(summary));
            }
            if let Some(parameters) = &op.parameters {
                html.push_str("<p>Parameters:</p><table>");
                for parameter in parameters {
                    let _ = write!(
                        html,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                        escape(&parameter.name),
                        serde_json::to_value(&parameter.parameter_in)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        escape(parameter.description.as_deref().unwrap_or(""))
                    );
                }
                html.push_str("</table>");
            }
            if op.request_body.is_some() {
                html.push_str(
                    "<p>Takes a request body (see the JSON document for its schema).</p>",
                );
            }
            html.push_str("<p>Responses:</p><table>");
            for (status, response) in &op.responses.responses {
                let description = match response {
                    utoipa::openapi::RefOr::T(response) => response.description.clone(),
                    utoipa::openapi::RefOr::Ref(reference) => reference.ref_location.clone(),
                };
                let _ = write!(
                    html,
                    "<tr><td><code>{}</code></td><td>{}</td></tr>",
                    escape(status),
                    escape(&description)
                );
            }
            html.push_str("</table></div>");
        }
    }
    html.push_str("</body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::load_from(
            None,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .expect("development defaults are complete")
    }

    #[test]
    fn cookie_names_become_valid_component_names() {
        assert_eq!(
            cookie_scheme("__Secure-authjs.session-token"),
            "__Secure-authjs.session-token"
        );
        assert_eq!(cookie_scheme("my cookie/v2"), "my_cookie_v2");
    }

    #[test]
    fn finish_follows_the_configuration_and_is_idempotent() {
        let config = config(&[
            ("PUBLIC_BASE_URL", "https://api.example.org/"),
            ("AUTH_COOKIE_NAMES", "session,__Host-session"),
        ]);
        let mut spec = crate::http::openapi_document();
        finish(&mut spec, &config);
        let once = serde_json::to_value(&spec).unwrap();
        finish(&mut spec, &config);
        assert_eq!(serde_json::to_value(&spec).unwrap(), once);

        assert_eq!(once["servers"][0]["url"], "https://api.example.org");
        let schemes = once["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes["__Host-session"]["name"], "__Host-session");
        assert!(!schemes.contains_key("authjs.session-token"));
        let calls = &once["paths"]["/api/calls"]["get"];
        let names: Vec<&str> = calls["security"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
            .collect();
        assert_eq!(names, ["session", "__Host-session", BEARER_SCHEME]);
        // Shared answers are added; the route's own description of a status is kept.
        assert!(calls["responses"]["401"].is_object());
        assert_eq!(
            calls["responses"]["400"]["description"],
            "Bad cursor or filter"
        );
        assert_eq!(
            once["paths"]["/healthz"]["get"]["security"],
            serde_json::json!([])
        );
        assert!(once["paths"]["/healthz"]["get"]["responses"]["401"].is_null());
    }
}
