//! `providers.toml`: typed, validated once at start.
//!
//! Everything past [`Config::load`] takes parsed values: durations are
//! [`Duration`]s, regions are [`Region`]s, every route names a provider that
//! exists and every secret environment variable is set. A bad file gives one
//! [`ConfigError`] naming the file, the key and the reason.

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::Channel;
use crate::domain::money::Money;
use crate::domain::phone::Region;
use crate::providers::africastalking::AfricasTalkingConfig;
use crate::providers::outbox::OutboxConfig;
use crate::providers::smtp::SmtpConfig;
use crate::providers::twilio::TwilioConfig;

/// A configuration problem: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The key in that file, as a dotted path (`provider[0].dir`).
    pub key: String,
    /// What is wrong and, where possible, what to do.
    pub reason: String,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from; relative paths inside it resolve against its folder.
    pub file: PathBuf,
    /// Providers by declaration order.
    pub providers: Vec<ProviderConfig>,
    /// Routes, in declaration order (the router picks the longest prefix).
    pub routes: Vec<RouteConfig>,
    /// Durable retry policy.
    pub retry: RetryConfig,
    /// OTP defaults.
    pub otp: OtpConfig,
    /// Templates folder and the variables every template sees.
    pub templates: TemplatesConfig,
    /// Queue lanes, polling and crash recovery.
    pub worker: WorkerConfig,
    /// Per-segment prices, for estimates where a provider does not say.
    pub prices: Vec<PriceConfig>,
    /// When to stop trying a failing provider for a while.
    pub circuit_breaker: CircuitBreakerConfig,
    /// The HTTP API's limits and abuse guards.
    pub api: ApiConfig,
    /// Delivery receipts.
    pub receipts: ReceiptsConfig,
}

/// Delivery receipts (`[receipts]`).
#[derive(Debug, Clone, Copy)]
pub struct ReceiptsConfig {
    /// A delivery `sent` longer ago than this without a final receipt is shown
    /// as "no receipt" (never taken as delivered).
    pub no_receipt_after: Duration,
    /// A Twilio delivery still without an actual price this long after it was
    /// sent is fetched from Twilio (its price, segments and status).
    pub reconcile_after: Duration,
    /// After this long since sending, tuma stops asking for the price.
    pub give_up_after: Duration,
    /// How often the worker looks for deliveries to reconcile.
    pub reconcile_interval: Duration,
}

/// The HTTP API (`[api]`): limits and SMS pumping guards.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// At most this many OTPs to one recipient per window; `None` is no limit.
    pub otp_per_recipient: Option<RecipientLimit>,
    /// SMS only to numbers starting with one of these E.164 prefixes; empty
    /// allows every number a route carries.
    pub sms_prefix_allowlist: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may wait on the database before it gets a 503.
    pub request_timeout: Duration,
    /// `/metrics` asks for a key with the `ops` scope (else it is open).
    pub metrics_need_key: bool,
}

/// A count per sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientLimit {
    /// How many.
    pub max: u32,
    /// Per how long.
    pub per: Duration,
}

/// One `[[price]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceConfig {
    /// The provider it applies to.
    pub provider: String,
    /// An E.164 prefix such as `+1`; the longest match wins.
    pub prefix: String,
    /// Cost of one segment.
    pub per_segment: Money,
}

/// Circuit breaker settings, per provider.
#[derive(Debug, Clone, Copy)]
pub struct CircuitBreakerConfig {
    /// Consecutive transient failures that open the circuit.
    pub failures: u32,
    /// How long an open circuit skips the provider.
    pub cooldown: Duration,
}

/// One provider: the common keys plus what its kind needs.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Name referenced by routes.
    pub name: String,
    /// Requests per second allowed towards this provider (both lanes share it).
    pub rate_limit: RateLimit,
    /// Hard limit on one provider call.
    pub timeout: Duration,
    /// Kind-specific settings.
    pub kind: ProviderKind,
}

/// The kinds of provider tuma can talk to.
#[derive(Debug, Clone)]
pub enum ProviderKind {
    /// Writes each message as a file: the development default.
    Outbox(OutboxConfig),
    /// Africa's Talking SMS.
    AfricasTalking(AfricasTalkingConfig),
    /// Twilio Programmable Messaging (SMS).
    Twilio(TwilioConfig),
    /// An SMTP server (email).
    Smtp(SmtpConfig),
}

impl ProviderKind {
    /// The `kind` string as written in the file.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Outbox(_) => "outbox",
            ProviderKind::AfricasTalking(_) => "africastalking",
            ProviderKind::Twilio(_) => "twilio",
            ProviderKind::Smtp(_) => "smtp",
        }
    }

    /// The channels this kind can deliver.
    pub fn channels(&self) -> &'static [Channel] {
        match self {
            ProviderKind::Outbox(_) => &[Channel::Sms, Channel::Email],
            ProviderKind::AfricasTalking(_) | ProviderKind::Twilio(_) => &[Channel::Sms],
            ProviderKind::Smtp(_) => &[Channel::Email],
        }
    }
}

/// A GCRA rate limit.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: NonZeroU32,
    /// How many may go at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// A route: which providers carry a channel, optionally for one E.164 prefix.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The channel this route serves.
    pub channel: Channel,
    /// An E.164 prefix such as `+254`; `None` is the channel's default route.
    pub prefix: Option<String>,
    /// Primary first, then failover in order.
    pub providers: Vec<String>,
}

/// Retry policy: exponential backoff, capped, durable.
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub initial_delay: Duration,
    /// The delay never grows past this.
    pub max_delay: Duration,
    /// Randomise each delay (up to double) so retries do not stampede.
    pub jitter: bool,
}

/// OTP defaults.
#[derive(Debug, Clone, Copy)]
pub struct OtpConfig {
    /// How long a code is worth sending, unless the request says otherwise.
    pub ttl: Duration,
    /// Region for numbers written without `+country`.
    pub default_region: Region,
}

/// Templates.
#[derive(Debug, Clone)]
pub struct TemplatesConfig {
    /// Folder holding `<template>/<locale>/<part>` files.
    pub dir: PathBuf,
    /// The locale used when a send does not name one.
    pub default_locale: String,
    /// Variables every template sees (for example `app_name`).
    pub vars: BTreeMap<String, String>,
}

/// Queue and worker settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Concurrent OTP sends.
    pub otp_concurrency: usize,
    /// Concurrent notification sends.
    pub notification_concurrency: usize,
    /// How often idle workers look for due retries (new work wakes them at once).
    pub poll_interval: Duration,
    /// Worker heartbeat; a worker silent for two beats is taken as dead.
    pub heartbeat: Duration,
    /// How often the sweeper looks for deliveries that lost their job.
    pub sweep_interval: Duration,
    /// Longest wait for a provider's rate-limit slot before the send is put back.
    pub rate_limit_wait: Duration,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: "(file)".into(),
            reason: format!("cannot read it: {e}; pass --config or set TUMA_CONFIG"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| locate(text, s.start))
                .unwrap_or_else(|| "(document)".into());
            err(&key, e.message().to_owned())
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));

        let mut providers = Vec::new();
        let mut names = HashSet::new();
        for (i, p) in raw.provider.into_iter().enumerate() {
            let key = |k: &str| format!("provider[{i}].{k}");
            if p.name.trim().is_empty() {
                return Err(err(&key("name"), "must not be empty".into()));
            }
            if !names.insert(p.name.clone()) {
                return Err(err(
                    &key("name"),
                    format!("provider `{}` is declared twice", p.name),
                ));
            }
            let timeout = match &p.timeout {
                Some(t) => parse_duration(t).map_err(|r| err(&key("timeout"), r))?,
                None => Duration::from_secs(15),
            };
            let kind = match p.kind.as_str() {
                "outbox" => ProviderKind::Outbox(
                    OutboxConfig::from_table(p.rest, &base).map_err(|(k, r)| err(&key(&k), r))?,
                ),
                "africastalking" => ProviderKind::AfricasTalking(
                    AfricasTalkingConfig::from_table(p.rest, &base)
                        .map_err(|(k, r)| err(&key(&k), r))?,
                ),
                "twilio" => ProviderKind::Twilio(
                    TwilioConfig::from_table(p.rest, &base).map_err(|(k, r)| err(&key(&k), r))?,
                ),
                "smtp" => ProviderKind::Smtp(
                    SmtpConfig::from_table(p.rest, &base).map_err(|(k, r)| err(&key(&k), r))?,
                ),
                other => {
                    return Err(err(
                        &key("kind"),
                        format!(
                            "unknown provider kind `{other}` (expected one of: outbox, smtp, africastalking, twilio)"
                        ),
                    ));
                }
            };
            providers.push(ProviderConfig {
                name: p.name,
                rate_limit: p.rate_limit.unwrap_or_default(),
                timeout,
                kind,
            });
        }

        let mut routes = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            let channel: Channel = r.channel.parse().map_err(|e| err(&key("channel"), e))?;
            if let Some(prefix) = &r.prefix {
                if channel == Channel::Email {
                    return Err(err(
                        &key("prefix"),
                        "email routes take no phone prefix".into(),
                    ));
                }
                if !is_e164_prefix(prefix) {
                    return Err(err(
                        &key("prefix"),
                        format!("`{prefix}` is not an E.164 prefix such as \"+254\""),
                    ));
                }
            }
            if r.providers.is_empty() {
                return Err(err(&key("providers"), "name at least one provider".into()));
            }
            for name in &r.providers {
                let Some(p) = providers.iter().find(|p| &p.name == name) else {
                    return Err(err(
                        &key("providers"),
                        format!("no provider is named `{name}`"),
                    ));
                };
                if !p.kind.channels().contains(&channel) {
                    return Err(err(
                        &key("providers"),
                        format!(
                            "provider `{name}` ({}) cannot send {channel}",
                            p.kind.as_str()
                        ),
                    ));
                }
            }
            if routes
                .iter()
                .any(|o: &RouteConfig| o.channel == channel && o.prefix == r.prefix)
            {
                return Err(err(
                    &key("prefix"),
                    format!(
                        "a {channel} route for {} is declared twice",
                        r.prefix.as_deref().unwrap_or("the default")
                    ),
                ));
            }
            routes.push(RouteConfig {
                channel,
                prefix: r.prefix,
                providers: r.providers,
            });
        }

        let retry = {
            let r = raw.retry;
            let initial_delay =
                parse_duration(&r.initial_delay).map_err(|e| err("retry.initial_delay", e))?;
            let max_delay = parse_duration(&r.max_delay).map_err(|e| err("retry.max_delay", e))?;
            if r.max_attempts == 0 {
                return Err(err("retry.max_attempts", "must be at least 1".into()));
            }
            if max_delay < initial_delay {
                return Err(err(
                    "retry.max_delay",
                    "must not be shorter than retry.initial_delay".into(),
                ));
            }
            RetryConfig {
                max_attempts: r.max_attempts,
                initial_delay,
                max_delay,
                jitter: r.jitter,
            }
        };

        let otp = OtpConfig {
            ttl: parse_duration(&raw.otp.ttl).map_err(|e| err("otp.ttl", e))?,
            default_region: raw.otp.default_region.parse().map_err(
                |e: crate::domain::phone::PhoneError| err("otp.default_region", e.to_string()),
            )?,
        };
        if otp.ttl.is_zero() {
            return Err(err("otp.ttl", "must be longer than zero".into()));
        }

        let templates = TemplatesConfig {
            dir: base.join(&raw.templates.dir),
            default_locale: raw.templates.default_locale,
            vars: raw.templates.vars,
        };

        let w = raw.worker;
        let worker = WorkerConfig {
            otp_concurrency: positive(w.otp_concurrency)
                .map_err(|e| err("worker.otp_concurrency", e))?,
            notification_concurrency: positive(w.notification_concurrency)
                .map_err(|e| err("worker.notification_concurrency", e))?,
            poll_interval: parse_duration(&w.poll_interval)
                .map_err(|e| err("worker.poll_interval", e))?,
            heartbeat: parse_duration(&w.heartbeat).map_err(|e| err("worker.heartbeat", e))?,
            sweep_interval: parse_duration(&w.sweep_interval)
                .map_err(|e| err("worker.sweep_interval", e))?,
            rate_limit_wait: parse_duration(&w.rate_limit_wait)
                .map_err(|e| err("worker.rate_limit_wait", e))?,
        };
        if worker.heartbeat < Duration::from_secs(1) {
            return Err(err("worker.heartbeat", "must be at least 1s".into()));
        }
        if worker.poll_interval.is_zero() || worker.sweep_interval.is_zero() {
            return Err(err(
                "worker.poll_interval",
                "poll_interval and sweep_interval must be longer than zero".into(),
            ));
        }

        let mut prices = Vec::new();
        for (i, p) in raw.price.into_iter().enumerate() {
            let key = |k: &str| format!("price[{i}].{k}");
            if !providers.iter().any(|pr| pr.name == p.provider) {
                return Err(err(
                    &key("provider"),
                    format!("no provider is named `{}`", p.provider),
                ));
            }
            if !is_e164_prefix(&p.prefix) {
                return Err(err(
                    &key("prefix"),
                    format!("`{}` is not an E.164 prefix such as \"+1\"", p.prefix),
                ));
            }
            let per_segment = Money::parse(&p.per_segment, &p.currency).map_err(|e| {
                let k = if matches!(e, crate::domain::money::MoneyError::InvalidCurrency(_)) {
                    "currency"
                } else {
                    "per_segment"
                };
                err(&key(k), e.to_string())
            })?;
            if per_segment.micros < 0 {
                return Err(err(
                    &key("per_segment"),
                    "a price cannot be negative".into(),
                ));
            }
            prices.push(PriceConfig {
                provider: p.provider,
                prefix: p.prefix,
                per_segment,
            });
        }

        let circuit_breaker = CircuitBreakerConfig {
            failures: raw.circuit_breaker.failures,
            cooldown: parse_duration(&raw.circuit_breaker.cooldown)
                .map_err(|e| err("circuit_breaker.cooldown", e))?,
        };
        if circuit_breaker.failures == 0 {
            return Err(err("circuit_breaker.failures", "must be at least 1".into()));
        }

        for channel in [Channel::Sms, Channel::Email] {
            if !routes.iter().any(|r| r.channel == channel) {
                return Err(err(
                    "route",
                    format!(
                        "no route carries {channel}: add a [[route]] with channel = \"{channel}\""
                    ),
                ));
            }
        }

        let api = {
            let a = raw.api;
            let otp_per_recipient = match a.otp_per_recipient {
                None => None,
                Some(l) => {
                    let per =
                        parse_duration(&l.per).map_err(|e| err("api.otp_per_recipient.per", e))?;
                    if l.max == 0 {
                        return Err(err(
                            "api.otp_per_recipient.max",
                            "must be at least 1 (remove the key for no limit)".into(),
                        ));
                    }
                    if per.is_zero() {
                        return Err(err(
                            "api.otp_per_recipient.per",
                            "must be longer than zero".into(),
                        ));
                    }
                    Some(RecipientLimit { max: l.max, per })
                }
            };
            for (i, prefix) in a.sms_prefix_allowlist.iter().enumerate() {
                if !is_e164_prefix(prefix) {
                    return Err(err(
                        &format!("api.sms_prefix_allowlist[{i}]"),
                        format!("`{prefix}` is not an E.164 prefix such as \"+254\""),
                    ));
                }
            }
            if a.max_body_bytes < 256 {
                return Err(err("api.max_body_bytes", "must be at least 256".into()));
            }
            let request_timeout =
                parse_duration(&a.request_timeout).map_err(|e| err("api.request_timeout", e))?;
            if request_timeout.is_zero() {
                return Err(err(
                    "api.request_timeout",
                    "must be longer than zero".into(),
                ));
            }
            ApiConfig {
                otp_per_recipient,
                sms_prefix_allowlist: a.sms_prefix_allowlist,
                max_body_bytes: a.max_body_bytes,
                request_timeout,
                metrics_need_key: a.metrics_need_key,
            }
        };

        let rc = &raw.receipts;
        let receipts = ReceiptsConfig {
            no_receipt_after: parse_duration(&rc.no_receipt_after)
                .map_err(|e| err("receipts.no_receipt_after", e))?,
            reconcile_after: parse_duration(&rc.reconcile_after)
                .map_err(|e| err("receipts.reconcile_after", e))?,
            give_up_after: parse_duration(&rc.give_up_after)
                .map_err(|e| err("receipts.give_up_after", e))?,
            reconcile_interval: parse_duration(&rc.reconcile_interval)
                .map_err(|e| err("receipts.reconcile_interval", e))?,
        };
        for (key, value) in [
            ("receipts.no_receipt_after", receipts.no_receipt_after),
            ("receipts.reconcile_interval", receipts.reconcile_interval),
        ] {
            if value.is_zero() {
                return Err(err(key, "must be longer than zero".into()));
            }
        }
        if receipts.give_up_after <= receipts.reconcile_after {
            return Err(err(
                "receipts.give_up_after",
                "must be longer than receipts.reconcile_after".into(),
            ));
        }

        Ok(Config {
            file: path.to_owned(),
            providers,
            routes,
            retry,
            otp,
            templates,
            worker,
            prices,
            circuit_breaker,
            api,
            receipts,
        })
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The longest send a worker can be busy with: the slowest provider call plus
    /// the rate-limit wait and a margin for the database. A delivery left in
    /// `sending` for longer belongs to a worker that died.
    pub fn longest_send(&self) -> Duration {
        let slowest = self
            .providers
            .iter()
            .map(|p| p.timeout)
            .max()
            .unwrap_or_default();
        slowest + self.worker.rate_limit_wait + Duration::from_secs(5)
    }
}

/// Parses a duration such as `2s`, `500ms`, `10m` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. \"2s\", \"500ms\", \"10m\"")
    })
}

fn is_e164_prefix(prefix: &str) -> bool {
    let digits = prefix.strip_prefix('+').unwrap_or("");
    !digits.is_empty() && digits.len() <= 15 && digits.chars().all(|c| c.is_ascii_digit())
}

fn positive(n: usize) -> Result<usize, String> {
    if n == 0 {
        Err("must be at least 1".into())
    } else {
        Ok(n)
    }
}

/// Names the table key around a byte offset, for parse errors: `line 7 (provider[1])`.
fn locate(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.lines().count().max(1);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut header = None;
    for l in before.lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
            let n = counts.entry(name.to_owned()).or_default();
            header = Some(format!("{name}[{n}]"));
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            header = Some(name.to_owned());
        }
    }
    match header {
        Some(h) => format!("line {line} ({h})"),
        None => format!("line {line}"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    provider: Vec<RawProvider>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    otp: RawOtp,
    #[serde(default)]
    templates: RawTemplates,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    price: Vec<RawPrice>,
    #[serde(default)]
    circuit_breaker: RawCircuitBreaker,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    receipts: RawReceipts,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReceipts {
    no_receipt_after: String,
    reconcile_after: String,
    give_up_after: String,
    reconcile_interval: String,
}

impl Default for RawReceipts {
    fn default() -> Self {
        RawReceipts {
            no_receipt_after: "24h".into(),
            reconcile_after: "10m".into(),
            give_up_after: "48h".into(),
            reconcile_interval: "1m".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApi {
    otp_per_recipient: Option<RawLimit>,
    sms_prefix_allowlist: Vec<String>,
    max_body_bytes: usize,
    request_timeout: String,
    metrics_need_key: bool,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            otp_per_recipient: Some(RawLimit {
                max: 5,
                per: "15m".into(),
            }),
            sms_prefix_allowlist: Vec::new(),
            max_body_bytes: 16 * 1024,
            request_timeout: "5s".into(),
            metrics_need_key: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    max: u32,
    per: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    provider: String,
    prefix: String,
    per_segment: String,
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCircuitBreaker {
    failures: u32,
    cooldown: String,
}

impl Default for RawCircuitBreaker {
    fn default() -> Self {
        RawCircuitBreaker {
            failures: 5,
            cooldown: "30s".into(),
        }
    }
}

#[derive(Deserialize)]
struct RawProvider {
    name: String,
    kind: String,
    rate_limit: Option<RateLimit>,
    timeout: Option<String>,
    /// The kind-specific keys, checked by the kind's own config type.
    #[serde(flatten)]
    rest: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    channel: String,
    prefix: Option<String>,
    providers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetry {
    max_attempts: u32,
    initial_delay: String,
    max_delay: String,
    jitter: bool,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            max_attempts: 6,
            initial_delay: "2s".into(),
            max_delay: "10m".into(),
            jitter: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOtp {
    ttl: String,
    default_region: String,
}

impl Default for RawOtp {
    fn default() -> Self {
        RawOtp {
            ttl: "5m".into(),
            default_region: "KE".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTemplates {
    dir: String,
    default_locale: String,
    vars: BTreeMap<String, String>,
}

impl Default for RawTemplates {
    fn default() -> Self {
        RawTemplates {
            dir: "templates".into(),
            default_locale: "en".into(),
            vars: BTreeMap::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWorker {
    otp_concurrency: usize,
    notification_concurrency: usize,
    poll_interval: String,
    heartbeat: String,
    sweep_interval: String,
    rate_limit_wait: String,
}

impl Default for RawWorker {
    fn default() -> Self {
        RawWorker {
            otp_concurrency: 8,
            notification_concurrency: 64,
            poll_interval: "500ms".into(),
            heartbeat: "5s".into(),
            sweep_interval: "10s".into(),
            rate_limit_wait: "5s".into(),
        }
    }
}

/// Splits a provider kind's deserialization error into the key it is about
/// and the reason: serde says "unknown field `x`, expected …" or "missing
/// field `x`"; toml ends a type error with a line "in `x`". Anything else is
/// about the provider's table as a whole.
pub fn table_error(error: &toml::de::Error) -> (String, String) {
    let message = error.to_string();
    let message = message.trim_end();
    let quoted = |rest: &str| rest.split('`').next().map(str::to_owned);
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(key) = message
            .split_once(prefix)
            .and_then(|(_, rest)| quoted(rest))
        {
            return (key, message.to_owned());
        }
    }
    let mut lines = message.lines();
    let first = lines.next().unwrap_or_default().to_owned();
    match lines.find_map(|l| l.trim().strip_prefix("in `").and_then(quoted)) {
        Some(key) => (key, first),
        None => ("(provider)".to_owned(), message.to_owned()),
    }
}

/// Reads an environment variable named in the file; unset or empty is an error.
pub fn secret_from_env(var: &str) -> Result<secrecy::SecretString, String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(secrecy::SecretString::from(v)),
        _ => Err(format!("environment variable {var} is not set")),
    }
}

#[cfg(test)]
mod receipts_tests {
    use super::*;

    const BASE: &str = "[[provider]]\nname = \"o\"\nkind = \"outbox\"\ndir = \"outbox\"\n\n\
        [[route]]\nchannel = \"sms\"\nproviders = [\"o\"]\n\n\
        [[route]]\nchannel = \"email\"\nproviders = [\"o\"]\n\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}{text}"), Path::new("providers.toml"))
    }

    #[test]
    fn receipts_settings_have_defaults_and_are_checked() {
        let c = parse("").expect("defaults");
        assert_eq!(c.receipts.no_receipt_after, Duration::from_secs(24 * 3600));
        assert_eq!(c.receipts.reconcile_after, Duration::from_secs(600));
        assert_eq!(c.receipts.give_up_after, Duration::from_secs(48 * 3600));
        assert_eq!(c.receipts.reconcile_interval, Duration::from_secs(60));
        let c = parse("[receipts]\nno_receipt_after = \"2h\"\n").unwrap();
        assert_eq!(c.receipts.no_receipt_after, Duration::from_secs(7200));
        for (text, key) in [
            (
                "[receipts]\nno_receipt_after = \"soon\"\n",
                "receipts.no_receipt_after",
            ),
            (
                "[receipts]\nreconcile_interval = \"0s\"\n",
                "receipts.reconcile_interval",
            ),
            (
                "[receipts]\nreconcile_after = \"2h\"\ngive_up_after = \"1h\"\n",
                "receipts.give_up_after",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().key, key, "{text}");
        }
        assert!(parse("[receipts]\nnope = 1\n").is_err());
    }
}
