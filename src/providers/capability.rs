//! What a provider can do besides sending, as small traits the rest of tuma
//! dispatches on by provider name, never by kind: verify and read a delivery
//! receipt ([`ReceiptCapability`]), fetch a sent message's final status and
//! price ([`StatusFetch`]), say whether it took a message whose answer
//! never came ([`MessageLookup`]).

use std::fmt;

use async_trait::async_trait;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};

use super::SendError;
use crate::domain::money::Money;
use crate::receipts::MissingField;
use crate::store::NewReceipt;

/// A receipt as it reached `POST` or `GET /v1/callbacks/{provider}[/{secret}]`.
pub struct ReceiptRequest<'a> {
    /// The configured provider it is tried against.
    pub provider: &'a str,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The path and query the request was made to.
    pub url: &'a str,
    /// The fields as sent: a POST's body (at most `api.max_body_bytes`), or
    /// a GET's query string, which is form-encoded like a form body.
    pub body: &'a [u8],
    /// When tuma received it.
    pub received_at: DateTime<Utc>,
}

/// A verified receipt, and the price it reports, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedReceipt {
    /// What the receipt says about the message.
    pub receipt: NewReceipt,
    /// The message's actual price, when the receipt says it (reconciles the cost).
    pub price: Option<Money>,
    /// Set when the receipt's error says the recipient does not exist,
    /// barred the sender or unsubscribed: the reason in words, from the
    /// adapter's own table. A receipt that moves its delivery to
    /// `undelivered` with it suppresses the recipient.
    pub recipient_gone: Option<&'static str>,
}

impl VerifiedReceipt {
    /// A receipt without a price.
    pub fn without_price(receipt: NewReceipt) -> VerifiedReceipt {
        VerifiedReceipt {
            receipt,
            price: None,
            recipient_gone: None,
        }
    }
}

/// Why a receipt was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptRefusal {
    /// Not signed by this provider: 403, counted as `bad_signature`.
    BadSignature {
        /// What the client is told (names the header or field, never a secret).
        detail: String,
        /// What the log says.
        log: String,
    },
    /// Signed, but a field it needs is missing: 422, counted as `malformed`.
    Malformed(MissingField),
}

/// How a provider's receipts prove where they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptAuth {
    /// A signature over the request (`POST /v1/callbacks/{provider}`).
    Signature,
    /// A secret in the URL (`POST /v1/callbacks/{provider}/{secret}`): a
    /// wrong one is a path that does not exist (404, `wrong_secret`).
    UrlSecret,
}

/// "Verify and read a receipt from this HTTP request."
pub trait ReceiptCapability: Send + Sync {
    /// How this provider's receipts authenticate.
    fn auth(&self) -> ReceiptAuth;

    /// For [`ReceiptAuth::UrlSecret`]: whether `secret` is this provider's
    /// (compared in constant time). Checked before the body is read.
    fn owns_secret(&self, _secret: &str) -> bool {
        false
    }

    /// Verifies the request (signature) and reads the receipt.
    fn receive(&self, request: &ReceiptRequest<'_>) -> Result<VerifiedReceipt, ReceiptRefusal>;
}

/// A sent message's status and price as fetched from the provider.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedStatus {
    /// The status as a receipt, when it is final (delivered or undelivered).
    pub receipt: Option<NewReceipt>,
    /// The actual price, once the provider knows it.
    pub price: Option<Money>,
    /// The segments the provider billed.
    pub segments: Option<u32>,
}

/// "Fetch a message's final status and price."
#[async_trait]
pub trait StatusFetch: Send + Sync + fmt::Debug {
    /// Fetches message `message_id` of provider `provider`. A permanent
    /// error means the provider will never say (an unknown message); a
    /// transient one, ask again later.
    async fn fetch_status(
        &self,
        provider: &str,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<FetchedStatus, SendError>;
}

/// A message the provider holds that matches one tuma sent but heard no
/// answer for.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundMessage {
    /// The provider's id for it.
    pub provider_message_id: String,
    /// The provider's status word for it now (`sent`, `delivered`, …).
    pub provider_status: Option<String>,
    /// Its price, when the provider already says.
    pub cost: Option<Money>,
    /// The segments the provider billed, when it says.
    pub segments: Option<u32>,
}

/// What the provider says of a send whose answer never came.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// It has the message: it was sent, and must not be sent again.
    Found(FoundMessage),
    /// It has no such message.
    NotFound,
}

/// "Did you take this message?": asked after a send whose answer never came
/// (`retry.after_unknown = "resolve"`), so a message the provider took is
/// recorded as sent instead of being sent twice.
#[async_trait]
pub trait MessageLookup: Send + Sync + fmt::Debug {
    /// Whether the provider holds a message to `message`'s recipient with
    /// exactly its text, created at or after `since`. A transient error:
    /// ask again later; a permanent one: the provider cannot say.
    async fn find_sent(
        &self,
        message: &super::OutgoingMessage,
        since: DateTime<Utc>,
    ) -> Result<Lookup, SendError>;
}

/// Whether `given` is `secret`, in constant time (both are hashed first, so
/// not even the length leaks).
pub fn same_secret(given: &str, secret: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(secret.as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// A form-encoded body's fields, in the order sent.
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
    }
}
