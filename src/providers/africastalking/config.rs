//! The `[[provider]]` keys of `kind = "africastalking"`.

use std::path::Path;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The live API, used unless `base_url` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.africastalking.com";

/// The sandbox API, the default when `username` is `sandbox`.
pub const SANDBOX_BASE_URL: &str = "https://api.sandbox.africastalking.com";

/// The shortest delivery-report URL secret accepted.
pub const MIN_CALLBACK_SECRET_LEN: usize = 24;

/// The username Africa's Talking gives every sandbox application.
const SANDBOX_USERNAME: &str = "sandbox";

/// Africa's Talking settings, parsed and checked.
#[derive(Debug, Clone)]
pub struct AfricasTalkingConfig {
    /// The application's username: sent in every request, and `sandbox`
    /// selects the sandbox API.
    pub username: String,
    /// The API key, read from the `api_key_env` variable at load (Debug
    /// prints `[REDACTED]`).
    pub api_key: SecretString,
    /// The environment variable the key came from, so messages can name it.
    pub api_key_env: String,
    /// The sender ID or shortcode sent as `from`; Africa's Talking's default
    /// sender when absent.
    pub sender_id: Option<String>,
    /// Where the API lives (tests point it at a local double).
    pub base_url: Url,
    /// Sends `enqueue=1`, which asks Africa's Talking to queue bulk sends.
    pub enqueue: bool,
    /// The secret path segment of this provider's delivery-report URL
    /// (`/v1/callbacks/africastalking/{secret}`), read from `callback_secret_env`;
    /// without it reports for this provider are refused.
    pub callback_secret: Option<SecretString>,
}

/// The keys as written, before checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAfricasTalking {
    username: String,
    api_key_env: String,
    sender_id: Option<String>,
    base_url: Option<String>,
    #[serde(default)]
    enqueue: bool,
    callback_secret_env: Option<String>,
}

impl AfricasTalkingConfig {
    /// Reads the Africa's Talking keys of a `[[provider]]` table (without
    /// `name`, `kind`, `rate_limit` and `timeout`) and the API key from the
    /// environment; errors name the key and the reason.
    pub fn from_table(
        table: toml::Table,
        base: &Path,
    ) -> Result<AfricasTalkingConfig, (String, String)> {
        Self::from_table_with(table, base, crate::settings::secret_from_env)
    }

    /// [`Self::from_table`] with the environment lookup passed in, so tests
    /// need not change the process environment.
    pub(crate) fn from_table_with(
        table: toml::Table,
        _base: &Path,
        read_secret: impl Fn(&str) -> Result<SecretString, String>,
    ) -> Result<AfricasTalkingConfig, (String, String)> {
        let raw =
            RawAfricasTalking::deserialize(table).map_err(|e| crate::settings::table_error(&e))?;
        let refuse = |key: &str, reason: String| (key.to_owned(), reason);

        if raw.username.trim().is_empty() {
            return Err(refuse(
                "username",
                "must be your Africa's Talking username (`sandbox` for the sandbox)".into(),
            ));
        }
        if raw.username.trim() != raw.username {
            return Err(refuse(
                "username",
                format!("`{}` has spaces around it", raw.username),
            ));
        }
        let var = raw.api_key_env.trim();
        if var.is_empty() {
            return Err(refuse(
                "api_key_env",
                "must name the environment variable that holds the API key, e.g. \"AT_API_KEY\""
                    .into(),
            ));
        }
        let api_key = read_secret(var).map_err(|reason| refuse("api_key_env", reason))?;
        if let Some(sender) = &raw.sender_id
            && sender.trim().is_empty()
        {
            return Err(refuse(
                "sender_id",
                "must not be empty; leave it out to use Africa's Talking's default sender".into(),
            ));
        }
        let base_url = match &raw.base_url {
            Some(text) => parse_base_url(text).map_err(|reason| refuse("base_url", reason))?,
            None if raw.username == SANDBOX_USERNAME => {
                parse_base_url(SANDBOX_BASE_URL).map_err(|reason| refuse("base_url", reason))?
            }
            None => {
                parse_base_url(DEFAULT_BASE_URL).map_err(|reason| refuse("base_url", reason))?
            }
        };
        let callback_secret = match raw.callback_secret_env.as_deref().map(str::trim) {
            None => None,
            Some("") => {
                return Err(refuse(
                    "callback_secret_env",
                    "must name the environment variable that holds the delivery-report URL secret"
                        .into(),
                ));
            }
            Some(var) => {
                let secret =
                    read_secret(var).map_err(|reason| refuse("callback_secret_env", reason))?;
                if secret.expose_secret().len() < MIN_CALLBACK_SECRET_LEN {
                    return Err(refuse(
                        "callback_secret_env",
                        format!(
                            "the secret in {var} is too short: use at least {MIN_CALLBACK_SECRET_LEN} random characters"
                        ),
                    ));
                }
                Some(secret)
            }
        };
        Ok(AfricasTalkingConfig {
            callback_secret,
            username: raw.username,
            api_key,
            api_key_env: var.to_owned(),
            sender_id: raw.sender_id,
            base_url,
            enqueue: raw.enqueue,
        })
    }
}

/// An http(s) URL with a host and nothing that would leak or be dropped
/// (credentials, query, fragment).
fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim())
        .map_err(|e| format!("`{text}` is not a URL ({e}); write e.g. \"{DEFAULT_BASE_URL}\""))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{text}` is not an http(s) URL; write e.g. \"{DEFAULT_BASE_URL}\""
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the text holds a credential.
        return Err("must not hold credentials; the API key comes from api_key_env".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{text}` must not have a query or fragment; write only scheme, host and path"
        ));
    }
    Ok(url)
}
