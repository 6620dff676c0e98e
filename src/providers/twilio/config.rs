//! The `[[provider]]` keys of `kind = "twilio"`, parsed and checked at load.

use std::path::Path;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::phone::PhoneNumber;

/// Twilio's API host, used unless `base_url` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// The longest validity period Twilio accepts, in seconds (10 hours).
const MAX_VALIDITY_SECS: u64 = 36_000;

/// The longest alphanumeric sender id or short code accepted in `from`.
const MAX_SENDER_ID_CHARS: usize = 11;

/// Twilio settings.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    /// The account (`AC…`): part of every URL, and the Basic auth user with an auth token.
    pub account_sid: String,
    /// How requests authenticate.
    pub auth: TwilioAuth,
    /// Who the messages come from.
    pub sender: TwilioSender,
    /// The API root, `https://api.twilio.com` unless a test or proxy says otherwise.
    pub base_url: Url,
    /// Where Twilio posts delivery receipts (`StatusCallback`), when set.
    pub status_callback_url: Option<Url>,
    /// How long Twilio may keep trying (`ValidityPeriod`), whole seconds in 1..=36000.
    pub validity_period: Option<Duration>,
}

/// The credentials of a request; Debug never shows a secret.
#[derive(Debug, Clone)]
pub enum TwilioAuth {
    /// `account_sid:auth_token` (from `auth_token_env`).
    AuthToken(SecretString),
    /// `api_key_sid:api_key_secret` (from `api_key_sid` and `api_key_secret_env`):
    /// a key that can be revoked without changing the account's token.
    ApiKey {
        /// The key (`SK…`), the Basic auth user.
        sid: String,
        /// The key's secret.
        secret: SecretString,
    },
}

impl TwilioAuth {
    /// The Basic auth user: the account with an auth token, the key's sid with an API key.
    pub fn user<'a>(&'a self, account_sid: &'a str) -> &'a str {
        match self {
            TwilioAuth::AuthToken(_) => account_sid,
            TwilioAuth::ApiKey { sid, .. } => sid,
        }
    }

    /// The Basic auth password.
    pub fn secret(&self) -> &SecretString {
        match self {
            TwilioAuth::AuthToken(secret) | TwilioAuth::ApiKey { secret, .. } => secret,
        }
    }
}

/// The sender of every message: a number or id, or a Messaging Service that picks one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioSender {
    /// `From`: an E.164 number, a short code or an alphanumeric sender id.
    From(String),
    /// `MessagingServiceSid` (`MG…`).
    MessagingService(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwilio {
    account_sid: String,
    auth_token_env: Option<String>,
    api_key_sid: Option<String>,
    api_key_secret_env: Option<String>,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    base_url: Option<String>,
    status_callback_url: Option<String>,
    validity_period: Option<String>,
}

type KeyError = (String, String);

fn refuse(key: &str, reason: impl Into<String>) -> KeyError {
    (key.to_owned(), reason.into())
}

impl TwilioConfig {
    /// Reads the Twilio keys of a `[[provider]]` table; errors name the key.
    ///
    /// Keys ending in `_env` name environment variables that are read now.
    pub fn from_table(table: toml::Table, base: &Path) -> Result<TwilioConfig, (String, String)> {
        Self::from_table_with_env(table, base, crate::settings::secret_from_env)
    }

    /// [`TwilioConfig::from_table`] with the environment given, so tests need not change it.
    pub(crate) fn from_table_with_env(
        table: toml::Table,
        _base: &Path,
        env: impl Fn(&str) -> Result<SecretString, String>,
    ) -> Result<TwilioConfig, (String, String)> {
        let raw = RawTwilio::deserialize(table).map_err(|e| crate::settings::table_error(&e))?;

        let account_sid = sid("account_sid", &raw.account_sid, "AC")?;
        let read = |key: &str, var: &str| env(var.trim()).map_err(|reason| refuse(key, reason));
        let auth = match (raw.auth_token_env, raw.api_key_sid, raw.api_key_secret_env) {
            (Some(var), None, None) => TwilioAuth::AuthToken(read("auth_token_env", &var)?),
            (None, Some(key_sid), Some(var)) => TwilioAuth::ApiKey {
                sid: sid("api_key_sid", &key_sid, "SK")?,
                secret: read("api_key_secret_env", &var)?,
            },
            (None, Some(_), None) => {
                return Err(refuse(
                    "api_key_secret_env",
                    "is required with api_key_sid: name the variable holding the key's secret",
                ));
            }
            (None, None, Some(_)) => {
                return Err(refuse(
                    "api_key_sid",
                    "is required with api_key_secret_env: the key's SK… sid",
                ));
            }
            (None, None, None) => {
                return Err(refuse(
                    "auth_token_env",
                    "set auth_token_env, or api_key_sid with api_key_secret_env",
                ));
            }
            (Some(_), _, _) => {
                return Err(refuse(
                    "auth_token_env",
                    "set either auth_token_env or api_key_sid with api_key_secret_env, not both",
                ));
            }
        };

        let sender = match (raw.from, raw.messaging_service_sid) {
            (Some(from), None) => TwilioSender::From(sender_id(&from)?),
            (None, Some(service)) => {
                TwilioSender::MessagingService(sid("messaging_service_sid", &service, "MG")?)
            }
            (None, None) => {
                return Err(refuse(
                    "from",
                    "set from (a number or sender id) or messaging_service_sid (MG…)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(refuse(
                    "from",
                    "set either from or messaging_service_sid, not both",
                ));
            }
        };

        let base_url = http_url(
            "base_url",
            raw.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
        )?;
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(refuse(
                "base_url",
                "must not have a query or fragment: give the API root such as https://api.twilio.com",
            ));
        }
        let status_callback_url = raw
            .status_callback_url
            .as_deref()
            .map(|u| http_url("status_callback_url", u))
            .transpose()?;
        let validity_period = raw.validity_period.as_deref().map(validity).transpose()?;

        Ok(TwilioConfig {
            account_sid,
            auth,
            sender,
            base_url,
            status_callback_url,
            validity_period,
        })
    }
}

/// How many hexadecimal digits follow a Twilio sid's two-letter prefix.
const SID_HEX_DIGITS: usize = 32;

/// A Twilio sid: its two-letter prefix then exactly 32 hexadecimal digits
/// (`^AC[0-9a-fA-F]{32}$`), as Twilio issues them; anything else would pass
/// `tuma check` and then fail every send.
fn sid(key: &str, value: &str, prefix: &str) -> Result<String, KeyError> {
    let value = value.trim();
    let rest = value.strip_prefix(prefix).unwrap_or_default();
    if rest.len() != SID_HEX_DIGITS || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        let shown: String = value.chars().take(40).collect();
        return Err(refuse(
            key,
            format!(
                "`{shown}` is not a Twilio sid: expected {prefix} followed by exactly {SID_HEX_DIGITS} hexadecimal digits"
            ),
        ));
    }
    Ok(value.to_owned())
}

/// `from`: an E.164 number, or a short code / alphanumeric sender id.
fn sender_id(value: &str) -> Result<String, KeyError> {
    let value = value.trim();
    if value.starts_with('+') {
        return PhoneNumber::parse_e164(value)
            .map(|n| n.as_str().to_owned())
            .map_err(|e| refuse("from", e.to_string()));
    }
    let chars = value.chars().count();
    if chars == 0
        || chars > MAX_SENDER_ID_CHARS
        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
    {
        return Err(refuse(
            "from",
            format!(
                "`{value}` is neither an E.164 number such as +15005550006 nor a short code or sender id of 1 to {MAX_SENDER_ID_CHARS} letters, digits and spaces"
            ),
        ));
    }
    Ok(value.to_owned())
}

fn http_url(key: &str, value: &str) -> Result<Url, KeyError> {
    let url = Url::parse(value.trim())
        .map_err(|e| refuse(key, format!("`{value}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(refuse(
            key,
            format!("`{value}` must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(url)
}

fn validity(text: &str) -> Result<Duration, KeyError> {
    let period = crate::settings::parse_duration_in(
        text,
        Duration::from_secs(1),
        Duration::from_secs(MAX_VALIDITY_SECS),
    )
    .map_err(|e| refuse("validity_period", e))?;
    if period.subsec_nanos() != 0 {
        return Err(refuse(
            "validity_period",
            format!("`{text}` must be a whole number of seconds from 1s to 10h (36000 s)"),
        ));
    }
    Ok(period)
}
