//! The requests to Twilio and the classification of its answers.

use std::error::Error as _;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::{Request, RequestBuilder, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::config::{TwilioConfig, TwilioSender};
use crate::domain::money::{Currency, Money, parse_decimal_micros};
use crate::domain::provider_text::{self, MAX_STATUS_CHARS, Secrets, scrub};
use crate::domain::unknown::UnknownCause;
use crate::providers::{Accepted, Content, OutgoingMessage, Provider, SendError, install_crypto};

/// The longest `Body` Twilio takes, in characters.
pub const MAX_BODY_CHARS: usize = 1600;

/// The longest `ValidityPeriod` Twilio takes, in seconds (10 hours).
const MAX_VALIDITY_SECS: u64 = 36_000;

/// How much of an unexpected body goes into an error message.
const SHOWN_BODY_CHARS: usize = 500;

/// How much of a sid that is not Twilio's goes into an error message.
const SHOWN_SID_CHARS: usize = 64;

/// The Twilio provider: one HTTP client (and its connection pool) per instance.
#[derive(Debug)]
pub struct Twilio {
    /// Account, credentials, sender and URLs.
    pub(super) config: TwilioConfig,
    /// Shared by every send, so connections are reused.
    pub(super) client: reqwest::Client,
    /// The total request timeout, for error messages.
    timeout: Duration,
}

/// A message as Twilio reports it later, for price reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedMessage {
    /// Twilio's id (`SM…`).
    pub sid: String,
    /// `queued`, `sent`, `delivered`, `undelivered`, `failed`, …
    pub status: String,
    /// What the message cost, once Twilio knows it (Twilio writes it negative;
    /// this is its absolute value).
    pub price: Option<Money>,
    /// How many segments Twilio billed.
    pub num_segments: Option<u32>,
    /// The asynchronous error (30003, 30007, …) of a failed or undelivered message.
    pub error_code: Option<i64>,
}

impl Twilio {
    /// Builds the HTTP client: `timeout` bounds a whole request, and opening a
    /// connection takes at most the smaller of `timeout` and 5 s.
    pub fn new(config: TwilioConfig, timeout: Duration) -> Result<Twilio, String> {
        install_crypto();
        let client = crate::providers::http_client(timeout)?;
        Ok(Twilio {
            config,
            client,
            timeout,
        })
    }

    /// Asks Twilio for a message it took earlier: its status, price and error.
    /// An unknown sid is a permanent error (Twilio code 20404).
    pub async fn fetch_message(&self, sid: &str) -> Result<FetchedMessage, SendError> {
        if sid.is_empty() || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(SendError::permanent(format!(
                "`{}` is not a Twilio message sid",
                truncate(sid)
            )));
        }
        let url = self.account_url(&format!("Messages/{sid}.json"));
        let request = self.build(self.authorized(self.client.get(url)))?;
        let (status, body) = self.call(request).await?;
        // The code was wiped once the message was sent, and the answer holds
        // the message body: errors are cleaned of anything shaped like a code.
        classify_fetched(status, &body).map_err(|e| e.cleaned(&Secrets::unknown_code()))
    }

    /// `{base_url}/2010-04-01/Accounts/{AccountSid}/{tail}`.
    pub(super) fn account_url(&self, tail: &str) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/{tail}",
            self.config.base_url.as_str().trim_end_matches('/'),
            self.config.account_sid
        )
    }

    pub(super) fn authorized(&self, builder: RequestBuilder) -> RequestBuilder {
        let auth = &self.config.auth;
        builder
            .basic_auth(
                auth.user(&self.config.account_sid),
                Some(auth.secret().expose_secret()),
            )
            .header(ACCEPT, "application/json")
    }

    pub(super) fn build(&self, builder: RequestBuilder) -> Result<Request, SendError> {
        builder.build().map_err(|e| {
            SendError::permanent(format!("cannot build the request: {}", e.without_url()))
        })
    }

    /// The form fields of a send, or why the message cannot go through Twilio.
    fn form(&self, message: &OutgoingMessage) -> Result<Vec<(&'static str, String)>, SendError> {
        let Content::Sms { to, text } = &message.content else {
            return Err(SendError::permanent(
                "Twilio sends SMS only: this delivery is an email",
            ));
        };
        let chars = text.chars().count();
        if chars > MAX_BODY_CHARS {
            return Err(SendError::permanent(format!(
                "the text has {chars} characters; Twilio takes at most {MAX_BODY_CHARS}"
            )));
        }
        let mut form = vec![("To", to.as_str().to_owned())];
        form.push(match &self.config.sender {
            TwilioSender::From(from) => ("From", from.clone()),
            TwilioSender::MessagingService(sid) => ("MessagingServiceSid", sid.clone()),
        });
        form.push(("Body", text.clone()));
        if let Some(url) = &self.config.status_callback_url {
            form.push(("StatusCallback", url.to_string()));
        }
        // An OTP goes with the whole seconds it has left (never more than the
        // configured period), so the carrier drops it rather than deliver a
        // dead code; with under a second left it is not sent at all.
        let period = match (self.config.validity_period, message.valid_for) {
            (_, Some(left)) if left.as_secs() < 1 => {
                return Err(SendError::permanent(
                    "the OTP has under a second left before it expires: not sent (Twilio's ValidityPeriod is at least 1 s)",
                ));
            }
            (Some(configured), Some(left)) => Some(configured.as_secs().min(left.as_secs())),
            (None, Some(left)) => Some(left.as_secs().min(MAX_VALIDITY_SECS)),
            (configured, None) => configured.map(|p| p.as_secs()),
        };
        if let Some(period) = period {
            form.push(("ValidityPeriod", period.to_string()));
        }
        Ok(form)
    }

    /// The exact request `send` makes.
    fn send_request(&self, message: &OutgoingMessage) -> Result<Request, SendError> {
        let form = self.form(message)?;
        let url = self.account_url("Messages.json");
        self.build(self.authorized(self.client.post(url)).form(&form))
    }

    /// Sends a request and reads the whole answer; failing to get one is transient.
    pub(super) async fn call(&self, request: Request) -> Result<(StatusCode, String), SendError> {
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| self.network_error(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.network_error(e))?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// A failure to get an answer: transient when the request never reached
    /// Twilio, else unknown ([`crate::providers::http_failure`]).
    fn network_error(&self, error: reqwest::Error) -> SendError {
        // The URL holds no secret, but leave it out: the host is enough.
        let host = self
            .config
            .base_url
            .host_str()
            .unwrap_or("Twilio")
            .to_owned();
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        crate::providers::http_failure(&error, &host, &text, self.timeout)
    }
}

#[async_trait]
impl Provider for Twilio {
    fn recipient_gone(&self, code: Option<&str>, message: &str) -> Option<&'static str> {
        recipient_gone(code, message)
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        let request = self.send_request(message)?;
        let (status, body) = self.call(request).await?;
        // Untrusted text: the code and the message text go before anything reads it.
        classify(status, &scrub(&body, &message.secrets()))
    }

    fn dry_run(&self, message: &OutgoingMessage) -> String {
        let request = match self.send_request(message) {
            Ok(request) => request,
            Err(e) => return format!("cannot build the request: {e}"),
        };
        let user = self.config.auth.user(&self.config.account_sid);
        let mut out = format!("{} {}\n", request.method(), request.url());
        for (name, value) in request.headers() {
            let shown = if name == AUTHORIZATION {
                format!("Basic **** (user {user}, password ****)")
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            out.push_str(&format!("{name}: {shown}\n"));
        }
        if let Some(body) = request.body().and_then(|b| b.as_bytes()) {
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(body));
            out.push('\n');
        }
        out
    }
}

/// What becomes of an answer that is not a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Will fail again: do not retry.
    Permanent,
    /// Worth retrying.
    Transient,
}

/// One row of the table.
struct Rule {
    class: Class,
    /// What the row means, first in the error message.
    meaning: &'static str,
    /// A configuration problem someone must fix: logged with `tracing::error!`.
    alert: bool,
}

const fn row(class: Class, meaning: &'static str) -> Rule {
    Rule {
        class,
        meaning,
        alert: false,
    }
}

/// THE classification table (docs/providers.md, "Twilio Programmable
/// Messaging"): the HTTP status and Twilio's error `code` of a failed request.
/// Rows are tried in order.
fn rule(status: StatusCode, code: Option<i64>) -> Rule {
    use Class::{Permanent, Transient};
    match (status.as_u16(), code) {
        (500..=599, _) | (_, Some(20500)) => row(
            Transient,
            "Twilio server error (the message may or may not have been created)",
        ),
        (401, _) | (_, Some(20003)) => Rule {
            alert: true,
            ..row(
                Permanent,
                "Twilio refused the credentials: check account_sid and the auth token or API key",
            )
        },
        (429, _) | (_, Some(20429)) => row(Transient, "too many concurrent requests to Twilio"),
        (_, Some(20404)) => row(
            Permanent,
            "Twilio has no such resource (an unknown message sid, or a wrong account_sid or base_url)",
        ),
        (_, Some(21211)) => row(Permanent, "the To number is not a valid phone number"),
        (_, Some(21408)) => row(
            Permanent,
            "sending to this region is not enabled (Twilio geo permissions)",
        ),
        (_, Some(21610)) => row(Permanent, "the recipient has replied STOP"),
        (_, Some(21614)) => row(Permanent, "the To number is not a mobile number"),
        (400..=499, _) => row(Permanent, "Twilio refused the request"),
        _ => row(Transient, "unexpected answer from Twilio"),
    }
}

/// The error codes that say the number is not worth paying for again (the
/// recipient is suppressed).
const RECIPIENT_GONE: [(&str, &str); 3] = [
    (
        "21211",
        "the number is not a valid phone number (Twilio 21211)",
    ),
    ("21610", "the recipient replied STOP (Twilio 21610)"),
    ("21614", "the number is not a mobile number (Twilio 21614)"),
];

/// Whether a permanent error's code is one of [`RECIPIENT_GONE`]; its reason.
pub fn recipient_gone(code: Option<&str>, _message: &str) -> Option<&'static str> {
    let code = code?.trim();
    RECIPIENT_GONE
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, reason)| *reason)
}

/// Maps Twilio's answer to a send: `2xx` with a message `sid` of the
/// documented form is accepted; anything else goes through the table. A
/// `2xx` that cannot be read as an accepted message with its sid (not a JSON
/// object, no `sid`, a `sid` that is not Twilio's) is an unknown outcome:
/// Twilio may have taken the message. Never panics, whatever the body.
pub fn classify(status: StatusCode, body: &str) -> Result<Accepted, SendError> {
    if !status.is_success() {
        return Err(classify_error(status, body));
    }
    let unreadable = |what: String| SendError::unknown(UnknownCause::UnreadableAnswer, what);
    let value = success_json(status, body).map_err(unreadable)?;
    let provider_message_id = required_str(&value, "sid", status, body).map_err(unreadable)?;
    if let Some(fault) = sid_fault(&provider_message_id) {
        return Err(unreadable(format!(
            "Twilio answered HTTP {} with a message sid that {fault}: {:?}",
            status.as_u16(),
            provider_text::clean_to(&provider_message_id, &Secrets::none(), SHOWN_SID_CHARS)
        )));
    }
    Ok(Accepted {
        provider_message_id,
        provider_status: value
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned),
        cost: price(&value),
        segments: count(value.get("num_segments")),
        part_ids: Vec::new(),
    })
}

/// Why `sid` is not a message sid as Twilio documents it (`^(SM|MM)[0-9a-fA-F]{32}$`,
/// 34 characters: the `sid` of `api.v2010.account.message` in Twilio's
/// OpenAPI description, twilio-oai), or None when it is one.
pub(super) fn sid_fault(sid: &str) -> Option<&'static str> {
    let Some(digits) = sid.strip_prefix("SM").or_else(|| sid.strip_prefix("MM")) else {
        return Some("does not start with SM or MM");
    };
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some("has characters other than hexadecimal digits after SM or MM");
    }
    if digits.len() != 32 {
        return Some("does not have exactly 32 hexadecimal digits after SM or MM");
    }
    None
}

/// Maps Twilio's answer to a message fetch, with the same table for errors;
/// an unreadable success is transient (ask again later).
pub fn classify_fetched(status: StatusCode, body: &str) -> Result<FetchedMessage, SendError> {
    if !status.is_success() {
        return Err(classify_error(status, body));
    }
    let value = success_json(status, body).map_err(SendError::transient)?;
    // Quoted without the message body it carries.
    let mut shown = value.clone();
    if let Some(map) = shown.as_object_mut() {
        map.remove("body");
    }
    let shown = shown.to_string();
    let status_word =
        required_str(&value, "status", status, &shown).map_err(SendError::transient)?;
    Ok(FetchedMessage {
        sid: provider_text::clean_id(
            &required_str(&value, "sid", status, &shown).map_err(SendError::transient)?,
            &Secrets::none(),
        ),
        status: provider_text::clean_to(&status_word, &Secrets::none(), MAX_STATUS_CHARS),
        price: price(&value),
        num_segments: count(value.get("num_segments")),
        error_code: integer(value.get("error_code")),
    })
}

pub(super) fn classify_error(status: StatusCode, body: &str) -> SendError {
    let json = serde_json::from_str::<Value>(body)
        .ok()
        .filter(Value::is_object);
    let code = json.as_ref().and_then(|v| integer(v.get("code")));
    let twilio_message = json
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str);
    let rule = rule(status, code);
    let detail = match twilio_message {
        Some(text) => truncate(text),
        None if body.trim().is_empty() => "(empty body)".to_owned(),
        None => format!("body: {}", truncate(body)),
    };
    let message = format!("{}: {detail} (HTTP {})", rule.meaning, status.as_u16());
    if rule.alert {
        tracing::error!(
            http_status = status.as_u16(),
            twilio_code = code,
            "Twilio refused the credentials: fix the provider's configuration"
        );
    }
    let code = code.map(|c| c.to_string());
    match rule.class {
        Class::Permanent => SendError::Permanent { code, message },
        Class::Transient => SendError::Transient { code, message },
    }
}

/// The JSON object of a success, or what is wrong with it (quoting the body).
fn success_json(status: StatusCode, body: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(body) {
        Ok(value) if value.is_object() => Ok(value),
        _ if body.trim().is_empty() => Err(malformed(status, "an empty body", body)),
        _ => Err(malformed(status, "a body that is not a JSON object", body)),
    }
}

fn required_str(
    value: &Value,
    field: &str,
    status: StatusCode,
    body: &str,
) -> Result<String, String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| malformed(status, &format!("no message `{field}`"), body))
}

fn malformed(status: StatusCode, what: &str, body: &str) -> String {
    format!(
        "Twilio answered HTTP {} with {what}: {}",
        status.as_u16(),
        truncate(body)
    )
}

/// `price` (a decimal string, negative for a charge, or null) in `price_unit`,
/// as a positive amount; None when absent or unreadable.
pub(super) fn price(value: &Value) -> Option<Money> {
    let amount = value.get("price").and_then(Value::as_str)?;
    let unit = value.get("price_unit").and_then(Value::as_str);
    let parsed = parse_decimal_micros(amount)
        .ok()
        .and_then(i64::checked_abs)
        .zip(unit.and_then(|u| u.parse::<Currency>().ok()));
    match parsed {
        Some((micros, currency)) => Some(Money::new(micros, currency)),
        None => {
            tracing::warn!(
                price = %truncate(amount),
                price_unit = unit.map(truncate),
                "Twilio sent a price that cannot be read; the cost stays unknown"
            );
            None
        }
    }
}

/// `num_segments`: Twilio writes a string ("1"); a number is accepted too.
pub(super) fn count(value: Option<&Value>) -> Option<u32> {
    match value? {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
    .filter(|n| (1..=255).contains(n))
}

/// An integer Twilio writes as a number (`code`, `error_code`), or as a string.
fn integer(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// At most 500 characters of a body, for error messages.
fn truncate(text: &str) -> String {
    let mut chars = text.chars();
    let mut shown: String = chars.by_ref().take(SHOWN_BODY_CHARS).collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}
