//! The spend guard around a send: reserve the estimate in each budget the
//! delivery counts against before the provider call, hold the delivery when
//! a budget is reached, turn the reservation into the real cost (or give it
//! back) after; release held deliveries when their period rolls over or ops
//! say so; log each alert threshold once a period.
//!
//! The rules are `domain::budget`'s; the counters are `store/spend.rs`'s.
//! With no `[[budget]]` (or no price for the route) a send costs no extra
//! statement.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::app::App;
use crate::config::Config;
use crate::domain::budget::{BudgetPeriod, Crossing, used_ratio};
use crate::domain::money::{Currency, Money};
use crate::domain::{DeliveryKind, DeliveryStatus};
use crate::queue::{DeliveryJob, Lane};
use crate::store::{
    BudgetAsk, Db, Delivery, HeldFilter, ReserveCall, Reserved, SettleCall, StoreError,
};

/// What the guard decided for one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Send it; `reserved` says whether a reservation waits for the outcome.
    Go {
        /// A reservation was made (settle or release it after the call).
        reserved: bool,
    },
    /// A budget is reached: the delivery is now `held` (or was moved by
    /// someone else first); do not send.
    Held,
}

/// Reserves `estimate` for `delivery` (owned by `job`) in each budget of its
/// kind and the estimate's currency; holds the delivery when one is reached.
pub async fn before_send(
    app: &App,
    delivery: &Delivery,
    job: &DeliveryJob,
    estimate: Option<Money>,
    now: DateTime<Utc>,
) -> Result<Guard, StoreError> {
    let Some(estimate) = estimate else {
        return Ok(Guard::Go { reserved: false });
    };
    let budgets = app
        .config
        .spend
        .budgets_for(delivery.kind, estimate.currency);
    if budgets.is_empty() {
        return Ok(Guard::Go { reserved: false });
    }
    let asks: Vec<BudgetAsk> = budgets
        .iter()
        .map(|b| BudgetAsk {
            terms: b.terms(),
            period_start: b.period.start(now),
            estimate_micros: estimate.micros,
        })
        .collect();
    let call = ReserveCall {
        delivery_id: delivery.row.id.clone(),
        asks,
        now,
    };
    match app
        .batcher
        .reserve_budget(Lane::for_kind(delivery.kind), call)
        .await?
    {
        Reserved::Yes(crossed) => {
            log_crossings(&crossed);
            Ok(Guard::Go { reserved: true })
        }
        Reserved::Full(name) => {
            let Some(budget) = app.config.spend.budget(&name) else {
                return Err(StoreError::Corrupt(format!("no budget named {name}")));
            };
            let until = budget.period.next_start(now);
            let why = format!(
                "held: the {} budget of {} is reached; released at {} or by ops (tuma budget release)",
                name,
                budget.limit,
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            if app
                .db
                .hold_delivery(&delivery.row.id, &job.job_id, &name, until, &why, now)
                .await?
            {
                info!(budget = %name, until = %until, "held: budget reached");
            }
            Ok(Guard::Held)
        }
    }
}

/// After the call: `Some(cost)` for a send the provider accepted (its actual
/// cost where known, else the estimate), `None` for one that failed or did
/// not happen. `lane`: the delivery's, whose batches carry the statement.
pub async fn after_send(
    app: &App,
    lane: Lane,
    delivery_id: &str,
    sent: Option<Option<Money>>,
) -> Result<(), StoreError> {
    let call = SettleCall {
        delivery_id: delivery_id.to_owned(),
        spend: sent,
        terms: app.config.spend.terms(),
        now: app.clock.now(),
    };
    let crossed = app.batcher.close_reservations(lane, call).await?;
    log_crossings(&crossed);
    Ok(())
}

/// Logs each alert threshold crossed. The store recorded each once a period
/// (across processes) with its `budget.threshold` webhook events, in the
/// transaction that moved the counter; `tuma_budget_used_ratio` is read
/// from the counters at scrape time.
pub fn log_crossings(crossed: &[Crossing]) {
    for c in crossed {
        warn!(
            budget = %c.budget,
            threshold = c.threshold,
            used = %Money::new(c.spent.micros.saturating_add(c.reserved.micros), c.currency),
            limit = %c.limit,
            "budget alert: {:.0}% of the limit used",
            c.threshold * 100.0
        );
    }
}

/// What one spend sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpendSweep {
    /// Held deliveries released because their period rolled over.
    pub released: u64,
    /// Held deliveries expired (an OTP past its TTL, a notification past
    /// its own deadline).
    pub expired: u64,
    /// Reservations left by a lost process, settled or released.
    pub settled: u64,
}

/// How many held deliveries one statement releases.
const RELEASE_BATCH: i64 = 500;

/// Run by the sweeper: expires held deliveries past their `expires_at` (an
/// OTP's TTL, a notification's own deadline), releases held
/// deliveries whose period has ended, and settles reservations a lost
/// process left behind (by what the delivery became).
pub async fn sweep(app: &App, now: DateTime<Utc>) -> Result<SpendSweep, StoreError> {
    let mut report = SpendSweep {
        expired: app.db.expire_held(now).await?,
        ..SpendSweep::default()
    };
    let due = HeldFilter {
        currency: None,
        due_by: Some(now),
    };
    report.released = release_all(app, &due, false, now).await?;
    if report.released > 0 {
        info!(
            released = report.released,
            "budget period rolled over: held deliveries released"
        );
    }
    let stale = now
        - chrono::Duration::from_std(app.config.longest_send() * 2)
            .unwrap_or(chrono::Duration::MAX);
    for (id, status, cost, currency) in app.db.stale_reservations(stale).await? {
        let sent = matches!(
            status.parse::<DeliveryStatus>(),
            Ok(DeliveryStatus::Sent | DeliveryStatus::Delivered | DeliveryStatus::Undelivered)
        );
        let cost = match (cost, currency.and_then(|c| c.parse::<Currency>().ok())) {
            (Some(micros), Some(currency)) => Some(Money::new(micros, currency)),
            _ => None,
        };
        after_send(app, Lane::Notifications, &id, sent.then_some(cost)).await?;
        report.settled += 1;
    }
    Ok(report)
}

/// Ops' release: every held delivery (of budgets in `currency`, when
/// given) goes back to `pending` and is sent even while its budget is
/// still reached (its cost still counts). Returns how many.
pub async fn release(
    app: &App,
    currency: Option<Currency>,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let filter = HeldFilter {
        currency: currency.map(|c| c.as_str().to_owned()),
        due_by: None,
    };
    let released = release_all(app, &filter, true, now).await?;
    info!(released, currency = ?filter.currency, "held deliveries released by ops");
    Ok(released)
}

async fn release_all(
    app: &App,
    filter: &HeldFilter,
    by_ops: bool,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let released = app
            .db
            .release_held(filter, by_ops, RELEASE_BATCH, now)
            .await?;
        total += released.len() as u64;
        for kind in [DeliveryKind::Otp, DeliveryKind::Notification] {
            if released.iter().any(|(_, k)| *k == kind) {
                app.wakers.wake(Lane::for_kind(kind));
            }
        }
        if (released.len() as i64) < RELEASE_BATCH {
            return Ok(total);
        }
    }
}

/// One budget as ops and finance see it, for the current period.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetStatus {
    /// `KES/month`.
    pub budget: String,
    /// Currency code.
    pub currency: Currency,
    /// Day or month.
    pub period: BudgetPeriod,
    /// The current period's start.
    pub period_start: DateTime<Utc>,
    /// When it ends (held deliveries are released then).
    pub period_end: DateTime<Utc>,
    /// The limit.
    #[serde(serialize_with = "decimal")]
    pub limit: Money,
    /// Spent this period: actual costs where known, else estimates.
    #[serde(serialize_with = "decimal")]
    pub spent: Money,
    /// Reserved by sends in flight.
    #[serde(serialize_with = "decimal")]
    pub reserved: Money,
    /// (spent + reserved) / limit.
    pub used_ratio: f64,
    /// The kinds it holds back.
    pub kinds: Vec<DeliveryKind>,
    /// Deliveries it holds now.
    pub held: i64,
}

/// An amount as its exact decimal text (`"2.40"`); the currency is beside it.
fn decimal<S: serde::Serializer>(m: &Money, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&m.to_decimal_string())
}

/// Every budget's state for the period `now` falls in.
pub async fn status(
    db: &Db,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Vec<BudgetStatus>, StoreError> {
    let held = db.held_counts().await?;
    let mut out = Vec::with_capacity(config.spend.budgets.len());
    for b in &config.spend.budgets {
        let start = b.period.start(now);
        let usage = db
            .budget_usage(b.currency.as_str(), b.period, start)
            .await?;
        let (spent, reserved) = usage.map_or((0, 0), |u| (u.spent_micros, u.reserved_micros));
        let name = b.name();
        out.push(BudgetStatus {
            held: held.iter().find(|(n, _)| *n == name).map_or(0, |(_, c)| *c),
            budget: name,
            currency: b.currency,
            period: b.period,
            period_start: start,
            period_end: b.period.next_start(now),
            limit: b.limit,
            spent: Money::new(spent, b.currency),
            reserved: Money::new(reserved, b.currency),
            used_ratio: used_ratio(spent.saturating_add(reserved), b.limit.micros),
            kinds: b.kinds.clone(),
        });
    }
    Ok(out)
}

/// The budgets as a table for the terminal.
pub fn status_table(rows: &[BudgetStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no budgets configured ([[budget]] in the configuration)\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<12} {:<21} {:>16} {:>16} {:>16} {:>7} {:>6}  KINDS",
        "BUDGET", "PERIOD", "SPENT", "RESERVED", "LIMIT", "USED", "HELD"
    );
    for r in rows {
        let kinds: Vec<&str> = r.kinds.iter().map(|k| k.as_str()).collect();
        let _ = writeln!(
            out,
            "{:<12} {:<21} {:>16} {:>16} {:>16} {:>6.1}% {:>6}  {}",
            r.budget,
            format!(
                "{}..{}",
                r.period_start.format("%Y-%m-%d"),
                r.period_end.format("%Y-%m-%d")
            ),
            r.spent.to_decimal_string(),
            r.reserved.to_decimal_string(),
            r.limit.to_decimal_string(),
            r.used_ratio * 100.0,
            r.held,
            kinds.join(",")
        );
    }
    out
}

/// A report (any serialisable object) with a `budgets` member: spend against
/// each budget for its current period (`tuma report costs --format json`,
/// `GET /v1/reports/costs`).
pub fn with_budgets(
    report: &impl Serialize,
    budgets: &[BudgetStatus],
) -> Result<serde_json::Value, serde_json::Error> {
    let mut value = serde_json::to_value(report)?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("budgets".to_owned(), serde_json::to_value(budgets)?);
    }
    Ok(value)
}
