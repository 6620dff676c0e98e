//! Twilio's status callbacks: the `X-Twilio-Signature` check and the table of
//! asynchronous error codes (docs/providers.md, "Status callback"), and
//! what a `MessageStatus` means: `delivered` → delivered; `undelivered` /
//! `failed` → undelivered, with `ErrorCode` described from the asynchronous
//! code table; `canceled` (final in Twilio's specification) → undelivered;
//! anything else (`sent`, `sending`, `queued`, …) leaves it sent.

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use reqwest::Url;

use crate::domain::provider_text::{MAX_ID_CHARS, MAX_STATUS_CHARS};
use crate::domain::receipt::ReceiptVerdict;
use crate::receipts::{MissingField, field, fields_json};
use crate::store::NewReceipt;

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

/// The data Twilio signs: the full URL it called, then every POST parameter
/// sorted by name, each name immediately followed by its value.
fn signed_data(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.to_owned();
    for (name, value) in sorted {
        data.push_str(name);
        data.push_str(value);
    }
    data
}

/// `X-Twilio-Signature` for a callback to `url` with `params`:
/// base64(HMAC-SHA1(auth token, signed data)).
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    // HMAC takes a key of any length.
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(signed_data(url, params).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The URL as configured and with its default port written out (or left
/// out): Twilio may sign either form.
pub fn url_forms(url: &Url) -> Vec<String> {
    let mut forms = vec![url.to_string()];
    if let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) {
        let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
        let with_port = format!("{}://{host}:{port}{}{query}", url.scheme(), url.path());
        let without_port = format!("{}://{host}{}{query}", url.scheme(), url.path());
        for form in [with_port, without_port] {
            if !forms.contains(&form) {
                forms.push(form);
            }
        }
    }
    forms
}

/// Whether `header` is Twilio's signature of a callback to `url` with
/// `params` (either URL form), compared in constant time.
pub fn verify(auth_token: &str, url: &Url, params: &[(String, String)], header: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else {
        return false;
    };
    url_forms(url).iter().any(|form| {
        let Ok(mut mac) = HmacSha1::new_from_slice(auth_token.as_bytes()) else {
            return false;
        };
        mac.update(signed_data(form, params).as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&given).is_ok()
    })
}

/// What an asynchronous error code (in a callback or a fetched message) means,
/// and whether it is permanent. The one table, from docs/providers.md.
pub fn async_error(code: i64) -> (&'static str, bool) {
    match code {
        30003 => ("unreachable handset", false),
        30005 => ("unknown handset", true),
        30006 => ("landline or unreachable carrier", true),
        30007 => ("filtered as spam", true),
        30008 => ("unknown error", false),
        30001 => ("queue overflow", false),
        30036 => ("validity period expired", false),
        30500 => ("internal error", false),
        _ => ("unlisted error", false),
    }
}

/// The error a delivery shows for an asynchronous code:
/// `30007 filtered as spam (permanent)`.
pub fn describe_async_error(code: &str) -> String {
    match code.trim().parse::<i64>() {
        Ok(n) => {
            let (meaning, permanent) = async_error(n);
            let class = if permanent { "permanent" } else { "transient" };
            format!("{n} {meaning} ({class})")
        }
        Err(_) => format!("Twilio error `{}`", code.trim()),
    }
}

/// The verdict of a Twilio `MessageStatus`.
pub fn twilio_verdict(status: &str) -> ReceiptVerdict {
    match status {
        "delivered" => ReceiptVerdict::Delivered,
        "undelivered" | "failed" | "canceled" => ReceiptVerdict::Undelivered,
        _ => ReceiptVerdict::InProgress,
    }
}

/// A Twilio status callback (or a fetched message's status and error) for `provider`.
pub fn from_twilio(
    provider: &str,
    fields: &[(String, String)],
    received_at: DateTime<Utc>,
) -> Result<NewReceipt, MissingField> {
    let sid = field(fields, "MessageSid", MAX_ID_CHARS)
        .or_else(|| field(fields, "SmsSid", MAX_ID_CHARS))
        .ok_or(MissingField("MessageSid"))?;
    let status = field(fields, "MessageStatus", MAX_STATUS_CHARS)
        .or_else(|| field(fields, "SmsStatus", MAX_STATUS_CHARS))
        .ok_or(MissingField("MessageStatus"))?
        .to_ascii_lowercase();
    let verdict = twilio_verdict(&status);
    let error_code = field(fields, "ErrorCode", MAX_STATUS_CHARS);
    let error = match verdict {
        ReceiptVerdict::Undelivered => Some(match &error_code {
            Some(code) => describe_async_error(code),
            None => format!("Twilio reported the message {status}"),
        }),
        _ => None,
    };
    Ok(NewReceipt {
        provider: provider.to_owned(),
        provider_message_id: sid,
        status,
        verdict,
        error_code,
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

    /// The worked example of Twilio's "Webhooks security" page.
    #[test]
    fn the_signature_matches_twilios_worked_example() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            signature("12345", url, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        let parsed = Url::parse(url).unwrap();
        assert!(verify(
            "12345",
            &parsed,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify(
            "12346",
            &parsed,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
    }

    #[test]
    fn parameters_are_signed_sorted_by_name_whatever_their_order() {
        let a = pairs(&[("b", "2"), ("a", "1")]);
        let b = pairs(&[("a", "1"), ("b", "2")]);
        assert_eq!(
            signature("t", "https://x.test/cb", &a),
            signature("t", "https://x.test/cb", &b)
        );
        assert_eq!(
            signed_data("https://x.test/cb", &a),
            "https://x.test/cba1b2"
        );
    }

    #[test]
    fn a_signature_over_the_url_with_or_without_the_default_port_is_accepted() {
        let params = pairs(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]);
        let configured = Url::parse("https://tuma.example.org/v1/callbacks/twilio").unwrap();
        for signed_over in [
            "https://tuma.example.org/v1/callbacks/twilio",
            "https://tuma.example.org:443/v1/callbacks/twilio",
        ] {
            let sig = signature("tok", signed_over, &params);
            assert!(verify("tok", &configured, &params, &sig), "{signed_over}");
        }
        let sig = signature(
            "tok",
            "https://tuma.example.org:8443/v1/callbacks/twilio",
            &params,
        );
        assert!(!verify("tok", &configured, &params, &sig));
        let with_port = Url::parse("http://tuma.example.org:80/cb").unwrap();
        let sig = signature("tok", "http://tuma.example.org:80/cb", &params);
        assert!(verify("tok", &with_port, &params, &sig));
    }

    #[test]
    fn a_changed_parameter_or_garbage_header_fails_verification() {
        let url = Url::parse("https://x.test/cb").unwrap();
        let params = pairs(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]);
        let sig = signature("tok", url.as_str(), &params);
        let forged = pairs(&[("MessageSid", "SM1"), ("MessageStatus", "undelivered")]);
        assert!(!verify("tok", &url, &forged, &sig));
        assert!(!verify("tok", &url, &params, "not base64!"));
        assert!(!verify("tok", &url, &params, ""));
    }

    #[test]
    fn every_async_error_code_of_the_spec_has_its_class() {
        for (code, permanent) in [
            (30003, false),
            (30005, true),
            (30006, true),
            (30007, true),
            (30008, false),
            (30001, false),
            (30036, false),
            (30500, false),
        ] {
            assert_eq!(async_error(code).1, permanent, "{code}");
        }
        assert_eq!(
            describe_async_error("30007"),
            "30007 filtered as spam (permanent)"
        );
        assert_eq!(
            describe_async_error("30003"),
            "30003 unreachable handset (transient)"
        );
    }

    #[test]
    fn twilio_statuses_map_to_verdicts() {
        for (status, verdict) in [
            ("delivered", ReceiptVerdict::Delivered),
            ("undelivered", ReceiptVerdict::Undelivered),
            ("failed", ReceiptVerdict::Undelivered),
            ("canceled", ReceiptVerdict::Undelivered),
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
    fn a_canceled_twilio_message_is_final_and_receipt_text_is_cleaned_and_capped() {
        let long_sid = format!("SM{}", "a".repeat(200_000));
        let r = from_twilio(
            "twilio",
            &pairs(&[
                ("MessageSid", long_sid.as_str()),
                ("MessageStatus", "canceled"),
                ("Body", "Your code is 482913"),
            ]),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(r.verdict, ReceiptVerdict::Undelivered);
        assert_eq!(
            r.error.as_deref(),
            Some("Twilio reported the message canceled")
        );
        assert!(r.provider_message_id.chars().count() <= MAX_ID_CHARS + 1);
        assert!(r.fields.get("Body").is_none());
    }
}
