//! The queue's vocabulary: the two lanes, the task a worker is handed, and
//! in-process wake-ups.
//!
//! The `deliveries` table is the queue (`queue_backend.rs` claims from it);
//! a task only says "attempt delivery X, as claim T". The claim's token is
//! the row's `job_id`: every change the dispatcher makes is guarded by it,
//! so a task whose token is no longer the delivery's (its lease ran out and
//! another worker claimed it) is stale and does nothing.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::domain::DeliveryKind;

/// A queue lane: OTPs never wait behind bulk notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// One-time codes.
    Otp,
    /// Everything else.
    Notifications,
}

impl Lane {
    /// Both lanes.
    pub const ALL: [Lane; 2] = [Lane::Otp, Lane::Notifications];

    /// The lane's name (in worker names, spans and `--lanes`).
    pub fn queue_name(self) -> &'static str {
        match self {
            Lane::Otp => "tuma-otp",
            Lane::Notifications => "tuma-notifications",
        }
    }

    /// The lane's place in a per-lane array (`Lane::ALL` order).
    pub(crate) fn index(self) -> usize {
        match self {
            Lane::Otp => 0,
            Lane::Notifications => 1,
        }
    }

    /// The kind of delivery the lane carries: its claim's predicate.
    pub fn kind(self) -> DeliveryKind {
        match self {
            Lane::Otp => DeliveryKind::Otp,
            Lane::Notifications => DeliveryKind::Notification,
        }
    }

    /// The Postgres channel a commit that makes the lane's work due
    /// notifies (the `deliveries_wake_*` triggers).
    pub fn channel(self) -> &'static str {
        match self {
            Lane::Otp => "tuma_otp",
            Lane::Notifications => "tuma_notification",
        }
    }

    /// The lane a kind of delivery travels in.
    pub fn for_kind(kind: DeliveryKind) -> Lane {
        match kind {
            DeliveryKind::Otp => Lane::Otp,
            DeliveryKind::Notification => Lane::Notifications,
        }
    }
}

impl std::str::FromStr for Lane {
    type Err = String;

    /// `otp` or `notifications` (as `tuma worker --lanes` takes them).
    fn from_str(s: &str) -> Result<Lane, String> {
        match s.trim() {
            "otp" => Ok(Lane::Otp),
            "notifications" => Ok(Lane::Notifications),
            other => Err(format!(
                "unknown lane `{other}`: expected `otp` or `notifications`"
            )),
        }
    }
}

/// What a worker is handed: a claimed delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// The delivery to attempt.
    pub delivery_id: String,
    /// The claim's token; must equal `deliveries.job_id` for the task to act.
    pub job_id: String,
}

impl DeliveryJob {
    /// A fresh token (a ULID) for `delivery_id`.
    pub fn new(delivery_id: &str) -> DeliveryJob {
        DeliveryJob {
            delivery_id: delivery_id.to_owned(),
            job_id: ulid::Ulid::generate().to_string(),
        }
    }
}

/// Wakes this process's idle workers of a lane after a commit that made
/// work due (and, on Postgres, after another process's `NOTIFY`).
///
/// Every worker of a lane subscribes ([`Wakers::subscribe`]); a wake-up
/// reaches each once. Signals coalesce: a burst of commits wakes a worker
/// once, and a worker woken while it claims claims again after.
#[derive(Debug, Default)]
pub struct Wakers {
    subscribers: Mutex<[Vec<mpsc::Sender<()>>; 2]>,
}

impl Wakers {
    /// Signals that `lane` has new work.
    pub fn wake(&self, lane: Lane) {
        let Ok(mut subscribers) = self.subscribers.lock() else {
            return;
        };
        // A full channel already holds a wake-up; a closed one's worker is gone.
        subscribers[lane.index()].retain(|tx| match tx.try_send(()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => true,
            Err(mpsc::error::TrySendError::Closed(())) => false,
        });
    }

    /// A new receiver of `lane`'s wake-ups.
    pub fn subscribe(&self, lane: Lane) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel(1);
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers[lane.index()].push(tx);
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_reaches_every_worker_of_its_lane_once() {
        let wakers = Wakers::default();
        let mut a = wakers.subscribe(Lane::Otp);
        let mut b = wakers.subscribe(Lane::Otp);
        let mut bulk = wakers.subscribe(Lane::Notifications);

        wakers.wake(Lane::Otp);
        wakers.wake(Lane::Otp); // coalesces with the first
        assert!(a.try_recv().is_ok());
        assert!(a.try_recv().is_err(), "once");
        assert!(b.try_recv().is_ok());
        assert!(
            bulk.try_recv().is_err(),
            "another lane's wake-ups are not this lane's"
        );

        // A worker that is gone is forgotten.
        drop(a);
        wakers.wake(Lane::Otp);
        assert!(b.try_recv().is_ok());
        assert_eq!(
            wakers.subscribers.lock().unwrap()[Lane::Otp.index()].len(),
            1
        );
    }
}
