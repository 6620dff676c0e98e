//! `kind = "vonage"`: SMS through Vonage's SMS API.
//!
//! One message is one `POST {base_url}/sms/json` (default
//! `https://rest.nexmo.com`), form-encoded, authenticated by `api_secret` or
//! signed (`sig`) with the signature secret. Vonage answers 200 with one
//! `messages[]` entry per part; each part's `status` decides ([`classify`]
//! holds the one table), and an accepted message's price is known at once
//! (`message-price`, in the account's `currency`). Delivery receipts
//! (`receipt.rs`), by POST or GET, are checked by their `sig` and the age of
//! their signed `timestamp` when a signature secret is set.
//! A refusal saying the number is barred or de-activated, and a receipt whose
//! `err-code` says the number is inactive, barred by its user or refuses
//! the sender, suppress the recipient (`recipient_gone`, `receipt_gone`).
//!
//! ```toml
//! [[provider]]
//! name = "vonage"
//! kind = "vonage"
//! api_key = "a1b2c3d4"
//! api_secret_env = "VONAGE_API_SECRET"            # or signature_secret_env only: signed requests
//! signature_secret_env = "VONAGE_SIGNATURE_SECRET" # optional: signs sends, checks receipts' sig
//! signature_method = "md5hash"                     # md5hash (default), md5, sha1, sha256, sha512
//! from = "MTAADAO"                                 # a number or an alphanumeric sender id
//! currency = "EUR"                                 # the account's currency
//! callback_url = "https://tuma.example.org/v1/callbacks/vonage" # at most 100 characters
//! receipt_max_age = "5m"                           # signed receipts: how old their timestamp may be
//! ```
//!
//! What this adapter never does: follow redirects, put a secret in an
//! error, log line or dry run, or touch the database.

mod config;
mod kind;
pub mod receipt;
mod service;
pub mod signing;

#[cfg(test)]
mod tests;

pub use config::{DEFAULT_BASE_URL, Signature, SignatureMethod, VonageAuth, VonageConfig};
pub use kind::KIND;
pub use service::{Alert, Class, STATUS, Vonage, VonageAccepted, classify, recipient_gone};
