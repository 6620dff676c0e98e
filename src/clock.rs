//! Time, injectable: tuma's own timestamps (created, due, expires) come from a
//! [`Clock`] so tests can move time instead of sleeping, and a task that waits
//! for one of those times waits on the same clock ([`Clock::sleep_until`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SubsecRound, Utc};

/// A wait for a time on a [`Clock`].
pub type Alarm = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of the current time, in whole microseconds: what both databases
/// store, so a timestamp read back equals the one written.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once this clock has reached `at` (at once if it has): a
    /// timer for a due time this clock set. The default sleeps the
    /// difference on the system's timer.
    fn sleep_until(&self, at: DateTime<Utc>) -> Alarm {
        let wait = (at - self.now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }
}

/// A clock that moves only when told: for tests. Its alarms ring when
/// [`ManualClock::advance`] reaches them, and [`ManualClock::alarms`] tells
/// what tasks are waiting for.
#[derive(Debug)]
pub struct ManualClock {
    now: tokio::sync::watch::Sender<DateTime<Utc>>,
    /// The times of the alarms set and not yet rung or dropped.
    alarms: Arc<Mutex<Vec<DateTime<Utc>>>>,
}

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        ManualClock {
            now: tokio::sync::watch::Sender::new(at.trunc_subsecs(6)),
            alarms: Arc::default(),
        }
    }

    /// Moves the clock forward, ringing the alarms it reaches.
    pub fn advance(&self, by: std::time::Duration) {
        self.now.send_modify(|now| {
            *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        });
    }

    /// The times tasks are waiting for ([`Clock::sleep_until`]), earliest
    /// first.
    pub fn alarms(&self) -> Vec<DateTime<Utc>> {
        let mut alarms = self
            .alarms
            .lock()
            .map(|a| a.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        alarms.sort();
        alarms
    }
}

/// An alarm's entry in [`ManualClock::alarms`], while it waits.
struct Set {
    alarms: Arc<Mutex<Vec<DateTime<Utc>>>>,
    at: DateTime<Utc>,
}

impl Drop for Set {
    fn drop(&mut self) {
        if let Ok(mut alarms) = self.alarms.lock()
            && let Some(i) = alarms.iter().position(|a| *a == self.at)
        {
            alarms.swap_remove(i);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Alarm {
        let mut now = self.now.subscribe();
        if let Ok(mut alarms) = self.alarms.lock() {
            alarms.push(at);
        }
        let set = Set {
            alarms: self.alarms.clone(),
            at,
        };
        Box::pin(async move {
            let _set = set;
            if now.wait_for(|now| *now >= at).await.is_err() {
                // The clock is gone: so is whatever it would have woken.
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_manual_alarm_rings_when_the_clock_reaches_it_and_not_before() {
        let clock = ManualClock::new(Utc::now());
        let at = clock.now() + chrono::Duration::seconds(5);
        let mut alarm = clock.sleep_until(at);
        assert_eq!(clock.alarms(), vec![at]);
        clock.advance(Duration::from_millis(4_999));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut alarm)
                .await
                .is_err(),
            "rang early"
        );
        clock.advance(Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(5), &mut alarm)
            .await
            .expect("rings at its time");
        drop(alarm);
        assert!(clock.alarms().is_empty(), "a rung alarm is no longer set");
        // One for a time already passed rings at once.
        clock.sleep_until(at).await;
    }
}
