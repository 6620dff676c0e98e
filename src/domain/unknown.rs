//! Why an attempt's outcome is `unknown`: each way tuma can lose sight of a
//! provider call has its own code (on the attempt's `error_code`) and text.
//! (A provider's answer that could not be recorded at once is not unknown:
//! the process that got it records it once the database answers again.)

use std::time::Duration;

/// What follows an attempt whose outcome is unknown (`retry.after_unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUnknown {
    /// Send again at once through the route's next provider, once per
    /// provider of the route: a second message is better than none.
    Resend,
    /// Wait for the late answer; then ask the provider where it can say;
    /// only when it has no record, send again, once.
    Resolve,
    /// Leave the delivery `unknown` for ops.
    Hold,
}

impl AfterUnknown {
    /// The word in `providers.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            AfterUnknown::Resend => "resend",
            AfterUnknown::Resolve => "resolve",
            AfterUnknown::Hold => "hold",
        }
    }

    /// Reads the word in `providers.toml`.
    pub fn parse(word: &str) -> Result<AfterUnknown, String> {
        [
            AfterUnknown::Resend,
            AfterUnknown::Resolve,
            AfterUnknown::Hold,
        ]
        .into_iter()
        .find(|a| a.as_str() == word)
        .ok_or_else(|| format!("`{word}` is not one of: resend, resolve, hold"))
    }
}

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
    /// The request was written and no answer came within the provider's
    /// `timeout`: the provider may have taken (and billed) it. tuma keeps
    /// listening for `late_answer_grace`.
    NoAnswer {
        /// The provider's `timeout`.
        timeout: Duration,
    },
    /// The connection broke after the request was written, before an
    /// answer was read.
    ConnectionLost,
    /// The provider answered, but not in a form that says whether it took
    /// the message (a success without a valid message id, a body that does
    /// not parse).
    UnreadableAnswer,
}

impl UnknownCause {
    /// The code stored on the attempt (`error_code`).
    pub fn code(&self) -> &'static str {
        match self {
            UnknownCause::WorkerStopped => "tuma.worker_stopped",
            UnknownCause::Stuck { .. } => "tuma.stuck",
            UnknownCause::JobLimit { .. } => "tuma.job_limit",
            UnknownCause::NoAnswer { .. } => "tuma.no_answer",
            UnknownCause::ConnectionLost => "tuma.connection_lost",
            UnknownCause::UnreadableAnswer => "tuma.unreadable_answer",
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
            UnknownCause::NoAnswer { timeout } => format!(
                "the request was sent and no answer came within {}; {maybe}",
                humantime::format_duration(*timeout)
            ),
            UnknownCause::ConnectionLost => format!(
                "the connection broke after the request was sent, before an answer came; {maybe}"
            ),
            UnknownCause::UnreadableAnswer => {
                format!("the provider's answer does not say whether it took the message; {maybe}")
            }
        }
    }

    /// The cause stored as `code` on an attempt, when it is one of tuma's.
    pub fn from_code(code: &str) -> Option<&'static str> {
        [
            "tuma.worker_stopped",
            "tuma.stuck",
            "tuma.job_limit",
            "tuma.no_answer",
            "tuma.connection_lost",
            "tuma.unreadable_answer",
        ]
        .into_iter()
        .find(|c| *c == code)
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
            UnknownCause::NoAnswer {
                timeout: Duration::from_secs(3),
            },
            UnknownCause::ConnectionLost,
            UnknownCause::UnreadableAnswer,
        ];
        let codes: std::collections::HashSet<_> = causes.iter().map(|c| c.code()).collect();
        let texts: std::collections::HashSet<_> = causes.iter().map(|c| c.describe()).collect();
        assert_eq!((codes.len(), texts.len()), (6, 6));
        assert!(causes[2].describe().contains("21s"));
        assert!(causes[3].describe().contains("within 3s"));
        for cause in &causes {
            assert_eq!(UnknownCause::from_code(cause.code()), Some(cause.code()));
        }
    }
}
