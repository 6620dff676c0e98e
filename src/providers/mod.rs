//! Provider adapters, one folder each, behind [`Provider`].
//!
//! An adapter turns one [`OutgoingMessage`] into one provider call and
//! classifies the answer. Adapters never touch the database: the dispatcher
//! records what they return.

pub mod africastalking;
pub mod outbox;
pub mod smtp;
pub mod twilio;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::{CircuitBreakerConfig, Config, ProviderKind, RateLimit};
use crate::domain::DeliveryKind;
use crate::domain::email::EmailAddress;
use crate::domain::money::Money;
use crate::domain::phone::PhoneNumber;

/// One message, fully rendered, for one recipient.
#[derive(Clone)]
pub struct OutgoingMessage {
    /// The delivery id: file names, Message-IDs and idempotency keys derive from it.
    pub delivery_id: String,
    /// OTP or notification.
    pub kind: DeliveryKind,
    /// What to send, and to whom.
    pub content: Content,
}

/// The channel-specific content.
#[derive(Clone)]
pub enum Content {
    /// A text message.
    Sms {
        /// The recipient.
        to: PhoneNumber,
        /// The text (may hold an OTP code).
        text: String,
    },
    /// An email.
    Email {
        /// The recipient.
        to: EmailAddress,
        /// Subject line.
        subject: String,
        /// Text part.
        text: String,
        /// HTML part.
        html: Option<String>,
    },
}

impl fmt::Debug for OutgoingMessage {
    /// Bodies may hold an OTP code: Debug shows only who and what kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (channel, to) = match &self.content {
            Content::Sms { to, .. } => ("sms", to.as_str()),
            Content::Email { to, .. } => ("email", to.as_str()),
        };
        f.debug_struct("OutgoingMessage")
            .field("delivery_id", &self.delivery_id)
            .field("kind", &self.kind)
            .field("channel", &channel)
            .field("to", &to)
            .finish_non_exhaustive()
    }
}

/// The provider took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The provider's id for it.
    pub provider_message_id: String,
    /// The provider's status word at acceptance (`queued`, `Success`, …).
    pub provider_status: Option<String>,
    /// The cost, when the provider says it at once.
    pub cost: Option<Money>,
    /// Segments, when the provider counts them.
    pub segments: Option<u32>,
}

/// The provider did not take the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Will fail again (bad number, blacklisted, bad credentials): do not retry.
    #[error("permanent error{}: {message}", code_suffix(.code))]
    Permanent {
        /// The provider's error code.
        code: Option<String>,
        /// What went wrong (never a secret).
        message: String,
    },
    /// Worth retrying, perhaps on another provider.
    #[error("transient error{}: {message}", code_suffix(.code))]
    Transient {
        /// The provider's error code.
        code: Option<String>,
        /// What went wrong (never a secret).
        message: String,
    },
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(" {c}")).unwrap_or_default()
}

impl SendError {
    /// A transient error without a provider code.
    pub fn transient(message: impl Into<String>) -> Self {
        SendError::Transient {
            code: None,
            message: message.into(),
        }
    }

    /// A permanent error without a provider code.
    pub fn permanent(message: impl Into<String>) -> Self {
        SendError::Permanent {
            code: None,
            message: message.into(),
        }
    }
}

/// A way to send messages.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// Sends one message. Implementations classify every failure as
    /// permanent or transient and never panic on a provider's answer.
    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError>;

    /// The exact request `send` would make, with every secret masked, for
    /// `tuma providers test --dry-run`.
    fn dry_run(&self, message: &OutgoingMessage) -> String;
}

/// Opening a connection to a provider never takes longer than this.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP client an adapter uses: `timeout` bounds a whole request, a
/// connection opens within the smaller of `timeout` and 5 s, and redirects are
/// not followed (they would carry credentials to wherever they point).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    install_crypto();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The complete email for `message` from `from`: multipart text + HTML (or
/// text alone), with a Message-ID of `<delivery-id@from-domain>`, the same on
/// every attempt so a receiver can drop a retried duplicate. An SMS is
/// refused with `not_email`.
pub fn email_message(
    from: &lettre::message::Mailbox,
    message: &OutgoingMessage,
    not_email: &str,
) -> Result<lettre::Message, SendError> {
    use lettre::message::{Mailbox, MultiPart, header::ContentType};
    let Content::Email {
        to,
        subject,
        text,
        html,
    } = &message.content
    else {
        return Err(SendError::permanent(not_email));
    };
    let to: Mailbox = to
        .as_str()
        .parse()
        .map_err(|e| SendError::permanent(format!("recipient refused: {e}")))?;
    let builder = lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject.clone())
        .message_id(Some(message_id(from, &message.delivery_id)));
    match html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            text.clone(),
            html.clone(),
        )),
        None => builder.header(ContentType::TEXT_PLAIN).body(text.clone()),
    }
    .map_err(|e| SendError::permanent(format!("cannot build the email: {e}")))
}

/// The Message-ID of a delivery's email: `<delivery-id@from-domain>`.
pub fn message_id(from: &lettre::message::Mailbox, delivery_id: &str) -> String {
    format!("<{delivery_id}@{}>", from.email.domain())
}

/// Makes ring the process's TLS crypto provider (HTTP and SMTP adapters use
/// rustls). Safe to call more than once.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A provider with what the dispatcher needs around it.
#[derive(Debug, Clone)]
pub struct ProviderHandle {
    /// The provider's configured name.
    pub name: String,
    /// The adapter.
    pub provider: Arc<dyn Provider>,
    /// Shared by both lanes: one limiter per provider per process.
    pub limiter: Arc<DefaultDirectRateLimiter>,
    /// Hard limit on one call.
    pub timeout: Duration,
    /// Skips the provider for a while after consecutive transient failures.
    pub breaker: Arc<Breaker>,
}

/// A per-process circuit breaker: after `failures` consecutive transient
/// failures the provider is skipped for `cooldown`; then one call is let
/// through, and its outcome closes the circuit or opens it again.
#[derive(Debug)]
pub struct Breaker {
    config: CircuitBreakerConfig,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(BreakerState::default()),
        }
    }

    /// When the circuit is open: until when.
    pub fn open_until(&self) -> Option<Instant> {
        let state = self.state.lock().ok()?;
        state.open_until.filter(|until| *until > Instant::now())
    }

    /// The provider answered (accepted, or refused for good): close the circuit.
    pub fn record_answer(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = BreakerState::default();
        }
    }

    /// A transient failure; returns true when it opened the circuit.
    pub fn record_failure(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        state.failures += 1;
        if state.failures >= self.config.failures {
            state.failures = 0;
            state.open_until = Some(Instant::now() + self.config.cooldown);
            true
        } else {
            false
        }
    }
}

/// Every configured provider, by name.
#[derive(Debug, Clone)]
pub struct Providers {
    by_name: HashMap<String, ProviderHandle>,
    /// The Twilio adapters again, typed: price reconciliation fetches messages.
    twilio: HashMap<String, Arc<twilio::Twilio>>,
    breaker: CircuitBreakerConfig,
}

impl Default for Providers {
    fn default() -> Self {
        Providers {
            by_name: HashMap::new(),
            twilio: HashMap::new(),
            breaker: CircuitBreakerConfig {
                failures: 5,
                cooldown: Duration::from_secs(30),
            },
        }
    }
}

/// A provider that could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("provider `{name}`: {reason}")]
pub struct BuildError {
    /// Which provider.
    pub name: String,
    /// Why.
    pub reason: String,
}

impl Providers {
    /// Builds every configured provider.
    pub fn from_config(config: &Config) -> Result<Providers, BuildError> {
        install_crypto();
        let mut providers = Providers {
            breaker: config.circuit_breaker,
            ..Providers::default()
        };
        for p in &config.providers {
            let failed = |reason| BuildError {
                name: p.name.clone(),
                reason,
            };
            let mut typed_twilio = None;
            let adapter: Arc<dyn Provider> = match &p.kind {
                ProviderKind::Outbox(c) => {
                    Arc::new(outbox::Outbox::new(c.clone()).map_err(failed)?)
                }
                ProviderKind::AfricasTalking(c) => Arc::new(
                    africastalking::AfricasTalking::new(c.clone(), p.timeout).map_err(failed)?,
                ),
                ProviderKind::Twilio(c) => {
                    let adapter =
                        Arc::new(twilio::Twilio::new(c.clone(), p.timeout).map_err(failed)?);
                    typed_twilio = Some(adapter.clone());
                    adapter
                }
                ProviderKind::Smtp(c) => {
                    Arc::new(smtp::Smtp::new(c.clone(), p.timeout).map_err(failed)?)
                }
            };
            providers.insert(&p.name, adapter, p.rate_limit, p.timeout);
            if let Some(twilio) = typed_twilio {
                providers.twilio.insert(p.name.clone(), twilio);
            }
        }
        Ok(providers)
    }

    /// Adds or replaces a provider: how tests and the benchmark plug in their own.
    pub fn insert(
        &mut self,
        name: &str,
        provider: Arc<dyn Provider>,
        rate: RateLimit,
        timeout: Duration,
    ) {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        self.twilio.remove(name);
        self.by_name.insert(
            name.to_owned(),
            ProviderHandle {
                name: name.to_owned(),
                provider,
                limiter: Arc::new(RateLimiter::direct(quota)),
                timeout,
                breaker: Arc::new(Breaker::new(self.breaker)),
            },
        );
    }

    /// The provider named `name`.
    pub fn get(&self, name: &str) -> Option<&ProviderHandle> {
        self.by_name.get(name)
    }

    /// The configured Twilio adapter named `name` (unless a test replaced it).
    pub fn twilio(&self, name: &str) -> Option<&Arc<twilio::Twilio>> {
        self.twilio.get(name)
    }
}

/// A rate limit with no practical bound, for providers plugged in by tests.
pub fn unlimited() -> RateLimit {
    let big = NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MAX);
    RateLimit {
        per_second: big,
        burst: big,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_breaker_opens_after_consecutive_failures_and_closes_after_the_cooldown() {
        let b = Breaker::new(CircuitBreakerConfig {
            failures: 3,
            cooldown: Duration::from_secs(30),
        });
        assert!(!b.record_failure());
        b.record_answer();
        assert!(!b.record_failure());
        assert!(!b.record_failure());
        assert!(b.open_until().is_none());
        assert!(b.record_failure(), "the third failure in a row opens it");
        assert!(b.open_until().is_some());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.open_until().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.open_until().is_none(), "closed again after the cooldown");
    }
}
