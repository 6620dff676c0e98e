//! Costs (scope `reports`): `crate::reports::cost_report` for a period, by
//! day or month and by provider or country; one chart per currency; CSV and
//! JSON downloads byte for byte what `tuma report costs --format csv|json`
//! prints for the same period and grouping.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{Datelike, Duration, NaiveDate};
use serde_json::json;

use super::chart::{Bar, Series, cost_chart, legend, swatch};
use super::session::Session;
use super::view::{ConsoleError, render, within};
use crate::api::ApiState;
use crate::api::auth::Scope;
use crate::reports::{CostParams, CostQuery, CostReport, ReportError, cost_report_from_rollups};

impl From<ReportError> for ConsoleError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Invalid { field, reason } => ConsoleError::invalid(field, reason),
            ReportError::Overflow { .. } | ReportError::Csv(_) => {
                ConsoleError::Internal(e.to_string())
            }
            ReportError::Store(e) => e.into(),
        }
    }
}

/// One currency's series names and its parts per period.
type CurrencyBars = (Vec<String>, BTreeMap<String, Vec<Series>>);

/// The page's choices, with their defaults filled in.
struct Choice {
    from: String,
    to: String,
    period: &'static str,
    split: &'static str,
}

fn choice(state: &ApiState, params: &BTreeMap<String, String>) -> Result<Choice, ConsoleError> {
    const KNOWN: [&str; 4] = ["from", "to", "period", "split"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ConsoleError::invalid(
            unknown,
            "is not a field of this page",
        ));
    }
    let get = |k: &str| params.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let today = state.app.clock.now().date_naive();
    let month_start = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let period = match get("period") {
        None | Some("day") => "day",
        Some("month") => "month",
        Some(other) => {
            return Err(ConsoleError::invalid(
                "period",
                format!("`{other}` is not day or month"),
            ));
        }
    };
    let split = match get("split") {
        None | Some("provider") => "provider",
        Some("country") => "country",
        Some(other) => {
            return Err(ConsoleError::invalid(
                "split",
                format!("`{other}` is not provider or country"),
            ));
        }
    };
    Ok(Choice {
        from: get("from")
            .map(str::to_owned)
            .unwrap_or_else(|| month_start.format("%Y-%m-%d").to_string()),
        to: get("to")
            .map(str::to_owned)
            .unwrap_or_else(|| (today + Duration::days(1)).format("%Y-%m-%d").to_string()),
        period,
        split,
    })
}

async fn report_for(state: &ApiState, c: &Choice) -> Result<CostReport, ConsoleError> {
    let now = state.app.clock.now();
    // The same parameters `tuma report costs --from --to --by` passes
    // (its receipt horizon default included), so the downloads match it.
    let query = CostQuery::from_params(
        &CostParams {
            since: None,
            from: Some(c.from.clone()),
            to: Some(c.to.clone()),
            by: Some(format!("{},{}", c.period, c.split)),
            receipt_horizon: Some("24h".into()),
        },
        now,
    )?;
    within(state, cost_report_from_rollups(&state.app.db, &query, now)).await
}

/// `GET /console/costs`.
pub async fn page(
    State(state): State<ApiState>,
    session: Session,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Reports)?;
    let c = choice(&state, &params)?;
    let report = report_for(&state, &c).await?;
    let mut currencies: BTreeMap<String, CurrencyBars> = BTreeMap::new();
    for row in &report.rows {
        let Some(currency) = &row.currency else {
            continue;
        };
        let (period, split) = (
            row.group.first().cloned().unwrap_or_default(),
            row.group.get(1).cloned().unwrap_or_default(),
        );
        let (series, bars) = currencies.entry(currency.clone()).or_default();
        if !series.contains(&split) {
            series.push(split.clone());
        }
        bars.entry(period).or_default().push(Series {
            name: split,
            actual_micros: row.actual_micros,
            estimated_micros: row.estimated_micros,
        });
    }
    let charts: Vec<_> = currencies
        .into_iter()
        .enumerate()
        .map(|(i, (currency, (mut series, bars)))| {
            series.sort();
            let bars: Vec<Bar> = bars
                .into_iter()
                .map(|(label, mut parts)| {
                    parts.sort_by(|a, b| a.name.cmp(&b.name));
                    Bar { label, parts }
                })
                .collect();
            let total = report.totals.iter().find(|t| t.currency == currency);
            json!({
                "currency": currency,
                "svg": cost_chart(i, &currency, &series, &bars),
                "legend": legend(&series).into_iter().map(|(ci, name)| json!({
                    "name": name,
                    "actual": swatch(i, ci, false),
                    "estimate": swatch(i, ci, true),
                })).collect::<Vec<_>>(),
                "actual": total.map(|t| t.actual_cost.clone()).unwrap_or_default(),
                "estimated": total.map(|t| t.estimated_cost.clone()).unwrap_or_default(),
                "messages": total.map(|t| t.messages).unwrap_or_default(),
            })
        })
        .collect();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("from", c.from.as_str()),
            ("to", c.to.as_str()),
            ("period", c.period),
            ("split", c.split),
        ])
        .finish();
    render(
        "costs.html",
        json!({
            "nav": session.nav("costs"),
            "form": { "from": c.from, "to": c.to, "period": c.period, "split": c.split },
            "charts": charts,
            "rows": report.rows.iter().map(|r| json!({
                "group": r.group,
                "currency": r.currency.clone().unwrap_or_default(),
                "messages": r.counts.messages,
                "segments": r.counts.segments,
                "delivered": r.counts.delivered,
                "failed": r.counts.failed + r.counts.undelivered + r.counts.expired,
                "no_receipt": r.counts.no_receipt,
                "actual": r.actual_cost.clone().unwrap_or_default(),
                "estimated": r.estimated_cost.clone().unwrap_or_default(),
            })).collect::<Vec<_>>(),
            "headers": [c.period, c.split],
            "query": query,
            "cli": format!("tuma report costs --from {} --to {} --by {},{} --format csv", c.from, c.to, c.period, c.split),
        }),
    )
}

fn download(c: &Choice, ext: &str, mime: &'static str, body: String) -> Response {
    let name = format!(
        "attachment; filename=\"tuma-costs-{}-{}-{}-{}.{ext}\"",
        c.from, c.to, c.period, c.split
    );
    (
        [
            (header::CONTENT_TYPE, mime.to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        body,
    )
        .into_response()
}

/// `GET /console/costs.csv`: what `tuma report costs --format csv` prints.
pub async fn csv(
    State(state): State<ApiState>,
    session: Session,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Reports)?;
    let c = choice(&state, &params)?;
    let report = report_for(&state, &c).await?;
    Ok(download(
        &c,
        "csv",
        "text/csv; charset=utf-8",
        report.to_csv()?,
    ))
}

/// `GET /console/costs.json`: what `tuma report costs --format json` prints.
pub async fn json(
    State(state): State<ApiState>,
    session: Session,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Reports)?;
    let c = choice(&state, &params)?;
    let report = report_for(&state, &c).await?;
    // The same document as the CLI's: the report with this period's budgets.
    let budgets = crate::spend::status(&state.app.db, &state.app.config, state.app.clock.now())
        .await
        .map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let body = crate::spend::with_budgets(&report, &budgets)
        .map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let text =
        serde_json::to_string_pretty(&body).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    Ok(download(
        &c,
        "json",
        "application/json",
        format!("{text}\n"),
    ))
}
