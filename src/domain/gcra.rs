//! GCRA, the generic cell rate algorithm: a token bucket kept as one number,
//! the theoretical arrival time (TAT) of the next token.
//!
//! A provider allowed `per_second` calls with bursts of `burst` has an
//! emission interval `T = 1 s / per_second` and a tolerance
//! `τ = (burst − 1) · T`. At time `now`, with `e = max(TAT, now)`, taking
//! `k` tokens conforms while `e + k·T − now ≤ τ + T`, and moves the TAT to
//! `e + k·T`. This is the rule; `store/rate.rs` runs the same arithmetic in
//! one `UPDATE` of the provider's bucket row, so many processes share one
//! bucket. Times are whole microseconds. No I/O.

use std::num::NonZeroU32;
use std::time::Duration;

/// One microsecond-based GCRA bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// `T`: microseconds between two tokens at the sustained rate.
    pub interval_us: i64,
    /// `τ`: how far ahead of the sustained rate a burst may run.
    pub tolerance_us: i64,
    /// The most tokens granted at once (the burst).
    pub burst: u32,
}

/// What one take got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// Tokens granted, from 0 to what was asked.
    pub granted: u32,
    /// The bucket's TAT after the take.
    pub tat_us: i64,
}

impl Gcra {
    /// The bucket for `per_second` with bursts of `burst`. A rate above a
    /// million per second is held to one token per microsecond.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Gcra {
        let interval_us = (1_000_000 / i64::from(per_second.get())).max(1);
        Gcra {
            interval_us,
            tolerance_us: i64::from(burst.get() - 1) * interval_us,
            burst: burst.get(),
        }
    }

    /// Takes up to `want` tokens at `now` from a bucket whose TAT is `tat`
    /// (`None`: a bucket never used, which is full).
    pub fn take(&self, tat: Option<i64>, now: i64, want: u32) -> Take {
        let e = tat.unwrap_or(now).max(now);
        let room = ((now + self.tolerance_us + self.interval_us - e) / self.interval_us).max(0);
        let granted = i64::from(want).min(room);
        Take {
            granted: u32::try_from(granted).unwrap_or(0),
            tat_us: e + granted * self.interval_us,
        }
    }

    /// How long after `now` one token conforms again, for a bucket whose TAT
    /// is `tat` (zero: now).
    pub fn ready_in(&self, tat: i64, now: i64) -> Duration {
        let ready = tat - self.tolerance_us;
        Duration::from_micros(u64::try_from(ready - now).unwrap_or(0))
    }

    /// How long `granted` tokens taken together stand for at the sustained
    /// rate: past that, unused ones are stale and must not be spent.
    pub fn span(&self, granted: u32) -> Duration {
        Duration::from_micros(
            u64::try_from(self.interval_us.saturating_mul(i64::from(granted))).unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(per_second: u32, burst: u32) -> Gcra {
        Gcra::new(
            NonZeroU32::new(per_second).unwrap(),
            NonZeroU32::new(burst).unwrap(),
        )
    }

    #[test]
    fn a_fresh_bucket_grants_its_burst_and_then_nothing_until_an_interval_passes() {
        let g = gcra(50, 5);
        assert_eq!(g.interval_us, 20_000);
        let first = g.take(None, 1_000_000, 100);
        assert_eq!(first.granted, 5);
        assert_eq!(first.tat_us, 1_100_000);
        let empty = g.take(Some(first.tat_us), 1_000_000, 1);
        assert_eq!(empty.granted, 0);
        assert_eq!(empty.tat_us, first.tat_us, "a refused take moves nothing");
        assert_eq!(
            g.ready_in(first.tat_us, 1_000_000),
            Duration::from_micros(20_000)
        );
        let later = g.take(Some(first.tat_us), 1_020_000, 3);
        assert_eq!(later.granted, 1);
        assert_eq!(later.tat_us, 1_120_000);
    }

    #[test]
    fn a_bucket_idle_for_long_refills_to_its_burst_and_no_more() {
        let g = gcra(10, 3);
        let take = g.take(Some(0), 1_000_000_000, 10);
        assert_eq!(take.granted, 3);
        assert_eq!(take.tat_us, 1_000_000_000 + 300_000);
    }

    #[test]
    fn over_any_second_takes_one_at_a_time_never_pass_the_rate_and_burst() {
        let g = gcra(50, 1);
        let mut tat = None;
        let mut granted_at = Vec::new();
        // A caller asking every millisecond for two seconds.
        for now in (0..2_000_000).step_by(1_000) {
            let t = g.take(tat, now, 1);
            tat = Some(t.tat_us);
            if t.granted == 1 {
                granted_at.push(now);
            }
        }
        assert_eq!(granted_at.len(), 100);
        for w in granted_at.windows(2) {
            assert_eq!(w[1] - w[0], 20_000);
        }
    }

    #[test]
    fn bulk_takes_share_the_rate_with_single_ones() {
        let g = gcra(100, 10);
        let a = g.take(None, 0, 4);
        let b = g.take(Some(a.tat_us), 0, 4);
        let c = g.take(Some(b.tat_us), 0, 4);
        assert_eq!((a.granted, b.granted, c.granted), (4, 4, 2));
        assert_eq!(c.tat_us, 100_000);
        assert_eq!(g.span(4), Duration::from_millis(40));
    }

    #[test]
    fn a_rate_above_a_million_per_second_keeps_a_positive_interval() {
        let g = gcra(4_000_000, 1);
        assert_eq!(g.interval_us, 1);
    }
}
