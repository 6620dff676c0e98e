//! The spend guard's rows: budget counters, reservations, held deliveries.
//!
//! A budget's counter row (`budget_usage`, one per currency, period and
//! period start) is the one place a send's estimate is admitted: a guarded
//! `UPDATE … WHERE spent + reserved < limit`. On Postgres the row lock makes
//! a second process's `UPDATE` wait and then re-check the condition against
//! the first's result; SQLite has one writer. So concurrent workers never
//! admit past the limit by more than the one send that found room. The rule
//! itself is `domain::budget::admits`; these statements only keep it.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use sqlx::{PgConnection, SqliteConnection};

use super::{Db, Doing, StoreError, on_pool};
use crate::domain::DeliveryKind;
use crate::domain::budget::{BudgetPeriod, BudgetTerms, Crossing};
use crate::domain::money::Money;
use crate::queue::DeliveryJob;
use crate::webhooks::{EventType, budget_payload, new_event_id};

/// One budget a send asks room in.
#[derive(Debug, Clone)]
pub struct BudgetAsk {
    /// The budget.
    pub terms: BudgetTerms,
    /// The start of the period the send falls in.
    pub period_start: DateTime<Utc>,
    /// The send's estimated cost, in micro-units.
    pub estimate_micros: i64,
}

/// A budget's counter for one period.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct BudgetUsage {
    /// Currency code.
    pub currency: String,
    /// `day` or `month`.
    pub period: String,
    /// The period's start.
    pub period_start: DateTime<Utc>,
    /// Spent: actual costs where the provider said, else estimates.
    pub spent_micros: i64,
    /// Reserved by sends in flight.
    pub reserved_micros: i64,
    /// How many alert thresholds were logged this period.
    pub alerts_logged: i64,
}

/// What [`Db::reserve_budget`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Reserved {
    /// Room was reserved in every budget; the alert thresholds it crossed
    /// (recorded, with their webhook events, in the same transaction).
    Yes(Vec<Crossing>),
    /// This budget (its name) is reached; nothing was reserved.
    Full(String),
}

/// Which held deliveries to release.
#[derive(Debug, Clone, Default)]
pub struct HeldFilter {
    /// Only those held by a budget in this currency.
    pub currency: Option<String>,
    /// Only those whose period ended by then (rollover).
    pub due_by: Option<DateTime<Utc>>,
}

const USAGE_COLUMNS: &str =
    "currency, period, period_start, spent_micros, reserved_micros, alerts_logged";

/// A reservation as stored.
#[derive(Debug, Clone, FromRow)]
struct ReservationRow {
    currency: String,
    period: String,
    period_start: DateTime<Utc>,
    micros: i64,
}

impl Db {
    /// Reserves `asks` (each budget's room for this send) for delivery
    /// `delivery_id`, all or none, in one transaction. A delivery ops
    /// released past its budget reserves without the limit (its cost still
    /// counts). A reservation the delivery still held (a lost attempt) is
    /// given back first, so a delivery holds at most one per budget.
    pub async fn reserve_budget(
        &self,
        delivery_id: &str,
        asks: &[BudgetAsk],
        now: DateTime<Utc>,
    ) -> Result<Reserved, StoreError> {
        let doing = "reserving budget";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            // A write first: SQLite then holds the write lock for the whole
            // transaction, so its reads never go stale.
            for a in asks {
                sqlx::query(
                    "INSERT INTO budget_usage (currency, period, period_start) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(a.terms.currency.as_str())
                .bind(a.terms.period.as_str())
                .bind(a.period_start)
                .execute(&mut *tx)
                .await
                .doing(doing)?;
            }
            let old: Vec<ReservationRow> = sqlx::query_as(
                "DELETE FROM budget_reservations WHERE delivery_id = $1 \
                 RETURNING currency, period, period_start, micros",
            )
            .bind(delivery_id)
            .fetch_all(&mut *tx)
            .await
            .doing(doing)?;
            for r in &old {
                sqlx::query(
                    "UPDATE budget_usage SET reserved_micros = reserved_micros - $4 \
                     WHERE currency = $1 AND period = $2 AND period_start = $3",
                )
                .bind(&r.currency)
                .bind(&r.period)
                .bind(r.period_start)
                .bind(r.micros)
                .execute(&mut *tx)
                .await
                .doing(doing)?;
            }
            let exempt: Option<bool> = sqlx::query_scalar(
                "SELECT budget_released_at IS NOT NULL FROM deliveries WHERE id = $1",
            )
            .bind(delivery_id)
            .fetch_optional(&mut *tx)
            .await
            .doing(doing)?;
            let exempt = exempt.unwrap_or(false);
            let mut crossed = Vec::new();
            for a in asks {
                let sql = format!(
                    "UPDATE budget_usage SET reserved_micros = reserved_micros + $4 \
                     WHERE currency = $1 AND period = $2 AND period_start = $3 \
                     AND ($6 OR spent_micros + reserved_micros < $5) RETURNING {USAGE_COLUMNS}"
                );
                let row: Option<BudgetUsage> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(a.terms.currency.as_str())
                    .bind(a.terms.period.as_str())
                    .bind(a.period_start)
                    .bind(a.estimate_micros)
                    .bind(a.terms.limit_micros)
                    .bind(exempt)
                    .fetch_optional(&mut *tx)
                    .await
                    .doing(doing)?;
                let Some(row) = row else {
                    // Dropping the transaction rolls every reservation back;
                    // a lost attempt's old one is given back all the same.
                    drop(tx);
                    if !old.is_empty() {
                        self.release_budget(delivery_id).await?;
                    }
                    return Ok(Reserved::Full(a.terms.name()));
                };
                crossed.extend(tx.cross_thresholds(&row, &a.terms, now).await?);
                sqlx::query(
                    "INSERT INTO budget_reservations \
                     (delivery_id, currency, period, period_start, micros, reserved_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(delivery_id)
                .bind(a.terms.currency.as_str())
                .bind(a.terms.period.as_str())
                .bind(a.period_start)
                .bind(a.estimate_micros)
                .bind(now)
                .execute(&mut *tx)
                .await
                .doing(doing)?;
            }
            tx.commit().await.doing(doing)?;
            Ok(Reserved::Yes(crossed))
        })
    }

    /// Turns delivery `delivery_id`'s reservations into spend: its `cost`
    /// where it is in the budget's currency, else the estimate reserved (a
    /// price already learned for it wins over both). Each becomes the
    /// delivery's charge in that budget's period, which a price learned
    /// later corrects. Returns the thresholds crossed (`terms`: the
    /// configured budgets).
    pub async fn settle_budget(
        &self,
        delivery_id: &str,
        cost: Option<Money>,
        terms: &[BudgetTerms],
        now: DateTime<Utc>,
    ) -> Result<Vec<Crossing>, StoreError> {
        self.close_reservations(delivery_id, Some(cost), terms, now)
            .await
    }

    /// Gives delivery `delivery_id`'s reservations back (its send failed or
    /// did not happen).
    pub async fn release_budget(&self, delivery_id: &str) -> Result<(), StoreError> {
        self.close_reservations(delivery_id, None, &[], Utc::now())
            .await
            .map(|_| ())
    }

    /// `spend`: `None` releases; `Some(cost)` spends the cost (or the estimate).
    async fn close_reservations(
        &self,
        delivery_id: &str,
        spend: Option<Option<Money>>,
        terms: &[BudgetTerms],
        now: DateTime<Utc>,
    ) -> Result<Vec<Crossing>, StoreError> {
        let doing = "settling a budget reservation";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            let rows: Vec<ReservationRow> = sqlx::query_as(
                "DELETE FROM budget_reservations WHERE delivery_id = $1 \
                 RETURNING currency, period, period_start, micros",
            )
            .bind(delivery_id)
            .fetch_all(&mut *tx)
            .await
            .doing(doing)?;
            // A price learned before the reservation was settled (a quick
            // receipt) is the delivery's actual cost.
            let learned: Option<(i64, String)> = match spend {
                Some(_) if !rows.is_empty() => sqlx::query_as(
                    "SELECT cost_micros, currency FROM deliveries WHERE id = $1 \
                     AND reconciled_at IS NOT NULL AND cost_is_estimate = FALSE \
                     AND cost_micros IS NOT NULL AND currency IS NOT NULL",
                )
                .bind(delivery_id)
                .fetch_optional(&mut *tx)
                .await
                .doing(doing)?,
                _ => None,
            };
            let mut crossed = Vec::new();
            for r in &rows {
                let spent = match (spend, &learned) {
                    (None, _) => 0,
                    (Some(_), Some((micros, currency))) if *currency == r.currency => *micros,
                    (Some(Some(cost)), _) if cost.currency.as_str() == r.currency => cost.micros,
                    (Some(_), _) => r.micros,
                };
                let sql = format!(
                    "UPDATE budget_usage SET reserved_micros = reserved_micros - $4, \
                     spent_micros = spent_micros + $5 \
                     WHERE currency = $1 AND period = $2 AND period_start = $3 \
                     RETURNING {USAGE_COLUMNS}"
                );
                let row: Option<BudgetUsage> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(&r.currency)
                    .bind(&r.period)
                    .bind(r.period_start)
                    .bind(r.micros)
                    .bind(spent)
                    .fetch_optional(&mut *tx)
                    .await
                    .doing(doing)?;
                if spend.is_none() {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO budget_charges (delivery_id, currency, period, period_start, micros) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (delivery_id, currency, period) \
                     DO UPDATE SET micros = budget_charges.micros + excluded.micros",
                )
                .bind(delivery_id)
                .bind(&r.currency)
                .bind(&r.period)
                .bind(r.period_start)
                .bind(spent)
                .execute(&mut *tx)
                .await
                .doing(doing)?;
                if let (Some(row), Some(t)) = (row, terms_of(terms, &r.currency, &r.period)) {
                    crossed.extend(tx.cross_thresholds(&row, t, now).await?);
                }
            }
            tx.commit().await.doing(doing)?;
            Ok(crossed)
        })
    }

    /// Reservations made before `before` whose delivery is no longer being
    /// sent (their process was lost): the ids, for [`Db::settle_budget`] or
    /// [`Db::release_budget`] by the delivery's status and cost.
    pub async fn stale_reservations(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<(String, String, Option<i64>, Option<String>)>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT DISTINCT d.id, d.status, d.cost_micros, d.currency \
                 FROM budget_reservations r JOIN deliveries d ON d.id = r.delivery_id \
                 WHERE r.reserved_at < $1 AND d.status <> 'sending'",
            )
            .bind(before)
            .fetch_all(pool)
            .await
            .doing("reading stale budget reservations")
        })
    }

    /// A budget's counter for one period, if anything was reserved in it.
    pub async fn budget_usage(
        &self,
        currency: &str,
        period: BudgetPeriod,
        period_start: DateTime<Utc>,
    ) -> Result<Option<BudgetUsage>, StoreError> {
        let sql = format!(
            "SELECT {USAGE_COLUMNS} FROM budget_usage \
             WHERE currency = $1 AND period = $2 AND period_start = $3"
        );
        on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(currency)
                .bind(period.as_str())
                .bind(period_start)
                .fetch_optional(pool)
                .await
                .doing("reading a budget")
        })
    }

    /// Holds a pending delivery owned by `job_id` for budget `budget` (its
    /// name) until `until` (the period's end), without a job; its
    /// `last_error` says why. Its OTP code stays (sealed) so it can be sent
    /// when released. False when someone else moved it first.
    pub async fn hold_delivery(
        &self,
        delivery_id: &str,
        job_id: &str,
        budget: &str,
        until: DateTime<Utc>,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET status = 'held', job_id = NULL, next_attempt_at = $4, \
                 lease_until = NULL, leased_by = NULL, \
                 held_budget = $3, last_error = $5, updated_at = $6 \
                 WHERE id = $1 AND job_id = $2 AND status = 'pending'",
            )
            .bind(delivery_id)
            .bind(job_id)
            .bind(budget)
            .bind(until)
            .bind(why)
            .bind(now)
            .execute(pool)
            .await
            .doing("holding a delivery")?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Releases up to `limit` held deliveries chosen by `filter`: each goes
    /// back to `pending`, due at once with a new token, in one transaction. `by_ops` marks
    /// them as released past their budget (they are then sent even if it is
    /// still reached). Returns the ids and kinds released.
    pub async fn release_held(
        &self,
        filter: &HeldFilter,
        by_ops: bool,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, DeliveryKind)>, StoreError> {
        let doing = "releasing held deliveries";
        let prefix = filter.currency.as_ref().map(|c| format!("{c}/"));
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            // Marks the transaction as a writer before it reads (SQLite).
            sqlx::query("UPDATE deliveries SET status = status WHERE 1 = 0")
                .execute(&mut *tx)
                .await
                .doing(doing)?;
            let held: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, kind FROM deliveries WHERE status = 'held' \
                 AND ($1 IS NULL OR substr(held_budget, 1, 4) = $1) \
                 AND ($2 IS NULL OR next_attempt_at <= $2) \
                 ORDER BY id LIMIT $3",
            )
            .bind(prefix.as_deref())
            .bind(filter.due_by)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .doing(doing)?;
            let mut released = Vec::with_capacity(held.len());
            for (id, kind) in held {
                let kind: DeliveryKind = kind.parse().map_err(StoreError::Corrupt)?;
                let job = DeliveryJob::new(&id);
                // Due at once, by any process's clock: its creation is past.
                let updated = sqlx::query(
                    "UPDATE deliveries SET status = 'pending', job_id = $2, next_attempt_at = created_at, \
                     held_budget = NULL, updated_at = $3, \
                     budget_released_at = CASE WHEN $4 THEN $3 ELSE budget_released_at END \
                     WHERE id = $1 AND status = 'held'",
                )
                .bind(&id)
                .bind(&job.job_id)
                .bind(now)
                .bind(by_ops)
                .execute(&mut *tx)
                .await
                .doing(doing)?;
                if updated.rows_affected() == 1 {
                    released.push((id, kind));
                }
            }
            tx.commit().await.doing(doing)?;
            Ok(released)
        })
    }

    /// Expires held OTPs whose code's TTL has passed, wiping the code.
    pub async fn expire_held(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET status = 'expired', otp_code = NULL, next_attempt_at = NULL, \
                 held_budget = NULL, updated_at = $1, \
                 last_error = 'the code expired while its budget held it' \
                 WHERE status = 'held' AND expires_at <= $1",
            )
            .bind(now)
            .execute(pool)
            .await
            .doing("expiring held deliveries")?
            .rows_affected()
        }))
    }

    /// Held deliveries by the budget holding them (`KES/month`).
    pub async fn held_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT COALESCE(held_budget, ''), COUNT(*) FROM deliveries \
                 WHERE status = 'held' GROUP BY held_budget",
            )
            .fetch_all(pool)
            .await
            .doing("counting held deliveries")
        })
    }
}

/// The terms of the budget counting `currency` by `period`, if configured.
fn terms_of<'a>(terms: &'a [BudgetTerms], currency: &str, period: &str) -> Option<&'a BudgetTerms> {
    terms
        .iter()
        .find(|t| t.currency.as_str() == currency && t.period.as_str() == period)
}

/// Statements run inside a transaction that moved a budget's counter.
pub(crate) trait CounterTx {
    /// Records the alert thresholds `usage` (the counter just moved) newly
    /// crosses, once a period across processes, with a `budget.threshold`
    /// webhook event for each endpoint that subscribed to it and whose key
    /// has the `ops` scope. Returns what was crossed, to log.
    fn cross_thresholds(
        &mut self,
        usage: &BudgetUsage,
        terms: &BudgetTerms,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Crossing>, StoreError>> + Send;

    /// Replaces delivery `delivery_id`'s charges in `price`'s currency by
    /// `price` (a price learned after the send), moving the spend of the
    /// period each was counted in by the difference. Returns the
    /// thresholds crossed.
    fn recharge(
        &mut self,
        delivery_id: &str,
        price: Money,
        terms: &[BudgetTerms],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Crossing>, StoreError>> + Send;
}

/// One implementation for each backend's connection: the statements are
/// the same text.
macro_rules! counter_tx {
    ($conn:ty) => {
        impl CounterTx for $conn {
            async fn cross_thresholds(
                &mut self,
                usage: &BudgetUsage,
                terms: &BudgetTerms,
                now: DateTime<Utc>,
            ) -> Result<Vec<Crossing>, StoreError> {
                let doing = "recording a budget alert";
                let crossed = terms.crossings(
                    usage.period_start,
                    usage.spent_micros,
                    usage.reserved_micros,
                    usage.alerts_logged,
                );
                let Some(last) = crossed.last() else {
                    return Ok(crossed);
                };
                let reached = i64::try_from(last.ordinal).unwrap_or(i64::MAX);
                let marked = sqlx::query(
                    "UPDATE budget_usage SET alerts_logged = $4 \
                     WHERE currency = $1 AND period = $2 AND period_start = $3 \
                     AND alerts_logged < $4",
                )
                .bind(&usage.currency)
                .bind(&usage.period)
                .bind(usage.period_start)
                .bind(reached)
                .execute(&mut *self)
                .await
                .doing(doing)?
                .rows_affected();
                if marked != 1 {
                    return Ok(Vec::new());
                }
                let pattern = format!("%,{},%", EventType::BudgetThreshold.as_str());
                let endpoints: Vec<(String,)> = sqlx::query_as(
                    "SELECT e.id FROM webhook_endpoints e \
                     WHERE e.disabled_at IS NULL AND e.events LIKE $1 \
                     AND EXISTS (SELECT 1 FROM api_keys k WHERE k.name = e.api_key_name \
                       AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2) \
                       AND (',' || k.scopes || ',') LIKE '%,ops,%') \
                     ORDER BY e.id",
                )
                .bind(&pattern)
                .bind(now)
                .fetch_all(&mut *self)
                .await
                .doing(doing)?;
                for c in &crossed {
                    let body = budget_payload(c, now).to_string();
                    let sequence = i64::try_from(c.ordinal).unwrap_or(i64::MAX);
                    for (endpoint,) in &endpoints {
                        sqlx::query(
                            "INSERT INTO webhook_events (id, endpoint_id, delivery_id, type, \
                             sequence, payload, created_at, next_attempt_at, attempts, status) \
                             VALUES ($1, $2, NULL, $3, $4, $5, $6, $6, 0, 'pending')",
                        )
                        .bind(new_event_id())
                        .bind(endpoint)
                        .bind(EventType::BudgetThreshold.as_str())
                        .bind(sequence)
                        .bind(&body)
                        .bind(now)
                        .execute(&mut *self)
                        .await
                        .doing("raising a budget.threshold event")?;
                    }
                }
                Ok(crossed)
            }

            async fn recharge(
                &mut self,
                delivery_id: &str,
                price: Money,
                terms: &[BudgetTerms],
                now: DateTime<Utc>,
            ) -> Result<Vec<Crossing>, StoreError> {
                let doing = "replacing a budget charge by the actual price";
                let charges: Vec<ReservationRow> = sqlx::query_as(
                    "SELECT currency, period, period_start, micros FROM budget_charges \
                     WHERE delivery_id = $1 AND currency = $2 ORDER BY period",
                )
                .bind(delivery_id)
                .bind(price.currency.as_str())
                .fetch_all(&mut *self)
                .await
                .doing(doing)?;
                let mut crossed = Vec::new();
                for c in charges {
                    let delta = price.micros.saturating_sub(c.micros);
                    if delta == 0 {
                        continue;
                    }
                    sqlx::query(
                        "UPDATE budget_charges SET micros = $4 \
                         WHERE delivery_id = $1 AND currency = $2 AND period = $3",
                    )
                    .bind(delivery_id)
                    .bind(&c.currency)
                    .bind(&c.period)
                    .bind(price.micros)
                    .execute(&mut *self)
                    .await
                    .doing(doing)?;
                    let sql = format!(
                        "UPDATE budget_usage SET spent_micros = spent_micros + $4 \
                         WHERE currency = $1 AND period = $2 AND period_start = $3 \
                         RETURNING {USAGE_COLUMNS}"
                    );
                    let row: Option<BudgetUsage> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(&c.currency)
                        .bind(&c.period)
                        .bind(c.period_start)
                        .bind(delta)
                        .fetch_optional(&mut *self)
                        .await
                        .doing(doing)?;
                    if let (Some(row), Some(t)) = (row, terms_of(terms, &c.currency, &c.period)) {
                        crossed.extend(self.cross_thresholds(&row, t, now).await?);
                    }
                }
                Ok(crossed)
            }
        }
    };
}

counter_tx!(SqliteConnection);
counter_tx!(PgConnection);
