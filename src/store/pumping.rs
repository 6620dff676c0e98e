//! The SMS-pumping checks inside the transaction that records an API OTP
//! (`Db::insert_deliveries_guarded`): a country's hourly OTP limit and a
//! number range's bursts. They read only OTPs already recorded (and those
//! accepted earlier in the same batch), so a refused request writes nothing.
//! SQLite runs them under `BEGIN IMMEDIATE`; Postgres first takes an
//! advisory lock per country prefix and range (in hash order), so two
//! requests to one range are counted one after the other. The rules are
//! `domain::pumping`'s.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Doing, NewDelivery, StoreError};
use crate::config::CountryLimit;
use crate::domain::pumping::{
    BurstRule, country_admits, prefix_end, range_of, refused_until, threshold,
};

/// The pumping checks an API OTP gets.
#[derive(Debug, Clone, Default)]
pub struct PumpingGuard {
    /// Its country's hourly limit, if one is set.
    pub country: Option<CountryLimit>,
    /// The range-burst rule, unless switched off.
    pub burst: Option<BurstRule>,
}

/// A refusal: the rule, the prefix or range it concerns (never the full
/// number), and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpingRefusal {
    /// `country-limit` or `range-burst`.
    pub rule: &'static str,
    /// The country prefix or number range.
    pub scope: String,
    /// When a request may succeed again.
    pub retry_after: Duration,
}

impl PumpingGuard {
    /// The advisory-lock keys of this guard for `recipient` (Postgres).
    pub(super) fn lock_keys(&self, recipient: &str) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(c) = &self.country {
            keys.push(format!("country {}", c.prefix));
        }
        if let Some(range) = self
            .burst
            .and_then(|b| range_of(recipient, b.digits).map(str::to_owned))
        {
            keys.push(format!("range {range}"));
        }
        keys
    }
}

fn hour() -> chrono::Duration {
    chrono::Duration::hours(1)
}

fn wait(from: DateTime<Utc>, until: DateTime<Utc>) -> Duration {
    let d = (until - from).to_std().unwrap_or_default();
    // Whole seconds, rounded up, at least one: what Retry-After carries.
    Duration::from_secs((d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1))
}

/// OTPs recorded to numbers under `prefix` after `since`, ascending.
macro_rules! otp_times {
    ($tx:expr, $prefix:expr, $since:expr) => {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT created_at FROM deliveries WHERE kind = 'otp' AND recipient >= $1 \
             AND recipient < $2 AND created_at > $3 ORDER BY created_at",
        )
        .bind($prefix)
        .bind(prefix_end($prefix))
        .bind($since)
        .fetch_all(&mut *$tx)
        .await
        .doing("counting recent OTPs of a country or range")
    };
}

/// OTPs recorded to numbers under `prefix` after `since`.
macro_rules! otp_count {
    ($tx:expr, $prefix:expr, $since:expr) => {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM deliveries WHERE kind = 'otp' AND recipient >= $1 \
             AND recipient < $2 AND created_at > $3",
        )
        .bind($prefix)
        .bind(prefix_end($prefix))
        .bind($since)
        .fetch_one(&mut *$tx)
        .await
        .doing("counting a range's baseline")
    };
}

/// Runs the checks for `d` on `$tx` (either backend's connection),
/// counting also `earlier` (recipients and times accepted before it in the
/// same batch, not yet written).
macro_rules! check_body {
    ($tx:expr, $d:expr, $guard:expr, $earlier:expr) => {{
        let d: &NewDelivery = $d;
        let guard: &PumpingGuard = $guard;
        let earlier: &[(String, DateTime<Utc>)] = $earlier;
        let now = d.created_at;
        let under = |prefix: &str, since: DateTime<Utc>| -> Vec<DateTime<Utc>> {
            earlier
                .iter()
                .filter(|(r, at)| r.starts_with(prefix) && *at > since)
                .map(|(_, at)| *at)
                .collect()
        };
        if let Some(c) = &guard.country {
            let since = now - hour();
            let mut times: Vec<DateTime<Utc>> = otp_times!($tx, c.prefix.as_str(), since)?;
            times.extend(under(&c.prefix, since));
            times.sort();
            if !country_admits(times.len() as u64, c.otp_per_hour) {
                let oldest = times.first().copied().unwrap_or(now);
                return Ok(Some(PumpingRefusal {
                    rule: "country-limit",
                    scope: c.prefix.clone(),
                    retry_after: wait(now, oldest + hour()),
                }));
            }
        }
        if let Some(rule) = &guard.burst
            && let Some(range) = range_of(&d.recipient, rule.digits)
        {
            let horizon = chrono::Duration::from_std(rule.cool_off + rule.window)
                .unwrap_or(chrono::Duration::MAX);
            let since = now - horizon;
            let mut times: Vec<DateTime<Utc>> = otp_times!($tx, range, since)?;
            times.extend(under(range, since));
            times.sort();
            // The smallest threshold first: the baseline is read only for a
            // range that would trip on it.
            let mut until = refused_until(rule, &times, u64::from(rule.min_burst), now);
            if until.is_some() {
                let base_since = now
                    - chrono::Duration::from_std(rule.baseline).unwrap_or(chrono::Duration::MAX);
                let baseline = otp_count!($tx, range, base_since)?;
                let baseline =
                    u64::try_from(baseline).unwrap_or(0) + under(range, base_since).len() as u64;
                until = refused_until(rule, &times, threshold(rule, baseline), now);
            }
            if let Some(until) = until {
                return Ok(Some(PumpingRefusal {
                    rule: "range-burst",
                    scope: range.to_owned(),
                    retry_after: wait(now, until),
                }));
            }
        }
        Ok(None)
    }};
}

/// The checks on SQLite, inside the caller's `BEGIN IMMEDIATE` transaction.
pub(super) async fn check_sqlite(
    tx: &mut sqlx::SqliteConnection,
    d: &NewDelivery,
    guard: &PumpingGuard,
) -> Result<Option<PumpingRefusal>, StoreError> {
    check_body!(tx, d, guard, &[])
}

/// The checks on Postgres, inside the caller's transaction, after
/// [`lock_pg`].
pub(super) async fn check_pg(
    tx: &mut sqlx::PgConnection,
    d: &NewDelivery,
    guard: &PumpingGuard,
    earlier: &[(String, DateTime<Utc>)],
) -> Result<Option<PumpingRefusal>, StoreError> {
    check_body!(tx, d, guard, earlier)
}

/// Takes the advisory locks of every key, in hash order (so two batches never
/// wait on each other in a cycle), until the transaction ends.
pub(super) async fn lock_pg(
    tx: &mut sqlx::PgConnection,
    keys: &[String],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtextextended(k, 19) AS h FROM unnest($1::text[]) AS k ORDER BY h) AS locks",
    )
    .bind(keys)
    .execute(&mut *tx)
    .await
    .doing("locking countries and number ranges")?;
    Ok(())
}

impl super::Db {
    /// Number ranges (`digits` digits) with at least `min` OTPs after
    /// `since`, and how many: the candidates for a refused range.
    pub async fn busy_ranges(
        &self,
        digits: usize,
        since: DateTime<Utc>,
        min: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let len = i32::try_from(digits + 1).unwrap_or(i32::MAX);
        super::on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT substr(recipient, 1, $1) AS r, COUNT(*) FROM deliveries \
                 WHERE kind = 'otp' AND created_at > $2 AND recipient LIKE '+%' \
                 GROUP BY 1 HAVING COUNT(*) >= $3 ORDER BY r",
            )
            .bind(len)
            .bind(since)
            .bind(min)
            .fetch_all(pool)
            .await
            .doing("finding busy number ranges")
        })
    }

    /// The OTPs of one range after `since`, ascending; and its count after
    /// `baseline_since`.
    pub async fn range_history(
        &self,
        range: &str,
        since: DateTime<Utc>,
        baseline_since: DateTime<Utc>,
    ) -> Result<(Vec<DateTime<Utc>>, i64), StoreError> {
        super::on_pool!(self, pool => {
            let mut conn = pool.acquire().await.doing("reading a number range")?;
            let times = otp_times!(conn, range, since)?;
            let count = otp_count!(conn, range, baseline_since)?;
            Ok((times, count))
        })
    }
}
