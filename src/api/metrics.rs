//! `/metrics` in the Prometheus text format.
//!
//! Request and refusal counters are this process's; delivery figures
//! (by channel / provider / status, queue depth per lane, cost per currency,
//! attempt latency per provider) are read from the database at scrape time,
//! so they are right however many processes share it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::{Scope, authenticate};
use super::error::{ApiError, Refusal};
use crate::store::Figure;

/// This process's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (route, method, status).
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Guard refusals by configuration rule.
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Provider callbacks by (provider kind, outcome).
    callbacks: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    /// Counts one provider callback: `outcome` is `applied`, `unchanged`,
    /// `unknown_message`, `bad_signature`, `wrong_secret` or `malformed`.
    pub fn count_callback(&self, provider: &'static str, outcome: &'static str) {
        if let Ok(mut m) = self.callbacks.lock() {
            *m.entry((provider, outcome)).or_default() += 1;
        }
    }

    /// Provider callbacks so far, by (provider kind, outcome).
    pub fn callbacks(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.callbacks.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Guard refusals so far, by rule.
    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        self.refusals.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Middleware: counts each request by route template and status, and each
/// guard refusal by rule.
pub async fn count_request(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(unmatched)".to_owned());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    if let Ok(mut m) = state.metrics.requests.lock() {
        *m.entry((route, method, status)).or_default() += 1;
    }
    if let Some(Refusal(Some(rule))) = response.extensions().get::<Refusal>()
        && let Ok(mut m) = state.metrics.refusals.lock()
    {
        *m.entry(rule).or_default() += 1;
    }
    response
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`.
pub async fn render(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.app.config.api.metrics_need_key {
        authenticate(&state, &headers).await?.require(Scope::Ops)?;
    }
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# HELP tuma_http_requests_total HTTP requests by route, method and status."
    );
    let _ = writeln!(w, "# TYPE tuma_http_requests_total counter");
    if let Ok(m) = state.metrics.requests.lock() {
        for ((route, method, status), n) in m.iter() {
            let _ = writeln!(
                w,
                "tuma_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                label(route)
            );
        }
    }
    let _ = writeln!(
        w,
        "# HELP tuma_refusals_total Sends refused by an abuse guard, by rule."
    );
    let _ = writeln!(w, "# TYPE tuma_refusals_total counter");
    for (rule, n) in state.metrics.refusals() {
        let _ = writeln!(w, "tuma_refusals_total{{rule=\"{rule}\"}} {n}");
    }
    let _ = writeln!(
        w,
        "# HELP tuma_callbacks_total Provider delivery callbacks, by provider kind and outcome."
    );
    let _ = writeln!(w, "# TYPE tuma_callbacks_total counter");
    for ((provider, outcome), n) in state.metrics.callbacks() {
        let _ = writeln!(
            w,
            "tuma_callbacks_total{{provider=\"{provider}\",outcome=\"{outcome}\"}} {n}"
        );
    }

    let db = &state.app.db;
    let figures = state
        .within_timeout(async {
            Ok::<_, crate::store::StoreError>((
                db.delivery_counts().await?,
                db.queue_depths().await?,
                db.cost_totals().await?,
                db.attempt_latency().await?,
            ))
        })
        .await;
    let _ = writeln!(
        w,
        "# HELP tuma_database_up Whether the database answered this scrape."
    );
    let _ = writeln!(w, "# TYPE tuma_database_up gauge");
    match figures {
        Err(e) => {
            tracing::warn!(error = %e, "metrics: database figures unavailable");
            let _ = writeln!(w, "tuma_database_up 0");
        }
        Ok((counts, depths, costs, latency)) => {
            let _ = writeln!(w, "tuma_database_up 1");
            write_figures(w, &counts, &depths, &costs, &latency);
        }
    }
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

fn write_figures(
    w: &mut String,
    counts: &[Figure],
    depths: &[Figure],
    costs: &[Figure],
    latency: &[Figure],
) {
    let _ = writeln!(
        w,
        "# HELP tuma_deliveries Deliveries by channel, provider and status."
    );
    let _ = writeln!(w, "# TYPE tuma_deliveries gauge");
    for f in counts {
        let _ = writeln!(
            w,
            "tuma_deliveries{{channel=\"{}\",provider=\"{}\",status=\"{}\"}} {}",
            label(&f.a),
            label(&f.b),
            label(&f.c),
            f.value
        );
    }
    let _ = writeln!(
        w,
        "# HELP tuma_queue_depth Deliveries pending or sending, by lane."
    );
    let _ = writeln!(w, "# TYPE tuma_queue_depth gauge");
    for lane in crate::queue::Lane::ALL {
        let kind = match lane {
            crate::queue::Lane::Otp => "otp",
            crate::queue::Lane::Notifications => "notification",
        };
        let n = depths.iter().find(|f| f.a == kind).map_or(0, |f| f.value);
        let _ = writeln!(w, "tuma_queue_depth{{lane=\"{}\"}} {n}", lane.queue_name());
    }
    let _ = writeln!(
        w,
        "# HELP tuma_cost_total Cost of sent messages, by currency."
    );
    let _ = writeln!(w, "# TYPE tuma_cost_total counter");
    for f in costs {
        let sign = if f.value < 0 { "-" } else { "" };
        let micros = f.value.unsigned_abs();
        let _ = writeln!(
            w,
            "tuma_cost_total{{currency=\"{}\"}} {sign}{}.{:06}",
            label(&f.a),
            micros / 1_000_000,
            micros % 1_000_000
        );
    }
    let _ = writeln!(
        w,
        "# HELP tuma_attempt_latency_seconds Provider call latency, by provider."
    );
    let _ = writeln!(w, "# TYPE tuma_attempt_latency_seconds histogram");
    for f in latency {
        let provider = label(&f.a);
        match f.b.as_str() {
            "sum" => {
                let _ = writeln!(
                    w,
                    "tuma_attempt_latency_seconds_sum{{provider=\"{provider}\"}} {}",
                    f.value as f64 / 1000.0
                );
            }
            "+Inf" => {
                let _ = writeln!(
                    w,
                    "tuma_attempt_latency_seconds_bucket{{provider=\"{provider}\",le=\"+Inf\"}} {}",
                    f.value
                );
                let _ = writeln!(
                    w,
                    "tuma_attempt_latency_seconds_count{{provider=\"{provider}\"}} {}",
                    f.value
                );
            }
            ms => {
                let le = ms.parse::<f64>().unwrap_or(0.0) / 1000.0;
                let _ = writeln!(
                    w,
                    "tuma_attempt_latency_seconds_bucket{{provider=\"{provider}\",le=\"{le}\"}} {}",
                    f.value
                );
            }
        }
    }
}
