//! The API contract: OpenAPI 3.1 generated from the handlers' annotations, served as JSON at
//! `/api/openapi.json` and rendered as a self-contained reference page at `/api/docs`.
//!
//! The page is rendered here, server-side, with no third-party script, so it works offline
//! and under a strict CSP; any OpenAPI viewer can also load the JSON.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Extension;
use axum::response::{Html, IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;

use crate::error::Problem;

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
    ),
    components(schemas(Problem)),
)]
pub struct ApiDoc;

/// The generated document, shared with the handlers below.
pub type Spec = Arc<utoipa::openapi::OpenApi>;

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn spec(Extension(spec): Extension<Spec>) -> Response {
    axum::Json(spec.as_ref()).into_response()
}

/// Human-readable reference rendered from the same document.
#[utoipa::path(get, path = "/api/docs", tag = "ops",
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
