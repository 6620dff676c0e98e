//! Ops' budget routes (scope `ops`): `GET /v1/budget` (each budget's spend,
//! reservations, limit and held count for the current period, and the number
//! ranges refused for an OTP burst) and
//! `POST /v1/budget/release` (`{"currency": "KES"}` or `{}`: held deliveries
//! go back to the queue and are sent past their budget). Thin wrappers over
//! `spend`.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::body::parse_json;
use super::error::ApiError;
use crate::domain::DeliveryKind;
use crate::domain::budget::BudgetPeriod;
use crate::domain::money::Currency;
use crate::pumping::RefusedRange;
use crate::spend::BudgetStatus;

/// The budget routes, merged into the API's router.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/budget", get(show))
        .route("/v1/budget/release", post(release))
}

/// A budget's period.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
}

/// One budget for its current period, as `GET /v1/budget` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Budget {
    /// Its name: currency and period.
    #[schema(example = "KES/month")]
    pub budget: String,
    /// The ISO 4217 currency of its amounts.
    #[schema(pattern = "^[A-Z]{3}$", example = "KES")]
    pub currency: String,
    /// How long a period lasts.
    pub period: Period,
    /// The current period's start (UTC midnight).
    pub period_start: DateTime<Utc>,
    /// Its end: held deliveries are released then.
    pub period_end: DateTime<Utc>,
    /// The limit, an exact decimal in `currency`.
    #[schema(pattern = "^-?[0-9]+(\\.[0-9]+)?$", example = "10000.00")]
    pub limit: String,
    /// Spent this period: actual costs where known, else estimates.
    #[schema(pattern = "^-?[0-9]+(\\.[0-9]+)?$", example = "2.40")]
    pub spent: String,
    /// Reserved by sends in flight.
    #[schema(pattern = "^-?[0-9]+(\\.[0-9]+)?$", example = "0.80")]
    pub reserved: String,
    /// (spent + reserved) / limit.
    #[schema(minimum = 0.0, example = 0.00032)]
    pub used_ratio: f64,
    /// The kinds of delivery it holds back when reached.
    pub kinds: Vec<DeliveryKind>,
    /// Deliveries it holds now.
    #[schema(minimum = 0)]
    pub held: i64,
}

impl From<BudgetStatus> for Budget {
    fn from(b: BudgetStatus) -> Budget {
        // Every field named, so a new one cannot be left out of the contract.
        let BudgetStatus {
            budget,
            currency,
            period,
            period_start,
            period_end,
            limit,
            spent,
            reserved,
            used_ratio,
            kinds,
            held,
        } = b;
        Budget {
            budget,
            currency: currency.as_str().to_owned(),
            period: match period {
                BudgetPeriod::Day => Period::Day,
                BudgetPeriod::Month => Period::Month,
            },
            period_start,
            period_end,
            limit: limit.to_decimal_string(),
            spent: spent.to_decimal_string(),
            reserved: reserved.to_decimal_string(),
            used_ratio,
            kinds,
            held,
        }
    }
}

/// A number range refused now for a burst of OTPs.
#[derive(Debug, Serialize, ToSchema)]
pub struct Range {
    /// The range: a number's first digits.
    #[schema(example = "+23480312")]
    pub range: String,
    /// Refused until then.
    pub until: DateTime<Utc>,
    /// Its OTPs over the cool-off and window.
    #[schema(minimum = 0)]
    pub recent: usize,
    /// Its threshold per window, from its baseline.
    #[schema(minimum = 0)]
    pub threshold: u64,
}

impl From<RefusedRange> for Range {
    fn from(r: RefusedRange) -> Range {
        let RefusedRange {
            range,
            until,
            recent,
            threshold,
        } = r;
        Range {
            range,
            until,
            recent,
            threshold,
        }
    }
}

/// What `GET /v1/budget` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetOverview {
    /// Each configured budget (`[[budget]]`); empty when none is.
    pub budgets: Vec<Budget>,
    /// The number ranges refused now for an OTP burst (`[range_burst]`).
    pub refused_ranges: Vec<Range>,
}

/// `GET /v1/budget`.
#[utoipa::path(
    get,
    path = "/v1/budget",
    operation_id = "getBudget",
    tag = "operations",
    summary = "Each budget's spend, reservations and held deliveries this period",
    description = "Scope `ops`. Also the number ranges refused now for a burst of OTPs.",
    responses((status = 200, description = "The budgets and refused ranges", body = BudgetOverview,
        example = json!({"budgets": [{"budget": "KES/month", "currency": "KES", "period": "month",
            "period_start": "2026-12-01T00:00:00Z", "period_end": "2027-01-01T00:00:00Z",
            "limit": "10000.00", "spent": "2.40", "reserved": "0.80", "used_ratio": 0.00032,
            "kinds": ["notification"], "held": 0}], "refused_ranges": []})))
)]
pub async fn show(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<BudgetOverview>, ApiError> {
    caller.require(Scope::Ops)?;
    let now = state.app.clock.now();
    let budgets = state
        .within_timeout(crate::spend::status(&state.app.db, &state.app.config, now))
        .await?;
    let ranges = state
        .within_timeout(crate::pumping::refused_ranges(
            &state.app.db,
            &state.app.config,
            now,
        ))
        .await?;
    Ok(Json(BudgetOverview {
        budgets: budgets.into_iter().map(Budget::from).collect(),
        refused_ranges: ranges.into_iter().map(Range::from).collect(),
    }))
}

/// The body of `POST /v1/budget/release`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"currency": "KES"}))]
pub struct Release {
    /// Only deliveries held by budgets in this currency; every held one
    /// when absent.
    #[serde(default)]
    #[schema(pattern = "^[A-Z]{3}$", example = "KES")]
    currency: Option<String>,
}

/// What `POST /v1/budget/release` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Released {
    /// How many held deliveries went back to the queue.
    #[schema(minimum = 0, example = 12)]
    pub released: u64,
}

/// `POST /v1/budget/release`.
#[utoipa::path(
    post,
    path = "/v1/budget/release",
    operation_id = "releaseBudget",
    tag = "operations",
    summary = "Send the deliveries a budget holds, past their budget",
    description = "Scope `ops`. Held deliveries (all, or those of one currency's budgets) go \
        back to the queue now and are sent even though their budget is reached.",
    request_body = Release,
    responses((status = 200, description = "How many were released", body = Released,
        example = json!({"released": 12})))
)]
pub async fn release(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Released>, ApiError> {
    caller.require(Scope::Ops)?;
    let request = parse_json::<Release>(&headers, body, state.app.config.api.max_body_bytes)
        .await?
        .value;
    let currency = request
        .currency
        .map(|c| {
            c.parse::<Currency>()
                .ok()
                .filter(Currency::is_active_iso4217)
                .ok_or_else(|| ApiError::InvalidField {
                    field: "currency".into(),
                    reason: "not an active ISO 4217 currency code (e.g. KES, USD, NGN)".into(),
                })
        })
        .transpose()?;
    let now = state.app.clock.now();
    let released = state
        .within_timeout(crate::spend::release(&state.app, currency, now))
        .await?;
    tracing::info!(by = %caller.key.name, released, "budget release over the API");
    Ok(Json(Released { released }))
}

/// `tuma_budget_used_ratio{currency,period}` for `/metrics`: (spent +
/// reserved) / limit of each budget's current period, read at scrape time.
pub async fn write_metrics(w: &mut String, state: &ApiState) {
    use std::fmt::Write;
    if state.app.config.spend.budgets.is_empty() {
        return;
    }
    let now = state.app.clock.now();
    let budgets = match state
        .within_timeout(crate::spend::status(&state.app.db, &state.app.config, now))
        .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = ?e, "metrics: budget figures unavailable");
            return;
        }
    };
    let _ = writeln!(
        w,
        "# HELP tuma_budget_used_ratio Spent plus reserved over the limit, per budget, this period."
    );
    let _ = writeln!(w, "# TYPE tuma_budget_used_ratio gauge");
    for b in &budgets {
        let _ = writeln!(
            w,
            "tuma_budget_used_ratio{{currency=\"{}\",period=\"{}\"}} {}",
            b.currency, b.period, b.used_ratio
        );
    }
}
