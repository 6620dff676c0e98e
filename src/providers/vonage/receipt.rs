//! Vonage's delivery receipts (DLRs) for the SMS API: `msisdn`, `to`,
//! `network-code`, `messageId`, `price`, `status`, `err-code`, `scts`,
//! `message-timestamp`, `client-ref`, `api-key` and, when the account signs
//! its webhooks, `timestamp`, `nonce` and `sig`; form-encoded (`POST`), JSON
//! (`POST-JSON`) or a query string (`GET`), as the dashboard's webhook
//! method says. A signed one whose `timestamp` is further than
//! `receipt_max_age` from its arrival is refused like a forged one.
//!
//! `delivered` → delivered; `expired`, `failed`, `rejected` → undelivered,
//! with `err-code`; anything else (`accepted`, `buffered`, `unknown`)
//! leaves it sent. The `price` is the part's actual price in the account's
//! currency. An undelivered receipt whose `err-code` says the number is
//! gone suppresses the recipient ([`receipt_gone`]).

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::config::VonageConfig;
use super::signing::verify;
use crate::domain::money::Money;
use crate::domain::provider_text::{MAX_ID_CHARS, MAX_STATUS_CHARS};
use crate::domain::receipt::ReceiptVerdict;
use crate::providers::capability::{
    ReceiptAuth, ReceiptCapability, ReceiptRefusal, ReceiptRequest, VerifiedReceipt, form_fields,
};
use crate::receipts::{MissingField, field, fields_json};
use crate::store::NewReceipt;

/// The verdict of a DLR `status`.
pub fn vonage_verdict(status: &str) -> ReceiptVerdict {
    match status {
        "delivered" => ReceiptVerdict::Delivered,
        "expired" | "failed" | "rejected" => ReceiptVerdict::Undelivered,
        _ => ReceiptVerdict::InProgress,
    }
}

/// A DLR's fields, from a form or a JSON object (numbers as text).
pub fn dlr_fields(body: &[u8]) -> Vec<(String, String)> {
    let trimmed = body.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(trimmed) else {
            return Vec::new();
        };
        map.into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Number(n) => Some((k, n.to_string())),
                Value::Bool(b) => Some((k, b.to_string())),
                _ => None,
            })
            .collect()
    } else {
        form_fields(body)
    }
}

/// A DLR for `provider`, with the part's price when it says one.
pub fn from_vonage(
    provider: &str,
    config: &VonageConfig,
    fields: &[(String, String)],
    received_at: DateTime<Utc>,
) -> Result<VerifiedReceipt, MissingField> {
    let id = field(fields, "messageId", MAX_ID_CHARS).ok_or(MissingField("messageId"))?;
    let status = field(fields, "status", MAX_STATUS_CHARS)
        .ok_or(MissingField("status"))?
        .to_ascii_lowercase();
    let verdict = vonage_verdict(&status);
    let error_code = field(fields, "err-code", MAX_STATUS_CHARS).filter(|c| c != "0");
    let error = match verdict {
        ReceiptVerdict::Undelivered => Some(match &error_code {
            Some(code) => format!("Vonage reported the message {status} (err-code {code})"),
            None => format!("Vonage reported the message {status}"),
        }),
        _ => None,
    };
    let price = field(fields, "price", MAX_STATUS_CHARS)
        .and_then(|p| crate::domain::money::parse_decimal_micros(&p).ok())
        .map(|micros| Money::new(micros, config.currency));
    let gone = match verdict {
        ReceiptVerdict::Undelivered => receipt_gone(error_code.as_deref()),
        _ => None,
    };
    let kept: Vec<(String, String)> = fields.iter().filter(|(k, _)| k != "sig").cloned().collect();
    Ok(VerifiedReceipt {
        receipt: NewReceipt {
            provider: provider.to_owned(),
            provider_message_id: id,
            status,
            verdict,
            error_code,
            error,
            fields: fields_json(&kept),
            received_at,
        },
        price,
        recipient_gone: gone,
    })
}

/// The DLR `err-code`s that say the number is not worth paying for again
/// (Vonage's "SMS Delivery Error Codes"): 3, absent subscriber, permanent
/// (no longer active); 4, call barred by the user; 9, illegal number (the
/// user asked not to receive messages from this service). Not 1, 2, 5–8
/// or 10–14: unknown, temporary, portability, spam, network, message or
/// routing causes say nothing certain about the number.
const RECEIPT_GONE: [(&str, &str); 3] = [
    ("3", "the number is no longer active (Vonage err-code 3)"),
    ("4", "the recipient barred messages (Vonage err-code 4)"),
    (
        "9",
        "the recipient asked not to receive messages from this sender (Vonage err-code 9)",
    ),
];

/// Whether an undelivered receipt's `err-code` is one of [`RECEIPT_GONE`];
/// its reason.
pub fn receipt_gone(code: Option<&str>) -> Option<&'static str> {
    let code = code?.trim();
    RECEIPT_GONE
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, reason)| *reason)
}

impl ReceiptCapability for VonageConfig {
    fn auth(&self) -> ReceiptAuth {
        ReceiptAuth::Signature
    }

    /// With `signature_secret_env` set, a DLR must carry a valid `sig`
    /// (Vonage's signed webhooks) and a signed `timestamp` no further than
    /// `receipt_max_age` from its arrival; without it DLRs are taken
    /// unsigned. A DLR naming another account's `api-key` is never this
    /// provider's. The fields are a POST's form or JSON body, or a GET's
    /// query string (the dashboard's webhook method), which the route hands
    /// over as the body.
    fn receive(&self, request: &ReceiptRequest<'_>) -> Result<VerifiedReceipt, ReceiptRefusal> {
        let fields = dlr_fields(request.body);
        let other_account = fields
            .iter()
            .any(|(k, v)| k == "api-key" && v.trim() != self.api_key);
        let signed = match &self.signature {
            Some(s) => verify(&fields, s.secret.expose_secret(), s.method),
            None => true,
        };
        if signed && !other_account && self.signature.is_some() {
            stale(&fields, request.received_at, self.receipt_max_age)?;
        }
        if other_account || !signed {
            return Err(ReceiptRefusal::BadSignature {
                detail:
                    "the receipt's sig is missing or does not match, or it is for another account"
                        .to_owned(),
                log: format!(
                    "Vonage receipt refused: {}",
                    if other_account {
                        "another account's api-key"
                    } else {
                        "missing or wrong sig"
                    }
                ),
            });
        }
        from_vonage(request.provider, self, &fields, request.received_at)
            .map_err(ReceiptRefusal::Malformed)
    }
}

/// Refuses a signed DLR whose `timestamp` (Unix seconds, "only included if
/// you have signatures enabled", Vonage's SMS API `DeliveryReceipt`) is
/// missing, unreadable, or further than `max_age` from `received_at`: a
/// captured receipt replayed later is refused like a forged one.
fn stale(
    fields: &[(String, String)],
    received_at: DateTime<Utc>,
    max_age: std::time::Duration,
) -> Result<(), ReceiptRefusal> {
    let max = humantime::format_duration(max_age);
    let refused = |log: String| ReceiptRefusal::BadSignature {
        detail: format!(
            "the receipt's signed timestamp is missing or more than {max} from now (a replayed receipt?)"
        ),
        log,
    };
    let signed_at = fields
        .iter()
        .rev()
        .find(|(k, _)| k == "timestamp")
        .and_then(|(_, v)| v.trim().parse::<i64>().ok())
        .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0))
        .ok_or_else(|| {
            refused("Vonage receipt refused: signed, but without a readable timestamp".to_owned())
        })?;
    let age = received_at.signed_duration_since(signed_at);
    let limit = chrono::TimeDelta::from_std(max_age).unwrap_or(chrono::TimeDelta::MAX);
    if age > limit || -age > limit {
        return Err(refused(format!(
            "Vonage receipt refused: signed {}s {} it arrived, over receipt_max_age ({max})",
            age.num_seconds().abs(),
            if age >= chrono::TimeDelta::zero() {
                "before"
            } else {
                "after"
            }
        )));
    }
    Ok(())
}
