//! A provider call's result: how it ended and what it cost. No I/O.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::money::Money;

/// How a provider call ended (`delivery_attempts.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The provider took the message.
    Accepted,
    /// Worth retrying.
    Transient,
    /// Will fail again: do not retry.
    Permanent,
    /// The worker died during the call; it may or may not have been sent.
    Unknown,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 4] = [
        Outcome::Accepted,
        Outcome::Transient,
        Outcome::Permanent,
        Outcome::Unknown,
    ];

    /// The name stored in `delivery_attempts.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Transient => "transient",
            Outcome::Permanent => "permanent",
            Outcome::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown attempt outcome `{s}` (expected one of: {})",
                    Outcome::ALL.map(|o| o.as_str()).join(", ")
                )
            })
    }
}

/// What an attempt recorded.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// How it ended.
    pub outcome: Outcome,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// The provider's id for the message.
    pub provider_message_id: Option<String>,
    /// The provider's status word (`queued`, `Success`, …).
    pub provider_status: Option<String>,
    /// The provider's error code.
    pub error_code: Option<String>,
    /// Error text (never a secret).
    pub error: Option<String>,
    /// Cost, and whether it is an estimate.
    pub cost: Option<(Money, bool)>,
    /// Segments by tuma's own count.
    pub segments: Option<u32>,
    /// Segments as the provider counted them, when it says.
    pub provider_segments: Option<u32>,
    /// How long the call took.
    pub latency_ms: Option<i64>,
    /// Every part's id when the provider split the message into several
    /// (the first is `provider_message_id`); empty otherwise.
    pub part_ids: Vec<String>,
}

impl AttemptResult {
    /// A result with only an outcome and an error.
    pub fn error(outcome: Outcome, finished_at: DateTime<Utc>, error: impl Into<String>) -> Self {
        AttemptResult {
            outcome,
            finished_at,
            provider_message_id: None,
            provider_status: None,
            error_code: None,
            error: Some(error.into()),
            cost: None,
            segments: None,
            provider_segments: None,
            latency_ms: None,
            part_ids: Vec::new(),
        }
    }
}
