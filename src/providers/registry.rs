//! The one list of provider kinds.
//!
//! [`KINDS`] names every kind tuma can talk to; nothing else in tuma lists
//! them. A kind reads its own keys of a `[[provider]]` table into its config
//! ([`Kind::parse`]); that config says which channels the kind carries,
//! describes itself for `tuma check`, builds the adapter and offers the
//! capabilities the kind has ([`KindConfig`]). Adding a kind is one folder
//! under `src/providers/` and one line in [`KINDS`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::capability::{MessageLookup, ReceiptCapability, StatusFetch};
use super::{Provider, africastalking, outbox, smtp, twilio, vonage};
use crate::domain::Channel;
use crate::settings::{CircuitBreakerConfig, RateLimit, Secrets};

/// Every kind, in the order errors and `tuma check` list them.
pub const KINDS: &[Kind] = &[
    outbox::KIND,
    smtp::KIND,
    africastalking::KIND,
    twilio::KIND,
    vonage::KIND,
];

/// Reads a secret from the environment variable a `*_env` key names.
pub type ReadSecret<'a> = &'a dyn Fn(&str) -> Result<SecretString, String>;

/// A key of a provider's table and what is wrong with it.
pub type KeyError = (String, String);

/// How a kind reads its keys: the table, the config file's folder, the secret reader.
pub type ParseFn = fn(toml::Table, &Path, ReadSecret<'_>) -> Result<Arc<dyn KindConfig>, KeyError>;

/// One kind of provider.
pub struct Kind {
    /// `kind = "…"` in the file.
    pub name: &'static str,
    /// Reads the kind's own keys of a `[[provider]]` table (without `name`,
    /// `kind`, `rate_limit` and `timeout`); relative paths resolve against
    /// the folder given.
    pub parse: ParseFn,
}

/// The kind named `name`.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Every kind's name, comma-separated, for errors.
pub fn kind_names() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// A kind's parsed settings: what the rest of tuma may ask of a provider
/// without knowing its kind.
pub trait KindConfig: std::any::Any + fmt::Debug + Send + Sync {
    /// The `kind` string as written in the file.
    fn kind(&self) -> &'static str;

    /// The channels this kind can deliver.
    fn channels(&self) -> &'static [Channel];

    /// One line for `tuma check` (never a secret).
    fn describe(&self) -> String;

    /// Builds the adapter; `timeout` bounds one call (the provider's
    /// `timeout` plus its `late_answer_grace`: the dispatcher stops waiting
    /// at the first, the call itself ends at the second).
    fn build(&self, timeout: Duration) -> Result<Adapter, String>;

    /// Verifies and reads this kind's delivery receipts, if it sends any.
    fn receipts(&self) -> Option<&dyn ReceiptCapability> {
        None
    }
}

/// A built adapter and what it can do besides sending.
pub struct Adapter {
    /// Sends messages.
    pub provider: Arc<dyn Provider>,
    /// Fetches a sent message's final status and price, if the kind can.
    pub status: Option<Arc<dyn StatusFetch>>,
    /// Says whether it took a message whose answer never came, if the kind can.
    pub lookup: Option<Arc<dyn MessageLookup>>,
}

impl Adapter {
    /// An adapter that only sends.
    pub fn sends(provider: Arc<dyn Provider>) -> Adapter {
        Adapter {
            provider,
            status: None,
            lookup: None,
        }
    }
}

/// A provider's kind and its settings.
#[derive(Debug, Clone)]
pub struct ProviderKind(Arc<dyn KindConfig>);

impl ProviderKind {
    /// Wraps a kind's settings.
    pub fn new(config: Arc<dyn KindConfig>) -> ProviderKind {
        ProviderKind(config)
    }

    /// The `kind` string as written in the file.
    pub fn as_str(&self) -> &'static str {
        self.0.kind()
    }

    /// The channels this kind can deliver.
    pub fn channels(&self) -> &'static [Channel] {
        self.0.channels()
    }

    /// One line for `tuma check`.
    pub fn describe(&self) -> String {
        self.0.describe()
    }

    /// The kind's settings.
    pub fn config(&self) -> &dyn KindConfig {
        &*self.0
    }

    /// The kind's settings as their own type, when they are of type `T`.
    pub fn settings<T: KindConfig>(&self) -> Option<&T> {
        let config: &dyn KindConfig = &*self.0;
        let any: &dyn std::any::Any = config;
        any.downcast_ref::<T>()
    }
}

/// One provider: the common keys plus what its kind needs.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Name referenced by routes.
    pub name: String,
    /// Requests per second allowed towards this provider (both lanes share it).
    pub rate_limit: RateLimit,
    /// How long the dispatcher waits for an answer before the attempt is
    /// `unknown` and its slot freed.
    pub timeout: Duration,
    /// How long after `timeout` the call is still listened to in the
    /// background: a late answer is recorded on the same attempt.
    pub late_answer_grace: Duration,
    /// Kind-specific settings.
    pub kind: ProviderKind,
}

/// What building the providers needs from the configuration (which
/// implements it), so this module never imports the configuration.
pub trait ProviderSetup {
    /// The configured providers, in declaration order.
    fn provider_configs(&self) -> &[ProviderConfig];
    /// The circuit breaker every provider gets.
    fn circuit_breaker(&self) -> CircuitBreakerConfig;
    /// Whether the secrets were read (placeholders must never reach a provider).
    fn secrets(&self) -> Secrets;
}
