//! Status webhooks: a calling service's endpoints hear of its deliveries'
//! status changes, signed by the Standard Webhooks specification.
//!
//! - The event rows are written by the database in the statement that
//!   changes a delivery's status (a trigger, `migrations/*/…_webhooks.sql`),
//!   so no status change can commit without its events, whichever code path
//!   made it. A delivery created without an API key (CLI sends) raises none.
//! - `budget.threshold` events go to the endpoints of keys with the `ops`
//!   scope that subscribed to them, written with their body fixed in the
//!   transaction that moves a budget's counter past an `alert_at` threshold
//!   (`store/spend.rs`): once per threshold and period.
//! - [`dispatch`] sends them: signed, with a timeout, retried with backoff
//!   for `webhooks.give_up_after`, in order per delivery and endpoint, each
//!   endpoint in its own send slots so none waits on another; it disables an
//!   endpoint that answers 410 Gone or failed for `webhooks.disable_after`.
//! - [`target`] decides where tuma may connect (SSRF): https, or http to
//!   loopback only; no private, link-local or metadata address unless
//!   `webhooks.allow_ranges` names it; redirects are never followed.
//!
//! This module holds the pure parts: event types, secrets, signatures,
//! payloads and masking. No I/O.

pub mod dispatch;
pub mod register;
/// Where webhooks may go: the address checks (`crate::egress`, a leaf the
/// configuration reads too).
pub use crate::egress as target;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

pub use crate::domain::event::{EventType, budget_payload, new_event_id};
use crate::store::Delivery;

/// A comma-separated list of event types (`delivery.failed,delivery.sent`),
/// each once, in [`EventType::ALL`] order; empty or absent means all.
pub fn parse_events(list: Option<&str>) -> Result<Vec<EventType>, String> {
    let Some(list) = list.filter(|l| !l.trim().is_empty()) else {
        return Ok(EventType::ALL.to_vec());
    };
    let mut chosen = Vec::new();
    for name in list.split(',').map(str::trim) {
        let event: EventType = name.parse()?;
        if !chosen.contains(&event) {
            chosen.push(event);
        }
    }
    Ok(EventType::ALL
        .into_iter()
        .filter(|e| chosen.contains(e))
        .collect())
}

/// The stored form of a subscription: `,delivery.sent,delivery.failed,`, so
/// the trigger finds a type with one substring test.
pub fn stored_events(events: &[EventType]) -> String {
    let names: Vec<_> = events.iter().map(|e| e.as_str()).collect();
    format!(",{},", names.join(","))
}

/// The event types of a stored subscription (see [`stored_events`]).
pub fn events_of(stored: &str) -> Vec<EventType> {
    stored.split(',').filter_map(|n| n.parse().ok()).collect()
}

/// The prefix of a signing secret (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and the base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The key bytes of a `whsec_` secret: the base64 after the prefix.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or("a signing secret starts with `whsec_`")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "a signing secret is `whsec_` and base64")?;
    if key.len() < 24 {
        return Err("a signing secret holds at least 24 bytes".into());
    }
    Ok(key)
}

/// `webhook-signature`: `v1,` and the base64 of HMAC-SHA256 over
/// `{id}.{timestamp}.{body}` keyed with the secret's bytes.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let message = format!("{id}.{timestamp}.{body}");
    let mac = crate::digest::hmac_sha256(key, message.as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

/// A recipient with its middle hidden: `+254712345601` → `+2547******01`,
/// `alice@example.com` → `a***e@example.com`.
pub fn mask_recipient(recipient: &str) -> String {
    let stars = |n: usize| "*".repeat(n);
    if let Some((local, domain)) = recipient.rsplit_once('@') {
        let chars: Vec<char> = local.chars().collect();
        let shown = match chars.len() {
            0 => String::new(),
            1 | 2 => format!("{}{}", chars[0], stars(chars.len() - 1)),
            n => format!("{}{}{}", chars[0], stars(n - 2), chars[n - 1]),
        };
        return format!("{shown}@{domain}");
    }
    let chars: Vec<char> = recipient.chars().collect();
    let n = chars.len();
    if n <= 7 {
        // Too short to show both ends: only the last two.
        let keep = n.min(2);
        return format!(
            "{}{}",
            stars(n - keep),
            chars[n - keep..].iter().collect::<String>()
        );
    }
    format!(
        "{}{}{}",
        chars[..5].iter().collect::<String>(),
        stars(n - 7),
        chars[n - 2..].iter().collect::<String>()
    )
}

/// Why a delivery did not go through, for a payload: the class (the last
/// attempt's outcome, `undelivered` for a receipt, `not_sent` when it never
/// reached a provider) and the provider's code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorInfo {
    /// `permanent`, `transient`, `unknown`, `undelivered` or `not_sent`.
    pub class: String,
    /// The provider's error code, when it gave one.
    pub code: Option<String>,
}

/// The body of an event: `{"type", "timestamp", "data"}`. `data` is the
/// delivery as it stands when the event is first sent, with the event's own
/// status and time; never the OTP code or the message body, and the
/// recipient masked unless the endpoint asked for it.
pub fn payload(
    event: EventType,
    occurred_at: DateTime<Utc>,
    sequence: i64,
    d: &Delivery,
    error: Option<&ErrorInfo>,
    with_recipient: bool,
) -> Value {
    let r = &d.row;
    let recipient = if with_recipient {
        r.recipient.clone()
    } else {
        mask_recipient(&r.recipient)
    };
    json!({
        "type": event.as_str(),
        "timestamp": occurred_at,
        "data": {
            "id": r.id,
            "kind": r.kind,
            "channel": r.channel,
            "status": event.status(),
            "recipient": recipient,
            "provider": r.provider,
            "error": error.map(|e| json!({ "class": e.class, "code": e.code })),
            "cost": d.cost.map(|c| json!({
                "amount": c.to_decimal_string(),
                "currency": c.currency.as_str(),
                "estimate": r.cost_is_estimate.unwrap_or(false),
            })),
            "purpose": r.purpose,
            "sequence": sequence,
            "created_at": r.created_at,
            "sent_at": r.sent_at,
            "delivered_at": r.delivered_at,
            "occurred_at": occurred_at,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_masked_in_the_middle() {
        assert_eq!(mask_recipient("+254712345601"), "+2547******01");
        assert_eq!(mask_recipient("+14155550123"), "+1415*****23");
        assert_eq!(mask_recipient("alice@example.com"), "a***e@example.com");
        assert_eq!(mask_recipient("al@example.com"), "a*@example.com");
        assert_eq!(mask_recipient("+2547"), "***47");
    }

    #[test]
    fn event_lists_parse_and_name_a_wrong_one() {
        assert_eq!(parse_events(None).unwrap(), EventType::ALL.to_vec());
        assert_eq!(
            parse_events(Some("delivery.failed, delivery.sent,delivery.failed")).unwrap(),
            vec![EventType::Sent, EventType::Failed]
        );
        let err = parse_events(Some("delivery.failed,delivery.lost")).unwrap_err();
        assert!(err.contains("delivery.lost"), "{err}");
        let stored = stored_events(&[EventType::Sent, EventType::Failed]);
        assert_eq!(stored, ",delivery.sent,delivery.failed,");
        assert_eq!(events_of(&stored), vec![EventType::Sent, EventType::Failed]);
    }

    #[test]
    fn secrets_are_whsec_base64_of_32_bytes() {
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(secret_key(&secret).unwrap().len(), 32);
        assert!(secret_key("whsec_c2hvcnQ=").is_err(), "too short");
        assert!(secret_key("nope").is_err());
    }

    #[test]
    fn signature_matches_the_specification_example() {
        // The example of the Standard Webhooks specification (a 24-byte secret).
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
