//! What a provider's delivery receipt means for its delivery. No I/O.

use chrono::{DateTime, Duration, Utc};

use super::DeliveryStatus;

/// What a receipt says about the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptVerdict {
    /// It reached the handset.
    Delivered,
    /// It will not arrive.
    Undelivered,
    /// Still on its way (`sent`, `queued`, `Buffered`, …): recorded, no status change.
    InProgress,
}

impl ReceiptVerdict {
    /// The delivery status this verdict moves to, if any.
    pub fn target(self) -> Option<DeliveryStatus> {
        match self {
            ReceiptVerdict::Delivered => Some(DeliveryStatus::Delivered),
            ReceiptVerdict::Undelivered => Some(DeliveryStatus::Undelivered),
            ReceiptVerdict::InProgress => None,
        }
    }
}

/// A delivery `sent` longer than `horizon` before `now` without a final
/// receipt: shown as "no receipt", never taken as delivered.
pub fn no_receipt(
    status: DeliveryStatus,
    sent_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    horizon: std::time::Duration,
) -> bool {
    let horizon = Duration::from_std(horizon).unwrap_or(Duration::MAX);
    status == DeliveryStatus::Sent
        && sent_at.is_some_and(|sent| now.signed_duration_since(sent) > horizon)
}

/// The status to show: `no receipt` for [`no_receipt`], else the status.
pub fn display_status(
    status: DeliveryStatus,
    sent_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    horizon: std::time::Duration,
) -> String {
    if no_receipt(status, sent_at, now, horizon) {
        "no receipt".to_owned()
    } else {
        status.as_str().to_owned()
    }
}
