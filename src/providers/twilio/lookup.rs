//! "Did Twilio take this message?": the Messages list resource, read for a
//! send whose answer never came ([`MessageLookup`]).
//!
//! `GET {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json?To=<E.164>&PageSize=50`,
//! then each `next_page_uri` Twilio gives, for at most [`MAX_PAGES`] pages. A
//! message matches when it is outbound, went to the same number, its `body`
//! is exactly tuma's text and its `date_created` is at or after `since`
//! (less [`CLOCK_SKEW`]: the date is Twilio's clock, `since` tuma's). The
//! first match, the newest, is the answer: its `sid`, `status`, `price` (as
//! the positive charge, like the status fetch) and `num_segments`.
//!
//! Why no `DateSent>=` filter: Twilio documents it as a filter on the
//! message's sent date ("Filter by Message `sent_date`", the list parameters
//! of `GET /2010-04-01/Accounts/{AccountSid}/Messages.json` in Twilio's
//! OpenAPI description, twilio-oai `spec/json/twilio_api_v2010.json`), and a
//! message Twilio has not sent yet (`queued`, `accepted`, `scheduled`) has a
//! null `date_sent` ("For an outgoing message, this is when Twilio sent the
//! message", the same description). Nothing there says such a message passes
//! a `DateSent>=` filter, and a lookup comes a minute or two after the send,
//! when a message waiting in a Messaging Service's queue may not be sent
//! yet: filtered on the sent date, Twilio could say "none" of a message it
//! holds, and tuma would send it twice. Twilio has no filter on
//! `date_created`, so tuma reads the recipient's list newest first (the
//! documented example page is in descending `date_sent`) and matches
//! `date_created` itself. The reading stops at the first message sent
//! before `since`: every later one was sent, so created, earlier still. Not
//! confirmed by Twilio's docs: where unsent messages (null `date_sent`) sort;
//! listed after every sent one, an unsent match would be missed.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use serde_json::Value;

use super::Twilio;
use super::service::{classify_error, count, price, sid_fault};
use crate::domain::provider_text::{self, MAX_STATUS_CHARS, Secrets, scrub};
use crate::providers::capability::{FoundMessage, Lookup, MessageLookup};
use crate::providers::{Content, OutgoingMessage, SendError};

/// Messages asked for per page (Twilio's default; at most 1000).
pub const PAGE_SIZE: u32 = 50;

/// The most pages one lookup reads: a recipient sent more than
/// `PAGE_SIZE × MAX_PAGES` messages since `since` is one Twilio cannot
/// answer for in bounded time (a permanent error: it cannot say).
pub const MAX_PAGES: usize = 3;

/// How far Twilio's clock may be behind tuma's: a message Twilio dates up to
/// this long before `since` still matches.
pub const CLOCK_SKEW: TimeDelta = TimeDelta::seconds(30);

/// One message of a list page, as far as the lookup reads it.
struct Listed<'a> {
    value: &'a Value,
    date_created: Option<DateTime<Utc>>,
    date_sent: Option<DateTime<Utc>>,
}

impl<'a> Listed<'a> {
    fn new(value: &'a Value) -> Listed<'a> {
        let date = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .and_then(|d| DateTime::parse_from_rfc2822(d.trim()).ok())
                .map(|d| d.with_timezone(&Utc))
        };
        Listed {
            value,
            date_created: date("date_created"),
            date_sent: date("date_sent"),
        }
    }

    fn text(&self, key: &str) -> Option<&'a str> {
        self.value.get(key).and_then(Value::as_str)
    }

    /// Whether this is the message tuma sent to `to` with `body` at `since`.
    fn matches(&self, to: &str, body: &str, since: DateTime<Utc>) -> bool {
        self.text("to") == Some(to)
            && self.text("body") == Some(body)
            && self
                .text("direction")
                .is_none_or(|d| d.starts_with("outbound"))
            && self.date_created.is_some_and(|d| d >= since)
    }
}

/// A page of Twilio's Messages list: its messages and the next page's path.
pub(super) struct Page {
    messages: Vec<Value>,
    next_page_uri: Option<String>,
}

/// Reads a list page. An error answer goes through the send's table (5xx
/// and 429 transient, 401, 403, 404 permanent); a success that is not a page
/// is transient (ask again later). Never quotes a page: it holds other
/// messages' bodies.
pub(super) fn classify_page(status: reqwest::StatusCode, body: &str) -> Result<Page, SendError> {
    if !status.is_success() {
        return Err(classify_error(status, body).cleaned(&Secrets::unknown_code()));
    }
    let not_a_page = |what: &str| {
        SendError::transient(format!(
            "Twilio answered the message list with HTTP {} and {what}",
            status.as_u16()
        ))
    };
    let value: Value =
        serde_json::from_str(body).map_err(|_| not_a_page("a body that is not JSON"))?;
    let messages = value
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| not_a_page("no `messages` list"))?;
    let next_page_uri = match value.get("next_page_uri") {
        None | Some(Value::Null) => None,
        Some(Value::String(uri)) if uri.is_empty() => None,
        Some(Value::String(uri)) => Some(uri.clone()),
        Some(_) => return Err(not_a_page("a `next_page_uri` that is not text")),
    };
    Ok(Page {
        messages,
        next_page_uri,
    })
}

impl Twilio {
    /// The first page's URL: this account's messages to `to`.
    fn first_page(&self, to: &str) -> Result<reqwest::Url, SendError> {
        let mut url = reqwest::Url::parse(&self.account_url("Messages.json")).map_err(|e| {
            SendError::permanent(format!("cannot build the message list's URL: {e}"))
        })?;
        url.query_pairs_mut()
            .append_pair("To", to)
            .append_pair("PageSize", &PAGE_SIZE.to_string());
        Ok(url)
    }

    /// The URL of a `next_page_uri`: a path of this account's Messages list
    /// (never another host or resource, which would get our credentials),
    /// after `base_url`.
    fn next_page(&self, uri: &str) -> Result<reqwest::Url, SendError> {
        let list = format!(
            "/2010-04-01/Accounts/{}/Messages.json?",
            self.config.account_sid
        );
        if !uri.starts_with(&list) || uri.contains(['#', '\\']) {
            return Err(SendError::permanent(
                "Twilio's next_page_uri is not a page of this account's messages: the lookup cannot go on",
            ));
        }
        let base = self.config.base_url.as_str().trim_end_matches('/');
        reqwest::Url::parse(&format!("{base}{uri}")).map_err(|e| {
            SendError::permanent(format!("Twilio's next_page_uri is not a URL path: {e}"))
        })
    }

    /// Looks for the message to `to` with exactly `body`, created at or
    /// after `since`, in this account's list (see the module).
    pub async fn find_message(
        &self,
        to: &str,
        body: &str,
        since: DateTime<Utc>,
        secrets: &Secrets,
    ) -> Result<Lookup, SendError> {
        // RFC 2822 dates have whole seconds.
        let since = since
            .with_nanosecond(0)
            .and_then(|s| s.checked_sub_signed(CLOCK_SKEW))
            .unwrap_or(since);
        let mut url = self.first_page(to)?;
        for _ in 0..MAX_PAGES {
            let request = self.build(self.authorized(self.client.get(url)))?;
            let (status, text) = self.call(request).await.map_err(|e| match e {
                // A read changes nothing: not knowing is only "ask again".
                SendError::Unknown { message, .. } => SendError::transient(message),
                other => other,
            })?;
            // A page is matched as Twilio wrote it; an error is read scrubbed.
            let page = if status.is_success() {
                classify_page(status, &text)?
            } else {
                classify_page(status, &scrub(&text, secrets))?
            };
            let listed: Vec<Listed<'_>> = page.messages.iter().map(Listed::new).collect();
            if let Some(found) = listed.iter().find(|m| m.matches(to, body, since)) {
                return found_message(found).map(Lookup::Found);
            }
            let older = listed
                .iter()
                .any(|m| m.date_sent.is_some_and(|sent| sent < since));
            match page.next_page_uri {
                Some(next) if !older => url = self.next_page(&next)?,
                _ => return Ok(Lookup::NotFound),
            }
        }
        Err(SendError::permanent(format!(
            "Twilio lists over {} messages to this number since the send: it cannot say in {MAX_PAGES} pages",
            PAGE_SIZE as usize * MAX_PAGES
        )))
    }
}

/// The found message as the dispatcher records it; a sid that is not
/// Twilio's is a permanent error (Twilio cannot say in a form tuma reads).
fn found_message(found: &Listed<'_>) -> Result<FoundMessage, SendError> {
    let sid = found.text("sid").unwrap_or_default();
    if let Some(fault) = sid_fault(sid) {
        return Err(SendError::permanent(format!(
            "Twilio lists a matching message whose sid {fault}: {:?}",
            provider_text::clean_to(sid, &Secrets::none(), 64)
        )));
    }
    Ok(FoundMessage {
        provider_message_id: sid.to_owned(),
        provider_status: found
            .text("status")
            .map(|s| provider_text::clean_to(s, &Secrets::none(), MAX_STATUS_CHARS)),
        cost: price(found.value),
        segments: count(found.value.get("num_segments")),
    })
}

#[async_trait]
impl MessageLookup for Twilio {
    /// Reads the recipient's Messages list (see the module).
    async fn find_sent(
        &self,
        message: &OutgoingMessage,
        since: DateTime<Utc>,
    ) -> Result<Lookup, SendError> {
        let Content::Sms { to, text } = &message.content else {
            return Err(SendError::permanent(
                "Twilio sends SMS only: it holds no email",
            ));
        };
        self.find_message(to.as_str(), text, since, &message.secrets())
            .await
    }
}
