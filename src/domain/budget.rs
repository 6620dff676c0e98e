//! Budgets: the pure rules of the spend guard (periods, the admission rule,
//! alert thresholds). No I/O: the store keeps the counters, the dispatcher
//! asks.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use crate::domain::money::{Currency, Money};

/// How long a budget's period lasts; periods start at UTC midnight (of the
/// day, or of the month's first day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl BudgetPeriod {
    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }

    /// The start of the period `at` falls in.
    pub fn start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let date = at.date_naive();
        let first = match self {
            BudgetPeriod::Day => date,
            BudgetPeriod::Month => date.with_day(1).unwrap_or(date),
        };
        midnight(first)
    }

    /// The start of the period after the one `at` falls in.
    pub fn next_start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.start(at).date_naive();
        let next = match self {
            BudgetPeriod::Day => start.succ_opt(),
            BudgetPeriod::Month => start.checked_add_months(Months::new(1)),
        };
        next.map(midnight).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
}

impl fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BudgetPeriod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "day" => Ok(BudgetPeriod::Day),
            "month" => Ok(BudgetPeriod::Month),
            other => Err(format!("`{other}` is not a period (expected day or month)")),
        }
    }
}

/// Whether a budget with `used` micro-units spent or reserved admits one
/// more send: it does while `used` is below `limit`. A send is admitted on
/// what is used before it, so the last one admitted may pass the limit by at
/// most its own estimate, and no send is admitted once the limit is reached.
pub fn admits(used: i64, limit: i64) -> bool {
    used < limit
}

/// What share of the limit is used (spent plus reserved); 0 for a zero limit
/// with nothing used.
pub fn used_ratio(used: i64, limit: i64) -> f64 {
    if limit <= 0 {
        return if used > 0 { f64::INFINITY } else { 0.0 };
    }
    // Micro-units below 2^53 are exact as f64; this is only a display ratio.
    used as f64 / limit as f64
}

/// How many of the (ascending) `alert_at` thresholds `ratio` has reached.
pub fn alerts_reached(alert_at: &[f64], ratio: f64) -> usize {
    alert_at.iter().filter(|t| ratio >= **t).count()
}

/// A budget's terms as its counters need them: what it counts, its limit
/// and its alert thresholds (ascending shares of the limit).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetTerms {
    /// The currency it counts.
    pub currency: Currency,
    /// Day or month.
    pub period: BudgetPeriod,
    /// The limit, in micro-units.
    pub limit_micros: i64,
    /// Shares of the limit at which ops are told, ascending.
    pub alert_at: Vec<f64>,
}

impl BudgetTerms {
    /// `KES/month`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.currency, self.period)
    }

    /// The thresholds a counter at `spent + reserved` has reached beyond the
    /// `alerts_logged` first ones already told: each crossing once a period.
    pub fn crossings(
        &self,
        period_start: DateTime<Utc>,
        spent: i64,
        reserved: i64,
        alerts_logged: i64,
    ) -> Vec<Crossing> {
        let ratio = used_ratio(spent.saturating_add(reserved), self.limit_micros);
        let reached = alerts_reached(&self.alert_at, ratio);
        let told = usize::try_from(alerts_logged.max(0)).unwrap_or(usize::MAX);
        (told..reached)
            .map(|index| Crossing {
                budget: self.name(),
                currency: self.currency,
                period: self.period,
                period_start,
                limit: Money::new(self.limit_micros, self.currency),
                spent: Money::new(spent, self.currency),
                reserved: Money::new(reserved, self.currency),
                ratio,
                threshold: self.alert_at[index],
                ordinal: index + 1,
            })
            .collect()
    }
}

/// An alert threshold a budget has just crossed in a period.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    /// `KES/month`.
    pub budget: String,
    /// The budget's currency.
    pub currency: Currency,
    /// Its period.
    pub period: BudgetPeriod,
    /// The start of the period crossed in.
    pub period_start: DateTime<Utc>,
    /// The limit.
    pub limit: Money,
    /// Spent in the period when it was crossed.
    pub spent: Money,
    /// Reserved by sends in flight then.
    pub reserved: Money,
    /// (spent + reserved) / limit.
    pub ratio: f64,
    /// The threshold crossed (a share of the limit).
    pub threshold: f64,
    /// Which of the budget's thresholds it is, from 1.
    pub ordinal: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn periods_start_at_utc_midnight_and_roll_over_to_the_next() {
        let t = at("2026-12-05T16:30:00Z");
        assert_eq!(BudgetPeriod::Day.start(t), at("2026-12-05T00:00:00Z"));
        assert_eq!(BudgetPeriod::Day.next_start(t), at("2026-12-06T00:00:00Z"));
        assert_eq!(BudgetPeriod::Month.start(t), at("2026-12-01T00:00:00Z"));
        assert_eq!(
            BudgetPeriod::Month.next_start(t),
            at("2027-01-01T00:00:00Z")
        );
        let feb = at("2028-02-29T23:59:59Z");
        assert_eq!(
            BudgetPeriod::Month.next_start(feb),
            at("2028-03-01T00:00:00Z")
        );
        assert_eq!(
            BudgetPeriod::Month.start(at("2027-01-01T00:00:00Z")),
            at("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn a_budget_admits_sends_until_its_limit_is_reached() {
        assert!(admits(0, 1_000_000));
        assert!(admits(999_999, 1_000_000));
        assert!(!admits(1_000_000, 1_000_000));
        assert!(!admits(1_800_000, 1_000_000));
        assert!(!admits(0, 0), "a zero budget sends nothing");
    }

    #[test]
    fn alerts_count_the_thresholds_reached() {
        let alerts = [0.8, 1.0];
        assert_eq!(alerts_reached(&alerts, used_ratio(799_999, 1_000_000)), 0);
        assert_eq!(alerts_reached(&alerts, used_ratio(800_000, 1_000_000)), 1);
        assert_eq!(alerts_reached(&alerts, used_ratio(1_000_000, 1_000_000)), 2);
        assert_eq!(used_ratio(0, 0), 0.0);
    }

    #[test]
    fn periods_parse_from_their_names() {
        assert_eq!("day".parse(), Ok(BudgetPeriod::Day));
        assert_eq!("month".parse(), Ok(BudgetPeriod::Month));
        assert!("week".parse::<BudgetPeriod>().unwrap_err().contains("week"));
    }
    #[test]
    fn each_threshold_is_crossed_once_a_period() {
        let terms = BudgetTerms {
            currency: "KES".parse().unwrap(),
            period: BudgetPeriod::Month,
            limit_micros: 1_000_000,
            alert_at: vec![0.8, 1.0],
        };
        let start = at("2026-12-01T00:00:00Z");
        assert!(terms.crossings(start, 700_000, 0, 0).is_empty());
        let both = terms.crossings(start, 600_000, 400_000, 0);
        assert_eq!(
            both.iter().map(|c| c.threshold).collect::<Vec<_>>(),
            [0.8, 1.0]
        );
        assert_eq!(both[1].ordinal, 2);
        assert_eq!(both[0].budget, "KES/month");
        assert_eq!(both[0].ratio, 1.0);
        let second = terms.crossings(start, 1_000_000, 0, 1);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].threshold, 1.0);
        assert!(terms.crossings(start, 2_000_000, 0, 2).is_empty());
    }
}
