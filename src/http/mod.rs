//! The HTTP surface: the router with every route, and the middleware stack around it.
//!
//! Routes are registered through `utoipa_axum` so a route cannot exist without appearing in
//! the OpenAPI document. Layer order (outermost first) is spelled out in [`router`].

pub mod assemblyai_webhook;
pub mod auth;
pub mod calls;
pub mod debug;
pub mod dialing_policy;
pub mod error;
pub mod extract;
pub mod forwarded;
pub mod health;
pub mod invitations;
pub mod limits;
pub mod lines;
pub mod me;
pub mod media_stream;
pub mod metrics;
pub mod openapi;
pub mod orgs;
pub mod phone_numbers;
pub mod problems;
pub mod realtime;
pub mod recordings;
pub mod request_id;
pub mod timeouts;
pub mod translate;
pub mod usage;
pub mod webhooks;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use axum::{Extension, Router, middleware};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::state::AppState;

/// Every route, with its OpenAPI description, before state and middleware are applied.
/// Debug routes exist only when `include_debug` (never in production).
pub fn api_routes(include_debug: bool) -> OpenApiRouter<AppState> {
    let routes = public_routes();
    if include_debug {
        routes.routes(routes!(debug::session))
    } else {
        routes
    }
}

fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::render))
        .routes(routes!(openapi::spec))
        .routes(routes!(openapi::docs))
        .routes(routes!(me::me))
        .routes(routes!(me::set_active_organisation))
        .routes(routes!(orgs::create))
        .routes(routes!(orgs::list_members, orgs::remove_member_by_query))
        .routes(routes!(invitations::create, invitations::list))
        .routes(routes!(invitations::revoke))
        .routes(routes!(invitations::received))
        .routes(routes!(invitations::accept))
        .routes(routes!(invitations::decline))
        .routes(routes!(orgs::remove_member))
        .routes(routes!(phone_numbers::create, phone_numbers::list))
        .routes(routes!(phone_numbers::available))
        .routes(routes!(dialing_policy::get, dialing_policy::put))
        .routes(routes!(phone_numbers::delete))
        .routes(routes!(lines::put, lines::get, lines::delete))
        .routes(routes!(calls::create, calls::list))
        .routes(routes!(calls::get))
        .routes(routes!(calls::hangup))
        .routes(routes!(calls::events))
        .routes(routes!(webhooks::telnyx))
        .routes(routes!(assemblyai_webhook::assemblyai))
        .merge(recordings::routes())
        .routes(routes!(media_stream::telnyx_stream))
        .routes(routes!(realtime::token))
        .routes(routes!(realtime::transcribe))
        .routes(routes!(translate::translate))
        .routes(routes!(translate::tts))
        .routes(routes!(usage::report))
        .routes(routes!(usage::quotas))
}

/// The generated OpenAPI document of a production deployment (also used by
/// `callbridge routes` and the shim's tooling).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api_routes(false).split_for_parts().1
}

fn cors(config: &Config) -> CorsLayer {
    // A predicate, not a list: `ALLOWED_ORIGINS` may hold preview patterns (config::origins).
    let origins = config.http.allowed_origins.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|origin| origins.allows(origin))
        }))
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-org-id"),
            request_id::X_REQUEST_ID.clone(),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([request_id::X_REQUEST_ID.clone()])
        .max_age(std::time::Duration::from_secs(600))
}

fn span_for(request: &Request<Body>) -> tracing::Span {
    let request_id = request
        .extensions()
        .get::<request_id::RequestId>()
        .map(|id| id.0.as_str())
        .unwrap_or_default();
    // Matched routes are logged by template: raw paths may carry tokens (media streams).
    match request.extensions().get::<MatchedPath>() {
        Some(route) => tracing::info_span!("http", method = %request.method(),
            route = route.as_str(), request_id),
        None => tracing::info_span!("http", method = %request.method(),
            route = "unmatched", path = %crate::telemetry::redact_text(request.uri().path()), request_id),
    }
}

/// The whole application router with its middleware, ready to serve.
pub fn router(state: AppState) -> Router {
    let include_debug = !state.config.is_production();
    // The interpreted calls whose legs stream to this process: one per serving process.
    let hub = crate::media::hub::Hub::start(&state);
    with_middleware(api_routes(include_debug), state).layer(Extension(hub))
}

/// Applies fallbacks, the OpenAPI extension and the middleware stack to `routes`. Public so
/// tests can wrap extra routes (a panicking handler, say) in exactly production's stack.
pub fn with_middleware(routes: OpenApiRouter<AppState>, state: AppState) -> Router {
    let (routes, mut spec) = routes.split_for_parts();
    let config = state.config.clone();
    openapi::finish(&mut spec, &config);

    // Outermost first: Sentry hub per request → request id (everything below can quote it)
    // → client identity (forwarded details only from a signed edge request) → trace span → metrics → compression → CORS → problem+json for bare errors → panic
    // catcher → timeout. Body size is enforced by the extractors (DefaultBodyLimit).
    // The Sentry layers only with Sentry configured: per request they copy every header
    // into a Sentry request, parse the URL and start a transaction, work wasted without a
    // client to send it to (docs/adr/0048-cheaper-one-round-trip-page.md).
    let sentry = config.sentry.is_some();
    let layers = ServiceBuilder::new()
        .option_layer(
            sentry.then(sentry::integrations::tower::NewSentryLayer::<Request<Body>>::new_from_top),
        )
        .option_layer(
            sentry
                .then(|| sentry::integrations::tower::SentryHttpLayer::new().enable_transaction()),
        )
        .layer(middleware::from_fn(request_id::assign))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forwarded::identify,
        ))
        // Rate limits (429 + Retry-After): after identify, which knows the client address.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::rate_limit,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(span_for)
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // 5xx are logged once, by ApiError; no second log line here.
                .on_failure(()),
        )
        .layer(middleware::from_fn(metrics::track))
        .layer(CompressionLayer::new())
        .layer(cors(&config))
        .layer(middleware::from_fn(problems::normalise))
        .layer(CatchPanicLayer::custom(problems::panic_response))
        // Per-route request timeout: the streamed recording upload gets its own (timeouts.rs).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            timeouts::limit,
        ));

    routes
        .fallback(problems::not_found)
        .method_not_allowed_fallback(problems::method_not_allowed)
        .layer(Extension::<openapi::Spec>(Arc::new(spec)))
        .layer(DefaultBodyLimit::max(config.http.body_limit_bytes))
        .layer(layers)
        .with_state(state)
}
