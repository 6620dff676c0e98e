//! The durable retry schedule: exponential, capped, optionally jittered.
//!
//! The queue retries nothing itself (see ARCHITECTURE.md); after a transient
//! failure the dispatcher records the attempt with the delivery due again
//! after [`delay_after`]. [`after_failure`] decides whether there is a next try:
//! a notification is retried for `retry.give_up_after` from its first
//! attempt, an OTP until its `expires_at`; `max_attempts` is only a cap.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::RetryConfig;

/// The wait after failed attempt number `attempt` (1-based): `initial_delay`
/// doubled per attempt, never over `max_delay`, jitter included.
pub fn delay_after(policy: &RetryConfig, attempt: u32) -> Duration {
    let mut builder = ExponentialBuilder::default()
        .with_min_delay(policy.initial_delay)
        .with_max_delay(policy.max_delay)
        .with_factor(2.0)
        .without_max_times();
    if policy.jitter {
        builder = builder.with_jitter();
    }
    let nth = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
    builder
        .build()
        .nth(nth)
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay)
}

/// What follows a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Stop: `max_attempts` calls are spent.
    OutOfAttempts,
    /// Stop: the deadline has passed.
    OutOfTime,
}

/// After failed attempt number `attempt` at `now`: the next try after the
/// backoff `delay`, never past `deadline` (the retry budget's end, or an
/// OTP's expiry, where the dispatcher expires it), or giving up once the
/// deadline has passed or `max_attempts` calls are spent.
pub fn after_failure(
    attempt: u32,
    max_attempts: u32,
    delay: Duration,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> AfterFailure {
    if attempt >= max_attempts {
        return AfterFailure::OutOfAttempts;
    }
    if now >= deadline {
        return AfterFailure::OutOfTime;
    }
    let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    // Whole microseconds, as every tuma timestamp (see `clock`).
    AfterFailure::RetryAt(at.min(deadline).trunc_subsecs(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: bool) -> RetryConfig {
        RetryConfig {
            max_attempts: 6,
            give_up_after: Duration::from_secs(24 * 3600),
            initial_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            jitter,
            after_unknown_otp: crate::domain::unknown::AfterUnknown::Resend,
            after_unknown_notification: crate::domain::unknown::AfterUnknown::Resolve,
        }
    }

    #[test]
    fn delays_double_from_the_initial_delay_up_to_the_cap() {
        let p = policy(false);
        let delays: Vec<u64> = (1..=7).map(|n| delay_after(&p, n).as_secs()).collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn jitter_stays_between_the_delay_and_the_cap() {
        let p = policy(true);
        for _ in 0..200 {
            let d = delay_after(&p, 2);
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
            assert!(delay_after(&p, 10) <= p.max_delay);
        }
    }

    #[test]
    fn a_failure_is_retried_until_the_deadline_and_the_last_try_is_at_the_deadline() {
        let now = Utc::now().trunc_subsecs(6);
        let secs = |s| now + chrono::Duration::seconds(s);
        let delay = Duration::from_secs(600);
        assert_eq!(
            after_failure(40, 200, delay, now, secs(3600)),
            AfterFailure::RetryAt(secs(600)),
            "many attempts are fine while time remains"
        );
        assert_eq!(
            after_failure(40, 200, delay, now, secs(60)),
            AfterFailure::RetryAt(secs(60)),
            "the last try is at the deadline, not past it"
        );
        assert_eq!(
            after_failure(41, 200, delay, secs(60), secs(60)),
            AfterFailure::OutOfTime
        );
        assert_eq!(
            after_failure(200, 200, delay, now, secs(3600)),
            AfterFailure::OutOfAttempts,
            "max_attempts stays a cap"
        );
    }
}
