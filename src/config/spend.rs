//! The spend guard's configuration: `[[budget]]` tables.
//!
//! ```toml
//! [[budget]]
//! currency = "KES"
//! period = "month"          # or "day"; UTC
//! limit = "50000.00"        # a decimal string, kept as exact micro-units
//! alert_at = [0.8, 1.0]     # shares of the limit; each logged once a period
//! kinds = ["notification"]  # the default; add "otp" to hold OTPs too
//!
//! [suppression]
//! expire_after = "90d"      # numbers are recycled: a suppression lapses
//!
//! [[country_limit]]         # API OTPs per country and hour (429, rule country-limit)
//! prefix = "+234"
//! otp_per_hour = 50
//!
//! [range_burst]             # see domain::pumping for the defaults' math
//! enabled = true
//! digits = 8
//! window = "10m"
//! baseline = "7d"
//! factor = 20
//! min_burst = 20
//! cool_off = "1h"
//! ```

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::DeliveryKind;
use crate::domain::budget::{BudgetPeriod, BudgetTerms};
use crate::domain::money::{Currency, Money, MoneyError};
use crate::domain::pumping::BurstRule;

/// One `[[budget]]`: a limit on what one currency's sends cost in a period.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// The currency it counts (costs in other currencies never count: tuma
    /// never converts).
    pub currency: Currency,
    /// Day or month, UTC.
    pub period: BudgetPeriod,
    /// The limit, in `currency`.
    pub limit: Money,
    /// Shares of the limit at which a warning is logged, ascending.
    pub alert_at: Vec<f64>,
    /// The kinds of delivery it holds back at the limit.
    pub kinds: Vec<DeliveryKind>,
}

impl BudgetConfig {
    /// `KES/month`: how a budget is named in the database and in messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.currency, self.period)
    }

    /// What its counters need to know of it.
    pub fn terms(&self) -> BudgetTerms {
        BudgetTerms {
            currency: self.currency,
            period: self.period,
            limit_micros: self.limit.micros,
            alert_at: self.alert_at.clone(),
        }
    }
}

/// The spend guard's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendConfig {
    /// Budgets, in declaration order; at most one per currency and period.
    pub budgets: Vec<BudgetConfig>,
    /// A suppressed recipient is sent to again after this long
    /// (`suppression.expire_after`).
    pub suppression_expire_after: Duration,
    /// API OTPs per country prefix and hour (`[[country_limit]]`).
    pub country_limits: Vec<CountryLimit>,
    /// Range bursts (`[range_burst]`); `None` when switched off.
    pub range_burst: Option<BurstRule>,
}

/// One `[[country_limit]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountryLimit {
    /// An E.164 prefix such as `+234`.
    pub prefix: String,
    /// OTPs allowed to numbers under it per sliding hour.
    pub otp_per_hour: u32,
}

impl SpendConfig {
    /// The longest `[[country_limit]]` prefix of `e164`.
    pub fn country_limit(&self, e164: &str) -> Option<&CountryLimit> {
        self.country_limits
            .iter()
            .filter(|c| e164.starts_with(&c.prefix))
            .max_by_key(|c| c.prefix.len())
    }
}

/// The default `suppression.expire_after`: 90 days.
const SUPPRESSION_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

impl Default for SpendConfig {
    fn default() -> Self {
        SpendConfig {
            budgets: Vec::new(),
            suppression_expire_after: SUPPRESSION_EXPIRY,
            country_limits: Vec::new(),
            range_burst: Some(BurstRule::default()),
        }
    }
}

impl SpendConfig {
    /// The budgets a delivery of `kind` costing in `currency` counts against.
    pub fn budgets_for(&self, kind: DeliveryKind, currency: Currency) -> Vec<&BudgetConfig> {
        self.budgets
            .iter()
            .filter(|b| b.currency == currency && b.kinds.contains(&kind))
            .collect()
    }

    /// Every budget's terms (for counters moved after the send: a price
    /// learned later, a settled reservation).
    pub fn terms(&self) -> Vec<BudgetTerms> {
        self.budgets.iter().map(BudgetConfig::terms).collect()
    }

    /// The budget named `KES/month`.
    pub fn budget(&self, name: &str) -> Option<&BudgetConfig> {
        self.budgets.iter().find(|b| b.name() == name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    currency: String,
    period: String,
    limit: String,
    #[serde(default = "default_alert_at")]
    alert_at: Vec<f64>,
    #[serde(default = "default_kinds")]
    kinds: Vec<String>,
}

/// `[suppression]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSuppression {
    expire_after: Option<String>,
}

/// `[[country_limit]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCountryLimit {
    prefix: String,
    otp_per_hour: u32,
}

/// `[range_burst]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRangeBurst {
    enabled: Option<bool>,
    digits: Option<usize>,
    window: Option<String>,
    baseline: Option<String>,
    factor: Option<u32>,
    min_burst: Option<u32>,
    cool_off: Option<String>,
}

/// The pumping sections of the file.
#[derive(Debug, Default)]
pub(super) struct RawPumping {
    pub(super) country_limit: Vec<RawCountryLimit>,
    pub(super) range_burst: RawRangeBurst,
}

fn parse_pumping(
    raw: RawPumping,
) -> Result<(Vec<CountryLimit>, Option<BurstRule>), (String, String)> {
    let mut limits: Vec<CountryLimit> = Vec::new();
    for (i, c) in raw.country_limit.into_iter().enumerate() {
        let key = |k: &str| format!("country_limit[{i}].{k}");
        if !super::is_e164_prefix(&c.prefix) {
            return Err((
                key("prefix"),
                format!("`{}` is not an E.164 prefix such as \"+234\"", c.prefix),
            ));
        }
        if limits.iter().any(|l| l.prefix == c.prefix) {
            return Err((key("prefix"), format!("`{}` is limited twice", c.prefix)));
        }
        super::count_in(c.otp_per_hour, 1, 10_000_000).map_err(|r| (key("otp_per_hour"), r))?;
        limits.push(CountryLimit {
            prefix: c.prefix,
            otp_per_hour: c.otp_per_hour,
        });
    }
    let r = raw.range_burst;
    if r.enabled == Some(false) {
        return Ok((limits, None));
    }
    let d = BurstRule::default();
    let duration = |v: Option<String>, k: &str, default: Duration, min: Duration, max: Duration| {
        v.map_or(Ok(default), |t| {
            super::parse_duration_in(&t, min, max).map_err(|e| (format!("range_burst.{k}"), e))
        })
    };
    let minute = Duration::from_secs(60);
    let rule = BurstRule {
        digits: super::count_in(r.digits.unwrap_or(d.digits), 4, 14)
            .map_err(|e| ("range_burst.digits".to_owned(), e))?,
        window: duration(
            r.window,
            "window",
            d.window,
            minute,
            Duration::from_secs(24 * 3600),
        )?,
        baseline: duration(
            r.baseline,
            "baseline",
            d.baseline,
            Duration::from_secs(3600),
            Duration::from_secs(90 * 24 * 3600),
        )?,
        factor: super::count_in(r.factor.unwrap_or(d.factor), 1, 1_000_000)
            .map_err(|e| ("range_burst.factor".to_owned(), e))?,
        min_burst: super::count_in(r.min_burst.unwrap_or(d.min_burst), 1, 1_000_000)
            .map_err(|e| ("range_burst.min_burst".to_owned(), e))?,
        cool_off: duration(
            r.cool_off,
            "cool_off",
            d.cool_off,
            minute,
            Duration::from_secs(7 * 24 * 3600),
        )?,
    };
    if rule.baseline <= rule.window {
        return Err((
            "range_burst.baseline".to_owned(),
            "must be longer than range_burst.window".to_owned(),
        ));
    }
    Ok((limits, Some(rule)))
}

fn default_alert_at() -> Vec<f64> {
    vec![0.8, 1.0]
}

fn default_kinds() -> Vec<String> {
    vec!["notification".to_owned()]
}

/// Checks the `[[budget]]` tables; errors are `(key, reason)`.
pub(super) fn parse(
    raw: Vec<RawBudget>,
    suppression: RawSuppression,
    pumping: RawPumping,
) -> Result<SpendConfig, (String, String)> {
    let (country_limits, range_burst) = parse_pumping(pumping)?;
    let suppression_expire_after = match suppression.expire_after {
        Some(text) => super::parse_duration_in(
            &text,
            Duration::from_secs(60),
            Duration::from_secs(3650 * 24 * 3600),
        )
        .map_err(|r| ("suppression.expire_after".to_owned(), r))?,
        None => SUPPRESSION_EXPIRY,
    };
    let mut budgets = Vec::new();
    let mut seen = HashSet::new();
    for (i, b) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("budget[{i}].{k}");
        let limit = Money::parse(&b.limit, &b.currency).map_err(|e| {
            let k = if matches!(e, MoneyError::InvalidCurrency(_)) {
                "currency"
            } else {
                "limit"
            };
            (key(k), e.to_string())
        })?;
        if !limit.currency.is_active_iso4217() {
            return Err((
                key("currency"),
                format!(
                    "`{}` is not an active ISO 4217 currency code (e.g. KES, USD, NGN)",
                    b.currency
                ),
            ));
        }
        if limit.micros < 0 {
            return Err((key("limit"), "a budget cannot be negative".into()));
        }
        let period: BudgetPeriod = b.period.parse().map_err(|e| (key("period"), e))?;
        let mut alert_at = b.alert_at;
        if let Some(bad) = alert_at
            .iter()
            .find(|a| !a.is_finite() || **a <= 0.0 || **a > 10.0)
        {
            return Err((
                key("alert_at"),
                format!("{bad} is not a share of the limit between 0 (excluded) and 10"),
            ));
        }
        alert_at.sort_by(f64::total_cmp);
        alert_at.dedup();
        if b.kinds.is_empty() {
            return Err((
                key("kinds"),
                "must name at least one kind (notification, otp)".into(),
            ));
        }
        let mut kinds = Vec::new();
        for k in &b.kinds {
            let kind: DeliveryKind = k.parse().map_err(|e: String| (key("kinds"), e))?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        let budget = BudgetConfig {
            currency: limit.currency,
            period,
            limit,
            alert_at,
            kinds,
        };
        if !seen.insert(budget.name()) {
            return Err((
                key("period"),
                format!(
                    "a {} budget in {} is declared twice",
                    budget.period, budget.currency
                ),
            ));
        }
        budgets.push(budget);
    }
    Ok(SpendConfig {
        budgets,
        suppression_expire_after,
        country_limits,
        range_burst,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::domain::pumping::BurstRule;

    use crate::config::Config;

    fn parse(rest: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(
            &format!(
                "[[provider]]\nname = \"o\"\nkind = \"outbox\"\ndir = \"out\"\n\
                 [[route]]\nchannel = \"sms\"\nproviders = [\"o\"]\n\
                 [[route]]\nchannel = \"email\"\nproviders = [\"o\"]\n{rest}"
            ),
            Path::new("providers.toml"),
        )
    }

    #[test]
    fn a_budget_parses_with_its_defaults() {
        let c = parse("[[budget]]\ncurrency = \"KES\"\nperiod = \"month\"\nlimit = \"1000.50\"\n")
            .unwrap();
        let b = &c.spend.budgets[0];
        assert_eq!(b.limit.micros, 1_000_500_000);
        assert_eq!(b.name(), "KES/month");
        assert_eq!(b.alert_at, [0.8, 1.0]);
        assert_eq!(b.kinds, [crate::domain::DeliveryKind::Notification]);
    }

    #[test]
    fn a_bad_budget_is_refused_naming_the_key() {
        for (table, key, reason) in [
            (
                "currency = \"KSH\"\nperiod = \"day\"\nlimit = \"1\"",
                "budget[0].currency",
                "ISO 4217",
            ),
            (
                "currency = \"KES\"\nperiod = \"week\"\nlimit = \"1\"",
                "budget[0].period",
                "week",
            ),
            (
                "currency = \"KES\"\nperiod = \"day\"\nlimit = \"1e3\"",
                "budget[0].limit",
                "exponent",
            ),
            (
                "currency = \"KES\"\nperiod = \"day\"\nlimit = \"-5\"",
                "budget[0].limit",
                "negative",
            ),
            (
                "currency = \"KES\"\nperiod = \"day\"\nlimit = \"5\"\nalert_at = [0.0]",
                "budget[0].alert_at",
                "share",
            ),
            (
                "currency = \"KES\"\nperiod = \"day\"\nlimit = \"5\"\nkinds = [\"bulk\"]",
                "budget[0].kinds",
                "bulk",
            ),
            (
                "currency = \"KES\"\nperiod = \"day\"\nlimit = \"5\"\nkinds = []",
                "budget[0].kinds",
                "at least one",
            ),
        ] {
            let e = parse(&format!("[[budget]]\n{table}\n")).unwrap_err();
            assert_eq!(e.key, key, "{table}");
            assert!(e.reason.contains(reason), "{table}: {}", e.reason);
        }
        let e = parse("[suppression]\nexpire_after = \"5s\"\n").unwrap_err();
        assert_eq!(e.key, "suppression.expire_after");
        assert_eq!(
            parse("[suppression]\nexpire_after = \"30d\"\n")
                .unwrap()
                .spend
                .suppression_expire_after,
            std::time::Duration::from_secs(30 * 24 * 3600)
        );
        for (text, key) in [
            (
                "[[country_limit]]\nprefix = \"234\"\notp_per_hour = 5\n",
                "country_limit[0].prefix",
            ),
            (
                "[[country_limit]]\nprefix = \"+234\"\notp_per_hour = 0\n",
                "country_limit[0].otp_per_hour",
            ),
            ("[range_burst]\ndigits = 2\n", "range_burst.digits"),
            ("[range_burst]\nwindow = \"1s\"\n", "range_burst.window"),
            (
                "[range_burst]\nwindow = \"2h\"\nbaseline = \"1h\"\n",
                "range_burst.baseline",
            ),
            ("[range_burst]\nthreshold = 5\n", "line 11 (range_burst)"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {}", e.reason);
        }
        let off = parse("[range_burst]\nenabled = false\n").unwrap();
        assert_eq!(off.spend.range_burst, None);
        let on = parse("").unwrap();
        assert_eq!(on.spend.range_burst, Some(BurstRule::default()));
        let twice = "[[budget]]\ncurrency = \"KES\"\nperiod = \"day\"\nlimit = \"5\"\n";
        let e = parse(&format!("{twice}{twice}")).unwrap_err();
        assert_eq!(e.key, "budget[1].period");
        assert!(e.reason.contains("twice"));
    }
}
