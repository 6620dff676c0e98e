//! Attempts this process could not close itself, kept in memory until the
//! sweeper (or the job's re-run) settles them: the provider's answer when
//! recording it failed, or why the call was cut short.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::attempt::AttemptResult;
use crate::domain::unknown::UnknownCause;
use crate::store::NextStep;

/// What this process knows of attempts it could not close itself, by job id:
/// the provider's answer when recording it failed, or why the call was cut
/// short. The sweeper (or the job's re-run) settles them with it.
#[derive(Debug, Default)]
pub struct Unsettled(Mutex<HashMap<String, (Instant, Remembered)>>);

/// One attempt's entry.
#[derive(Debug, Clone)]
pub(crate) enum Remembered {
    /// The provider answered; recording it failed with `error`.
    Answer {
        result: Box<AttemptResult>,
        next: NextStep,
        error: String,
    },
    /// The call was cut short, so.
    Lost(UnknownCause),
}

/// Entries nobody settled (another process did) are dropped after a day.
const UNSETTLED_KEPT: Duration = Duration::from_secs(24 * 3600);

impl Unsettled {
    fn keep(&self, job_id: &str, what: Remembered) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|_, (at, _)| at.elapsed() < UNSETTLED_KEPT);
            map.insert(job_id.to_owned(), (Instant::now(), what));
        }
    }

    pub(crate) fn keep_answer(
        &self,
        job_id: &str,
        result: AttemptResult,
        next: NextStep,
        error: String,
    ) {
        self.keep(
            job_id,
            Remembered::Answer {
                result: Box::new(result),
                next,
                error,
            },
        );
    }

    /// The job's hard time limit cut it short (called by the worker).
    pub fn job_limit_hit(&self, job_id: &str, limit: Duration) {
        self.keep(job_id, Remembered::Lost(UnknownCause::JobLimit { limit }));
    }

    pub(crate) fn get(&self, job_id: &str) -> Option<Remembered> {
        self.0.lock().ok()?.get(job_id).map(|(_, r)| r.clone())
    }

    pub(crate) fn forget(&self, job_id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(job_id);
        }
    }
}
