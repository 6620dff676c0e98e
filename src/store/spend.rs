//! The spend guard's rows: budget counters, reservations, held deliveries.
//!
//! A budget's counter row (`budget_usage`, one per currency, period and
//! period start) is the one place a send's estimate is admitted. A batch of
//! sends (see `store/batch.rs`) locks the counters it needs in key order
//! (`SELECT … FOR UPDATE` on Postgres; SQLite has one writer), admits each
//! send in turn against what the ones before it reserved, and writes each
//! counter once. A second process's batch waits for the lock and reads the
//! first's result, so concurrent workers never admit past the limit by more
//! than the one send that found room. The rule itself is
//! `domain::budget::admits`; these statements only keep it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use sqlx::{PgConnection, SqliteConnection};

use super::{Db, Doing, StoreError, on_pool};
use crate::domain::DeliveryKind;
use crate::domain::budget::{BudgetPeriod, BudgetTerms, Crossing, admits};
use crate::domain::event::{EventType, budget_payload, new_event_id};
use crate::domain::money::Money;
use crate::queue::DeliveryJob;

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

/// What [`Db::reserve_budgets`] did for one send.
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

/// A send asking room in its budgets ([`Db::reserve_budgets`]).
#[derive(Debug, Clone)]
pub struct ReserveCall {
    /// The delivery about to be sent.
    pub delivery_id: String,
    /// Each budget it counts against, with its estimate.
    pub asks: Vec<BudgetAsk>,
    /// When (threshold events are stamped with it).
    pub now: DateTime<Utc>,
}

/// A send's reservations to close ([`Db::close_reservations`]).
#[derive(Debug, Clone)]
pub struct SettleCall {
    /// The delivery whose reservations close.
    pub delivery_id: String,
    /// `None` gives them back (the send failed or did not happen);
    /// `Some(cost)` spends the cost where it is in the budget's currency,
    /// else the estimate reserved (a price already learned wins over both).
    pub spend: Option<Option<Money>>,
    /// The configured budgets (for the thresholds a spend crosses).
    pub terms: Vec<BudgetTerms>,
    /// When (threshold events are stamped with it).
    pub now: DateTime<Utc>,
}

/// A budget counter's key: currency, period and period start.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CounterKey {
    currency: String,
    period: String,
    period_start: DateTime<Utc>,
}

impl CounterKey {
    fn of_ask(a: &BudgetAsk) -> Self {
        CounterKey {
            currency: a.terms.currency.as_str().to_owned(),
            period: a.terms.period.as_str().to_owned(),
            period_start: a.period_start,
        }
    }
}

/// A reservation or a charge to write: delivery, counter and micro-units.
#[derive(Debug, Clone)]
struct CounterEntry {
    delivery_id: String,
    key: CounterKey,
    micros: i64,
}

impl Db {
    /// Reserves each call's asks (each budget's room for that send), all or
    /// none per call, for many sends in one transaction; the answers are in
    /// the order of `calls` (run through
    /// [`Batcher::reserve_budget`](super::Batcher::reserve_budget)).
    ///
    /// The counters are locked in key order (`FOR UPDATE` on Postgres; SQLite
    /// has one writer) and each call is admitted in turn against what the
    /// calls before it reserved, by `domain::budget::admits`: the same rule,
    /// and the same overshoot (at most the one send that found room), as
    /// one guarded `UPDATE` per send. A delivery ops released past its budget
    /// reserves without the limit (its cost still counts). A reservation a
    /// delivery still held (a lost attempt) is given back first, so a
    /// delivery holds at most one per budget.
    pub async fn reserve_budgets(
        &self,
        calls: &[ReserveCall],
    ) -> Result<Vec<Reserved>, StoreError> {
        let doing = "reserving budget";
        let ids: Vec<String> = calls.iter().map(|c| c.delivery_id.clone()).collect();
        let lock = self.counter_lock();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            // A write first: SQLite then holds the write lock for the whole
            // transaction, so its reads never go stale.
            let old = tx.take_reservations(&ids).await?;
            let mut keys: BTreeSet<CounterKey> = calls
                .iter()
                .flat_map(|c| c.asks.iter().map(CounterKey::of_ask))
                .collect();
            keys.extend(old.iter().map(|r| r.key.clone()));
            let mut counters = BTreeMap::new();
            for k in &keys {
                counters.insert(k.clone(), tx.lock_counter(k, lock).await?);
            }
            let read = counters.clone();
            for r in &old {
                if let Some(c) = counters.get_mut(&r.key) {
                    c.reserved_micros = c.reserved_micros.saturating_sub(r.micros);
                }
            }
            let exempt = tx.released_past_budget(&ids).await?;
            let mut answers = Vec::with_capacity(calls.len());
            let mut reservations = Vec::new();
            let mut crossed_all = Vec::new();
            for call in calls {
                let exempt = exempt.contains(&call.delivery_id);
                let full = call.asks.iter().find(|a| {
                    counters.get(&CounterKey::of_ask(a)).is_some_and(|c| {
                        !exempt
                            && !admits(
                                c.spent_micros.saturating_add(c.reserved_micros),
                                a.terms.limit_micros,
                            )
                    })
                });
                if let Some(a) = full {
                    answers.push(Reserved::Full(a.terms.name()));
                    continue;
                }
                let mut crossed = Vec::new();
                for a in &call.asks {
                    let key = CounterKey::of_ask(a);
                    let Some(c) = counters.get_mut(&key) else {
                        return Err(StoreError::Corrupt(format!("budget {} has no counter", a.terms.name())));
                    };
                    c.reserved_micros = c.reserved_micros.saturating_add(a.estimate_micros);
                    let now_crossed = a.terms.crossings(
                        c.period_start,
                        c.spent_micros,
                        c.reserved_micros,
                        c.alerts_logged,
                    );
                    if let Some(last) = now_crossed.last() {
                        c.alerts_logged = i64::try_from(last.ordinal).unwrap_or(i64::MAX);
                    }
                    crossed.extend(now_crossed);
                    reservations.push(CounterEntry {
                        delivery_id: call.delivery_id.clone(),
                        key,
                        micros: a.estimate_micros,
                    });
                }
                crossed_all.extend(crossed.iter().cloned().map(|c| (c, call.now)));
                answers.push(Reserved::Yes(crossed));
            }
            for (k, c) in &counters {
                if read.get(k) == Some(c) {
                    continue;
                }
                sqlx::query(
                    "UPDATE budget_usage SET reserved_micros = $4, alerts_logged = $5 \
                     WHERE currency = $1 AND period = $2 AND period_start = $3",
                )
                .bind(&k.currency)
                .bind(&k.period)
                .bind(k.period_start)
                .bind(c.reserved_micros)
                .bind(c.alerts_logged)
                .execute(&mut *tx)
                .await
                .doing(doing)?;
            }
            let reserved_at = calls.iter().map(|c| c.now).max().unwrap_or_else(Utc::now);
            tx.insert_reservations(&reservations, reserved_at).await?;
            for (crossing, now) in &crossed_all {
                tx.raise_threshold_events(crossing, *now).await?;
            }
            tx.commit().await.doing(doing)?;
            Ok(answers)
        })
    }

    /// Closes each call's reservations, for many sends in one transaction:
    /// spends them (each becomes the delivery's charge in that budget's
    /// period, which a price learned later corrects) or gives them back.
    /// Returns, per call, the thresholds crossed (run through
    /// [`Batcher::close_reservations`](super::Batcher::close_reservations)).
    /// The counters move in key order, after the charges, as a learned
    /// price moves them (`CounterTx::recharge`): the two never wait on each
    /// other in a circle.
    pub async fn close_reservations(
        &self,
        calls: &[SettleCall],
    ) -> Result<Vec<Vec<Crossing>>, StoreError> {
        let doing = "settling budget reservations";
        let ids: Vec<String> = calls.iter().map(|c| c.delivery_id.clone()).collect();
        let call_of: HashMap<&str, usize> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| (c.delivery_id.as_str(), i))
            .collect();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            let taken = tx.take_reservations(&ids).await?;
            // A price learned before the reservation was settled (a quick
            // receipt) is the delivery's actual cost.
            let spending: Vec<String> = calls
                .iter()
                .filter(|c| c.spend.is_some())
                .map(|c| c.delivery_id.clone())
                .collect();
            let learned = if spending.is_empty() || taken.is_empty() {
                HashMap::new()
            } else {
                tx.learned_prices(&spending).await?
            };
            // Per counter: reserved given back, spent added, the last call.
            let mut moves: BTreeMap<CounterKey, (i64, i64, usize)> = BTreeMap::new();
            let mut charges = Vec::new();
            for r in &taken {
                let Some(&i) = call_of.get(r.delivery_id.as_str()) else {
                    continue;
                };
                let spend = calls[i].spend;
                let spent = match (spend, learned.get(&r.delivery_id)) {
                    (None, _) => 0,
                    (Some(_), Some((micros, currency))) if *currency == r.key.currency => *micros,
                    (Some(Some(cost)), _) if cost.currency.as_str() == r.key.currency => cost.micros,
                    (Some(_), _) => r.micros,
                };
                let m = moves.entry(r.key.clone()).or_insert((0, 0, i));
                m.0 = m.0.saturating_add(r.micros);
                m.1 = m.1.saturating_add(spent);
                m.2 = i;
                if spend.is_some() {
                    charges.push(CounterEntry {
                        delivery_id: r.delivery_id.clone(),
                        key: r.key.clone(),
                        micros: spent,
                    });
                }
            }
            tx.add_charges(&charges).await?;
            let mut answers = vec![Vec::new(); calls.len()];
            for (k, (given_back, spent, i)) in &moves {
                let sql = format!(
                    "UPDATE budget_usage SET reserved_micros = reserved_micros - $4, \
                     spent_micros = spent_micros + $5 \
                     WHERE currency = $1 AND period = $2 AND period_start = $3 \
                     RETURNING {USAGE_COLUMNS}"
                );
                let row: Option<BudgetUsage> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(&k.currency)
                    .bind(&k.period)
                    .bind(k.period_start)
                    .bind(given_back)
                    .bind(spent)
                    .fetch_optional(&mut *tx)
                    .await
                    .doing(doing)?;
                let call = &calls[*i];
                if let (Some(row), Some(t)) = (row, terms_of(&call.terms, &k.currency, &k.period)) {
                    answers[*i].extend(tx.cross_thresholds(&row, t, call.now).await?);
                }
            }
            tx.commit().await.doing(doing)?;
            Ok(answers)
        })
    }

    /// `FOR UPDATE` where the backend locks rows (Postgres).
    fn counter_lock(&self) -> &'static str {
        match self {
            Db::Postgres(_) => " FOR UPDATE",
            Db::Sqlite(_) => "",
        }
    }

    /// Reservations made before `before` whose delivery is no longer being
    /// sent (their process was lost): the ids, for [`Db::close_reservations`]
    /// by the delivery's status and cost.
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

    /// Expires held deliveries whose `expires_at` has passed (an OTP's TTL,
    /// a notification's own deadline), wiping any code.
    pub async fn expire_held(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET status = 'expired', otp_code = NULL, next_attempt_at = NULL, \
                 held_budget = NULL, updated_at = $1, \
                 last_error = CASE WHEN kind = 'otp' \
                   THEN 'the code expired while its budget held it' \
                   ELSE 'its deadline passed while its budget held it' END \
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

    /// Writes one `budget.threshold` webhook event for `crossing` to each
    /// endpoint that subscribed to it and whose key has the `ops` scope.
    fn raise_threshold_events(
        &mut self,
        crossing: &Crossing,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates the counter `key` if it is new and reads it, locked with
    /// `lock` (see [`Db::counter_lock`]).
    fn lock_counter(
        &mut self,
        key: &CounterKey,
        lock: &'static str,
    ) -> impl Future<Output = Result<BudgetUsage, StoreError>> + Send;

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
                for c in &crossed {
                    self.raise_threshold_events(c, now).await?;
                }
                Ok(crossed)
            }

            async fn raise_threshold_events(
                &mut self,
                crossing: &Crossing,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let doing = "raising a budget.threshold event";
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
                let body = budget_payload(crossing, now).to_string();
                let sequence = i64::try_from(crossing.ordinal).unwrap_or(i64::MAX);
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
                        .doing(doing)?;
                }
                Ok(())
            }

            async fn lock_counter(
                &mut self,
                key: &CounterKey,
                lock: &'static str,
            ) -> Result<BudgetUsage, StoreError> {
                let doing = "locking a budget counter";
                sqlx::query(
                    "INSERT INTO budget_usage (currency, period, period_start) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&key.currency)
                .bind(&key.period)
                .bind(key.period_start)
                .execute(&mut *self)
                .await
                .doing(doing)?;
                let sql = format!(
                    "SELECT {USAGE_COLUMNS} FROM budget_usage \
                     WHERE currency = $1 AND period = $2 AND period_start = $3{lock}"
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(&key.currency)
                    .bind(&key.period)
                    .bind(key.period_start)
                    .fetch_one(&mut *self)
                    .await
                    .doing(doing)
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

/// The statements of a batch of reservations that take many deliveries at
/// once: arrays on Postgres (one statement each), JSON lists and one
/// statement per row on SQLite (in process, a row costs no round trip).
trait BatchTx {
    /// Deletes the deliveries' reservations and returns them.
    fn take_reservations(
        &mut self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<CounterEntry>, StoreError>> + Send;

    /// Those of the deliveries ops released past their budget.
    fn released_past_budget(
        &mut self,
        ids: &[String],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;

    /// The actual price already learned for those of the deliveries that
    /// have one: micro-units and currency.
    fn learned_prices(
        &mut self,
        ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, (i64, String)>, StoreError>> + Send;

    /// Writes reservations made at `reserved_at`.
    fn insert_reservations(
        &mut self,
        rows: &[CounterEntry],
        reserved_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Adds to the deliveries' charges (a delivery's first charge in a
    /// budget creates it).
    fn add_charges(
        &mut self,
        rows: &[CounterEntry],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A reservation row with its delivery, as a batch reads it.
#[derive(Debug, FromRow)]
struct TakenRow {
    delivery_id: String,
    currency: String,
    period: String,
    period_start: DateTime<Utc>,
    micros: i64,
}

impl From<TakenRow> for CounterEntry {
    fn from(r: TakenRow) -> Self {
        CounterEntry {
            delivery_id: r.delivery_id,
            key: CounterKey {
                currency: r.currency,
                period: r.period,
                period_start: r.period_start,
            },
            micros: r.micros,
        }
    }
}

const LEARNED_PRICE: &str = "reconciled_at IS NOT NULL AND cost_is_estimate = FALSE \
     AND cost_micros IS NOT NULL AND currency IS NOT NULL";

const ADD_CHARGE: &str = "ON CONFLICT (delivery_id, currency, period) \
     DO UPDATE SET micros = budget_charges.micros + excluded.micros";

impl BatchTx for PgConnection {
    async fn take_reservations(&mut self, ids: &[String]) -> Result<Vec<CounterEntry>, StoreError> {
        let rows: Vec<TakenRow> = sqlx::query_as(
            "DELETE FROM budget_reservations WHERE delivery_id = ANY($1) \
             RETURNING delivery_id, currency, period, period_start, micros",
        )
        .bind(ids)
        .fetch_all(&mut *self)
        .await
        .doing("taking budget reservations")?;
        Ok(rows.into_iter().map(CounterEntry::from).collect())
    }

    async fn released_past_budget(
        &mut self,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM deliveries WHERE id = ANY($1) AND budget_released_at IS NOT NULL",
        )
        .bind(ids)
        .fetch_all(&mut *self)
        .await
        .doing("reading deliveries released past their budget")?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn learned_prices(
        &mut self,
        ids: &[String],
    ) -> Result<HashMap<String, (i64, String)>, StoreError> {
        let sql = format!(
            "SELECT id, cost_micros, currency FROM deliveries WHERE id = ANY($1) AND {LEARNED_PRICE}"
        );
        let rows: Vec<(String, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(&mut *self)
            .await
            .doing("reading learned prices")?;
        Ok(rows.into_iter().map(|(id, m, c)| (id, (m, c))).collect())
    }

    async fn insert_reservations(
        &mut self,
        rows: &[CounterEntry],
        reserved_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (ids, currencies, periods, starts, micros) = columns(rows);
        sqlx::query(
            "INSERT INTO budget_reservations \
             (delivery_id, currency, period, period_start, micros, reserved_at) \
             SELECT r.*, $6 FROM unnest($1::text[], $2::text[], $3::text[], \
             $4::timestamptz[], $5::bigint[]) AS r",
        )
        .bind(ids)
        .bind(currencies)
        .bind(periods)
        .bind(starts)
        .bind(micros)
        .bind(reserved_at)
        .execute(&mut *self)
        .await
        .doing("writing budget reservations")?;
        Ok(())
    }

    async fn add_charges(&mut self, rows: &[CounterEntry]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (ids, currencies, periods, starts, micros) = columns(rows);
        let sql = format!(
            "INSERT INTO budget_charges (delivery_id, currency, period, period_start, micros) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], \
             $5::bigint[]) {ADD_CHARGE}"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ids)
            .bind(currencies)
            .bind(periods)
            .bind(starts)
            .bind(micros)
            .execute(&mut *self)
            .await
            .doing("writing budget charges")?;
        Ok(())
    }
}

/// `rows` as one array per column (Postgres `unnest`).
#[allow(clippy::type_complexity, reason = "the five columns, in order")]
fn columns(
    rows: &[CounterEntry],
) -> (
    Vec<&str>,
    Vec<&str>,
    Vec<&str>,
    Vec<DateTime<Utc>>,
    Vec<i64>,
) {
    (
        rows.iter().map(|r| r.delivery_id.as_str()).collect(),
        rows.iter().map(|r| r.key.currency.as_str()).collect(),
        rows.iter().map(|r| r.key.period.as_str()).collect(),
        rows.iter().map(|r| r.key.period_start).collect(),
        rows.iter().map(|r| r.micros).collect(),
    )
}

/// `ids` as the JSON list SQLite's `json_each` reads.
fn json_list(ids: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl BatchTx for SqliteConnection {
    async fn take_reservations(&mut self, ids: &[String]) -> Result<Vec<CounterEntry>, StoreError> {
        let rows: Vec<TakenRow> = sqlx::query_as(
            "DELETE FROM budget_reservations WHERE delivery_id IN (SELECT value FROM json_each($1)) \
             RETURNING delivery_id, currency, period, period_start, micros",
        )
        .bind(json_list(ids)?)
        .fetch_all(&mut *self)
        .await
        .doing("taking budget reservations")?;
        Ok(rows.into_iter().map(CounterEntry::from).collect())
    }

    async fn released_past_budget(
        &mut self,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM deliveries WHERE id IN (SELECT value FROM json_each($1)) \
             AND budget_released_at IS NOT NULL",
        )
        .bind(json_list(ids)?)
        .fetch_all(&mut *self)
        .await
        .doing("reading deliveries released past their budget")?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn learned_prices(
        &mut self,
        ids: &[String],
    ) -> Result<HashMap<String, (i64, String)>, StoreError> {
        let sql = format!(
            "SELECT id, cost_micros, currency FROM deliveries \
             WHERE id IN (SELECT value FROM json_each($1)) AND {LEARNED_PRICE}"
        );
        let rows: Vec<(String, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(json_list(ids)?)
            .fetch_all(&mut *self)
            .await
            .doing("reading learned prices")?;
        Ok(rows.into_iter().map(|(id, m, c)| (id, (m, c))).collect())
    }

    async fn insert_reservations(
        &mut self,
        rows: &[CounterEntry],
        reserved_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for r in rows {
            sqlx::query(
                "INSERT INTO budget_reservations \
                 (delivery_id, currency, period, period_start, micros, reserved_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&r.delivery_id)
            .bind(&r.key.currency)
            .bind(&r.key.period)
            .bind(r.key.period_start)
            .bind(r.micros)
            .bind(reserved_at)
            .execute(&mut *self)
            .await
            .doing("writing budget reservations")?;
        }
        Ok(())
    }

    async fn add_charges(&mut self, rows: &[CounterEntry]) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO budget_charges (delivery_id, currency, period, period_start, micros) \
             VALUES ($1, $2, $3, $4, $5) {ADD_CHARGE}"
        );
        for r in rows {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&r.delivery_id)
                .bind(&r.key.currency)
                .bind(&r.key.period)
                .bind(r.key.period_start)
                .bind(r.micros)
                .execute(&mut *self)
                .await
                .doing("writing budget charges")?;
        }
        Ok(())
    }
}
