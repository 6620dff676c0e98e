//! Overview, deliveries (search with keyset pages) and one delivery.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use super::session::Session;
use super::view::{ConsoleError, render, when, when_opt, within};
use crate::api::ApiState;
use crate::api::auth::Scope;
use crate::domain::{Channel, DeliveryKind, DeliveryStatus, Recipient};
use crate::store::{ConsoleFilter, Delivery};

/// Rows per page of deliveries.
const PAGE_SIZE: i64 = 50;
/// How often the overview reloads itself, in seconds.
const OVERVIEW_REFRESH_SECS: u32 = 30;
/// Provider health is measured over this window.
const HEALTH_WINDOW_MINUTES: i64 = 15;

/// Any other `/console/…` path.
pub async fn not_found(_session: Session) -> ConsoleError {
    ConsoleError::NotFound("no console page has this address".into())
}

/// The statuses the overview counts, in order.
const OVERVIEW_STATUSES: [&str; 6] = [
    "sent",
    "delivered",
    "failed",
    "expired",
    "unknown",
    "in queue",
];

fn overview_column(status: &str) -> &str {
    match status {
        "pending" | "sending" => "in queue",
        "undelivered" => "failed",
        other => other,
    }
}

/// The nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// `GET /console`: recent volume, the lanes, provider health. Reloads itself.
pub async fn overview(
    State(state): State<ApiState>,
    session: Session,
) -> Result<Response, ConsoleError> {
    if !session.can(Scope::Read) && !session.can(Scope::Ops) {
        if session.can(Scope::Reports) {
            return Ok(axum::response::IntoResponse::into_response(
                axum::response::Redirect::to("/console/costs"),
            ));
        }
        return Err(ConsoleError::Forbidden("read"));
    }
    let db = &state.app.db;
    let now = state.app.clock.now();
    let mut periods = Vec::new();
    for (label, since) in [
        ("Last hour", now - chrono::Duration::hours(1)),
        ("Last 24 hours", now - chrono::Duration::hours(24)),
    ] {
        let counts = within(&state, db.status_counts_since(since)).await?;
        let mut by_channel: BTreeMap<String, BTreeMap<&str, i64>> = BTreeMap::new();
        for c in &counts {
            *by_channel
                .entry(c.channel.clone())
                .or_default()
                .entry(overview_column(&c.status))
                .or_default() += c.count;
        }
        let rows: Vec<Value> = by_channel
            .iter()
            .map(|(channel, cols)| {
                json!({
                    "channel": channel,
                    "counts": OVERVIEW_STATUSES.iter().map(|s| cols.get(s).copied().unwrap_or(0)).collect::<Vec<_>>(),
                    "total": cols.values().sum::<i64>(),
                })
            })
            .collect();
        periods.push(json!({ "label": label, "rows": rows }));
    }
    let lanes: Vec<Value> = within(&state, db.lane_depths(now))
        .await?
        .into_iter()
        .map(|l| {
            let lane = if l.kind == DeliveryKind::Otp.as_str() {
                "OTP"
            } else {
                "notifications"
            };
            json!({
                "lane": lane,
                "waiting": l.waiting,
                "due": l.due,
                "oldest_due": l.oldest_due.map(|t| {
                    let secs = (now - t).num_seconds().max(0).unsigned_abs();
                    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
                }).unwrap_or_else(|| "-".into()),
            })
        })
        .collect();
    let since = now - chrono::Duration::minutes(HEALTH_WINDOW_MINUTES);
    let attempts = within(&state, db.attempts_since(since)).await?;
    let mut names: BTreeSet<String> = state
        .app
        .config
        .providers
        .iter()
        .map(|p| p.name.clone())
        .collect();
    names.extend(attempts.iter().map(|a| a.provider.clone()));
    let mut errors = Vec::new();
    for name in &names {
        if let Some(e) = within(
            &state,
            db.last_error(name, now - chrono::Duration::hours(24)),
        )
        .await?
        {
            errors.push(e);
        }
    }
    let providers: Vec<Value> = names
        .iter()
        .map(|name| {
            let mine: Vec<_> = attempts.iter().filter(|a| &a.provider == name).collect();
            let finished: Vec<_> = mine.iter().filter(|a| a.outcome.is_some()).collect();
            let accepted = finished
                .iter()
                .filter(|a| a.outcome.as_deref() == Some("accepted"))
                .count();
            let mut latencies: Vec<i64> = finished.iter().filter_map(|a| a.latency_ms).collect();
            latencies.sort_unstable();
            let circuit = match state.app.providers.get(name) {
                Some(handle) => match handle.breaker.peek_open_until(now) {
                    Some(until) => format!("open until {} UTC", until.format("%H:%M:%S")),
                    None => "closed".into(),
                },
                None => "not configured".into(),
            };
            let last_error = errors.iter().find(|e| &e.provider == name).map(|e| {
                format!(
                    "{}{} ({} UTC)",
                    e.error_code
                        .as_deref()
                        .map(|c| format!("[{c}] "))
                        .unwrap_or_default(),
                    e.error.as_deref().unwrap_or("error"),
                    when(e.started_at)
                )
            });
            json!({
                "name": name,
                "circuit": circuit,
                "circuit_open": circuit.starts_with("open"),
                "attempts": finished.len(),
                "success": if finished.is_empty() { "-".to_owned() } else {
                    format!("{:.1}%", accepted as f64 * 100.0 / finished.len() as f64)
                },
                "p50": percentile(&latencies, 50.0).map(|l| format!("{l} ms")).unwrap_or_else(|| "-".into()),
                "p95": percentile(&latencies, 95.0).map(|l| format!("{l} ms")).unwrap_or_else(|| "-".into()),
                "rate": state.app.config.providers.iter().find(|p| &p.name == name)
                    .map(|p| format!("{:.2} of {} /s", mine.len() as f64 / (HEALTH_WINDOW_MINUTES as f64 * 60.0), p.rate_limit.per_second))
                    .unwrap_or_else(|| "-".into()),
                "last_error": last_error.unwrap_or_else(|| "-".into()),
            })
        })
        .collect();
    render(
        "overview.html",
        json!({
            "nav": session.nav("overview"),
            "statuses": OVERVIEW_STATUSES,
            "periods": periods,
            "lanes": lanes,
            "providers": providers,
            "health_minutes": HEALTH_WINDOW_MINUTES,
            "refresh": OVERVIEW_REFRESH_SECS,
            "now": when(now),
        }),
    )
}

/// A delivery id: what `uuid` v7 ids look like.
fn looks_like_id(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn parse_day(field: &str, s: &str) -> Result<DateTime<Utc>, ConsoleError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| ConsoleError::invalid(field, format!("`{s}` is not a date like 2026-11-01")))
}

/// Reads the search form into a filter; unknown fields are refused by name.
fn search_filter(
    state: &ApiState,
    params: &BTreeMap<String, String>,
) -> Result<ConsoleFilter, ConsoleError> {
    const KNOWN: [&str; 9] = [
        "q",
        "provider",
        "status",
        "error_code",
        "channel",
        "kind",
        "from",
        "to",
        "after",
    ];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ConsoleError::invalid(unknown, "is not a search field"));
    }
    let get = |k: &str| params.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut f = ConsoleFilter {
        limit: PAGE_SIZE + 1,
        provider: get("provider").map(str::to_owned),
        error_code: get("error_code").map(str::to_owned),
        ..ConsoleFilter::default()
    };
    if let Some(q) = get("q") {
        if looks_like_id(q) {
            f.id = Some(q.to_ascii_lowercase());
        } else {
            let r = Recipient::parse(q, state.app.config.otp.default_region).map_err(|e| {
                ConsoleError::invalid(
                    "q",
                    format!("not a delivery id, email address or phone number: {e}"),
                )
            })?;
            f.recipient = Some(r.as_str().to_owned());
        }
    }
    if let Some(s) = get("status") {
        let status: DeliveryStatus = s
            .parse()
            .map_err(|e: String| ConsoleError::invalid("status", e))?;
        f.statuses = vec![status];
    }
    if let Some(c) = get("channel") {
        f.channel = Some(
            c.parse::<Channel>()
                .map_err(|e| ConsoleError::invalid("channel", e))?,
        );
    }
    if let Some(k) = get("kind") {
        f.kind = Some(
            k.parse::<DeliveryKind>()
                .map_err(|e| ConsoleError::invalid("kind", e))?,
        );
    }
    if let Some(from) = get("from") {
        f.from = Some(parse_day("from", from)?);
    }
    if let Some(to) = get("to") {
        // Inclusive: the whole day.
        f.to = Some(parse_day("to", to)? + chrono::Duration::days(1));
    }
    if let (Some(from), Some(to)) = (f.from, f.to)
        && from >= to
    {
        return Err(ConsoleError::invalid("to", "must not be before from"));
    }
    if let Some(after) = get("after") {
        let bad = || ConsoleError::invalid("after", "is not a page position");
        let (at, id) = after.split_once('~').ok_or_else(bad)?;
        let at = DateTime::parse_from_rfc3339(at)
            .map_err(|_| bad())?
            .with_timezone(&Utc);
        if !looks_like_id(id) {
            return Err(bad());
        }
        f.after = Some((at, id.to_owned()));
    }
    Ok(f)
}

/// One row of a delivery list.
pub fn list_row(d: &Delivery, state: &ApiState, now: DateTime<Utc>) -> Value {
    let r = &d.row;
    let status = d.display_status(now, state.app.config.receipts.no_receipt_after);
    json!({
        "id": r.id,
        "kind": r.kind,
        "channel": r.channel,
        "recipient": r.recipient,
        "template": r.template,
        "status": status,
        "status_class": status.replace(' ', "-"),
        "provider": r.provider.clone().unwrap_or_else(|| "-".into()),
        "attempts": r.attempts,
        "created": when(r.created_at),
        "last_error": r.last_error.clone().unwrap_or_default(),
    })
}

/// `GET /console/deliveries`: search, newest first, 50 a page.
pub async fn deliveries(
    State(state): State<ApiState>,
    session: Session,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Read)?;
    let filter = search_filter(&state, &params)?;
    let mut rows = within(&state, state.app.db.console_deliveries(&filter)).await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let now = state.app.clock.now();
    let next = match (more, rows.last()) {
        (true, Some(last)) => {
            let mut q: Vec<(String, String)> = params
                .iter()
                .filter(|(k, v)| k.as_str() != "after" && !v.trim().is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            q.push((
                "after".into(),
                format!(
                    "{}~{}",
                    last.row
                        .created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    last.row.id
                ),
            ));
            let query: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(q)
                .finish();
            Some(format!("/console/deliveries?{query}"))
        }
        _ => None,
    };
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let first: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            params
                .iter()
                .filter(|(k, v)| k.as_str() != "after" && !v.trim().is_empty()),
        )
        .finish();
    render(
        "deliveries.html",
        json!({
            "nav": session.nav("deliveries"),
            "form": {
                "q": get("q"), "provider": get("provider"), "status": get("status"),
                "error_code": get("error_code"), "channel": get("channel"), "kind": get("kind"),
                "from": get("from"), "to": get("to"),
            },
            "searched_for": filter.recipient.clone().or(filter.id.clone()),
            "statuses": DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "providers": state.app.config.providers.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            "rows": rows.iter().map(|d| list_row(d, &state, now)).collect::<Vec<_>>(),
            "paged": params.contains_key("after"),
            "first": format!("/console/deliveries?{first}"),
            "next": next,
        }),
    )
}

/// `GET /console/deliveries/{id}`: everything `tuma deliveries show` prints.
pub async fn delivery(
    State(state): State<ApiState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Read)?;
    let db = &state.app.db;
    let d = within(&state, db.delivery(&id))
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("no delivery has id `{id}`")))?;
    let attempts = within(&state, db.attempts(&id)).await?;
    let receipts = within(&state, db.receipts(&id)).await?;
    let origin = within(&state, db.replay_origin(&id)).await?;
    let replays = within(&state, db.replays_of(&id)).await?;
    let now = state.app.clock.now();
    let r = &d.row;
    let cost = d.cost.map(|c| {
        json!({
            "amount": c.to_string(),
            "estimate": r.cost_is_estimate == Some(true),
        })
    });
    let attempts: Vec<Value> = attempts
        .iter()
        .map(|a| {
            let cost = match (a.cost_micros, &a.currency) {
                (Some(m), Some(cur)) => format!(
                    "{} {cur}{}",
                    crate::domain::money::format_micros(m, 2),
                    if a.cost_is_estimate == Some(true) {
                        " (estimate)"
                    } else {
                        ""
                    }
                ),
                _ => String::new(),
            };
            json!({
                "attempt": a.attempt,
                "provider": a.provider,
                "reason": a.reason.clone().unwrap_or_default(),
                "started": when(a.started_at),
                "outcome": a.outcome.map(|o| o.as_str()).unwrap_or("open"),
                "latency": a.latency_ms.map(|l| format!("{l} ms")).unwrap_or_default(),
                "error_code": a.error_code.clone().unwrap_or_default(),
                "error": a.error.clone().unwrap_or_default(),
                "message_id": a.provider_message_id.clone().unwrap_or_default(),
                "cost": cost,
            })
        })
        .collect();
    let receipts: Vec<Value> = receipts
        .iter()
        .map(|rc| {
            let error = [
                rc.error_code.clone().unwrap_or_default(),
                rc.error.clone().unwrap_or_default(),
            ]
            .join(" ");
            json!({
                "attempt": rc.attempt,
                "provider": rc.provider,
                "status": rc.status,
                "received": when(rc.received_at),
                "error": error.trim(),
                "applied": rc.applied,
            })
        })
        .collect();
    let status = d.display_status(now, state.app.config.receipts.no_receipt_after);
    let replayable = matches!(
        d.status,
        DeliveryStatus::Failed | DeliveryStatus::Undelivered | DeliveryStatus::Expired
    );
    render(
        "delivery.html",
        json!({
            "nav": session.nav("deliveries"),
            "d": {
                "id": r.id,
                "kind": r.kind,
                "channel": r.channel,
                "recipient": r.recipient,
                "template": r.template,
                "locale": r.locale,
                "status": status,
                "status_class": status.replace(' ', "-"),
                "subject": r.subject,
                "body": r.body,
                "segments": r.segments.map(|s| format!("{s} ({})", r.encoding.as_deref().unwrap_or("?"))),
                "attempts": format!("{} of {}", r.attempts, r.max_attempts),
                "provider": r.provider,
                "message_id": r.provider_message_id,
                "created": when(r.created_at),
                "sent": when_opt(r.sent_at),
                "delivered": when_opt(r.delivered_at),
                "expires": when_opt(r.expires_at),
                "next_attempt": if d.status == DeliveryStatus::Pending { when_opt(r.next_attempt_at) } else { String::new() },
                "last_error": r.last_error,
                "price_note": r.reconcile_note.as_ref().map(|n| format!("{n} ({})", when_opt(r.reconciled_at))),
            },
            "is_otp": d.kind == DeliveryKind::Otp,
            "cost": cost,
            "attempts": attempts,
            "receipts": receipts,
            "origin": origin.map(|o| json!({
                "id": o.replay_of,
                "by": o.replayed_by.unwrap_or_else(|| "?".into()),
                "note": o.replay_note,
            })),
            "replays": replays.iter().map(|x| json!({
                "id": x.id,
                "status": x.status,
                "by": x.replayed_by.clone().unwrap_or_else(|| "?".into()),
                "at": when_opt(x.replayed_at),
            })).collect::<Vec<_>>(),
            "can_replay": replayable && session.can(Scope::Ops),
        }),
    )
}
