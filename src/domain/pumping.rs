//! SMS pumping (toll fraud) defence: the pure rules. No I/O: the store reads
//! the recent OTPs of a country or number range inside the transaction that
//! would record the delivery, and asks these functions.
//!
//! **Range bursts.** A number range is the E.164 number's first `digits`
//! digits (`+23480312` for 8). Pumping sends many codes to one range whose
//! operator shares the revenue. A range is refused when, within the last
//! `cool_off`, any `window` held `threshold` accepted OTPs or more, where
//!
//! ```text
//! threshold = max(min_burst, ceil(factor × baseline_count × window / baseline))
//! ```
//!
//! and `baseline_count` is the range's OTPs over the last `baseline`. With
//! the defaults (8 digits, window 10 min, baseline 7 days, factor 20,
//! min_burst 20, cool-off 1 h): a range that normally gets one code a day has
//! 7 in its baseline, an expected 0.007 per window, so its threshold is 20;
//! a burst of 100 in 10 minutes is stopped after 20, and the range refused
//! for an hour after the 20th. A range carrying steady national load, say
//! 10,000 codes a day (about 69 per window, standard deviation about 8 for
//! independent requests), has a threshold of 20 × 69 ≈ 1,389: twenty times
//! its own rate, which steady load does not reach. Only ranges are refused,
//! never a country: the other ranges of the country keep their own counts.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The range-burst rule (`[range_burst]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstRule {
    /// Digits of the E.164 number (after `+`) that name its range.
    pub digits: usize,
    /// The sliding window bursts are counted in.
    pub window: Duration,
    /// The range's own history its normal rate is taken from.
    pub baseline: Duration,
    /// How many times its normal rate a range may get in a window.
    pub factor: u32,
    /// A window may always hold this many.
    pub min_burst: u32,
    /// How long a range that burst is refused, from the burst.
    pub cool_off: Duration,
}

impl Default for BurstRule {
    fn default() -> Self {
        BurstRule {
            digits: 8,
            window: Duration::from_secs(10 * 60),
            baseline: Duration::from_secs(7 * 24 * 3600),
            factor: 20,
            min_burst: 20,
            cool_off: Duration::from_secs(3600),
        }
    }
}

/// The range of an E.164 number: `+` and its first `digits` digits; `None`
/// when the number is not that long.
pub fn range_of(e164: &str, digits: usize) -> Option<&str> {
    let rest = e164.strip_prefix('+')?;
    (rest.len() > digits && rest.bytes().all(|b| b.is_ascii_digit())).then(|| &e164[..=digits])
}

/// The end (exclusive) of the text range that holds every E.164 number
/// starting with `prefix`: digits sort before `:`.
pub fn prefix_end(prefix: &str) -> String {
    format!("{prefix}:")
}

/// How many OTPs a window may hold for a range with `baseline_count` OTPs
/// over the rule's baseline.
pub fn threshold(rule: &BurstRule, baseline_count: u64) -> u64 {
    let per_window = u128::from(baseline_count) * u128::from(rule.factor) * rule.window.as_micros();
    let baseline = rule.baseline.as_micros().max(1);
    let scaled = per_window.div_ceil(baseline);
    u64::try_from(scaled)
        .unwrap_or(u64::MAX)
        .max(u64::from(rule.min_burst))
}

/// Until when a range is refused, given its accepted OTPs' times (ascending,
/// covering at least the last `cool_off + window`) and its threshold; `None`
/// when a new OTP may go.
pub fn refused_until(
    rule: &BurstRule,
    times: &[DateTime<Utc>],
    threshold: u64,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let window = chrono::Duration::from_std(rule.window).unwrap_or(chrono::Duration::MAX);
    let cool_off = chrono::Duration::from_std(rule.cool_off).unwrap_or(chrono::Duration::MAX);
    let n = usize::try_from(threshold).unwrap_or(usize::MAX).max(1);
    let mut until = None;
    for (j, last) in times.iter().enumerate().skip(n - 1) {
        let first = times[j + 1 - n];
        if *last - first < window {
            let end = *last + cool_off;
            if end > now {
                until = Some(until.map_or(end, |u: DateTime<Utc>| u.max(end)));
            }
        }
    }
    until
}

/// Whether a country's OTPs in the last hour leave room for one more.
pub fn country_admits(recent_in_hour: u64, otp_per_hour: u32) -> bool {
    recent_in_hour < u64::from(otp_per_hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        "2026-12-05T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_range_is_the_numbers_first_digits() {
        assert_eq!(range_of("+2348031234567", 8), Some("+23480312"));
        assert_eq!(range_of("+2348031234567", 7), Some("+2348031"));
        assert_eq!(range_of("+2348", 8), None);
        assert_eq!(range_of("amina@example.org", 8), None);
        assert!(prefix_end("+23480312").as_str() > "+234803129999999");
    }

    #[test]
    fn the_default_threshold_stops_a_burst_to_a_quiet_range_but_not_steady_load() {
        let rule = BurstRule::default();
        // One a day: 7 in the baseline.
        assert_eq!(threshold(&rule, 7), 20);
        // Steady 10,000 a day: 70,000 in the baseline, ~69.4 per window.
        let busy = threshold(&rule, 70_000);
        assert_eq!(busy, 1_389);
        // Three standard deviations over its mean stays far below.
        assert!(69 + 3 * 9 < busy);
    }

    #[test]
    fn a_burst_refuses_the_range_for_the_cool_off_after_it() {
        let rule = BurstRule::default();
        let times: Vec<DateTime<Utc>> = (0..20)
            .map(|i| t0() + chrono::Duration::seconds(i * 6))
            .collect();
        let last = *times.last().unwrap();
        assert_eq!(
            refused_until(&rule, &times[..19], 20, last),
            None,
            "19 in the window: one more may go"
        );
        let until = refused_until(&rule, &times, 20, last).unwrap();
        assert_eq!(until, last + chrono::Duration::hours(1));
        assert_eq!(
            refused_until(&rule, &times, 20, until),
            None,
            "the cool-off is over"
        );
        // Twenty spread over more than the window are no burst.
        let spread: Vec<DateTime<Utc>> = (0..20)
            .map(|i| t0() + chrono::Duration::minutes(i))
            .collect();
        assert_eq!(refused_until(&rule, &spread, 20, t0()), None);
    }

    #[test]
    fn a_country_admits_until_its_hourly_limit() {
        assert!(country_admits(49, 50));
        assert!(!country_admits(50, 50));
    }
}
