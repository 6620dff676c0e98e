//! Delivery receipts: what a provider's status callback or delivery report
//! means for a delivery. The rules (docs/providers.md):
//!
//! - Twilio `MessageStatus`: `delivered` → delivered; `undelivered` / `failed`
//!   → undelivered, with `ErrorCode` described from the asynchronous code
//!   table; anything else (`sent`, `sending`, `queued`, …) leaves it sent.
//! - Africa's Talking `status`: `Success` → delivered; `Failed`, `Rejected`,
//!   `AbsentSubscriber`, `Expired` → undelivered with `failureReason`;
//!   anything else (`Sent`, `Submitted`, `Buffered`) leaves it sent.
//!
//! A receipt only ever moves a delivery out of `sent` (the store guards it),
//! so late, repeated and out-of-order receipts are recorded and change nothing.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::providers::twilio::receipt::describe_async_error;
use crate::store::{NewReceipt, ReceiptVerdict};

/// Why a receipt's fields cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the receipt has no `{0}`")]
pub struct MissingField(pub &'static str);

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The fields as a JSON object (the last value of a repeated name wins).
pub fn fields_json(fields: &[(String, String)]) -> Value {
    let map: Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(map)
}

/// The verdict of a Twilio `MessageStatus`.
pub fn twilio_verdict(status: &str) -> ReceiptVerdict {
    match status {
        "delivered" => ReceiptVerdict::Delivered,
        "undelivered" | "failed" => ReceiptVerdict::Undelivered,
        _ => ReceiptVerdict::InProgress,
    }
}

/// A Twilio status callback (or a fetched message's status and error) for `provider`.
pub fn from_twilio(
    provider: &str,
    fields: &[(String, String)],
    received_at: DateTime<Utc>,
) -> Result<NewReceipt, MissingField> {
    let sid = field(fields, "MessageSid")
        .or_else(|| field(fields, "SmsSid"))
        .ok_or(MissingField("MessageSid"))?;
    let status = field(fields, "MessageStatus")
        .or_else(|| field(fields, "SmsStatus"))
        .ok_or(MissingField("MessageStatus"))?
        .to_ascii_lowercase();
    let verdict = twilio_verdict(&status);
    let error_code = field(fields, "ErrorCode").map(str::to_owned);
    let error = match verdict {
        ReceiptVerdict::Undelivered => Some(match &error_code {
            Some(code) => describe_async_error(code),
            None => format!("Twilio reported the message {status}"),
        }),
        _ => None,
    };
    Ok(NewReceipt {
        provider: provider.to_owned(),
        provider_message_id: sid.to_owned(),
        status,
        verdict,
        error_code,
        error,
        fields: fields_json(fields),
        received_at,
    })
}

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
    let id = field(fields, "id").ok_or(MissingField("id"))?;
    let status = field(fields, "status").ok_or(MissingField("status"))?;
    let verdict = africastalking_verdict(status);
    let reason = field(fields, "failureReason").map(str::to_owned);
    let error = match verdict {
        ReceiptVerdict::Undelivered => Some(match &reason {
            Some(reason) => format!("{status}: {reason}"),
            None => status.to_owned(),
        }),
        _ => None,
    };
    Ok(NewReceipt {
        provider: provider.to_owned(),
        provider_message_id: id.to_owned(),
        status: status.to_owned(),
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
    fn twilio_statuses_map_to_verdicts() {
        for (status, verdict) in [
            ("delivered", ReceiptVerdict::Delivered),
            ("undelivered", ReceiptVerdict::Undelivered),
            ("failed", ReceiptVerdict::Undelivered),
            ("sent", ReceiptVerdict::InProgress),
            ("sending", ReceiptVerdict::InProgress),
            ("queued", ReceiptVerdict::InProgress),
        ] {
            assert_eq!(twilio_verdict(status), verdict, "{status}");
        }
    }

    #[test]
    fn an_undelivered_twilio_callback_carries_its_async_error() {
        let r = from_twilio(
            "twilio",
            &pairs(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30007"),
            ]),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(r.verdict, ReceiptVerdict::Undelivered);
        assert_eq!(
            r.error.as_deref(),
            Some("30007 filtered as spam (permanent)")
        );
        assert_eq!(r.fields["ErrorCode"], "30007");
        assert_eq!(
            from_twilio("twilio", &pairs(&[("MessageStatus", "sent")]), Utc::now()),
            Err(MissingField("MessageSid"))
        );
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
}
