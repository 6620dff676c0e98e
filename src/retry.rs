//! The durable retry schedule: exponential, capped, optionally jittered.
//!
//! apalis retries nothing itself (see ARCHITECTURE.md); after a transient
//! failure the dispatcher records the attempt and pushes a new job due after
//! [`delay_after`].

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: bool) -> RetryConfig {
        RetryConfig {
            max_attempts: 6,
            initial_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            jitter,
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
}
