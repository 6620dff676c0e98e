//! Why intake refused a request: the one error type of every send path
//! (intake, the pumping guards, the suppression list), apart from intake so
//! that the guards intake calls need not import intake back.

use std::borrow::Cow;
use std::time::Duration;

use crate::store::StoreError;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A field is wrong; nothing was written.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field (`to`, `vars.name`, …).
        field: Cow<'static, str>,
        /// Why, in plain words.
        reason: String,
    },
    /// An abuse guard refused the request; nothing was written.
    #[error("{field}: refused by rule {rule}: {reason}")]
    Refused {
        /// The configuration rule (`api.sms_prefix_allowlist`).
        rule: &'static str,
        /// The request field.
        field: &'static str,
        /// Why, in plain words.
        reason: String,
    },
    /// Too many OTPs to this recipient lately; nothing was written.
    #[error("too many one-time codes to this recipient; try again in {}", humantime::format_duration(*retry_after))]
    TooMany {
        /// When the oldest OTP in the window leaves it.
        retry_after: Duration,
    },
    /// An SMS-pumping guard refused the OTP; nothing was written.
    #[error("refused by rule {rule}: {reason}")]
    Throttled {
        /// `country-limit` or `range-burst`.
        rule: &'static str,
        /// Why, naming the country prefix or number range (never the number).
        reason: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The Idempotency-Key was used with a different request; nothing was written.
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused,
    /// The Idempotency-Key is claimed but its response cannot be read yet.
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyInFlight,
    /// The database failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}
