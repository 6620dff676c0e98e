//! Provider adapters, one folder each, behind [`Provider`].
//!
//! An adapter turns one [`OutgoingMessage`] into one provider call and
//! classifies the answer. Adapters never touch the database: the dispatcher
//! records what they return.

pub mod africastalking;
pub mod capability;
mod email_header;
pub mod outbox;
pub mod registry;
pub mod smtp;
pub mod twilio;
pub mod vonage;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::domain::DeliveryKind;
use crate::domain::email::EmailAddress;
use crate::domain::money::Money;
use crate::domain::otp::OtpCode;
use crate::domain::phone::PhoneNumber;
use crate::domain::provider_text::{self, MAX_ID_CHARS, MAX_STATUS_CHARS, Secrets};
use crate::domain::unknown::UnknownCause;
use crate::settings::{CircuitBreakerConfig, RateLimit};
use capability::{MessageLookup, StatusFetch};
use registry::ProviderSetup;

/// One message, fully rendered, for one recipient.
#[derive(Clone)]
pub struct OutgoingMessage {
    /// The delivery id: file names, Message-IDs and idempotency keys derive from it.
    pub delivery_id: String,
    /// OTP or notification.
    pub kind: DeliveryKind,
    /// What to send, and to whom.
    pub content: Content,
    /// An OTP's code: every provider answer is scrubbed of it (never shown by Debug).
    pub code: Option<OtpCode>,
    /// How long an OTP is still worth delivering, measured as the call
    /// starts; adapters that can tell the carrier pass it on (Twilio's
    /// `ValidityPeriod`). None for notifications.
    pub valid_for: Option<Duration>,
}

impl OutgoingMessage {
    /// What must never come back out of a provider's answer about this
    /// message: the code and every text sent.
    pub fn secrets(&self) -> Secrets {
        match &self.content {
            Content::Sms { text, .. } => Secrets::new(self.code.as_ref(), [text.as_str()]),
            Content::Email {
                subject,
                text,
                html,
                ..
            } => Secrets::new(
                self.code.as_ref(),
                [subject.as_str(), text.as_str()]
                    .into_iter()
                    .chain(html.as_deref()),
            ),
        }
    }
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
            .field("valid_for", &self.valid_for)
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
    /// Every part's id, in order, when the provider split the message into
    /// several that each have their own id (the first is
    /// `provider_message_id`); empty when the message has one id.
    pub part_ids: Vec<String>,
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
    /// Worth retrying, perhaps on another provider: the request never
    /// reached the provider (refused, DNS, TLS handshake, a connection that
    /// broke before the request was written), or the provider said "later".
    #[error("transient error{}: {message}", code_suffix(.code))]
    Transient {
        /// The provider's error code.
        code: Option<String>,
        /// What went wrong (never a secret).
        message: String,
    },
    /// The request may have reached the provider, and no answer saying
    /// whether it took the message came: never retried as if refused (see
    /// `retry.after_unknown`).
    #[error("unknown outcome ({}): {message}", .cause.code())]
    Unknown {
        /// How tuma lost sight of the call.
        cause: UnknownCause,
        /// What happened (never a secret).
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

    /// An unknown outcome.
    pub fn unknown(cause: UnknownCause, message: impl Into<String>) -> Self {
        SendError::Unknown {
            cause,
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

    /// Whether a permanent error `send` returned (its code and message) says
    /// the recipient does not exist, blacklisted the sender or unsubscribed:
    /// the reason in words, from the adapter's own table. Such a recipient
    /// is suppressed (later sends refused at intake). None by default.
    fn recipient_gone(&self, code: Option<&str>, message: &str) -> Option<&'static str> {
        let _ = (code, message);
        None
    }
}

/// Every adapter, as the rest of tuma sees it: its answers are untrusted
/// text. Error messages and codes, message ids and status words are scrubbed
/// of the code and the message text, stripped of control characters and
/// capped ([`provider_text`]); a cost below zero or a segment count of 0 or
/// over 255 makes no sense and is dropped (the cost stays unknown), with a
/// warning. [`Providers::insert`] wraps every adapter in it.
pub struct Untrusted(Arc<dyn Provider>);

impl fmt::Debug for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The most parts a concatenated SMS can have.
const MAX_SEGMENTS: u32 = 255;

impl Untrusted {
    /// Wraps an adapter.
    pub fn wrap(provider: Arc<dyn Provider>) -> Untrusted {
        Untrusted(provider)
    }
}

/// An accepted answer with every field made sane.
fn sane_accepted(message: &OutgoingMessage, accepted: Accepted, secrets: &Secrets) -> Accepted {
    let id = provider_text::clean_id(&accepted.provider_message_id, secrets);
    if id != accepted.provider_message_id {
        tracing::warn!(
            delivery = %message.delivery_id,
            chars = accepted.provider_message_id.chars().count(),
            "the provider's message id is not plain text of at most {MAX_ID_CHARS} characters: recorded cleaned and cut"
        );
    }
    let cost = match accepted.cost {
        Some(cost) if cost.micros < 0 => {
            tracing::warn!(
                delivery = %message.delivery_id,
                cost = %cost,
                "the provider reported a negative cost, which makes no sense: the cost is recorded as unknown"
            );
            None
        }
        cost => cost,
    };
    let segments = match accepted.segments {
        Some(n) if n == 0 || n > MAX_SEGMENTS => {
            tracing::warn!(
                delivery = %message.delivery_id,
                segments = n,
                "the provider reported a segment count outside 1..={MAX_SEGMENTS}: ignored"
            );
            None
        }
        n => n,
    };
    // Each part id is cleaned like the message id; a count past the most
    // parts a message can have is cut there (the extra ids are not kept).
    let part_ids: Vec<String> = if accepted.part_ids.len() > 1 {
        if accepted.part_ids.len() > MAX_SEGMENTS as usize {
            tracing::warn!(
                delivery = %message.delivery_id,
                parts = accepted.part_ids.len(),
                "the provider reported more than {MAX_SEGMENTS} part ids: only the first {MAX_SEGMENTS} are kept"
            );
        }
        accepted
            .part_ids
            .iter()
            .take(MAX_SEGMENTS as usize)
            .map(|p| provider_text::clean_id(p, secrets))
            .collect()
    } else {
        Vec::new()
    };
    Accepted {
        provider_message_id: id,
        provider_status: accepted
            .provider_status
            .map(|s| provider_text::clean_to(&s, secrets, MAX_STATUS_CHARS))
            .filter(|s| !s.is_empty()),
        cost,
        segments,
        part_ids,
    }
}

impl SendError {
    /// The error with its code and message made safe ([`provider_text::clean`]).
    pub fn cleaned(self, secrets: &Secrets) -> SendError {
        sane_error(self, secrets)
    }
}

/// A refusal with its code and message made safe.
fn sane_error(error: SendError, secrets: &Secrets) -> SendError {
    let code = |c: Option<String>| {
        // Like an id: a provider's code (`21211`, `HTTP 500`) stays readable.
        c.map(|c| provider_text::clean_id(&c, secrets))
            .filter(|c| !c.is_empty())
    };
    match error {
        SendError::Permanent { code: c, message } => SendError::Permanent {
            code: code(c),
            message: provider_text::clean(&message, secrets),
        },
        SendError::Transient { code: c, message } => SendError::Transient {
            code: code(c),
            message: provider_text::clean(&message, secrets),
        },
        SendError::Unknown { cause, message } => SendError::Unknown {
            cause,
            message: provider_text::clean(&message, secrets),
        },
    }
}

#[async_trait]
impl Provider for Untrusted {
    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        let secrets = message.secrets();
        match self.0.send(message).await {
            Ok(accepted) => Ok(sane_accepted(message, accepted, &secrets)),
            Err(error) => Err(sane_error(error, &secrets)),
        }
    }

    fn dry_run(&self, message: &OutgoingMessage) -> String {
        self.0.dry_run(message)
    }

    fn recipient_gone(&self, code: Option<&str>, message: &str) -> Option<&'static str> {
        self.0.recipient_gone(code, message)
    }
}

/// What a failed HTTP call to a provider means: whether the request can
/// have reached it. A connection that was never made (refused, DNS, the TLS
/// handshake), a request hyper never started to write, or a write the peer
/// had already closed (broken pipe: a request the server never read whole,
/// so never acted on) is transient, safe to send again. Anything after the
/// request was written (a timeout, a reset or a close before the answer) is
/// unknown: the provider may have taken it. `host` names the provider in the
/// text; `text` is the error's chain, already masked by the adapter.
pub fn http_failure(
    error: &reqwest::Error,
    host: &str,
    text: &str,
    timeout: Duration,
) -> SendError {
    if error.is_connect() || never_written(error) {
        return SendError::transient(format!("cannot reach {host}: {text}"));
    }
    if error.is_timeout() {
        return SendError::unknown(
            UnknownCause::NoAnswer { timeout },
            format!(
                "no answer from {host} within {}",
                humantime::format_duration(timeout)
            ),
        );
    }
    SendError::unknown(
        UnknownCause::ConnectionLost,
        format!("the call to {host} broke: {text}"),
    )
}

/// Whether the error's chain says the request was never (wholly) written:
/// hyper canceled it before writing, or the write found the pipe closed.
fn never_written(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return true;
        }
        if let Some(h) = cause.downcast_ref::<hyper::Error>()
            && h.is_canceled()
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// How long a call is listened to after its provider's `timeout`, unless
/// the provider's `late_answer_grace` says otherwise.
pub const DEFAULT_LATE_ANSWER_GRACE: Duration = Duration::from_secs(120);

/// The most `late_answer_grace` may be.
pub const MAX_LATE_ANSWER_GRACE: Duration = Duration::from_secs(3600);

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
    use lettre::message::{Mailbox, MultiPart};
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
        .header(email_header::FoldedSubject::new(subject))
        .message_id(Some(message_id(from, &message.delivery_id)));
    match html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            text.clone(),
            html.clone(),
        )),
        // `singlepart` also writes `MIME-Version: 1.0` (RFC 2045), as `multipart` does.
        None => builder.singlepart(lettre::message::SinglePart::plain(text.clone())),
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
    /// The configured rate, which on Postgres is also kept across processes
    /// (`global_rate`).
    pub rate: RateLimit,
    /// How long the dispatcher waits for an answer: past it the attempt is
    /// `unknown` (the request was written) and the slot is freed.
    pub timeout: Duration,
    /// How long after `timeout` the call is still listened to in the
    /// background, so a late answer is recorded on its attempt.
    pub late_answer_grace: Duration,
    /// Skips the provider for a while after consecutive transient failures.
    pub breaker: Arc<Breaker>,
}

/// A per-process circuit breaker: after `failures` consecutive transient
/// failures the provider is skipped for `cooldown`; then one call (the
/// half-open probe) is let through while others keep waiting, and its outcome
/// closes the circuit or opens it again. Time is tuma's clock (`now`), so a
/// test's manual clock moves it.
#[derive(Debug)]
pub struct Breaker {
    config: CircuitBreakerConfig,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    /// Set while open or half-open: when the cooldown ends.
    open_until: Option<DateTime<Utc>>,
    /// Half-open: the probe in flight holds the circuit until then (a probe
    /// that never reports back, e.g. cut short, frees it by itself).
    probe_until: Option<DateTime<Utc>>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(BreakerState::default()),
        }
    }

    /// Whether a caller may call the provider at `now`: `None` when it may
    /// (closed, or this caller is the half-open probe, held for at most
    /// `probe_lease`); else until when it should wait.
    pub fn open_until(&self, now: DateTime<Utc>, probe_lease: Duration) -> Option<DateTime<Utc>> {
        let mut state = self.state.lock().ok()?;
        let until = state.open_until?;
        if until > now {
            return Some(until);
        }
        if let Some(probe) = state.probe_until
            && probe > now
        {
            return Some(probe);
        }
        state.probe_until =
            Some(now + chrono::Duration::from_std(probe_lease).unwrap_or(chrono::Duration::MAX));
        None
    }

    /// Until when the circuit is open at `now` (`None`: closed or its
    /// cooldown is over), without taking the half-open probe: for display.
    pub fn peek_open_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let state = self.state.lock().ok()?;
        state.open_until.filter(|until| *until > now)
    }

    /// Another process opened the circuit until `until`: this one skips the
    /// provider as long (an earlier end than its own is ignored).
    pub fn hold_open_until(&self, until: DateTime<Utc>) {
        if let Ok(mut state) = self.state.lock()
            && state.open_until.is_none_or(|own| own < until)
        {
            state.failures = 0;
            state.open_until = Some(until);
            state.probe_until = None;
        }
    }

    /// The provider answered (accepted, or refused for good): close the circuit.
    pub fn record_answer(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = BreakerState::default();
        }
    }

    /// A transient failure at `now`; returns true when it opened the circuit
    /// (a failed half-open probe opens it again at once).
    pub fn record_failure(&self, now: DateTime<Utc>) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let cooldown =
            chrono::Duration::from_std(self.config.cooldown).unwrap_or(chrono::Duration::MAX);
        match state.open_until {
            // Already open: a call from before it opened.
            Some(until) if until > now => false,
            Some(_) => {
                state.open_until = Some(now + cooldown);
                state.probe_until = None;
                true
            }
            None => {
                state.failures += 1;
                if state.failures >= self.config.failures {
                    state.failures = 0;
                    state.open_until = Some(now + cooldown);
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// Every configured provider, by name.
#[derive(Debug, Clone)]
pub struct Providers {
    by_name: HashMap<String, ProviderHandle>,
    /// The adapters that can fetch a sent message's status and price, by
    /// provider name: price reconciliation asks them.
    status: HashMap<String, Arc<dyn StatusFetch>>,
    /// The adapters that can say whether they took a message whose answer
    /// never came, by provider name.
    lookup: HashMap<String, Arc<dyn MessageLookup>>,
    breaker: CircuitBreakerConfig,
}

impl Default for Providers {
    fn default() -> Self {
        Providers {
            by_name: HashMap::new(),
            status: HashMap::new(),
            lookup: HashMap::new(),
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
    pub fn from_config(config: &impl ProviderSetup) -> Result<Providers, BuildError> {
        if config.secrets() == crate::settings::Secrets::Skip {
            // Placeholders must never reach a provider.
            return Err(BuildError {
                name: "(every provider)".into(),
                reason: "the configuration was loaded without its secrets".into(),
            });
        }
        install_crypto();
        let mut providers = Providers {
            breaker: config.circuit_breaker(),
            ..Providers::default()
        };
        for p in config.provider_configs() {
            // The call itself may run on after the dispatcher stops waiting.
            let adapter = p
                .kind
                .config()
                .build(p.timeout.saturating_add(p.late_answer_grace))
                .map_err(|reason| BuildError {
                    name: p.name.clone(),
                    reason,
                })?;
            providers.insert(&p.name, adapter.provider, p.rate_limit, p.timeout);
            if let Some(handle) = providers.by_name.get_mut(&p.name) {
                handle.late_answer_grace = p.late_answer_grace;
            }
            if let Some(status) = adapter.status {
                providers.status.insert(p.name.clone(), status);
            }
            if let Some(lookup) = adapter.lookup {
                providers.lookup.insert(p.name.clone(), lookup);
            }
        }
        Ok(providers)
    }

    /// Adds or replaces a provider: how tests and the benchmark plug in their
    /// own (listened to for [`DEFAULT_LATE_ANSWER_GRACE`] after `timeout`).
    pub fn insert(
        &mut self,
        name: &str,
        provider: Arc<dyn Provider>,
        rate: RateLimit,
        timeout: Duration,
    ) {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        self.status.remove(name);
        self.lookup.remove(name);
        self.by_name.insert(
            name.to_owned(),
            ProviderHandle {
                name: name.to_owned(),
                provider: Arc::new(Untrusted::wrap(provider)),
                limiter: Arc::new(RateLimiter::direct(quota)),
                rate,
                timeout,
                late_answer_grace: DEFAULT_LATE_ANSWER_GRACE,
                breaker: Arc::new(Breaker::new(self.breaker)),
            },
        );
    }

    /// The provider named `name`.
    pub fn get(&self, name: &str) -> Option<&ProviderHandle> {
        self.by_name.get(name)
    }

    /// Sets how long `name`'s calls are listened to after its timeout.
    pub fn set_late_answer_grace(&mut self, name: &str, grace: Duration) {
        if let Some(handle) = self.by_name.get_mut(name) {
            handle.late_answer_grace = grace;
        }
    }

    /// Gives `name` a way to say whether it took a message whose answer
    /// never came: how tests plug in a double's.
    pub fn insert_lookup(&mut self, name: &str, lookup: Arc<dyn MessageLookup>) {
        self.lookup.insert(name.to_owned(), lookup);
    }

    /// The longest any provider's calls are listened to after its timeout.
    pub fn longest_late_answer_grace(&self) -> Duration {
        self.by_name
            .values()
            .map(|h| h.late_answer_grace)
            .max()
            .unwrap_or_default()
    }

    /// The message lookup of the provider named `name`, if its kind has one.
    pub fn message_lookup(&self, name: &str) -> Option<&Arc<dyn MessageLookup>> {
        self.lookup.get(name)
    }

    /// The status fetch of the configured provider named `name`, if its kind
    /// has one (unless a test replaced the provider).
    pub fn status_fetch(&self, name: &str) -> Option<&Arc<dyn StatusFetch>> {
        self.status.get(name)
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

    #[test]
    fn a_breaker_opens_after_consecutive_failures_and_lets_one_probe_through_after_the_cooldown() {
        let b = Breaker::new(CircuitBreakerConfig {
            failures: 3,
            cooldown: Duration::from_secs(30),
        });
        let t0 = Utc::now();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let lease = Duration::from_secs(10);
        assert!(!b.record_failure(at(0)));
        b.record_answer();
        assert!(!b.record_failure(at(0)));
        assert!(!b.record_failure(at(0)));
        assert!(b.open_until(at(0), lease).is_none());
        assert!(
            b.record_failure(at(0)),
            "the third failure in a row opens it"
        );
        assert_eq!(b.open_until(at(29), lease), Some(at(30)));
        assert!(
            b.open_until(at(31), lease).is_none(),
            "the probe goes through"
        );
        assert_eq!(
            b.open_until(at(32), lease),
            Some(at(41)),
            "others wait for the probe"
        );
        assert!(b.record_failure(at(33)), "a failed probe opens it again");
        assert_eq!(b.open_until(at(34), lease), Some(at(63)));
        assert!(b.open_until(at(64), lease).is_none(), "the next probe");
        assert!(
            b.open_until(at(75), lease).is_none(),
            "a probe that never reported back frees the circuit after its lease"
        );
        b.record_answer();
        assert!(b.open_until(at(76), lease).is_none());
        assert!(
            b.open_until(at(76), lease).is_none(),
            "closed: everyone calls"
        );
    }

    /// An adapter that answers whatever it is told to.
    #[derive(Debug)]
    struct Says(Result<Accepted, SendError>);

    #[async_trait]
    impl Provider for Says {
        async fn send(&self, _: &OutgoingMessage) -> Result<Accepted, SendError> {
            self.0.clone()
        }
        fn dry_run(&self, _: &OutgoingMessage) -> String {
            String::new()
        }
    }

    fn otp() -> OutgoingMessage {
        OutgoingMessage {
            delivery_id: "01JDELIVERY".into(),
            kind: DeliveryKind::Otp,
            content: Content::Sms {
                to: PhoneNumber::parse_e164("+254711000001").expect("number"),
                text: "Your tuma code is 482913. It expires in 5 minutes.".into(),
            },
            code: Some(OtpCode::parse("482913").expect("code")),
            valid_for: Some(Duration::from_secs(300)),
        }
    }

    async fn through_the_wrapper(
        answer: Result<Accepted, SendError>,
    ) -> Result<Accepted, SendError> {
        let mut providers = Providers::default();
        providers.insert(
            "p",
            Arc::new(Says(answer)),
            unlimited(),
            Duration::from_secs(1),
        );
        let handle = providers.get("p").expect("inserted");
        handle.provider.send(&otp()).await
    }

    #[tokio::test]
    async fn every_adapter_s_errors_are_scrubbed_of_the_code_and_the_text_and_capped() {
        let echoed = format!(
            "refused \u{1b}[31m'Your tuma code is 482913. It expires in 5 minutes.' (code 482913) {}",
            "x".repeat(100_000)
        );
        let error = through_the_wrapper(Err(SendError::Transient {
            code: Some("E\n482913".into()),
            message: echoed,
        }))
        .await
        .expect_err("an error");
        let SendError::Transient { code, message } = error else {
            panic!("still transient");
        };
        assert_eq!(code.as_deref(), Some("E ******"));
        assert!(
            message.starts_with("refused [31m'[message text]' (code ******) xxx"),
            "{message}"
        );
        assert_eq!(message.chars().count(), provider_text::MAX_TEXT_CHARS + 1);
    }

    #[tokio::test]
    async fn answers_that_make_no_sense_are_not_recorded_as_facts() {
        let accepted = through_the_wrapper(Ok(Accepted {
            provider_message_id: format!("ATXid_{}", "7".repeat(200_000)),
            provider_status: Some("Success\u{0}".into()),
            cost: Some(Money::parse("-5", "KES").expect("money")),
            segments: Some(0),
            part_ids: (0..300)
                .map(|n| format!("part\u{1b}{n}-{}", "9".repeat(200)))
                .collect(),
        }))
        .await
        .expect("accepted");
        assert_eq!(
            accepted.provider_message_id.chars().count(),
            MAX_ID_CHARS + 1
        );
        assert_eq!(accepted.provider_status.as_deref(), Some("Success"));
        assert_eq!(accepted.cost, None, "a negative cost is unknown");
        assert_eq!(accepted.segments, None);
        assert_eq!(accepted.part_ids.len(), 255, "at most 255 parts are kept");
        assert!(
            accepted
                .part_ids
                .iter()
                .all(|p| p.chars().count() == MAX_ID_CHARS + 1 && !p.contains('\u{1b}')),
            "part ids are cleaned and capped like the message id"
        );
        let fine = through_the_wrapper(Ok(Accepted {
            provider_message_id: "SMa482913f0000".into(),
            provider_status: Some("queued".into()),
            cost: Some(Money::parse("0.8", "KES").expect("money")),
            segments: Some(2),
            part_ids: vec!["SMa482913f0000".into()],
        }))
        .await
        .expect("accepted");
        assert_eq!(
            fine.provider_message_id, "SMa482913f0000",
            "ids stay matchable"
        );
        assert_eq!(fine.cost.map(|c| c.micros), Some(800_000));
        assert_eq!(fine.segments, Some(2));
        assert!(fine.part_ids.is_empty(), "one id is no list of parts");
    }
}
