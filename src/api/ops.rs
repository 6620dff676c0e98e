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

use super::ApiState;
use super::auth::{Caller, Scope};
use super::body::parse_json;
use super::error::ApiError;
use crate::replay::{ReplayError, ReplayFilter};
use crate::reports::{CostParams, CostQuery, ReportError, cost_report};

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
            ReportError::Overflow { .. } => ApiError::Internal(e.to_string()),
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
pub async fn costs(
    State(state): State<ApiState>,
    caller: Caller,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Reports)?;
    if let Some(unknown) = params.keys().find(|k| !REPORT_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::UnknownField {
            field: unknown.clone(),
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
            report.to_csv(),
        )
            .into_response())
    } else {
        Ok(Json(report).into_response())
    }
}

/// The optional body of `POST /v1/deliveries/{id}/replay`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayOne {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/deliveries/{id}/replay`: what was replayed and what was refused.
pub async fn replay_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Ops)?;
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
            options.force,
            options.dry_run,
        ))
        .await?;
    Ok((StatusCode::OK, Json(report)).into_response())
}

/// The body of `POST /v1/replays`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayMany {
    #[serde(default)]
    filter: ReplayFilter,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/replays` `{filter, dry_run}`: replays every match (or shows the plan).
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
