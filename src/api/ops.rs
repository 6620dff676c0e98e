//! Finance's and ops' routes: the cost report (scope `reports`) and replays
//! (scope `ops`). Thin wrappers over `reports` and `replay`: the rules live there.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::body::parse_json;
use super::error::ApiError;
use super::handlers::{check_params, check_path_id};
use crate::replay::{ReplayError, ReplayFilter, ReplayReport, ReplayRules};
use crate::reports::{CostParams, CostQuery, CostReport, ReportError, cost_report};

/// A batch replay may take longer than one request's database budget; past
/// this it answers 503 (what was replayed by then stays replayed).
const BATCH_REPLAY_TIMEOUT: Duration = Duration::from_secs(120);

const REPORT_PARAMS: [&str; 6] = ["since", "from", "to", "by", "receipt_horizon", "format"];

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Invalid { field, reason } => ApiError::InvalidField {
                field: field.to_owned(),
                reason,
            },
            ReportError::Overflow { .. } | ReportError::Csv(_) => ApiError::Internal(e.to_string()),
            ReportError::Store(e) => e.into(),
        }
    }
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Invalid { field, reason } => ApiError::InvalidField {
                field: field.to_owned(),
                reason,
            },
            ReplayError::Store(e) => e.into(),
        }
    }
}

/// `GET /v1/reports/costs`: the report as JSON, or `?format=csv` as `text/csv`.
#[utoipa::path(
    get,
    path = "/v1/reports/costs",
    operation_id = "getCostReport",
    tag = "reports",
    summary = "Messages, segments, receipts and exact costs per group and currency (UTC)",
    description = "Scope `reports`. Without dates: the last 30 days. Money is exact and never added across currencies.",
    params(
        ("since" = Option<String>, Query, description = "A period ending now (default 30d)", example = "30d"),
        ("from" = Option<String>, Query, format = Date, description = "First day, UTC midnight, included (with `to`)"),
        ("to" = Option<String>, Query, format = Date, description = "Last day, UTC midnight, excluded (with `from`)"),
        ("by" = Option<String>, Query, description = "Comma-separated: one of day, week, month, and any of provider, country, template, channel", example = "month,provider"),
        ("receipt_horizon" = Option<String>, Query, description = "A sent message without a receipt after this long counts as no receipt (default 24h)"),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`"),
    ),
    responses((status = 200, description = "The report",
        content(
            (CostReport = "application/json"),
            (String = "text/csv", example = "month,currency,messages\n"),
        )))
)]
pub async fn costs(
    State(state): State<ApiState>,
    caller: Caller,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Reports)?;
    check_params(&params)?;
    if let Some(unknown) = params.keys().find(|k| !REPORT_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::UnknownField {
            field: super::body::field_name(unknown),
        });
    }
    let get = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    let csv = match get("format").as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::InvalidField {
                field: "format".into(),
                reason: format!("`{other}` is not a format (json or csv)"),
            });
        }
    };
    let now = state.app.clock.now();
    let query = CostQuery::from_params(
        &CostParams {
            since: get("since"),
            from: get("from"),
            to: get("to"),
            by: get("by"),
            receipt_horizon: get("receipt_horizon"),
        },
        now,
    )?;
    let report = state
        .within_timeout(cost_report(&state.app.db, &query, now))
        .await?;
    if csv {
        Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report.to_csv()?,
        )
            .into_response())
    } else {
        let budgets = state
            .within_timeout(crate::spend::status(&state.app.db, &state.app.config, now))
            .await?;
        let body = crate::spend::with_budgets(&report, &budgets)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Json(body).into_response())
    }
}

/// The optional body of `POST /v1/deliveries/{id}/replay`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayOne {
    /// Replay even when the last attempt failed permanently (or its status is
    /// `unknown`). Does not pass the suppression list.
    #[serde(default)]
    force: bool,
    /// Replay even when the recipient is suppressed (refused otherwise, with
    /// `reason = "suppressed"`, forced or not); the replay records that the
    /// suppression was ignored and by which key.
    #[serde(default)]
    ignore_suppression: bool,
    /// Show what would happen; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/deliveries/{id}/replay`: what was replayed and what was refused.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/replay",
    operation_id = "replayDelivery",
    tag = "operations",
    summary = "Replay a failed, undelivered or expired delivery as a new one",
    description = "Scope `ops`. The body is optional (send none, or JSON). A replay is a new \
        delivery linked by `replay_of`; OTPs, sent and delivered ones are refused, with reasons, as \
        is one to a suppressed recipient unless `ignore_suppression`.",
    params(("id" = String, Path, description = "The delivery id")),
    request_body(content = Option<ReplayOne>, description = "Optional"),
    responses((status = 200, description = "What was replayed and what was refused", body = ReplayReport))
)]
pub async fn replay_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Ops)?;
    check_path_id(&id)?;
    let options = if headers.contains_key(header::CONTENT_TYPE) {
        parse_json::<ReplayOne>(&headers, body, state.app.config.api.max_body_bytes)
            .await?
            .value
    } else {
        ReplayOne::default()
    };
    if state
        .within_timeout(state.app.db.delivery(&id))
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no delivery has id `{id}`")));
    }
    let report = state
        .within_timeout(state.app.replay_delivery(
            &id,
            &caller.key.name,
            ReplayRules {
                force: options.force,
                ignore_suppression: options.ignore_suppression,
            },
            options.dry_run,
        ))
        .await?;
    Ok((StatusCode::OK, Json(report)).into_response())
}

/// The body of `POST /v1/replays`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"filter": {"status": "failed", "provider": "twilio", "error_code": "30003"}, "dry_run": true}))]
pub struct ReplayMany {
    /// Which deliveries; `failed` ones of any age when empty.
    #[serde(default)]
    filter: ReplayFilter,
    /// Show the plan; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/replays` `{filter, dry_run}`: replays every match (or shows the plan).
#[utoipa::path(
    post,
    path = "/v1/replays",
    operation_id = "replayMatching",
    tag = "operations",
    summary = "Replay every delivery matching a filter, or show the plan",
    description = "Scope `ops`.",
    request_body = ReplayMany,
    responses((status = 200, description = "What was replayed and what was refused", body = ReplayReport))
)]
pub async fn replay_many(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Ops)?;
    let request = parse_json::<ReplayMany>(&headers, body, state.app.config.api.max_body_bytes)
        .await?
        .value;
    let work = state
        .app
        .replay_matching(&request.filter, &caller.key.name, request.dry_run);
    match tokio::time::timeout(BATCH_REPLAY_TIMEOUT, work).await {
        Ok(report) => Ok(Json(report?).into_response()),
        Err(_) => Err(ApiError::Unavailable(format!(
            "the replay did not finish within {}",
            humantime::format_duration(BATCH_REPLAY_TIMEOUT)
        ))),
    }
}
