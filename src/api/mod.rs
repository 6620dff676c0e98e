//! The HTTP API (axum), served by `tuma serve` next to the workers.
//!
//! Handlers validate, authenticate and hand requests to intake
//! (`App::enqueue_*_from_api`) or read the store; they never call providers.
//! Every error is RFC 9457 problem+json ([`error`]); every database wait is
//! bounded by `api.request_timeout` and answers 503 past it.

pub mod auth;
pub mod batch;
pub mod body;
pub mod callbacks;
pub mod cancel;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod server;
pub mod spend;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::{info, info_span};

use crate::app::App;
use error::ApiError;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The app: config, store, intake.
    pub app: Arc<App>,
    /// In-process counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
}

impl ApiState {
    /// State for `app`, with fresh counters.
    pub fn new(app: Arc<App>) -> ApiState {
        ApiState {
            app,
            metrics: Arc::new(metrics::Metrics::default()),
        }
    }

    /// Runs database work under `api.request_timeout`: past it (or when the
    /// database is unreachable) the request gets a 503, never a hang.
    pub async fn within_timeout<T, E>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ApiError>
    where
        E: Into<ApiError>,
    {
        match tokio::time::timeout(self.app.config.api.request_timeout, work).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(ApiError::Unavailable(format!(
                "the database did not answer within {}",
                humantime::format_duration(self.app.config.api.request_timeout)
            ))),
        }
    }
}

/// Receipt paths; those with a segment after the provider carry a secret,
/// which logs never show.
const CALLBACK_PREFIX: &str = "/v1/callbacks/";

/// The path as logs may show it: a receipt URL's secret (anything after
/// `/v1/callbacks/{provider}/`) becomes `****`.
pub(crate) fn shown_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path
        .strip_prefix(CALLBACK_PREFIX)
        .and_then(|rest| rest.split_once('/'))
    {
        Some((provider, _secret)) => format!("{CALLBACK_PREFIX}{provider}/****").into(),
        None => path.into(),
    }
}

/// Whether the path carries a receipt URL secret.
pub(crate) fn has_secret(path: &str) -> bool {
    matches!(shown_path(path), std::borrow::Cow::Owned(_))
}

/// The API's routes with request ids, tracing and request metrics.
pub fn router(state: ApiState) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            // The path only: bodies and headers (keys) are never logged, nor
            // the secret in a delivery-report URL.
            let path = shown_path(req.uri().path());
            info_span!("request", request_id = %id, method = %req.method(), path = %path)
        })
        // Logged under tuma's own target so the default filter keeps it.
        .on_response(
            |response: &axum::response::Response,
             latency: std::time::Duration,
             _: &tracing::Span| {
                info!(
                    status = response.status().as_u16(),
                    latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                    "request finished"
                );
            },
        );
    Router::new()
        .route("/v1/otp", post(handlers::post_otp))
        .route("/v1/notifications", post(handlers::post_notification))
        .route("/v1/notifications/batch", post(batch::post_batch))
        .route("/v1/deliveries", get(handlers::list_deliveries))
        .route("/v1/deliveries/{id}", get(handlers::get_delivery))
        .route(
            "/v1/callbacks/{provider}",
            post(callbacks::signed).get(callbacks::signed_by_query),
        )
        .route(
            "/v1/callbacks/{provider}/{secret}",
            post(callbacks::by_secret).get(callbacks::by_secret_by_query),
        )
        .route("/v1/deliveries/{id}/replay", post(ops::replay_one))
        .route("/v1/deliveries/{id}/cancel", post(cancel::cancel_delivery))
        .route("/v1/replays", post(ops::replay_many))
        .route("/v1/reports/costs", get(ops::costs))
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/v1/webhooks/{id}", axum::routing::delete(webhooks::remove))
        .route("/v1/webhooks/{id}/test", post(webhooks::test))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::serve))
        .merge(spend::routes())
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn(error::problem_for_bare_errors))
        .merge(crate::console::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_request,
        ))
        // Bodies are read by `body::parse_json` with `api.max_body_bytes`.
        .layer(DefaultBodyLimit::disable())
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes
/// in-flight requests and returns (see [`server`] for the connection limits).
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, "HTTP API listening on http://{addr}");
    server::serve_state(ApiState::new(app), listener, shutdown).await
}
