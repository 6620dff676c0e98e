//! `kind = "twilio"`: SMS through Twilio Programmable Messaging.
//!
//! One `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json` per
//! message, form-encoded, with HTTP Basic auth (the account's auth token, or
//! an API key `SK…` with its secret). Twilio answers `201` with the message
//! `sid`, its status and its segment count; the price is known only later, by
//! fetching the message ([`Twilio::fetch_message`]). Errors carry a Twilio
//! `code`; [`classify`] maps every answer to accepted, permanent or transient
//! from one table (`docs/providers.md`, "Twilio Programmable Messaging"), and
//! a success it cannot read (no `sid` of Twilio's form) to an unknown outcome.
//!
//! A send whose answer never came can be looked up (`lookup.rs`, the
//! `MessageLookup` capability): the recipient's Messages list, matched on
//! tuma's text and the creation date.
//!
//! Email is not a Twilio channel here: an email content is a permanent error.

mod config;
mod kind;
mod lookup;
pub mod receipt;
mod service;

#[cfg(test)]
mod tests;

pub use config::{TwilioAuth, TwilioConfig, TwilioSender};
pub use kind::KIND;
pub use service::{FetchedMessage, Twilio, classify, classify_fetched, recipient_gone};
