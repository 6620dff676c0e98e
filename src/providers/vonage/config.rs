//! The `[[provider]]` keys of `kind = "vonage"`, parsed and checked at load.

use std::path::Path;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::money::Currency;

/// Vonage's SMS API host, used unless `base_url` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://rest.nexmo.com";

/// The longest alphanumeric sender id Vonage takes in `from`.
const MAX_SENDER_ID_CHARS: usize = 11;

/// The longest `callback` Vonage takes: 100 characters (the `callback` of
/// `SmsMessage` in Vonage's Python SDK, `max_length=100`; a longer one is
/// refused with status 23, "Invalid Callback Url").
pub const MAX_CALLBACK_URL_CHARS: usize = 100;

/// How old a signed receipt may be (its `timestamp`) unless
/// `receipt_max_age` says otherwise.
pub const DEFAULT_RECEIPT_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// The shortest and longest `receipt_max_age`.
pub const MIN_RECEIPT_MAX_AGE: Duration = Duration::from_secs(30);
/// See [`MIN_RECEIPT_MAX_AGE`].
pub const MAX_RECEIPT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Vonage settings.
#[derive(Debug, Clone)]
pub struct VonageConfig {
    /// The account's API key (`api_key`, public).
    pub api_key: String,
    /// How sends authenticate.
    pub auth: VonageAuth,
    /// The signature secret (from `signature_secret_env`) and its method:
    /// when set, every delivery receipt must carry a valid `sig`.
    pub signature: Option<Signature>,
    /// The sender: a number (E.164 digits, no `+`) or an alphanumeric id.
    pub from: String,
    /// The account's currency: `message-price` and a receipt's `price` are in it.
    pub currency: Currency,
    /// The API root, `https://rest.nexmo.com` unless a test or proxy says otherwise.
    pub base_url: Url,
    /// Where Vonage posts delivery receipts (`callback` with
    /// `status-report-req=true`); at most 100 characters.
    pub callback_url: Option<Url>,
    /// How old a signed receipt's `timestamp` may be when it arrives (either
    /// way, for clocks that disagree): an older one is refused like a forged
    /// one, so a captured receipt cannot be replayed later.
    pub receipt_max_age: Duration,
}

/// How a send proves who it is from; Debug never shows a secret.
#[derive(Debug, Clone)]
pub enum VonageAuth {
    /// `api_secret` in the form (from `api_secret_env`).
    ApiSecret(SecretString),
    /// `timestamp` and `sig` signed with the signature secret, no `api_secret`.
    Signed,
}

/// A signature secret and the method Vonage's dashboard set for it.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The secret (from `signature_secret_env`).
    pub secret: SecretString,
    /// The method.
    pub method: SignatureMethod,
}

/// Vonage's signing methods: MD5 hash (the default) and four HMACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMethod {
    /// md5(params + secret).
    Md5Hash,
    /// HMAC-MD5.
    Md5,
    /// HMAC-SHA1.
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

impl SignatureMethod {
    /// The name in the file (and in Vonage's dashboard).
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMethod::Md5Hash => "md5hash",
            SignatureMethod::Md5 => "md5",
            SignatureMethod::Sha1 => "sha1",
            SignatureMethod::Sha256 => "sha256",
            SignatureMethod::Sha512 => "sha512",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVonage {
    api_key: String,
    api_secret_env: Option<String>,
    signature_secret_env: Option<String>,
    signature_method: Option<String>,
    from: String,
    currency: String,
    base_url: Option<String>,
    callback_url: Option<String>,
    receipt_max_age: Option<String>,
}

type KeyError = (String, String);

fn refuse(key: &str, reason: impl Into<String>) -> KeyError {
    (key.to_owned(), reason.into())
}

impl VonageConfig {
    /// Reads the Vonage keys of a `[[provider]]` table (without `name`,
    /// `kind`, `rate_limit` and `timeout`), reading the secrets its `*_env`
    /// keys name with `read_secret`; errors name the key and the reason.
    pub fn from_table_with(
        table: toml::Table,
        _base: &Path,
        read_secret: impl Fn(&str) -> Result<SecretString, String>,
    ) -> Result<VonageConfig, KeyError> {
        let raw = RawVonage::deserialize(table).map_err(|e| crate::settings::table_error(&e))?;

        let api_key = raw.api_key.trim();
        if api_key.is_empty() || !api_key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(refuse(
                "api_key",
                "must be the account's API key (letters and digits, from the dashboard)",
            ));
        }
        let read = |key: &str, var: &str| {
            let var = var.trim();
            if var.is_empty() {
                return Err(refuse(key, "must name an environment variable"));
            }
            read_secret(var).map_err(|reason| refuse(key, reason))
        };
        let method = match raw.signature_method.as_deref().map(str::trim) {
            None | Some("md5hash") => SignatureMethod::Md5Hash,
            Some("md5") => SignatureMethod::Md5,
            Some("sha1") => SignatureMethod::Sha1,
            Some("sha256") => SignatureMethod::Sha256,
            Some("sha512") => SignatureMethod::Sha512,
            Some(other) => {
                return Err(refuse(
                    "signature_method",
                    format!(
                        "`{other}` is not one of md5hash, md5, sha1, sha256, sha512 (as set in Vonage's dashboard)"
                    ),
                ));
            }
        };
        let signature = match &raw.signature_secret_env {
            Some(var) => Some(Signature {
                secret: read("signature_secret_env", var)?,
                method,
            }),
            None if raw.signature_method.is_some() => {
                return Err(refuse(
                    "signature_method",
                    "needs signature_secret_env: name the variable holding the signature secret",
                ));
            }
            None => None,
        };
        let auth = match (&raw.api_secret_env, &signature) {
            (Some(var), _) => VonageAuth::ApiSecret(read("api_secret_env", var)?),
            (None, Some(_)) => VonageAuth::Signed,
            (None, None) => {
                return Err(refuse(
                    "api_secret_env",
                    "name the variable holding the API secret, or set signature_secret_env to sign requests",
                ));
            }
        };

        let from = check_from(&raw.from).map_err(|reason| refuse("from", reason))?;
        let currency: Currency = raw
            .currency
            .trim()
            .parse()
            .map_err(|e: crate::domain::money::MoneyError| refuse("currency", e.to_string()))?;
        if !currency.is_active_iso4217() {
            return Err(refuse(
                "currency",
                format!(
                    "`{}` is not an active ISO 4217 currency code: write the account's currency (e.g. EUR, USD)",
                    raw.currency.trim()
                ),
            ));
        }
        let base_url = parse_url(raw.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL), false)
            .map_err(|reason| refuse("base_url", reason))?;
        let callback_url = raw
            .callback_url
            .as_deref()
            .map(|u| parse_url(u, true))
            .transpose()
            .map_err(|reason| refuse("callback_url", reason))?;
        if let Some(url) = &callback_url {
            let chars = url.as_str().chars().count();
            if chars > MAX_CALLBACK_URL_CHARS {
                return Err(refuse(
                    "callback_url",
                    format!(
                        "is {chars} characters; Vonage takes a callback of at most {MAX_CALLBACK_URL_CHARS}"
                    ),
                ));
            }
        }
        let receipt_max_age = match (&raw.receipt_max_age, &signature) {
            (None, _) => DEFAULT_RECEIPT_MAX_AGE,
            (Some(text), Some(_)) => {
                crate::settings::parse_duration_in(text, MIN_RECEIPT_MAX_AGE, MAX_RECEIPT_MAX_AGE)
                    .map_err(|reason| refuse("receipt_max_age", reason))?
            }
            (Some(_), None) => {
                return Err(refuse(
                    "receipt_max_age",
                    "needs signature_secret_env: only signed receipts carry the timestamp it checks",
                ));
            }
        };
        Ok(VonageConfig {
            api_key: api_key.to_owned(),
            auth,
            signature,
            from,
            currency,
            base_url,
            callback_url,
            receipt_max_age,
        })
    }
}

/// A number (digits, a leading `+` dropped) or an alphanumeric sender id of
/// at most 11 characters.
fn check_from(text: &str) -> Result<String, String> {
    let text = text.trim();
    let digits = text.strip_prefix('+').unwrap_or(text);
    if !digits.is_empty() && digits.len() <= 15 && digits.chars().all(|c| c.is_ascii_digit()) {
        return Ok(digits.to_owned());
    }
    let id_chars = text.chars().count();
    if (1..=MAX_SENDER_ID_CHARS).contains(&id_chars)
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
        && text.chars().any(|c| c.is_ascii_alphabetic())
    {
        return Ok(text.to_owned());
    }
    Err(format!(
        "`{text}` is neither a number (\"+254711000001\") nor an alphanumeric sender id of at most {MAX_SENDER_ID_CHARS} characters"
    ))
}

/// An http(s) URL with a host and no credentials; a base URL also takes no
/// query or fragment (the callback may have a query).
fn parse_url(text: &str, callback: bool) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` is not an http(s) URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the text holds a credential.
        return Err("must not hold credentials".to_owned());
    }
    if !callback && (url.query().is_some() || url.fragment().is_some()) {
        return Err(format!(
            "`{text}` must not have a query or fragment; write only scheme, host and path"
        ));
    }
    Ok(url)
}
