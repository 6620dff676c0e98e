//! What a webhook event is called, its id, and the body of a budget's
//! threshold event: read by the store (which writes events in the
//! transactions that raise them) and by the webhook dispatcher.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::budget::Crossing;

/// What happened to a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A provider accepted it.
    Sent,
    /// A receipt says it arrived.
    Delivered,
    /// A receipt says it did not arrive.
    Undelivered,
    /// Given up: a permanent error, or every attempt used.
    Failed,
    /// A delivery whose `expires_at` (an OTP's TTL, a notification's own
    /// deadline) passed before it could be sent.
    Expired,
    /// Taken back by its caller before any provider had it.
    Canceled,
    /// A provider may have it, but never answered; left for ops.
    Unknown,
    /// A budget crossed one of its `alert_at` thresholds (heard only by
    /// endpoints of keys with the `ops` scope).
    BudgetThreshold,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 8] = [
        EventType::Sent,
        EventType::Delivered,
        EventType::Undelivered,
        EventType::Failed,
        EventType::Expired,
        EventType::Canceled,
        EventType::Unknown,
        EventType::BudgetThreshold,
    ];

    /// The delivery events: the database trigger raises exactly these (the
    /// delivery statuses of the same names).
    pub const DELIVERY: [EventType; 7] = [
        EventType::Sent,
        EventType::Delivered,
        EventType::Undelivered,
        EventType::Failed,
        EventType::Expired,
        EventType::Canceled,
        EventType::Unknown,
    ];

    /// The name receivers see (`delivery.failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Sent => "delivery.sent",
            EventType::Delivered => "delivery.delivered",
            EventType::Undelivered => "delivery.undelivered",
            EventType::Failed => "delivery.failed",
            EventType::Expired => "delivery.expired",
            EventType::Canceled => "delivery.canceled",
            EventType::Unknown => "delivery.unknown",
            EventType::BudgetThreshold => "budget.threshold",
        }
    }

    /// Whether only keys with the `ops` scope may hear it.
    pub fn for_ops(self) -> bool {
        self == EventType::BudgetThreshold
    }

    /// The delivery status the event reports (a delivery event's).
    pub fn status(self) -> &'static str {
        self.as_str().trim_start_matches("delivery.")
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<EventType, String> {
        EventType::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = EventType::ALL.iter().map(|e| e.as_str()).collect();
                format!("unknown event `{s}` (expected one of: {})", all.join(", "))
            })
    }
}

/// A new event id (`webhook-id`): `msg_` and 32 hex digits.
pub fn new_event_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// The body of a `budget.threshold` event: which budget, its period, the
/// limit, what was spent and reserved, the share used and the threshold
/// crossed. Amounts are exact decimal strings in the budget's currency.
pub fn budget_payload(c: &Crossing, occurred_at: DateTime<Utc>) -> Value {
    json!({
        "type": EventType::BudgetThreshold.as_str(),
        "timestamp": occurred_at,
        "data": {
            "budget": c.budget,
            "currency": c.currency.as_str(),
            "period": c.period.as_str(),
            "period_start": c.period_start,
            "period_end": c.period.next_start(c.period_start),
            "limit": c.limit.to_decimal_string(),
            "spent": c.spent.to_decimal_string(),
            "reserved": c.reserved.to_decimal_string(),
            "ratio": c.ratio,
            "threshold": c.threshold,
            "occurred_at": occurred_at,
        }
    })
}
