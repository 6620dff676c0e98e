//! Africa's Talking delivery reports: what a report's `status` means, and
//! the URL secret that authenticates them.
//!
//! `Success` → delivered; `Failed`, `Rejected`, `AbsentSubscriber`,
//! `Expired` → undelivered with `failureReason`; anything else (`Sent`,
//! `Submitted`, `Buffered`) leaves it sent.

use chrono::{DateTime, Utc};

use crate::domain::provider_text::{MAX_ID_CHARS, MAX_STATUS_CHARS};
use crate::domain::receipt::ReceiptVerdict;
use crate::receipts::{MissingField, field, fields_json};
use crate::store::NewReceipt;

/// The verdict of an Africa's Talking report `status`.
pub fn africastalking_verdict(status: &str) -> ReceiptVerdict {
    match status {
        "Success" => ReceiptVerdict::Delivered,
        "Failed" | "Rejected" | "AbsentSubscriber" | "Expired" => ReceiptVerdict::Undelivered,
        _ => ReceiptVerdict::InProgress,
    }
}

/// An Africa's Talking delivery report for `provider`.
pub fn from_africastalking(
    provider: &str,
    fields: &[(String, String)],
    received_at: DateTime<Utc>,
) -> Result<NewReceipt, MissingField> {
    let id = field(fields, "id", MAX_ID_CHARS).ok_or(MissingField("id"))?;
    let status = field(fields, "status", MAX_STATUS_CHARS).ok_or(MissingField("status"))?;
    let verdict = africastalking_verdict(&status);
    let reason = field(fields, "failureReason", MAX_STATUS_CHARS);
    let error = match verdict {
        ReceiptVerdict::Undelivered => Some(match &reason {
            Some(reason) => format!("{status}: {reason}"),
            None => status.clone(),
        }),
        _ => None,
    };
    Ok(NewReceipt {
        provider: provider.to_owned(),
        provider_message_id: id,
        status,
        verdict,
        error_code: reason,
        error,
        fields: fields_json(fields),
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn africastalking_statuses_map_to_verdicts() {
        for (status, verdict) in [
            ("Success", ReceiptVerdict::Delivered),
            ("Failed", ReceiptVerdict::Undelivered),
            ("Rejected", ReceiptVerdict::Undelivered),
            ("AbsentSubscriber", ReceiptVerdict::Undelivered),
            ("Expired", ReceiptVerdict::Undelivered),
            ("Sent", ReceiptVerdict::InProgress),
            ("Submitted", ReceiptVerdict::InProgress),
            ("Buffered", ReceiptVerdict::InProgress),
        ] {
            assert_eq!(africastalking_verdict(status), verdict, "{status}");
        }
        let r = from_africastalking(
            "at",
            &pairs(&[
                ("id", "ATXid_1"),
                ("status", "Failed"),
                ("failureReason", "UserInBlackList"),
            ]),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(r.error.as_deref(), Some("Failed: UserInBlackList"));
    }

    #[test]
    fn africastalking_receipt_text_is_cleaned() {
        let r = from_africastalking(
            "at",
            &pairs(&[
                ("id", "ATXid_1"),
                ("status", "Failed"),
                ("failureReason", "Deliv\u{1b}[2JeryFailure"),
            ]),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(r.error.as_deref(), Some("Failed: Deliv[2JeryFailure"));
    }
}
