//! The request to Africa's Talking and the reading of its answer.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{ACCEPT, HeaderValue};
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::config::AfricasTalkingConfig;
use crate::domain::money::Money;
use crate::domain::provider_text::scrub;
use crate::domain::unknown::UnknownCause;
use crate::providers::{Accepted, Content, OutgoingMessage, Provider, SendError};

/// The header that carries the API key.
const API_KEY_HEADER: &str = "apiKey";

/// What replaces a secret wherever one would show.
const MASK: &str = "****";

/// How much of an unexpected body goes into an error message.
const MAX_BODY_CHARS: usize = 500;

/// Sends SMS through Africa's Talking.
pub struct AfricasTalking {
    /// The checked settings, API key included.
    config: AfricasTalkingConfig,
    /// `{base_url}/version1/messaging`, worked out once.
    endpoint: Url,
    /// The API key as a header value marked sensitive, checked once in `new`.
    api_key_header: HeaderValue,
    /// One connection pool for every send of this provider.
    client: reqwest::Client,
    /// The total request timeout, named in timeout errors.
    timeout: Duration,
}

impl fmt::Debug for AfricasTalking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfricasTalking")
            .field("username", &self.config.username)
            .field("api_key", &MASK)
            .field("api_key_env", &self.config.api_key_env)
            .field("sender_id", &self.config.sender_id)
            .field("endpoint", &self.endpoint.as_str())
            .field("enqueue", &self.config.enqueue)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AfricasTalking {
    /// Builds the HTTP client; `timeout` bounds each whole request, and
    /// connecting gets at most five seconds of it.
    pub fn new(config: AfricasTalkingConfig, timeout: Duration) -> Result<AfricasTalking, String> {
        crate::providers::install_crypto();
        let mut api_key_header = HeaderValue::from_str(config.api_key.expose_secret())
            .map_err(|_| {
                format!(
                    "the API key in {} is not a valid HTTP header value (a line break or control character?)",
                    config.api_key_env
                )
            })?;
        api_key_header.set_sensitive(true);
        let client = crate::providers::http_client(timeout)?;
        let endpoint = messaging_url(&config.base_url)?;
        Ok(AfricasTalking {
            config,
            endpoint,
            api_key_header,
            client,
            timeout,
        })
    }

    /// The one request `send` makes and `dry_run` shows.
    fn request(&self, message: &OutgoingMessage) -> Result<reqwest::Request, SendError> {
        let Content::Sms { to, text } = &message.content else {
            return Err(SendError::permanent("Africa's Talking sends SMS only"));
        };
        let mut form: Vec<(&str, &str)> = vec![
            ("username", &self.config.username),
            ("to", to.as_str()),
            ("message", text),
        ];
        if let Some(from) = &self.config.sender_id {
            form.push(("from", from));
        }
        if self.config.enqueue {
            form.push(("enqueue", "1"));
        }
        self.client
            .post(self.endpoint.clone())
            .header(API_KEY_HEADER, self.api_key_header.clone())
            .header(ACCEPT, "application/json")
            .form(&form)
            .build()
            .map_err(|e| SendError::permanent(self.mask(&format!("cannot build the request: {e}"))))
    }

    /// A failure to get an answer: transient when the request never reached
    /// Africa's Talking, else unknown ([`crate::providers::http_failure`]).
    fn network_error(&self, error: &reqwest::Error) -> SendError {
        let text = self.mask(&error_chain(error));
        crate::providers::http_failure(error, "Africa's Talking", &text, self.timeout)
    }

    /// Replaces the API key wherever it appears (a body that echoes headers,
    /// an error that quotes them).
    fn mask(&self, text: &str) -> String {
        let key = self.config.api_key.expose_secret();
        if key.is_empty() {
            text.to_owned()
        } else {
            text.replace(key, MASK)
        }
    }
}

#[async_trait]
impl Provider for AfricasTalking {
    fn recipient_gone(&self, code: Option<&str>, message: &str) -> Option<&'static str> {
        recipient_gone(code, message)
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        let request = self.request(message)?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| self.network_error(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.network_error(&e))?;
        // Untrusted text: the code and the message text go before anything reads it.
        let body = scrub(
            &self.mask(&String::from_utf8_lossy(&body)),
            &message.secrets(),
        );
        classify(status, &body)
    }

    fn dry_run(&self, message: &OutgoingMessage) -> String {
        let request = match self.request(message) {
            Ok(request) => request,
            Err(e) => return format!("cannot build the request: {e}"),
        };
        let mut out = format!("{} {}\n", request.method(), request.url());
        for (name, value) in request.headers() {
            let shown = if value.is_sensitive() {
                MASK.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            out.push_str(&format!("{name}: {shown}\n"));
        }
        out.push('\n');
        if let Some(body) = request.body().and_then(reqwest::Body::as_bytes) {
            out.push_str(&String::from_utf8_lossy(body));
        }
        self.mask(&out)
    }
}

/// How tuma treats a recipient `statusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Africa's Talking took the message.
    Accepted,
    /// Will fail again: do not retry.
    Permanent,
    /// Worth retrying, perhaps on another provider.
    Transient,
}

/// Whether a code means the account or configuration needs a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alert {
    /// Logged with `tracing::error!`.
    Yes,
    /// Nothing to page anyone about.
    No,
}

/// Recipient `statusCode` → class, from docs/providers.md. Codes not listed
/// are transient (noted as unknown in the message).
const RECIPIENT_STATUS: [(u64, &str, Class, Alert); 14] = [
    (100, "Processed", Class::Accepted, Alert::No),
    (101, "Sent", Class::Accepted, Alert::No),
    (102, "Queued", Class::Accepted, Alert::No),
    (401, "RiskHold", Class::Permanent, Alert::No),
    (402, "InvalidSenderId", Class::Permanent, Alert::Yes),
    (403, "InvalidPhoneNumber", Class::Permanent, Alert::No),
    (404, "UnsupportedNumberType", Class::Permanent, Alert::No),
    (405, "InsufficientBalance", Class::Transient, Alert::Yes),
    (406, "UserInBlacklist", Class::Permanent, Alert::No),
    (407, "CouldNotRoute", Class::Transient, Alert::No),
    (409, "DoNotDisturbRejection", Class::Permanent, Alert::No),
    (500, "InternalServerError", Class::Transient, Alert::No),
    (501, "GatewayError", Class::Transient, Alert::No),
    (502, "RejectedByGateway", Class::Permanent, Alert::No),
];

/// The recipient statuses that say the number is not worth paying for again
/// (the recipient is suppressed): it does not exist, or blacklisted the sender.
const RECIPIENT_GONE: [(u64, &str); 2] = [
    (403, "the number does not exist (InvalidPhoneNumber)"),
    (
        406,
        "the recipient blacklisted the sender (UserInBlacklist)",
    ),
];

/// Whether a permanent error's code is one of [`RECIPIENT_GONE`]; its reason.
pub fn recipient_gone(code: Option<&str>, _message: &str) -> Option<&'static str> {
    let code: u64 = code?.trim().parse().ok()?;
    RECIPIENT_GONE
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, reason)| *reason)
}

/// Maps Africa's Talking's answer (HTTP status and body) to the outcome.
///
/// HTTP level: 2xx → the first recipient's `statusCode` decides (the
/// `RECIPIENT_STATUS` table); 401 → permanent, bad API key, logged as an error;
/// 408 and 429 → transient; other 4xx → permanent; 5xx and anything else →
/// transient. A 2xx that neither accepts nor refuses the message by the
/// table (a body that is not the expected JSON, an accepted recipient
/// without a `messageId`, a recipient without a readable `statusCode`) is an
/// unknown outcome, quoted (500 chars at most): Africa's Talking may have
/// taken it. Never panics. The body must already have the API key masked.
pub fn classify(status: StatusCode, body: &str) -> Result<Accepted, SendError> {
    let http_code = || Some(format!("HTTP {}", status.as_u16()));
    match status.as_u16() {
        200..=299 => classify_recipient(status, body),
        401 => {
            tracing::error!(
                http_status = 401,
                body = %truncate(body),
                "Africa's Talking refused the API key: check the key in api_key_env and the username"
            );
            Err(SendError::Permanent {
                code: http_code(),
                message: format!(
                    "Africa's Talking refused the credentials (HTTP 401): {}",
                    truncate(body)
                ),
            })
        }
        408 | 429 => Err(SendError::Transient {
            code: http_code(),
            message: format!(
                "Africa's Talking asked to retry later (HTTP {}): {}",
                status.as_u16(),
                truncate(body)
            ),
        }),
        400..=499 => Err(SendError::Permanent {
            code: http_code(),
            message: format!(
                "Africa's Talking refused the request (HTTP {}): {}",
                status.as_u16(),
                truncate(body)
            ),
        }),
        500..=599 => Err(SendError::Transient {
            code: http_code(),
            message: format!(
                "Africa's Talking failed (HTTP {}): {}",
                status.as_u16(),
                truncate(body)
            ),
        }),
        _ => Err(SendError::Transient {
            code: http_code(),
            message: format!(
                "unexpected answer from Africa's Talking (HTTP {}): {}",
                status.as_u16(),
                truncate(body)
            ),
        }),
    }
}

/// Reads `SMSMessageData.Recipients[0]` of a 2xx answer.
fn classify_recipient(status: StatusCode, body: &str) -> Result<Accepted, SendError> {
    // A 2xx may mean the message was taken: what cannot be read is unknown.
    let unreadable = |what: &str| {
        SendError::unknown(
            UnknownCause::UnreadableAnswer,
            format!(
                "Africa's Talking answered HTTP {} but {what}: {}",
                status.as_u16(),
                truncate(body)
            ),
        )
    };
    // The content type is not trusted: JSON has come as text/plain and text/html.
    let json: Value = serde_json::from_str(body.trim())
        .map_err(|_| unreadable("the body is not the expected JSON"))?;
    let data = json
        .get("SMSMessageData")
        .filter(|d| d.is_object())
        .ok_or_else(|| unreadable("the body has no SMSMessageData"))?;
    let recipients = match data.get("Recipients") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(list)) => list.as_slice(),
        Some(_) => return Err(unreadable("Recipients is not a list")),
    };
    let Some(recipient) = recipients.first() else {
        // With no recipient, `Message` carries the reason (`InvalidSenderId`,
        // `InsufficientBalance`, …): read it against the same table.
        let said = data.get("Message").and_then(Value::as_str).unwrap_or("");
        if let Some(&(code, name, class, alert)) = RECIPIENT_STATUS
            .iter()
            .find(|row| row.2 != Class::Accepted && same_name(row.1, said))
        {
            return refused(code, name, class, alert);
        }
        // Every message it made is listed: an empty list says it made none.
        return Err(SendError::transient(format!(
            "Africa's Talking sent to no recipient: {}",
            truncate(if said.is_empty() { body } else { said })
        )));
    };
    let code = recipient
        .get("statusCode")
        .and_then(|c| c.as_u64().or_else(|| c.as_str()?.trim().parse().ok()))
        .ok_or_else(|| unreadable("the recipient has no numeric statusCode"))?;
    let word = recipient
        .get("status")
        .and_then(Value::as_str)
        .filter(|w| !w.trim().is_empty());
    let message_id = recipient
        .get("messageId")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|id| !id.is_empty() && *id != "None");

    let Some(&(_, name, class, alert)) = RECIPIENT_STATUS.iter().find(|row| row.0 == code) else {
        // A code not in the table with a real message id may be a message
        // taken; with "None" for its id Africa's Talking made none.
        if message_id.is_some() {
            return Err(unreadable(&format!(
                "the recipient's statusCode {code} is not in tuma's table and it has a messageId"
            )));
        }
        return Err(SendError::Transient {
            code: Some(code.to_string()),
            message: format!(
                "{} ({code}): a status code not in tuma's table, treated as transient",
                truncate(word.unwrap_or("unknown status"))
            ),
        });
    };
    let word = word.unwrap_or(name);
    match class {
        Class::Permanent | Class::Transient => refused(code, word, class, alert),
        Class::Accepted => {
            let id =
                message_id.ok_or_else(|| unreadable("the accepted recipient has no messageId"))?;
            Ok(Accepted {
                provider_message_id: id.to_owned(),
                provider_status: Some(word.to_owned()),
                cost: recipient
                    .get("cost")
                    .and_then(Value::as_str)
                    .and_then(parse_cost),
                // Africa's Talking does not count segments per recipient.
                segments: None,
                part_ids: Vec::new(),
            })
        }
    }
}

/// The error of a refusing row of the table (`word` as Africa's Talking
/// said it), logged as an error when the row alerts.
fn refused(code: u64, word: &str, class: Class, alert: Alert) -> Result<Accepted, SendError> {
    let word = truncate(word);
    if alert == Alert::Yes {
        tracing::error!(
            status_code = code,
            status = %word,
            "Africa's Talking: {}",
            advice(code)
        );
    }
    let message = format!("{word} ({code})");
    let code = Some(code.to_string());
    if class == Class::Permanent {
        Err(SendError::Permanent { code, message })
    } else {
        Err(SendError::Transient { code, message })
    }
}

/// Whether `said` is the table's `name`, ignoring case, spaces and punctuation
/// (`InvalidSenderId`, `Invalid Sender Id`).
fn same_name(name: &str, said: &str) -> bool {
    let letters = |s: &str| {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    !said.trim().is_empty() && letters(name) == letters(said)
}

/// What a person should do about an alerting status code.
fn advice(code: u64) -> &'static str {
    match code {
        402 => {
            "the sender ID is refused: check sender_id against the ones approved for the account"
        }
        405 => "the account balance is too low: top it up (sends are retried)",
        _ => "check the account",
    }
}

/// `"KES 0.8000"` → 0.80 KES in micro-units; a bare `"0"` (no currency) or
/// anything unreadable → None.
fn parse_cost(text: &str) -> Option<Money> {
    let (currency, amount) = text.trim().split_once(char::is_whitespace)?;
    match Money::parse(amount.trim(), currency) {
        Ok(money) if money.micros < 0 => {
            tracing::warn!(
                cost = %truncate(text),
                "Africa's Talking reported a negative cost, which makes no sense: the cost is recorded as unknown"
            );
            None
        }
        Ok(money) => Some(money),
        Err(e) => {
            tracing::warn!(cost = %truncate(text), "cannot read Africa's Talking's cost: {e}");
            None
        }
    }
}

/// `{base_url}/version1/messaging`, keeping any path prefix of base_url.
fn messaging_url(base: &Url) -> Result<Url, String> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| format!("`{base}` cannot have a path"))?
        .pop_if_empty()
        .extend(["version1", "messaging"]);
    Ok(url)
}

/// At most [`MAX_BODY_CHARS`] characters of a body, marked when cut; an
/// empty body says so.
fn truncate(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut chars = body.char_indices();
    match chars.nth(MAX_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}

/// An error with its causes, `outer: inner: innermost`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
