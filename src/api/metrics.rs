//! `/metrics` in the Prometheus text format.
//!
//! Request and refusal counters, request durations and the `process_*`
//! figures are this process's; delivery figures (by channel / provider /
//! status, queue depth per lane, cost per currency and estimate, attempt
//! latency per provider) are read from the database at scrape time, so they
//! are right however many processes share it: they are gauges (a cost can
//! fall when a provider's price replaces an estimate), never counters.

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
    /// Request durations by (route, method): bucket counts, count, sum.
    durations: Mutex<BTreeMap<(String, &'static str), Durations>>,
}

/// Upper bounds of the request duration buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One route's request durations.
#[derive(Debug, Default, Clone)]
struct Durations {
    /// Requests at or under each bound (not cumulative; summed when shown).
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The method as a label: the standard ones, else `OTHER` (a client may
/// send any token, and each would be a new series).
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "OTHER",
    }
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

    /// Counts one guard refusal of `rule` answered inside a larger answer
    /// (an item of a batch); a refused request is counted by [`count_request`].
    pub fn count_refusal(&self, rule: &'static str) {
        if let Ok(mut m) = self.refusals.lock() {
            *m.entry(rule).or_default() += 1;
        }
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
    let method = method_label(req.method());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let took = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    if let Ok(mut m) = state.metrics.durations.lock() {
        let d = m.entry((route.clone(), method)).or_default();
        if let Some(i) = DURATION_BUCKETS.iter().position(|le| took <= *le) {
            d.buckets[i] += 1;
        }
        d.count += 1;
        d.sum += took;
    }
    if let Ok(mut m) = state.metrics.requests.lock() {
        *m.entry((route, method.to_owned(), status)).or_default() += 1;
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

    let _ = writeln!(
        w,
        "# HELP tuma_http_request_duration_seconds HTTP request duration, by route and method."
    );
    let _ = writeln!(w, "# TYPE tuma_http_request_duration_seconds histogram");
    let durations = state
        .metrics
        .durations
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    for ((route, method), d) in &durations {
        let labels = format!("route=\"{}\",method=\"{method}\"", label(route));
        let mut cumulative = 0;
        for (le, n) in DURATION_BUCKETS.iter().zip(d.buckets) {
            cumulative += n;
            let _ = writeln!(
                w,
                "tuma_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            w,
            "tuma_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            d.count
        );
        let _ = writeln!(
            w,
            "tuma_http_request_duration_seconds_sum{{{labels}}} {}",
            d.sum
        );
        let _ = writeln!(
            w,
            "tuma_http_request_duration_seconds_count{{{labels}}} {}",
            d.count
        );
    }
    let _ = writeln!(
        w,
        "# HELP tuma_build_info The running tuma's version; always 1."
    );
    let _ = writeln!(w, "# TYPE tuma_build_info gauge");
    let _ = writeln!(
        w,
        "tuma_build_info{{version=\"{}\"}} 1",
        label(env!("CARGO_PKG_VERSION"))
    );
    write_process(w);

    let db = &state.app.db;
    let figures = state
        .within_timeout(async {
            Ok::<_, crate::store::StoreError>((
                db.delivery_counts().await?,
                db.queue_depths().await?,
                db.cost_totals().await?,
                db.attempt_latency().await?,
                db.possible_duplicates().await?,
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
        Ok((counts, depths, costs, latency, duplicates)) => {
            let _ = writeln!(w, "tuma_database_up 1");
            write_figures(w, &counts, &depths, &costs, &latency);
            let _ = writeln!(
                w,
                "# HELP tuma_possible_duplicates_total Attempts that may have sent a message twice: sent again after an earlier attempt's outcome was unknown, by the provider sent to."
            );
            let _ = writeln!(w, "# TYPE tuma_possible_duplicates_total counter");
            for f in &duplicates {
                let _ = writeln!(
                    w,
                    "tuma_possible_duplicates_total{{provider=\"{}\"}} {}",
                    label(&f.a),
                    f.value
                );
            }
        }
    }
    match state.within_timeout(db.webhook_figures()).await {
        Ok(figures) => super::webhooks::write_metrics(w, &figures, state.app.clock.now()),
        Err(e) => tracing::warn!(error = %e, "metrics: webhook figures unavailable"),
    }
    super::spend::write_metrics(&mut out, &state).await;
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
        "# HELP tuma_delivery_cost Cost of sent messages as the database holds it now, by currency; estimate=\"true\" for price-table estimates, \"false\" for providers' own prices."
    );
    let _ = writeln!(w, "# TYPE tuma_delivery_cost gauge");
    for f in costs {
        let sign = if f.value < 0 { "-" } else { "" };
        let micros = f.value.unsigned_abs();
        let _ = writeln!(
            w,
            "tuma_delivery_cost{{currency=\"{}\",estimate=\"{}\"}} {sign}{}.{:06}",
            label(&f.a),
            label(&f.b),
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

/// The `process_*` figures Prometheus clients expose, from `/proc` (Linux;
/// elsewhere only the file limit, where it can be read).
fn write_process(w: &mut String) {
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = writeln!(w, "# HELP {name} {help}");
            let _ = writeln!(w, "# TYPE {name} {kind}");
            let _ = writeln!(w, "{name} {value}");
        }
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> Option<f64> {
        // `n` counts from 1 as in proc(5); field 3 is the first after the name.
        fields.get(n.checked_sub(3)?).and_then(|v| v.parse().ok())
    };
    #[cfg(unix)]
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };
    #[cfg(not(unix))]
    let (ticks, page) = (0.0, 0.0);
    let per_tick = (ticks > 0.0).then_some(ticks);
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        field(14)
            .zip(field(15))
            .zip(per_tick)
            .map(|((u, s), t)| (u + s) / t),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        field(24).map(|pages| pages * page).filter(|_| page > 0.0),
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        field(23),
    );
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        boot.zip(field(22))
            .zip(per_tick)
            .map(|((b, start), t)| b + start / t),
    );
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        open,
    );
    family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        max_fds(),
    );
}

fn max_fds() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes `lim`.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            return Some(lim.rlim_cur as f64);
        }
        None
    }
    #[cfg(not(unix))]
    {
        None
    }
}
