//! Provider calls still listened to after their timeout: the dispatcher
//! freed the slot and recorded the attempt `unknown`, and a task waits on
//! for the answer (up to the provider's `late_answer_grace`) to record it on
//! the same attempt. A draining or stopping worker waits for them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The late answers this process still awaits.
#[derive(Debug, Clone, Default)]
pub struct LateAnswers(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Counts one listener until dropped.
struct Listening(Arc<Inner>);

impl Drop for Listening {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl LateAnswers {
    /// Runs `listener` in the background, counted until it ends.
    pub fn spawn(&self, listener: impl Future<Output = ()> + Send + 'static) {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        let listening = Listening(self.0.clone());
        tokio::spawn(async move {
            let _listening = listening;
            listener.await;
        });
    }

    /// How many calls are still listened to.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no call is listened to, or `limit` passed; returns how
    /// many still were then.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let waiting = async {
            loop {
                let idle = self.0.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(limit, waiting).await;
        self.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_ends_when_the_last_listener_ends() {
        let late = LateAnswers::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        late.spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(late.in_flight(), 1);
        assert_eq!(late.wait_idle(Duration::from_millis(20)).await, 1);
        let _ = tx.send(());
        assert_eq!(late.wait_idle(Duration::from_secs(30)).await, 0);
    }
}
