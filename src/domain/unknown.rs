//! Why an attempt's outcome is `unknown`: each way tuma can lose sight of a
//! provider call has its own code (on the attempt's `error_code`) and text.
//! (A provider's answer that could not be recorded at once is not unknown:
//! the process that got it records it once the database answers again.)

use std::time::Duration;

/// How tuma lost sight of a provider call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownCause {
    /// No process remembers the call's end: the worker stopped (crashed,
    /// was killed, or restarted) while the attempt was open.
    WorkerStopped,
    /// The attempt stayed open for longer than any send may take, although
    /// its worker was alive.
    Stuck {
        /// How long a send may take at most (`Config::longest_send`).
        longest_send: Duration,
    },
    /// The job's hard time limit cut it short while the attempt was open.
    JobLimit {
        /// The limit.
        limit: Duration,
    },
}

impl UnknownCause {
    /// The code stored on the attempt (`error_code`).
    pub fn code(&self) -> &'static str {
        match self {
            UnknownCause::WorkerStopped => "tuma.worker_stopped",
            UnknownCause::Stuck { .. } => "tuma.stuck",
            UnknownCause::JobLimit { .. } => "tuma.job_limit",
        }
    }

    /// The text stored on the attempt (`error`).
    pub fn describe(&self) -> String {
        let maybe = "the message may or may not have been sent";
        match self {
            UnknownCause::WorkerStopped => {
                format!("the worker stopped during the provider call; {maybe}")
            }
            UnknownCause::Stuck { longest_send } => format!(
                "the attempt stayed open for more than twice the longest a send may take ({}) \
                 while its worker was alive; {maybe}",
                humantime::format_duration(*longest_send)
            ),
            UnknownCause::JobLimit { limit } => format!(
                "the job hit its hard time limit ({}) with the attempt open; {maybe}",
                humantime::format_duration(*limit)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_its_own_code_and_text() {
        let causes = [
            UnknownCause::WorkerStopped,
            UnknownCause::Stuck {
                longest_send: Duration::from_secs(16),
            },
            UnknownCause::JobLimit {
                limit: Duration::from_secs(21),
            },
        ];
        let codes: std::collections::HashSet<_> = causes.iter().map(|c| c.code()).collect();
        let texts: std::collections::HashSet<_> = causes.iter().map(|c| c.describe()).collect();
        assert_eq!((codes.len(), texts.len()), (3, 3));
        assert!(causes[2].describe().contains("21s"));
    }
}
