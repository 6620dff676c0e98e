//! Parsed domain types: parse, don't validate. Past the edges of tuma (CLI,
//! HTTP, config) everything takes these types, so a raw string never reaches a
//! provider.

pub mod attempt;
pub mod budget;
pub mod email;
pub mod event;
pub mod gcra;
pub mod money;
pub mod otp;
pub mod phone;
pub mod provider_text;
pub mod pumping;
pub mod receipt;
pub mod segments;
mod sql;
pub mod status;
pub mod unknown;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use status::DeliveryStatus;

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// A text message to an E.164 number.
    Sms,
    /// An email to an address.
    Email,
}

impl Channel {
    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sms" => Ok(Channel::Sms),
            "email" => Ok(Channel::Email),
            other => Err(format!("unknown channel `{other}` (expected sms or email)")),
        }
    }
}

/// What a delivery is for; each kind has its own queue lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryKind {
    /// A one-time code: urgent, and worthless after its TTL.
    Otp,
    /// Anything else rendered from a template.
    Notification,
}

impl DeliveryKind {
    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Otp => "otp",
            DeliveryKind::Notification => "notification",
        }
    }
}

impl fmt::Display for DeliveryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "otp" => Ok(DeliveryKind::Otp),
            "notification" => Ok(DeliveryKind::Notification),
            other => Err(format!(
                "unknown delivery kind `{other}` (expected otp or notification)"
            )),
        }
    }
}

/// A parsed recipient: the channel follows from its form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// An E.164 phone number.
    Phone(phone::PhoneNumber),
    /// An email address.
    Email(email::EmailAddress),
}

impl Recipient {
    /// Parses `to`: anything with an `@` is an email address, the rest a phone number.
    pub fn parse(to: &str, default_region: phone::Region) -> Result<Recipient, String> {
        if to.contains('@') {
            email::EmailAddress::parse(to)
                .map(Recipient::Email)
                .map_err(|e| e.to_string())
        } else {
            phone::PhoneNumber::parse(to, default_region)
                .map(Recipient::Phone)
                .map_err(|e| e.to_string())
        }
    }

    /// The channel this recipient is reached on.
    pub fn channel(&self) -> Channel {
        match self {
            Recipient::Phone(_) => Channel::Sms,
            Recipient::Email(_) => Channel::Email,
        }
    }

    /// The canonical text form (E.164, or the normalised address).
    pub fn as_str(&self) -> &str {
        match self {
            Recipient::Phone(p) => p.as_str(),
            Recipient::Email(e) => e.as_str(),
        }
    }

    /// Who the per-recipient OTP limit counts this as: the number, or the
    /// mailbox the address reaches ([`email::EmailAddress::mailbox`]), so
    /// `+tag` variants of one address share one quota.
    pub fn quota_key(&self) -> String {
        match self {
            Recipient::Phone(p) => p.as_str().to_owned(),
            Recipient::Email(e) => e.mailbox(),
        }
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
