//! The request to Vonage's SMS API and the reading of its answer.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::config::{VonageAuth, VonageConfig};
use super::signing::sign;
use crate::domain::money::{Currency, Money};
use crate::domain::provider_text::scrub;
use crate::domain::segments::{SmsEncoding, count_segments};
use crate::domain::unknown::UnknownCause;
use crate::providers::{Accepted, Content, OutgoingMessage, Provider, SendError};

/// What replaces a secret wherever one would show.
const MASK: &str = "****";

/// How much of an unexpected body goes into an error message.
const MAX_BODY_CHARS: usize = 500;

/// The `ttl` Vonage accepts, in milliseconds (20 s to 7 days).
const MIN_TTL_MS: u128 = 20_000;
const MAX_TTL_MS: u128 = 604_800_000;

/// Sends SMS through Vonage's SMS API.
pub struct Vonage {
    /// The checked settings, secrets included.
    config: VonageConfig,
    /// `{base_url}/sms/json`, worked out once.
    endpoint: Url,
    /// One connection pool for every send of this provider.
    client: reqwest::Client,
    /// The total request timeout, named in timeout errors.
    timeout: Duration,
}

impl fmt::Debug for Vonage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vonage")
            .field("api_key", &self.config.api_key)
            .field("auth", &self.config.auth)
            .field("from", &self.config.from)
            .field("currency", &self.config.currency)
            .field("endpoint", &self.endpoint.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Vonage {
    /// Builds the HTTP client; `timeout` bounds each whole request.
    pub fn new(config: VonageConfig, timeout: Duration) -> Result<Vonage, String> {
        let endpoint = Url::parse(&format!(
            "{}/sms/json",
            config.base_url.as_str().trim_end_matches('/')
        ))
        .map_err(|e| format!("cannot build the SMS API URL: {e}"))?;
        let client = crate::providers::http_client(timeout)?;
        Ok(Vonage {
            config,
            endpoint,
            client,
            timeout,
        })
    }

    /// The form of one send: `api_key`, `from`, `to` (E.164 digits without
    /// `+`), `text`, `type=unicode` when the text needs UCS-2, `client-ref` =
    /// the delivery id, `status-report-req=true` (the SMS API's boolean) and
    /// `callback` when a callback URL is set, `ttl` = an OTP's time left (20 s at least), then
    /// `api_secret`, or `timestamp` and `sig` when requests are signed.
    fn form(&self, message: &OutgoingMessage) -> Result<Vec<(String, String)>, SendError> {
        let Content::Sms { to, text } = &message.content else {
            return Err(SendError::permanent(
                "Vonage sends SMS only: an email cannot go through it",
            ));
        };
        let to = to.as_str().trim_start_matches('+');
        let mut form: Vec<(String, String)> = vec![
            ("api_key".into(), self.config.api_key.clone()),
            ("from".into(), self.config.from.clone()),
            ("to".into(), to.to_owned()),
            ("text".into(), text.clone()),
            ("client-ref".into(), message.delivery_id.clone()),
        ];
        if count_segments(text).encoding == SmsEncoding::Ucs2 {
            form.push(("type".into(), "unicode".into()));
        }
        if let Some(url) = &self.config.callback_url {
            form.push(("status-report-req".into(), "true".into()));
            form.push(("callback".into(), url.to_string()));
        }
        if let Some(left) = message.valid_for {
            let ms = left.as_millis().clamp(MIN_TTL_MS, MAX_TTL_MS);
            form.push(("ttl".into(), ms.to_string()));
        }
        match (&self.config.auth, &self.config.signature) {
            (VonageAuth::ApiSecret(secret), _) => {
                form.push(("api_secret".into(), secret.expose_secret().to_owned()));
            }
            (VonageAuth::Signed, Some(signature)) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                form.push(("timestamp".into(), now.to_string()));
                let sig = sign(&form, signature.secret.expose_secret(), signature.method);
                form.push(("sig".into(), sig));
            }
            (VonageAuth::Signed, None) => {
                return Err(SendError::permanent(
                    "Vonage requests are to be signed but no signature secret is set",
                ));
            }
        }
        Ok(form)
    }

    fn request(&self, message: &OutgoingMessage) -> Result<reqwest::Request, SendError> {
        let form = self.form(message)?;
        self.client
            .post(self.endpoint.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .build()
            .map_err(|e| SendError::permanent(self.mask(&format!("cannot build the request: {e}"))))
    }

    /// A failure to get an answer: transient when the request never reached
    /// Vonage, else unknown ([`crate::providers::http_failure`]).
    fn network_error(&self, error: reqwest::Error) -> SendError {
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        crate::providers::http_failure(&error, "Vonage", &self.mask(&text), self.timeout)
    }

    /// Replaces the API secret wherever it appears (a body or error that
    /// echoes the request).
    fn mask(&self, text: &str) -> String {
        match &self.config.auth {
            VonageAuth::ApiSecret(secret) if !secret.expose_secret().is_empty() => {
                let secret = secret.expose_secret();
                let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
                text.replace(secret, MASK).replace(&encoded, MASK)
            }
            _ => text.to_owned(),
        }
    }
}

#[async_trait]
impl Provider for Vonage {
    fn recipient_gone(&self, code: Option<&str>, message: &str) -> Option<&'static str> {
        recipient_gone(code, message)
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        let request = self.request(message)?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| self.network_error(e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.network_error(e))?;
        // Untrusted text: the code and the message text go before anything reads it.
        let body = scrub(
            &self.mask(&String::from_utf8_lossy(&body)),
            &message.secrets(),
        );
        let accepted = classify(status, &body, self.config.currency)?;
        tracing::info!(
            delivery = %message.delivery_id,
            parts = %accepted.parts.join(","),
            network = accepted.network.as_deref().unwrap_or("-"),
            remaining_balance = accepted.remaining_balance.as_deref().unwrap_or("-"),
            "Vonage accepted the message"
        );
        Ok(accepted.accepted)
    }

    fn dry_run(&self, message: &OutgoingMessage) -> String {
        let request = match self.request(message) {
            Ok(request) => request,
            Err(e) => return format!("cannot build the request: {e}"),
        };
        let mut out = format!("{} {}\n", request.method(), request.url());
        for (name, value) in request.headers() {
            out.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        out.push('\n');
        if let Some(body) = request.body().and_then(reqwest::Body::as_bytes) {
            out.push_str(&String::from_utf8_lossy(body));
        }
        self.mask(&out)
    }
}

/// How tuma treats a message `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Vonage took the message.
    Accepted,
    /// Will fail again: do not retry.
    Permanent,
    /// Worth retrying, perhaps on another provider.
    Transient,
}

/// Whether a status means the account or configuration needs a person
/// (logged with `tracing::error!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// Logged as an error.
    Yes,
    /// Nothing to page anyone about.
    No,
}

/// The one table: a message `status` → class, from Vonage's "SMS API error
/// codes" (Troubleshooting SMS). Statuses not listed are transient.
pub const STATUS: [(&str, &str, Class, Alert); 21] = [
    ("0", "Success", Class::Accepted, Alert::No),
    ("1", "Throttled", Class::Transient, Alert::No),
    ("2", "Missing Parameters", Class::Permanent, Alert::No),
    ("3", "Invalid Parameters", Class::Permanent, Alert::No),
    ("4", "Invalid Credentials", Class::Permanent, Alert::Yes),
    ("5", "Internal Error", Class::Transient, Alert::No),
    ("6", "Invalid Message", Class::Permanent, Alert::No),
    ("7", "Number Barred", Class::Permanent, Alert::No),
    ("8", "Partner Account Barred", Class::Permanent, Alert::Yes),
    // "Partner quota exceeded": the account is out of credit. Another
    // provider can send meanwhile, and this one again once topped up.
    ("9", "Partner Quota Violation", Class::Transient, Alert::Yes),
    ("10", "Too Many Existing Binds", Class::Transient, Alert::No),
    (
        "11",
        "Account Not Enabled For HTTP",
        Class::Permanent,
        Alert::No,
    ),
    ("12", "Message Too Long", Class::Permanent, Alert::No),
    ("13", "Communication Failed", Class::Transient, Alert::No),
    ("14", "Invalid Signature", Class::Permanent, Alert::Yes),
    ("15", "Invalid Sender Address", Class::Permanent, Alert::No),
    ("22", "Invalid Network Code", Class::Permanent, Alert::No),
    ("23", "Invalid Callback Url", Class::Permanent, Alert::No),
    (
        "29",
        "Non-Whitelisted Destination",
        Class::Permanent,
        Alert::No,
    ),
    (
        "32",
        "Signature And API Secret Disallowed",
        Class::Permanent,
        Alert::No,
    ),
    ("33", "Number De-activated", Class::Permanent, Alert::No),
];

/// The send statuses that say the number is not worth paying for again
/// (the recipient is suppressed), from Vonage's "SMS API error codes": 7,
/// the number is blacklisted and may not receive messages; 33, it is
/// de-activated. Not 6 (the message could not be processed, an
/// unrecognised prefix among other causes), 15 (the sender is refused) nor
/// 29 (a demo account's destination not whitelisted): those say nothing
/// certain about the number itself.
const RECIPIENT_GONE: [(&str, &str); 2] = [
    (
        "7",
        "the number is barred from receiving messages (Vonage status 7)",
    ),
    ("33", "the number is de-activated (Vonage status 33)"),
];

/// Whether a refused send's status is one of [`RECIPIENT_GONE`]; its reason.
pub fn recipient_gone(code: Option<&str>, _message: &str) -> Option<&'static str> {
    let code = code?.trim();
    RECIPIENT_GONE
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, reason)| *reason)
}

/// An accepted answer and what else Vonage said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VonageAccepted {
    /// What the dispatcher records: the first part's id, every part's id
    /// (when there are several), the summed price.
    pub accepted: Accepted,
    /// Every part's `message-id`, in order.
    pub parts: Vec<String>,
    /// The recipient's network (MCCMNC), as Vonage estimated it.
    pub network: Option<String>,
    /// The account's balance after this message.
    pub remaining_balance: Option<String>,
}

/// Maps Vonage's answer (HTTP status and body) to the outcome.
///
/// HTTP 200: every entry of `messages[]` is one part. All with status `0`:
/// accepted, with the first part's `message-id` (every part's id is
/// returned), the parts' `message-price` summed in the account's
/// `currency` (exact micro-units; unknown if any part's price is missing or
/// unreadable) and the part count as segments. A part with another status
/// decides by [`STATUS`] when no part was accepted; when some were (the
/// carrier already has them, so a retry would send them twice) it is
/// accepted as far as it went, with a warning. HTTP 401 permanent and
/// alerted; 429 and 5xx transient; other 4xx permanent. A 2xx that neither
/// accepts nor refuses by the table (not JSON, no `messages`, an accepted
/// part without its `message-id`, no part with a `status`) is an unknown
/// outcome, quoted: Vonage may have taken the message. Never panics. The
/// body must already have the API secret masked.
pub fn classify(
    status: StatusCode,
    body: &str,
    currency: Currency,
) -> Result<VonageAccepted, SendError> {
    let http_code = || Some(format!("HTTP {}", status.as_u16()));
    match status.as_u16() {
        200..=299 => {}
        401 => {
            tracing::error!(
                http_status = 401,
                "Vonage refused the credentials: check api_key and the secret in api_secret_env or signature_secret_env"
            );
            return Err(SendError::Permanent {
                code: http_code(),
                message: format!("Vonage refused the credentials: {}", truncate(body)),
            });
        }
        429 | 500..=599 => {
            return Err(SendError::Transient {
                code: http_code(),
                message: format!("Vonage answered: {}", truncate(body)),
            });
        }
        400..=499 => {
            return Err(SendError::Permanent {
                code: http_code(),
                message: format!("Vonage refused the request: {}", truncate(body)),
            });
        }
        _ => {
            return Err(SendError::Transient {
                code: http_code(),
                message: format!("Vonage answered unexpectedly: {}", truncate(body)),
            });
        }
    }
    // A 2xx may mean the message was taken: what cannot be read is unknown.
    let malformed = |what: &str| {
        SendError::unknown(
            UnknownCause::UnreadableAnswer,
            format!(
                "Vonage answered HTTP {} but {what}: {}",
                status.as_u16(),
                truncate(body)
            ),
        )
    };
    let json: Value = serde_json::from_str(body).map_err(|_| malformed("not with JSON"))?;
    let messages = json
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| malformed("with no messages"))?;
    let text = |m: &Value, key: &str| m.get(key).and_then(Value::as_str).map(str::to_owned);
    let status_of = |m: &Value| {
        m.get("status")
            .and_then(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .or_else(|| s.as_u64().map(|n| n.to_string()))
            })
            .unwrap_or_default()
    };
    let (sent, refused): (Vec<&Value>, Vec<&Value>) =
        messages.iter().partition(|m| status_of(m) == "0");
    if sent.is_empty() {
        // Refused only when every part says so by its status.
        if refused.iter().any(|m| status_of(m).is_empty()) {
            return Err(malformed("a part has no status"));
        }
        let first = refused.first().copied().unwrap_or(&Value::Null);
        return Err(refusal(&status_of(first), text(first, "error-text")));
    }
    if !refused.is_empty() {
        let statuses: Vec<String> = refused.iter().map(|m| status_of(m)).collect();
        tracing::warn!(
            sent = sent.len(),
            refused = refused.len(),
            statuses = %statuses.join(","),
            "Vonage accepted only some parts of a long message; recorded as sent (a retry would send the accepted parts again)"
        );
    }
    let mut parts = Vec::with_capacity(sent.len());
    for m in &sent {
        parts.push(text(m, "message-id").ok_or_else(|| malformed("a part has no message-id"))?);
    }
    let mut cost = Some(Money::new(0, currency));
    for m in &sent {
        let price = text(m, "message-price")
            .and_then(|p| crate::domain::money::parse_decimal_micros(&p).ok())
            .map(|micros| Money::new(micros, currency));
        cost = match (cost, price) {
            (Some(total), Some(price)) => total.checked_add(&price).ok(),
            _ => None,
        };
    }
    if cost.is_none() {
        tracing::warn!(
            parts = sent.len(),
            "Vonage's message-price is missing or not an exact decimal: the cost is unknown"
        );
    }
    let count = u32::try_from(messages.len()).unwrap_or(u32::MAX);
    let first = parts.first().cloned().unwrap_or_default();
    Ok(VonageAccepted {
        accepted: Accepted {
            provider_message_id: first,
            provider_status: Some(if count > 1 {
                format!("0 ({count} parts)")
            } else {
                "0".to_owned()
            }),
            cost,
            segments: Some(count),
            part_ids: if parts.len() > 1 {
                parts.clone()
            } else {
                Vec::new()
            },
        },
        parts,
        network: sent.first().and_then(|m| text(m, "network")),
        remaining_balance: sent.last().and_then(|m| text(m, "remaining-balance")),
    })
}

/// The error for a refused message's `status`, logged as an error when its
/// row alerts.
fn refusal(status: &str, error_text: Option<String>) -> SendError {
    let code = Some(status.to_owned()).filter(|s| !s.is_empty());
    let said = error_text.map(|t| truncate(&t)).unwrap_or_default();
    let Some(&(_, name, class, alert)) = STATUS.iter().find(|row| row.0 == status) else {
        return SendError::Transient {
            code,
            message: format!(
                "Vonage status `{}` is not in its documented table: {said}",
                truncate(status)
            ),
        };
    };
    if alert == Alert::Yes {
        // A transient alert is the balance (status 9): sends fail over until
        // someone tops it up; a permanent one is the account or the config.
        let todo = if class == Class::Transient {
            "the account is out of credit: top it up (sends fail over meanwhile, and retry)"
        } else {
            "check the account and this provider's configuration"
        };
        tracing::error!(status = %status, "Vonage: {name} ({said}); {todo}");
    }
    let message = if said.is_empty() {
        name.to_owned()
    } else {
        format!("{name}: {said}")
    };
    match class {
        Class::Transient | Class::Accepted => SendError::Transient { code, message },
        Class::Permanent => SendError::Permanent { code, message },
    }
}

fn truncate(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    match body.char_indices().nth(MAX_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}
