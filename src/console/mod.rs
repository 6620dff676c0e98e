//! The web console in `tuma serve`: server-rendered pages for ops and finance
//! over the same store and domain functions as the API and the CLI.
//!
//! - `session.rs`: sign-in with an API key, the server-side session (only
//!   the SHA-256 of its id stored), the CSRF token bound to it, the failed
//!   sign-in limiter.
//! - `pages.rs`: overview, deliveries, a delivery; `replay.rs`: failures and
//!   replay (through `crate::replay`); `costs.rs`: the cost report (through
//!   `crate::reports`) with `chart.rs`'s SVG; `keys.rs`: API keys.
//! - `view.rs`: the templates (minijinja, auto-escaping on: every template is
//!   `.html`), the error page and the security headers.
//!
//! Handlers never write SQL (`store/console.rs` holds the console's queries)
//! and never show an OTP code (bodies are stored redacted, variables are not
//! shown), an API key after the page that created it, or a provider secret.

mod chart;
mod costs;
mod keys;
mod pages;
mod replay;
mod session;
mod view;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::ApiState;

pub use chart::{Bar, Series, cost_chart};
pub use session::{COOKIE_NAME, SESSION_IDLE, SESSION_LIFETIME};

/// The console's routes (`/console/…`, and `/` sending browsers there), with
/// its security headers on every response.
pub fn router(state: ApiState) -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(pages::overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route(
            "/console/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/console/sign-out", post(session::sign_out))
        .route("/console/deliveries", get(pages::deliveries))
        .route("/console/deliveries/{id}", get(pages::delivery))
        .route("/console/failures", get(replay::failures))
        .route("/console/replay/plan", post(replay::plan))
        .route("/console/replay", post(replay::execute))
        .route("/console/costs", get(costs::page))
        .route("/console/costs.csv", get(costs::csv))
        .route("/console/costs.json", get(costs::json))
        .route("/console/keys", get(keys::page))
        .route("/console/keys/create", post(keys::create))
        .route("/console/keys/rotate", post(keys::rotate))
        .route("/console/keys/revoke", post(keys::revoke))
        .route("/console/static/console.css", get(stylesheet))
        .route("/console/static/console.js", get(script))
        .route("/console/{*rest}", get(pages::not_found))
        .layer(axum::middleware::from_fn(view::security_headers))
        .with_state(state)
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/console.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/console.js"),
    )
        .into_response()
}
