//! Rendering: the console's templates (kept apart from message templates,
//! compiled into the binary), its error page, its security headers, and the
//! small helpers every handler shares (form bodies, the database deadline).

use std::future::Future;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::Environment;
use serde::Serialize;
use tracing::error;

use crate::api::ApiState;
use crate::store::StoreError;

/// Largest console form accepted.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// The Content-Security-Policy of every console response: nothing inline,
/// nothing from elsewhere, never framed.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'";

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // Every name ends in `.html`, so minijinja escapes every value
        // (`<script>`, quotes in attributes) unless a template says `|safe`,
        // which only the server-made SVG chart does.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, text) in [
            ("base.html", include_str!("templates/base.html")),
            ("sign_in.html", include_str!("templates/sign_in.html")),
            ("error.html", include_str!("templates/error.html")),
            ("overview.html", include_str!("templates/overview.html")),
            ("deliveries.html", include_str!("templates/deliveries.html")),
            ("delivery.html", include_str!("templates/delivery.html")),
            ("failures.html", include_str!("templates/failures.html")),
            (
                "replay_plan.html",
                include_str!("templates/replay_plan.html"),
            ),
            (
                "replay_result.html",
                include_str!("templates/replay_result.html"),
            ),
            ("costs.html", include_str!("templates/costs.html")),
            ("keys.html", include_str!("templates/keys.html")),
            ("key_shown.html", include_str!("templates/key_shown.html")),
        ] {
            if let Err(e) = env.add_template(name, text) {
                // The templates are compiled in and tested: this is a bug.
                error!(template = name, error = %e, "a console template does not parse");
            }
        }
        env
    })
}

/// Renders `name` with `ctx` as a page.
pub fn render(name: &str, ctx: impl Serialize) -> Result<Response, ConsoleError> {
    let template = environment()
        .get_template(name)
        .map_err(|e| ConsoleError::Internal(format!("template {name}: {e}")))?;
    let html = template
        .render(minijinja::value::Serde(&ctx))
        .map_err(|e| ConsoleError::Internal(format!("template {name}: {e:#}")))?;
    Ok(Html(html).into_response())
}

/// Why a console request did not get its page.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No session (or an ended one): go and sign in.
    #[error("sign in first")]
    SignIn,
    /// The session's key lacks the scope the page needs.
    #[error("this page needs a key with the `{0}` scope")]
    Forbidden(&'static str),
    /// A state-changing request without the session's CSRF token.
    #[error(
        "the form's CSRF token is missing or is not this session's; reload the page and try again"
    )]
    Csrf,
    /// A field is wrong.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// Too many failed sign-ins from this address.
    #[error("too many failed sign-ins from this address; try again in a few minutes")]
    TooManyAttempts,
    /// The database did not answer in time.
    #[error("the database did not answer in time; try again")]
    Unavailable,
    /// Something broke: logged, shown opaquely.
    #[error("{0}")]
    Internal(String),
}

impl ConsoleError {
    /// `field: reason`.
    pub fn invalid(field: &str, reason: impl Into<String>) -> ConsoleError {
        ConsoleError::Invalid {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        ConsoleError::Internal(e.to_string())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::SignIn => return Redirect::to("/console/sign-in").into_response(),
            ConsoleError::Forbidden(_) | ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Internal(cause) => {
                error!(error = %cause, "console request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match &self {
            ConsoleError::Internal(_) => "something went wrong; the cause is in tuma's log".into(),
            other => other.to_string(),
        };
        let page = environment().get_template("error.html").and_then(|t| {
            t.render(minijinja::context! {
                title => status.canonical_reason().unwrap_or("Error"),
                status => status.as_u16(),
                message => message.clone(),
            })
        });
        match page {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, message).into_response(),
        }
    }
}

/// Runs database work under `api.request_timeout`.
pub async fn within<T, E>(
    state: &ApiState,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, ConsoleError>
where
    E: Into<ConsoleError>,
{
    match tokio::time::timeout(state.app.config.api.request_timeout, work).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(ConsoleError::Unavailable),
    }
}

/// A form body (`application/x-www-form-urlencoded`) as its pairs, in order
/// (a repeated name, such as `id`, appears once per value).
pub async fn read_form(body: Body) -> Result<Vec<(String, String)>, ConsoleError> {
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| ConsoleError::invalid("form", "larger than 256 KiB or cut short"))?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// The first value of `name` in `form`, trimmed, if not empty.
pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Adds the console's security headers to every response, and `no-store` to
/// pages (they show deliveries and keys).
pub async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let is_static = req.uri().path().starts_with("/console/static/");
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !is_static {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A time as the console shows it: UTC, to the second.
pub fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// An optional time, or an empty string.
pub fn when_opt(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(when).unwrap_or_default()
}
