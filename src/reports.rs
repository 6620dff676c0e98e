//! The cost report for finance: messages, segments, receipt counts and cost
//! per group (day / ISO week / month, provider, country, template, channel)
//! over a period in UTC.
//!
//! Money stays exact: costs are integer micro-units added with checked
//! arithmetic and printed with the currency's own decimals. Every row holds
//! one currency (or none, for deliveries with no cost), so KES and USD are
//! never added together; totals are per currency.
//!
//! Definitions (also printed in the table output):
//! - a delivery counts in the period and day / week / month it was accepted
//!   (`created_at`, UTC);
//! - **messages**: deliveries that reached a provider: `sent`, `delivered`,
//!   `undelivered`, and `failed` ones that carry a cost;
//! - **segments**: the SMS segments of those messages;
//! - **no receipt**: `sent` longer ago than the receipt horizon with neither a
//!   delivered nor an undelivered receipt; younger `sent` ones are
//!   **awaiting** their receipt;
//! - **actual** cost is the provider's own figure, **estimated** the price
//!   table's (segments × rate).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::DeliveryStatus;
use crate::domain::money::{Currency, format_micros};

/// The longest `receipt_horizon` accepted (ten years).
const MAX_RECEIPT_HORIZON: Duration = Duration::from_secs(3650 * 24 * 3600);
use crate::domain::phone::region_code_of;
use crate::store::{CostRollup, CostSource, Db, StoreError};

/// How long after a send a missing receipt counts as "no receipt", unless
/// told otherwise: carriers retry a handset for up to a day.
pub const DEFAULT_RECEIPT_HORIZON: Duration = Duration::from_secs(24 * 60 * 60);

/// A report dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Calendar day in UTC: `2026-11-30`.
    Day,
    /// ISO week in UTC: `2026-W48`.
    Week,
    /// Calendar month in UTC: `2026-11`.
    Month,
    /// The provider of the latest attempt.
    Provider,
    /// The recipient's country from the E.164 prefix (ISO code and name).
    Country,
    /// The template.
    Template,
    /// SMS or email.
    Channel,
}

impl FromStr for GroupBy {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self, ReportError> {
        Ok(match s.trim() {
            "day" => GroupBy::Day,
            "week" => GroupBy::Week,
            "month" => GroupBy::Month,
            "provider" => GroupBy::Provider,
            "country" => GroupBy::Country,
            "template" => GroupBy::Template,
            "channel" => GroupBy::Channel,
            other => {
                return Err(ReportError::Invalid {
                    field: "by",
                    reason: format!(
                        "`{other}` is not a grouping (day, week, month, provider, country, template, channel)"
                    ),
                });
            }
        })
    }
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A parameter is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// The parameter.
        field: &'static str,
        /// Why, in plain words.
        reason: String,
    },
    /// A sum does not fit in 64 bits of micro-units.
    #[error("the {currency} cost total is too large to hold exactly")]
    Overflow {
        /// The currency whose total overflowed.
        currency: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the CSV failed (it is written in memory: never expected).
    #[error("writing the report as CSV failed: {0}")]
    Csv(String),
}

impl From<csv::Error> for ReportError {
    fn from(e: csv::Error) -> Self {
        ReportError::Csv(e.to_string())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ReportError {
    ReportError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The report's parameters as a user or an HTTP query gives them: all text,
/// so the CLI and `GET /v1/reports/costs` parse them the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CostParams {
    /// A period ending now, such as `30d` (the default when no dates are given).
    pub since: Option<String>,
    /// First day, `2026-11-01` (UTC midnight, included).
    pub from: Option<String>,
    /// Last day, `2026-12-01` (UTC midnight, excluded).
    pub to: Option<String>,
    /// Comma-separated groupings: `month,provider,country`.
    pub by: Option<String>,
    /// How long a `sent` message may wait for its receipt before it counts as
    /// "no receipt", such as `24h` (the default).
    pub receipt_horizon: Option<String>,
}

/// A validated report request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostQuery {
    /// Start, included.
    pub from: DateTime<Utc>,
    /// End, excluded.
    pub to: DateTime<Utc>,
    /// Groupings, in the order given (at most one of day, week, month).
    pub group_by: Vec<GroupBy>,
    /// See [`CostParams::receipt_horizon`].
    pub receipt_horizon: Duration,
}

impl CostQuery {
    /// Checks the parameters; `--since` counts back from `now`.
    pub fn from_params(p: &CostParams, now: DateTime<Utc>) -> Result<CostQuery, ReportError> {
        let day = |field: &'static str, s: &str| {
            NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
                .map_err(|_| invalid(field, format!("`{s}` is not a date like 2026-11-01")))
        };
        let (from, to) = match (&p.since, &p.from, &p.to) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(invalid(
                    "since",
                    "give either a period ending now (since) or dates (from and to), not both",
                ));
            }
            (_, Some(f), Some(t)) => (day("from", f)?, day("to", t)?),
            (_, Some(_), None) => return Err(invalid("to", "from needs a to date as well")),
            (_, None, Some(_)) => return Err(invalid("from", "to needs a from date as well")),
            (since, None, None) => {
                let since = since.as_deref().unwrap_or("30d");
                let d = humantime::parse_duration(since.trim())
                    .map_err(|e| invalid("since", format!("`{since}`: {e}")))?;
                let d = chrono::Duration::from_std(d)
                    .map_err(|_| invalid("since", format!("`{since}` is too long")))?;
                let from = now
                    .checked_sub_signed(d)
                    .ok_or_else(|| invalid("since", format!("`{since}` is too long")))?;
                (from, now)
            }
        };
        if from >= to {
            return Err(invalid("to", "the period must end after it starts"));
        }
        let mut group_by = Vec::new();
        for part in p.by.as_deref().unwrap_or("month").split(',') {
            if part.trim().is_empty() {
                continue;
            }
            let g: GroupBy = part.parse()?;
            if !group_by.contains(&g) {
                group_by.push(g);
            }
        }
        let periods = group_by
            .iter()
            .filter(|g| matches!(g, GroupBy::Day | GroupBy::Week | GroupBy::Month))
            .count();
        if periods > 1 {
            return Err(invalid("by", "group by at most one of day, week and month"));
        }
        let receipt_horizon = match &p.receipt_horizon {
            Some(h) => humantime::parse_duration(h.trim())
                .map_err(|e| invalid("receipt_horizon", format!("`{h}`: {e}")))
                .and_then(|d| {
                    // Added to send times: bounded so the sum cannot overflow.
                    if d > MAX_RECEIPT_HORIZON {
                        Err(invalid(
                            "receipt_horizon",
                            format!("`{h}` is above the maximum 3650days"),
                        ))
                    } else {
                        Ok(d)
                    }
                })?,
            None => DEFAULT_RECEIPT_HORIZON,
        };
        Ok(CostQuery {
            from,
            to,
            group_by,
            receipt_horizon,
        })
    }
}

/// Counts for one row or for the whole report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Deliveries that reached a provider (see the module docs).
    pub messages: i64,
    /// Their SMS segments.
    pub segments: i64,
    /// With a delivered receipt.
    pub delivered: i64,
    /// With an undelivered receipt.
    pub undelivered: i64,
    /// Status `failed`.
    pub failed: i64,
    /// OTPs whose TTL passed before they could be sent.
    pub expired: i64,
    /// Sent longer ago than the receipt horizon without a receipt.
    pub no_receipt: i64,
    /// Sent within the receipt horizon, no receipt yet.
    pub awaiting_receipt: i64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.messages += o.messages;
        self.segments += o.segments;
        self.delivered += o.delivered;
        self.undelivered += o.undelivered;
        self.failed += o.failed;
        self.expired += o.expired;
        self.no_receipt += o.no_receipt;
        self.awaiting_receipt += o.awaiting_receipt;
    }
}

/// One row: a group and one currency (none for deliveries without a cost).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CostRow {
    /// Each grouping's value, in the order of [`CostReport::group_by`]; a
    /// country is `KE Kenya` here and split into two CSV columns.
    pub group: Vec<String>,
    /// The currency of the costs in this row; `None` when no delivery in it has a cost.
    pub currency: Option<String>,
    /// The counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// The provider's own costs, in micro-units.
    pub actual_micros: i64,
    /// The price table's estimates, in micro-units.
    pub estimated_micros: i64,
    /// `actual_micros` with the currency's decimals.
    pub actual_cost: Option<String>,
    /// `estimated_micros` with the currency's decimals.
    pub estimated_cost: Option<String>,
}

/// The totals in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CurrencyTotal {
    /// ISO 4217 code.
    pub currency: String,
    /// Messages with a cost in this currency.
    pub messages: i64,
    /// Their segments.
    pub segments: i64,
    /// Actual costs, in micro-units.
    pub actual_micros: i64,
    /// Estimated costs, in micro-units.
    pub estimated_micros: i64,
    /// Actual, with the currency's decimals.
    pub actual_cost: String,
    /// Estimated, with the currency's decimals.
    pub estimated_cost: String,
}

/// The cost report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CostReport {
    /// Start of the period, included.
    pub from: DateTime<Utc>,
    /// End of the period, excluded.
    pub to: DateTime<Utc>,
    /// Always `UTC`: periods, days, weeks and months are UTC.
    pub time_zone: &'static str,
    /// The groupings.
    pub group_by: Vec<GroupBy>,
    /// The receipt horizon, in seconds.
    pub receipt_horizon_secs: u64,
    /// When the report was made.
    pub generated_at: DateTime<Utc>,
    /// One row per group and currency, sorted.
    pub rows: Vec<CostRow>,
    /// Counts over every row.
    pub counts: Counts,
    /// Totals per currency; never added across currencies.
    pub totals: Vec<CurrencyTotal>,
}

#[derive(Default)]
struct Acc {
    counts: Counts,
    actual: i64,
    estimated: i64,
}

/// The report's rows being added up: by group values and currency.
type Groups = BTreeMap<(Vec<String>, Option<String>), Acc>;

/// Builds the cost report for `query` from the database, reading every
/// delivery of the period (the reference the per-day rollups are checked
/// against).
pub async fn cost_report(
    db: &Db,
    query: &CostQuery,
    now: DateTime<Utc>,
) -> Result<CostReport, ReportError> {
    let horizon = horizon_of(query)?;
    let mut groups = Groups::new();
    db.each_cost_source(query.from, query.to, |row: CostSource| {
        add_source(&mut groups, query, &row, horizon, now)
    })
    .await?;
    finish(query, now, groups)
}

/// The same report as [`cost_report`], read from the per-day rollups
/// (`cost_rollups`) when the period is whole UTC days: a month reads a row
/// per day and group rather than every delivery. Only the `sent` deliveries
/// still inside the receipt horizon are read one by one, to tell "awaiting"
/// from "no receipt". Any other period is read delivery by delivery.
pub async fn cost_report_from_rollups(
    db: &Db,
    query: &CostQuery,
    now: DateTime<Utc>,
) -> Result<CostReport, ReportError> {
    let whole_day = |t: DateTime<Utc>| (t.time() == chrono::NaiveTime::MIN).then(|| t.date_naive());
    let (Some(from), Some(to)) = (whole_day(query.from), whole_day(query.to)) else {
        return cost_report(db, query, now).await;
    };
    let horizon = horizon_of(query)?;
    let mut groups = Groups::new();
    for r in db.cost_rollups(from, to).await? {
        // As in `add_source`: what counts in no column makes no row.
        let empty = [
            r.messages,
            r.segments,
            r.delivered,
            r.undelivered,
            r.failed,
            r.expired,
            r.sent,
        ]
        .iter()
        .all(|n| *n == 0)
            && r.actual_micros == 0
            && r.estimated_micros == 0;
        if empty {
            continue;
        }
        let group = query
            .group_by
            .iter()
            .map(|g| rollup_group_value(*g, &r))
            .collect();
        let currency = (!r.currency.is_empty()).then(|| r.currency.clone());
        let acc = groups.entry((group, currency.clone())).or_default();
        let c = &mut acc.counts;
        c.messages += r.messages;
        c.segments += r.segments;
        c.delivered += r.delivered;
        c.undelivered += r.undelivered;
        c.failed += r.failed;
        c.expired += r.expired;
        c.no_receipt += r.sent;
        if let Some(cur) = currency {
            let overflow = || ReportError::Overflow {
                currency: cur.clone(),
            };
            acc.actual = acc
                .actual
                .checked_add(r.actual_micros)
                .ok_or_else(overflow)?;
            acc.estimated = acc
                .estimated
                .checked_add(r.estimated_micros)
                .ok_or_else(overflow)?;
        }
    }
    let sent_after = now
        .checked_sub_signed(horizon)
        .ok_or_else(|| invalid("receipt_horizon", "too long"))?;
    for row in db
        .awaiting_receipts(query.from, query.to, sent_after)
        .await?
    {
        let (group, currency) = group_of(query, &row);
        let acc = groups.entry((group, currency)).or_default();
        acc.counts.no_receipt -= 1;
        acc.counts.awaiting_receipt += 1;
    }
    finish(query, now, groups)
}

fn horizon_of(query: &CostQuery) -> Result<chrono::Duration, ReportError> {
    chrono::Duration::from_std(query.receipt_horizon)
        .map_err(|_| invalid("receipt_horizon", "too long"))
}

/// A delivery's group values and the currency of its row.
fn group_of(query: &CostQuery, row: &CostSource) -> (Vec<String>, Option<String>) {
    let group = query
        .group_by
        .iter()
        .map(|g| group_value(*g, row))
        .collect();
    let has_cost = row.cost_micros.is_some() && row.currency.is_some();
    (group, if has_cost { row.currency.clone() } else { None })
}

/// Adds one delivery to its row.
fn add_source(
    groups: &mut Groups,
    query: &CostQuery,
    row: &CostSource,
    horizon: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<(), ReportError> {
    let (group, currency) = group_of(query, row);
    let has_cost = currency.is_some();
    // A delivery that counts in no column (canceled, or not yet sent) makes
    // no row: a canceled one would otherwise show as an all-zero row of
    // provider "none".
    let counted = has_cost
        || matches!(
            row.status,
            DeliveryStatus::Sent
                | DeliveryStatus::Delivered
                | DeliveryStatus::Undelivered
                | DeliveryStatus::Failed
                | DeliveryStatus::Expired
        );
    if !counted {
        return Ok(());
    }
    let acc = groups.entry((group, currency.clone())).or_default();
    let c = &mut acc.counts;
    let reached = match row.status {
        DeliveryStatus::Sent | DeliveryStatus::Delivered | DeliveryStatus::Undelivered => true,
        DeliveryStatus::Failed => has_cost,
        _ => false,
    };
    if reached {
        c.messages += 1;
        c.segments += row.segments.unwrap_or(0);
    }
    match row.status {
        DeliveryStatus::Delivered => c.delivered += 1,
        DeliveryStatus::Undelivered => c.undelivered += 1,
        DeliveryStatus::Failed => c.failed += 1,
        DeliveryStatus::Expired => c.expired += 1,
        DeliveryStatus::Sent if row.sent_at.is_none_or(|at| at + horizon <= now) => {
            c.no_receipt += 1
        }
        DeliveryStatus::Sent => c.awaiting_receipt += 1,
        _ => {}
    }
    if let (Some(micros), Some(cur)) = (row.cost_micros, currency) {
        let overflow = || ReportError::Overflow {
            currency: cur.clone(),
        };
        if row.cost_is_estimate == Some(true) {
            acc.estimated = acc.estimated.checked_add(micros).ok_or_else(overflow)?;
        } else {
            acc.actual = acc.actual.checked_add(micros).ok_or_else(overflow)?;
        }
    }
    Ok(())
}

/// The report from its added-up rows: money formatted, totals per currency.
fn finish(
    query: &CostQuery,
    now: DateTime<Utc>,
    groups: Groups,
) -> Result<CostReport, ReportError> {
    let mut counts = Counts::default();
    let mut totals: BTreeMap<String, (Counts, i64, i64)> = BTreeMap::new();
    let mut rows = Vec::with_capacity(groups.len());
    for ((group, currency), acc) in groups {
        counts.add(&acc.counts);
        let (actual_cost, estimated_cost) = match &currency {
            Some(cur) => {
                let t = totals.entry(cur.clone()).or_default();
                t.0.add(&acc.counts);
                let overflow = || ReportError::Overflow {
                    currency: cur.clone(),
                };
                t.1 = t.1.checked_add(acc.actual).ok_or_else(overflow)?;
                t.2 = t.2.checked_add(acc.estimated).ok_or_else(overflow)?;
                (
                    Some(money(acc.actual, cur)?),
                    Some(money(acc.estimated, cur)?),
                )
            }
            None => (None, None),
        };
        rows.push(CostRow {
            group,
            currency,
            counts: acc.counts,
            actual_micros: acc.actual,
            estimated_micros: acc.estimated,
            actual_cost,
            estimated_cost,
        });
    }
    let totals = totals
        .into_iter()
        .map(|(currency, (c, actual, estimated))| {
            Ok(CurrencyTotal {
                actual_cost: money(actual, &currency)?,
                estimated_cost: money(estimated, &currency)?,
                messages: c.messages,
                segments: c.segments,
                actual_micros: actual,
                estimated_micros: estimated,
                currency,
            })
        })
        .collect::<Result<Vec<_>, ReportError>>()?;
    Ok(CostReport {
        from: query.from,
        to: query.to,
        time_zone: "UTC",
        group_by: query.group_by.clone(),
        receipt_horizon_secs: query.receipt_horizon.as_secs(),
        generated_at: now,
        rows,
        counts,
        totals,
    })
}

fn money(micros: i64, currency: &str) -> Result<String, ReportError> {
    let cur: Currency = currency
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("currency `{currency}`")))?;
    Ok(format_micros(micros, cur.minor_units()))
}

fn group_value(g: GroupBy, row: &CostSource) -> String {
    let at = row.created_at;
    match g {
        GroupBy::Day => at.format("%Y-%m-%d").to_string(),
        GroupBy::Week => {
            let w = at.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }
        GroupBy::Month => at.format("%Y-%m").to_string(),
        GroupBy::Provider => row.provider.clone().unwrap_or_else(|| "none".into()),
        GroupBy::Country => match row.channel.as_str() {
            "sms" => {
                let (code, name) = country_of(&row.recipient);
                format!("{code} {name}")
            }
            _ => "- (email)".into(),
        },
        GroupBy::Template => row.template.clone(),
        GroupBy::Channel => row.channel.clone(),
    }
}

/// The ISO code and English name of the country an E.164 number belongs
/// to: `("KE", "Kenya")`; the code alone (twice) when the name table lacks
/// it; `("unknown", "unknown")` when the number does not parse or belongs to
/// no country.
pub fn country_of(e164: &str) -> (String, String) {
    country_named(region_code_of(e164))
}

/// A region code (empty for none) as the report shows it: `("KE", "Kenya")`.
fn country_named(code: &str) -> (String, String) {
    if code.is_empty() {
        return ("unknown".into(), "unknown".into());
    }
    let name = COUNTRY_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(code, |(_, n)| n);
    (code.to_owned(), name.to_owned())
}

/// [`group_value`] of the deliveries a rollup row adds up.
fn rollup_group_value(g: GroupBy, r: &CostRollup) -> String {
    match g {
        GroupBy::Day => r.day.format("%Y-%m-%d").to_string(),
        GroupBy::Week => {
            let w = r.day.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }
        GroupBy::Month => r.day.format("%Y-%m").to_string(),
        GroupBy::Provider if r.provider.is_empty() => "none".into(),
        GroupBy::Provider => r.provider.clone(),
        GroupBy::Country => match r.channel.as_str() {
            "sms" => {
                let (code, name) = country_named(&r.country);
                format!("{code} {name}")
            }
            _ => "- (email)".into(),
        },
        GroupBy::Template => r.template.clone(),
        GroupBy::Channel => r.channel.clone(),
    }
}

/// English names of the countries tuma's traffic is most likely to reach:
/// all of East Africa, the rest of Africa's larger markets, and the most
/// common elsewhere. A country missing here is shown by its ISO code.
const COUNTRY_NAMES: &[(&str, &str)] = &[
    ("KE", "Kenya"),
    ("UG", "Uganda"),
    ("TZ", "Tanzania"),
    ("RW", "Rwanda"),
    ("BI", "Burundi"),
    ("SS", "South Sudan"),
    ("ET", "Ethiopia"),
    ("SO", "Somalia"),
    ("DJ", "Djibouti"),
    ("ER", "Eritrea"),
    ("SD", "Sudan"),
    ("CD", "DR Congo"),
    ("CG", "Congo"),
    ("MZ", "Mozambique"),
    ("MW", "Malawi"),
    ("ZM", "Zambia"),
    ("ZW", "Zimbabwe"),
    ("MG", "Madagascar"),
    ("KM", "Comoros"),
    ("SC", "Seychelles"),
    ("MU", "Mauritius"),
    ("ZA", "South Africa"),
    ("BW", "Botswana"),
    ("NA", "Namibia"),
    ("LS", "Lesotho"),
    ("SZ", "Eswatini"),
    ("AO", "Angola"),
    ("NG", "Nigeria"),
    ("GH", "Ghana"),
    ("CI", "Côte d'Ivoire"),
    ("SN", "Senegal"),
    ("CM", "Cameroon"),
    ("ML", "Mali"),
    ("BF", "Burkina Faso"),
    ("NE", "Niger"),
    ("BJ", "Benin"),
    ("TG", "Togo"),
    ("GN", "Guinea"),
    ("SL", "Sierra Leone"),
    ("LR", "Liberia"),
    ("GM", "Gambia"),
    ("EG", "Egypt"),
    ("MA", "Morocco"),
    ("DZ", "Algeria"),
    ("TN", "Tunisia"),
    ("LY", "Libya"),
    ("US", "United States"),
    ("CA", "Canada"),
    ("MX", "Mexico"),
    ("BR", "Brazil"),
    ("AR", "Argentina"),
    ("CO", "Colombia"),
    ("GB", "United Kingdom"),
    ("IE", "Ireland"),
    ("FR", "France"),
    ("DE", "Germany"),
    ("NL", "Netherlands"),
    ("BE", "Belgium"),
    ("ES", "Spain"),
    ("PT", "Portugal"),
    ("IT", "Italy"),
    ("CH", "Switzerland"),
    ("SE", "Sweden"),
    ("NO", "Norway"),
    ("DK", "Denmark"),
    ("FI", "Finland"),
    ("PL", "Poland"),
    ("RU", "Russia"),
    ("UA", "Ukraine"),
    ("TR", "Turkey"),
    ("AE", "United Arab Emirates"),
    ("SA", "Saudi Arabia"),
    ("QA", "Qatar"),
    ("IL", "Israel"),
    ("IN", "India"),
    ("PK", "Pakistan"),
    ("BD", "Bangladesh"),
    ("CN", "China"),
    ("HK", "Hong Kong"),
    ("JP", "Japan"),
    ("KR", "South Korea"),
    ("SG", "Singapore"),
    ("MY", "Malaysia"),
    ("ID", "Indonesia"),
    ("PH", "Philippines"),
    ("VN", "Vietnam"),
    ("TH", "Thailand"),
    ("AU", "Australia"),
    ("NZ", "New Zealand"),
];

/// Column headers of a report's groupings (a country is two columns).
fn group_headers(group_by: &[GroupBy]) -> Vec<&'static str> {
    let mut h = Vec::new();
    for g in group_by {
        match g {
            GroupBy::Day => h.push("day"),
            GroupBy::Week => h.push("week"),
            GroupBy::Month => h.push("month"),
            GroupBy::Provider => h.push("provider"),
            GroupBy::Country => h.extend(["country", "country_name"]),
            GroupBy::Template => h.push("template"),
            GroupBy::Channel => h.push("channel"),
        }
    }
    h
}

fn group_cells(group_by: &[GroupBy], values: &[String]) -> Vec<String> {
    let mut cells = Vec::new();
    for (g, v) in group_by.iter().zip(values) {
        match g {
            GroupBy::Country => {
                let (code, name) = v.split_once(' ').unwrap_or((v, v));
                cells.push(code.to_owned());
                cells.push(name.to_owned());
            }
            _ => cells.push(v.clone()),
        }
    }
    cells
}

const COUNT_HEADERS: [&str; 8] = [
    "messages",
    "segments",
    "delivered",
    "undelivered",
    "failed",
    "expired",
    "no_receipt",
    "awaiting_receipt",
];

fn count_cells(c: &Counts) -> [String; 8] {
    [
        c.messages,
        c.segments,
        c.delivered,
        c.undelivered,
        c.failed,
        c.expired,
        c.no_receipt,
        c.awaiting_receipt,
    ]
    .map(|n| n.to_string())
}

impl CostReport {
    /// The rows as CSV with a header row: the groupings, the counts, then
    /// `currency,actual_cost,estimated_cost` (empty for rows without a cost).
    /// Periods are UTC.
    pub fn to_csv(&self) -> Result<String, ReportError> {
        let mut out = csv::Writer::from_writer(Vec::new());
        let mut header: Vec<&str> = group_headers(&self.group_by);
        header.extend(COUNT_HEADERS);
        header.extend(["currency", "actual_cost", "estimated_cost"]);
        out.write_record(&header)?;
        for r in &self.rows {
            let mut cells = group_cells(&self.group_by, &r.group);
            cells.extend(count_cells(&r.counts));
            cells.push(r.currency.clone().unwrap_or_default());
            cells.push(r.actual_cost.clone().unwrap_or_default());
            cells.push(r.estimated_cost.clone().unwrap_or_default());
            out.write_record(&cells)?;
        }
        let bytes = out
            .into_inner()
            .map_err(|e| ReportError::Csv(e.error().to_string()))?;
        String::from_utf8(bytes).map_err(|e| ReportError::Csv(e.to_string()))
    }

    /// The report as an aligned text table with its period, time zone,
    /// definitions and per-currency totals.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let fmt = "%Y-%m-%d %H:%M:%S";
        let _ = writeln!(
            out,
            "Cost report, {} to {} (UTC; end excluded), by the time each delivery was accepted",
            self.from.format(fmt),
            self.to.format(fmt)
        );
        let mut header: Vec<String> = group_headers(&self.group_by)
            .iter()
            .map(|h| h.to_uppercase())
            .collect();
        header.extend(
            [
                "MSGS",
                "SEGS",
                "DELIV",
                "UNDELIV",
                "FAILED",
                "EXPIRED",
                "NO-RCPT",
                "AWAIT",
                "CUR",
                "ACTUAL",
                "ESTIMATED",
            ]
            .map(String::from),
        );
        let mut lines = vec![header];
        for r in &self.rows {
            let mut cells = group_cells(&self.group_by, &r.group);
            cells.extend(count_cells(&r.counts));
            cells.push(r.currency.clone().unwrap_or_else(|| "-".into()));
            cells.push(r.actual_cost.clone().unwrap_or_else(|| "-".into()));
            cells.push(r.estimated_cost.clone().unwrap_or_else(|| "-".into()));
            lines.push(cells);
        }
        let groups = group_headers(&self.group_by).len();
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for l in &lines {
            let cells: Vec<String> = l
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    if i < groups || i == l.len() - 3 {
                        format!("{c}{}", " ".repeat(pad))
                    } else {
                        format!("{}{c}", " ".repeat(pad))
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        if self.rows.is_empty() {
            let _ = writeln!(out, "(no deliveries in this period)");
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "Totals per currency (never added across currencies):");
        for t in &self.totals {
            let _ = writeln!(
                out,
                "  {}  {} messages, {} segments, actual {}, estimated {}",
                t.currency, t.messages, t.segments, t.actual_cost, t.estimated_cost
            );
        }
        if self.totals.is_empty() {
            let _ = writeln!(out, "  (no costs)");
        }
        let c = &self.counts;
        let _ = writeln!(
            out,
            "  all    {} messages, {} segments, {} delivered, {} undelivered, {} failed, {} expired, {} no receipt, {} awaiting",
            c.messages,
            c.segments,
            c.delivered,
            c.undelivered,
            c.failed,
            c.expired,
            c.no_receipt,
            c.awaiting_receipt
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "MSGS: reached a provider (sent, delivered, undelivered, or failed with a cost). \
             NO-RCPT: sent over {} ago without a receipt; AWAIT: sent since. \
             ACTUAL: the provider's figure; ESTIMATED: segments x the price table.",
            short_duration(self.receipt_horizon_secs)
        );
        out
    }
}

/// `86400` as `24h`, `90` as `90s`.
fn short_duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn countries_come_from_the_e164_prefix() {
        assert_eq!(country_of("+254711000001"), ("KE".into(), "Kenya".into()));
        assert_eq!(country_of("+256772000001"), ("UG".into(), "Uganda".into()));
        assert_eq!(
            country_of("+255754000001"),
            ("TZ".into(), "Tanzania".into())
        );
        assert_eq!(
            country_of("+14155552671"),
            ("US".into(), "United States".into())
        );
        // A country the name table lacks is shown by its code.
        assert_eq!(country_of("+3545511234"), ("IS".into(), "IS".into()));
        assert_eq!(
            country_of("0711000001"),
            ("unknown".into(), "unknown".into())
        );
        assert_eq!(country_of("garbage"), ("unknown".into(), "unknown".into()));
    }

    #[test]
    fn dates_are_utc_midnights_with_the_end_excluded() {
        let p = CostParams {
            from: Some("2026-11-01".into()),
            to: Some("2026-12-01".into()),
            by: Some("week,provider,country".into()),
            ..Default::default()
        };
        let q = CostQuery::from_params(&p, at("2026-12-15T10:00:00Z")).unwrap();
        assert_eq!(q.from, at("2026-11-01T00:00:00Z"));
        assert_eq!(q.to, at("2026-12-01T00:00:00Z"));
        assert_eq!(
            q.group_by,
            [GroupBy::Week, GroupBy::Provider, GroupBy::Country]
        );
        assert_eq!(q.receipt_horizon, DEFAULT_RECEIPT_HORIZON);
    }

    #[test]
    fn since_counts_back_from_now_and_defaults_to_thirty_days_by_month() {
        let now = at("2026-12-15T10:00:00Z");
        let q = CostQuery::from_params(&CostParams::default(), now).unwrap();
        assert_eq!(q.from, at("2026-11-15T10:00:00Z"));
        assert_eq!(q.to, now);
        assert_eq!(q.group_by, [GroupBy::Month]);
        let p = CostParams {
            since: Some("2h".into()),
            receipt_horizon: Some("1h".into()),
            ..Default::default()
        };
        let q = CostQuery::from_params(&p, now).unwrap();
        assert_eq!(q.from, at("2026-12-15T08:00:00Z"));
        assert_eq!(q.receipt_horizon, Duration::from_secs(3600));
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_parameter() {
        let now = at("2026-12-15T10:00:00Z");
        let cases = [
            (
                Some("30d"),
                Some("2026-11-01"),
                Some("2026-12-01"),
                None,
                "since",
            ),
            (None, Some("2026-11-01"), None, None, "to"),
            (None, None, Some("2026-12-01"), None, "from"),
            (None, Some("2026-11-31"), Some("2026-12-01"), None, "from"),
            (None, Some("2026-12-01"), Some("2026-11-01"), None, "to"),
            (Some("soon"), None, None, None, "since"),
            (None, None, None, Some("day,month"), "by"),
            (None, None, None, Some("colour"), "by"),
        ];
        for (since, from, to, by, field) in cases {
            let p = CostParams {
                since: since.map(Into::into),
                from: from.map(Into::into),
                to: to.map(Into::into),
                by: by.map(Into::into),
                receipt_horizon: None,
            };
            match CostQuery::from_params(&p, now) {
                Err(ReportError::Invalid { field: f, .. }) => assert_eq!(f, field, "{p:?}"),
                other => panic!("{p:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn iso_weeks_and_months_are_taken_in_utc() {
        let row = |created: &str| CostSource {
            created_at: at(created),
            channel: "sms".into(),
            status: DeliveryStatus::Sent,
            provider: None,
            recipient: "+254711000001".into(),
            template: "otp".into(),
            segments: None,
            cost_micros: None,
            currency: None,
            cost_is_estimate: None,
            sent_at: None,
        };
        // 2026-11-30 is a Monday: ISO week 49; the Sunday before is in week 48.
        assert_eq!(
            group_value(GroupBy::Week, &row("2026-11-30T00:00:00Z")),
            "2026-W49"
        );
        assert_eq!(
            group_value(GroupBy::Week, &row("2026-11-29T23:59:59Z")),
            "2026-W48"
        );
        // 2027-01-01 is a Friday: it belongs to the last ISO week of 2026.
        assert_eq!(
            group_value(GroupBy::Week, &row("2027-01-01T12:00:00Z")),
            "2026-W53"
        );
        assert_eq!(
            group_value(GroupBy::Month, &row("2026-11-30T23:59:59.999999Z")),
            "2026-11"
        );
        assert_eq!(
            group_value(GroupBy::Day, &row("2026-12-01T00:00:00Z")),
            "2026-12-01"
        );
        assert_eq!(
            group_value(GroupBy::Country, &row("2026-12-01T00:00:00Z")),
            "KE Kenya"
        );
        assert_eq!(
            group_value(GroupBy::Provider, &row("2026-12-01T00:00:00Z")),
            "none"
        );
    }

    #[test]
    fn csv_quotes_only_the_cells_that_need_it_as_rfc_4180_says() {
        let counts = Counts {
            messages: 1,
            ..Counts::default()
        };
        let report = CostReport {
            from: at("2026-11-01T00:00:00Z"),
            to: at("2026-12-01T00:00:00Z"),
            time_zone: "UTC",
            group_by: vec![GroupBy::Country, GroupBy::Template],
            receipt_horizon_secs: 86400,
            generated_at: at("2026-12-01T00:00:00Z"),
            rows: vec![CostRow {
                group: vec!["KR Korea, Republic of".into(), "say \"hi\"\nthere".into()],
                currency: Some("KES".into()),
                counts,
                actual_micros: 800_000,
                estimated_micros: 0,
                actual_cost: Some("0.80".into()),
                estimated_cost: None,
            }],
            counts,
            totals: Vec::new(),
        };
        assert_eq!(
            report.to_csv().unwrap(),
            "country,country_name,template,messages,segments,delivered,undelivered,failed,\
             expired,no_receipt,awaiting_receipt,currency,actual_cost,estimated_cost\n\
             KR,\"Korea, Republic of\",\"say \"\"hi\"\"\nthere\",1,0,0,0,0,0,0,0,KES,0.80,\n"
        );
    }
}
