//! Delivery statuses and the one place their transitions are checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Queued, perhaps waiting for a retry.
    Pending,
    /// Handed to a provider; no answer yet.
    Sending,
    /// The provider accepted it.
    Sent,
    /// A receipt says it reached the handset or inbox.
    Delivered,
    /// A receipt says it did not arrive.
    Undelivered,
    /// A permanent error, or every attempt used.
    Failed,
    /// An OTP whose TTL passed before it could be sent.
    Expired,
    /// Taken back by its caller before any provider had it.
    Canceled,
    /// Kept back by the spend guard: its budget is reached. Released (back to
    /// `pending`) when the budget's period rolls over or ops release it; never
    /// failed or dropped for it (an OTP still expires at its TTL).
    Held,
    /// A provider may have it: the request was written and no answer came,
    /// and `retry.after_unknown` says not to send it again (or every resend
    /// it allows is spent). Left for ops; a late answer still moves it.
    Unknown,
}

/// A status change the rules do not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a delivery cannot go from {from} to {to}")]
pub struct TransitionError {
    /// The status it had.
    pub from: DeliveryStatus,
    /// The status asked for.
    pub to: DeliveryStatus,
}

impl DeliveryStatus {
    /// Every status, in life order.
    pub const ALL: [DeliveryStatus; 10] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Sending,
        DeliveryStatus::Sent,
        DeliveryStatus::Delivered,
        DeliveryStatus::Undelivered,
        DeliveryStatus::Failed,
        DeliveryStatus::Expired,
        DeliveryStatus::Canceled,
        DeliveryStatus::Held,
        DeliveryStatus::Unknown,
    ];

    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Undelivered => "undelivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::Canceled => "canceled",
            DeliveryStatus::Held => "held",
            DeliveryStatus::Unknown => "unknown",
        }
    }

    /// Whether tuma will still try to send it. Once this is false the OTP code
    /// is wiped from the database.
    pub fn is_sendable(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Pending | DeliveryStatus::Sending | DeliveryStatus::Held
        )
    }

    /// Checks a transition. The rules:
    /// - `pending` → `sending` (an attempt starts), `expired` (TTL passed), `failed`
    ///   (the message can no longer be built), `canceled` (its caller took it back),
    ///   `held` (its budget is reached);
    /// - `held` → `pending` (released) or `expired` (an OTP's TTL passed);
    /// - `sending` → `sent`, `failed`, back to `pending` (a retry is
    ///   scheduled), or `unknown` (no answer, and no resend allowed);
    /// - `unknown` → `sent`, `failed` or `pending`, by a late answer;
    /// - `sent` → `delivered` / `undelivered` (receipts);
    /// - `delivered`, `undelivered`, `failed`, `expired` and `canceled` are
    ///   final, but for [`DeliveryStatus::late_acceptance_sources`].
    pub fn check_transition(self, to: DeliveryStatus) -> Result<(), TransitionError> {
        use DeliveryStatus::*;
        let ok = matches!(
            (self, to),
            (Pending, Sending | Expired | Failed | Canceled | Held)
                | (Held, Pending | Expired | Canceled)
                | (Sending, Sent | Failed | Pending | Unknown)
                | (Unknown, Sent | Failed | Pending)
                | (Sent, Delivered | Undelivered)
        );
        if ok {
            Ok(())
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    /// The statuses a delivery may be in just before moving to `to`: used as the
    /// guard of every conditional `UPDATE`, so the database enforces the same rules.
    pub fn allowed_sources(to: DeliveryStatus) -> Vec<DeliveryStatus> {
        DeliveryStatus::ALL
            .into_iter()
            .filter(|from| from.check_transition(to).is_ok())
            .collect()
    }

    /// The statuses a provider's late acceptance of an earlier attempt moves
    /// to `sent`: a fact about the past, not a step back. The delivery was
    /// waiting for its next try (`pending`, which the acceptance cancels),
    /// left `unknown`, failed on another provider, or expired while its
    /// answer was late; in each the provider took the message.
    pub const fn late_acceptance_sources() -> [DeliveryStatus; 4] {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Unknown,
            DeliveryStatus::Failed,
            DeliveryStatus::Expired,
        ]
    }

    /// The status the old app's `*_delivery_log` tables knew: pending, sent or failed.
    pub fn legacy(self) -> &'static str {
        match self {
            DeliveryStatus::Pending
            | DeliveryStatus::Sending
            | DeliveryStatus::Held
            | DeliveryStatus::Unknown => "pending",
            DeliveryStatus::Sent | DeliveryStatus::Delivered => "sent",
            DeliveryStatus::Undelivered
            | DeliveryStatus::Failed
            | DeliveryStatus::Expired
            | DeliveryStatus::Canceled => "failed",
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeliveryStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status `{s}` (expected one of: {})",
                    DeliveryStatus::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::*;
    use super::*;

    #[test]
    fn the_life_of_a_delivery_is_allowed() {
        for (from, to) in [
            (Pending, Sending),
            (Sending, Pending),
            (Sending, Sent),
            (Sent, Delivered),
            (Sent, Undelivered),
            (Sending, Failed),
            (Pending, Expired),
            (Pending, Canceled),
            (Pending, Held),
            (Held, Pending),
            (Held, Expired),
            (Sending, Unknown),
            (Unknown, Sent),
            (Unknown, Failed),
            (Unknown, Pending),
        ] {
            assert_eq!(from.check_transition(to), Ok(()), "{from} -> {to}");
        }
    }

    #[test]
    fn final_statuses_never_move_and_nothing_goes_backwards() {
        for from in [Delivered, Undelivered, Failed, Expired, Canceled] {
            for to in DeliveryStatus::ALL {
                assert!(from.check_transition(to).is_err(), "{from} -> {to}");
            }
        }
        for (from, to) in [
            (Sent, Sending),
            (Sent, Pending),
            (Pending, Sent),
            (Sending, Expired),
            (Sending, Canceled),
            (Sent, Canceled),
            (Held, Sending),
            (Held, Failed),
            (Held, Sent),
            (Sending, Held),
            (Pending, Unknown),
            (Unknown, Sending),
            (Unknown, Canceled),
            (Sent, Unknown),
        ] {
            assert!(from.check_transition(to).is_err(), "{from} -> {to}");
        }
    }

    #[test]
    fn legacy_statuses_map_to_pending_sent_or_failed() {
        assert_eq!(Sending.legacy(), "pending");
        assert_eq!(Delivered.legacy(), "sent");
        assert_eq!(Expired.legacy(), "failed");
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>(), Ok(s));
        }
        assert!(
            "queued"
                .parse::<DeliveryStatus>()
                .unwrap_err()
                .contains("queued")
        );
    }
}
