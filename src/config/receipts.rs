//! `[receipts]`: receipts and price reconciliation.

use super::*;

/// Checks `[receipts]`.
pub(super) fn check(rc: RawReceipts, cx: &Cx) -> Result<ReceiptsConfig, ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    let receipts = ReceiptsConfig {
        no_receipt_after: parse_duration_in(&rc.no_receipt_after, secs(1), secs(365 * DAY))
            .map_err(|e| err("receipts.no_receipt_after", e))?,
        reconcile_after: parse_duration_in(&rc.reconcile_after, Duration::ZERO, secs(365 * DAY))
            .map_err(|e| err("receipts.reconcile_after", e))?,
        give_up_after: parse_duration_in(&rc.give_up_after, secs(1), secs(365 * DAY))
            .map_err(|e| err("receipts.give_up_after", e))?,
        reconcile_interval: parse_duration_in(&rc.reconcile_interval, secs(1), secs(DAY))
            .map_err(|e| err("receipts.reconcile_interval", e))?,
    };
    if receipts.give_up_after <= receipts.reconcile_after {
        return Err(err(
            "receipts.give_up_after",
            "must be longer than receipts.reconcile_after".into(),
        ));
    }
    Ok(receipts)
}
