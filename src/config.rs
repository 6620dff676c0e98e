//! `providers.toml`: typed, validated once at start.
//!
//! Everything past [`Config::load`] takes parsed values: durations are
//! [`Duration`]s, regions are [`Region`]s, every route names a provider that
//! exists and every secret environment variable is set. A bad file gives one
//! [`ConfigError`] naming the file, the key and the reason.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::Channel;
use crate::domain::money::Money;
use crate::domain::phone::Region;
pub use crate::providers::registry::{ProviderConfig, ProviderKind};
use crate::settings::UNREAD_SECRET;
pub use crate::settings::{
    CircuitBreakerConfig, RateLimit, Secrets, count_in, parse_duration, parse_duration_in,
    secret_from_env, table_error,
};

mod api;
mod circuit_breaker;
mod database;
mod otp;
mod prices;
mod providers;
mod receipts;
mod retry;
mod routes;
mod worker;

/// What every section's check needs: the file (for errors), its folder (for
/// relative paths) and whether secrets are read.
struct Cx<'a> {
    path: &'a Path,
    base: PathBuf,
    secrets: Secrets,
}

impl<'a> Cx<'a> {
    fn new(path: &'a Path, secrets: Secrets) -> Cx<'a> {
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Cx {
            path,
            base,
            secrets,
        }
    }

    /// An error about `key` in this file.
    fn err(&self, key: &str, reason: String) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            key: key.to_owned(),
            reason,
        }
    }

    /// Reads a secret named in the file, or a placeholder when secrets are skipped.
    fn read_secret(&self, var: &str) -> Result<secrecy::SecretString, String> {
        match self.secrets {
            Secrets::Read => secret_from_env(var),
            Secrets::Skip => Ok(secrecy::SecretString::from(UNREAD_SECRET)),
        }
    }
}

mod webhooks;
pub use webhooks::WebhooksConfig;
mod spend;
pub use spend::{BudgetConfig, CountryLimit, SpendConfig};

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
    /// Status webhooks.
    pub webhooks: WebhooksConfig,
    /// Budgets (`[[budget]]`), the spend guard's limits.
    pub spend: SpendConfig,
    /// The database pool.
    pub database: DatabaseConfig,
    /// Whether provider secrets were read from the environment. Without them
    /// (commands that never talk to a provider) every secret holds a
    /// placeholder, and [`crate::providers::Providers`] must not be built.
    pub secrets: Secrets,
}

/// Delivery receipts (`[receipts]`).
#[derive(Debug, Clone, Copy)]
pub struct ReceiptsConfig {
    /// A delivery `sent` longer ago than this without a final receipt is shown
    /// as "no receipt" (never taken as delivered).
    pub no_receipt_after: Duration,
    /// A delivery of a provider that says its price only later, still without
    /// an actual price this long after it was sent, is fetched from the
    /// provider (its price, segments and status).
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
    /// Send notifications to premium-rate and shared-cost numbers too; off,
    /// they are refused (`notification.number_type`), whoever sends.
    pub allow_premium_rate: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may wait on the database before it gets a 503.
    pub request_timeout: Duration,
    /// `/metrics` asks for a key with the `ops` scope (else it is open).
    pub metrics_need_key: bool,
    /// Longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body.
    pub body_read_timeout: Duration,
    /// A keep-alive connection idle this long is closed.
    pub idle_timeout: Duration,
    /// At most this many open client connections.
    pub max_connections: usize,
    /// Largest request line plus headers accepted, in bytes (431 past it).
    pub max_header_bytes: usize,
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
    /// A safety cap on provider calls per delivery, the first included; the
    /// time budget (`give_up_after`, or an OTP's TTL) is what normally ends
    /// retrying.
    pub max_attempts: u32,
    /// How long a notification is retried, from its first attempt.
    pub give_up_after: Duration,
    /// Delay after the first failed attempt.
    pub initial_delay: Duration,
    /// The delay never grows past this.
    pub max_delay: Duration,
    /// Randomise each delay (up to double) so retries do not stampede.
    pub jitter: bool,
    /// What follows an OTP attempt whose outcome is unknown.
    pub after_unknown_otp: crate::domain::unknown::AfterUnknown,
    /// What follows a notification attempt whose outcome is unknown.
    pub after_unknown_notification: crate::domain::unknown::AfterUnknown,
}

impl RetryConfig {
    /// What follows an attempt of a `kind` delivery whose outcome is unknown.
    pub fn after_unknown(
        &self,
        kind: crate::domain::DeliveryKind,
    ) -> crate::domain::unknown::AfterUnknown {
        match kind {
            crate::domain::DeliveryKind::Otp => self.after_unknown_otp,
            crate::domain::DeliveryKind::Notification => self.after_unknown_notification,
        }
    }
}

/// OTP defaults.
#[derive(Debug, Clone)]
pub struct OtpConfig {
    /// How long a code is worth sending, unless the request says otherwise.
    pub ttl: Duration,
    /// Region for numbers written without `+country`.
    pub default_region: Region,
    /// Send OTPs to fixed lines too (some countries deliver SMS to them);
    /// off, an OTP goes only to mobile numbers.
    pub allow_fixed_line: bool,
    /// Send OTPs to satellite and international-network numbers too (+870,
    /// +881, +882, +883: revenue-share fraud's favourites); off, refused.
    pub allow_satellite: bool,
    /// The variable holding the key codes are sealed with at rest; without
    /// it, SQLite uses a key file beside the database (see `secrets`).
    pub key_env: Option<String>,
    /// The variable holding the previous key: codes sealed with it still open.
    pub previous_key_env: Option<String>,
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

/// The database pool (`[database]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// The most connections one process opens to the database; `None` is
    /// each backend's default (see [`DatabaseConfig::pool_size`]).
    pub max_connections: Option<u32>,
}

/// The connections of a SQLite pool unless `[database] max_connections`
/// says otherwise: SQLite runs one writer at a time, so more only add
/// waiting for the write lock, and too few leave the batch tasks and the
/// lanes' claims waiting for a connection (four measured best; see
/// benches/README.md).
pub const SQLITE_CONNECTIONS: u32 = 4;

impl DatabaseConfig {
    /// The pool size of a process on the database at `url`:
    /// `max_connections` when set; else, on SQLite, [`SQLITE_CONNECTIONS`];
    /// on Postgres a connection per worker slot up to 16, and six for the
    /// queue's fetches and acks, the LISTEN, housekeeping and the API (22
    /// with the default `[worker]`). It need not grow with more slots: their
    /// statements go through the batch tasks (`store/batch.rs`), each of
    /// which uses one connection at a time.
    pub fn pool_size(&self, worker: &WorkerConfig, url: &str) -> u32 {
        if let Some(n) = self.max_connections {
            return n;
        }
        if url.starts_with("sqlite:") {
            return SQLITE_CONNECTIONS;
        }
        let slots = worker.otp_concurrency + worker.notification_concurrency;
        u32::try_from(slots.min(16) + 6).unwrap_or(u32::MAX)
    }
}

/// Queue and worker settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Concurrent OTP sends.
    pub otp_concurrency: usize,
    /// Concurrent notification sends.
    pub notification_concurrency: usize,
    /// How often idle workers look for work another SQLite process wrote
    /// and claims whose lease ran out (new work, and retries coming due,
    /// wake them at once).
    pub poll_interval: Duration,
    /// How often housekeeping runs (settling sends whose lease ran out,
    /// held deliveries, suppressions, Idempotency-Keys).
    pub sweep_interval: Duration,
    /// Longest wait for a provider's rate-limit slot before the send is put back.
    pub rate_limit_wait: Duration,
}

impl Config {
    /// Reads and validates a configuration file, with every provider secret.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, Secrets::Read)
    }

    /// Reads and validates a configuration file, reading secrets or not.
    pub fn load_with(path: &Path, secrets: Secrets) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: "(file)".into(),
            reason: format!("cannot read it: {e}; pass --config or set TUMA_CONFIG"),
        })?;
        let config = Self::parse_with(&text, path, secrets)?;
        // Checked here rather than when templates load, so a wrong folder is
        // refused before any command creates a database.
        if !config.templates.dir.is_dir() {
            return Err(ConfigError {
                file: path.to_owned(),
                key: "templates.dir".into(),
                reason: format!(
                    "the folder {} does not exist (relative paths resolve against the config file's folder)",
                    config.templates.dir.display()
                ),
            });
        }
        Ok(config)
    }

    /// Parses configuration text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_with(text, path, Secrets::Read)
    }

    /// [`Config::parse`], reading provider secrets or not.
    pub fn parse_with(text: &str, path: &Path, secrets: Secrets) -> Result<Config, ConfigError> {
        let cx = Cx::new(path, secrets);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| locate(text, s.start))
                .unwrap_or_else(|| "(document)".into());
            cx.err(&key, e.message().to_owned())
        })?;
        // One check per section, in this order (the first error wins).
        let providers = providers::check(raw.provider, &cx)?;
        let routes = routes::check(raw.route, &providers, &cx)?;
        let retry = retry::check(raw.retry, &cx)?;
        let otp = otp::check(raw.otp, &cx)?;
        let templates = TemplatesConfig {
            dir: cx.base.join(&raw.templates.dir),
            default_locale: raw.templates.default_locale,
            vars: raw.templates.vars,
        };
        let worker = worker::check(raw.worker, &cx)?;
        let prices = prices::check(raw.price, &providers, &cx)?;
        let circuit_breaker = circuit_breaker::check(raw.circuit_breaker, &cx)?;
        routes::check_every_channel(&routes, &cx)?;
        let api = api::check(raw.api, &cx)?;
        let receipts = receipts::check(raw.receipts, &cx)?;
        let database = database::check(raw.database, &cx)?;

        let webhooks = webhooks::parse(raw.webhooks).map_err(|(k, r)| cx.err(&k, r))?;
        let spend = spend::parse(
            raw.budget,
            raw.suppression,
            spend::RawPumping {
                country_limit: raw.country_limit,
                range_burst: raw.range_burst,
            },
        )
        .map_err(|(k, r)| cx.err(&k, r))?;
        Ok(Config {
            webhooks,
            spend,
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
            database,
            secrets,
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

impl crate::providers::registry::ProviderSetup for Config {
    fn provider_configs(&self) -> &[ProviderConfig] {
        &self.providers
    }

    fn circuit_breaker(&self) -> CircuitBreakerConfig {
        self.circuit_breaker
    }

    fn secrets(&self) -> Secrets {
        self.secrets
    }
}

/// `retry.max_attempts` at most: a cap, not a schedule.
const MAX_ATTEMPTS_CAP: u32 = 10_000;
/// `retry.give_up_after`'s range.
const GIVE_UP_AFTER_MIN: Duration = Duration::from_secs(60);
const GIVE_UP_AFTER_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Seconds as a [`Duration`], for the range constants below.
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Milliseconds as a [`Duration`].
const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One hour, one day.
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

fn is_e164_prefix(prefix: &str) -> bool {
    let digits = prefix.strip_prefix('+').unwrap_or("");
    !digits.is_empty() && digits.len() <= 15 && digits.chars().all(|c| c.is_ascii_digit())
}

/// The largest `rate_limit.per_second` and `rate_limit.burst`.
const MAX_RATE: u32 = 1_000_000;

/// The most concurrent sends per lane.
const MAX_CONCURRENCY: usize = 1024;

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
    webhooks: Option<toml::Value>,
    #[serde(default)]
    budget: Vec<spend::RawBudget>,
    #[serde(default)]
    suppression: spend::RawSuppression,
    #[serde(default)]
    country_limit: Vec<spend::RawCountryLimit>,
    #[serde(default)]
    range_burst: spend::RawRangeBurst,
    #[serde(default)]
    database: RawDatabase,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    max_connections: Option<u32>,
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
    /// A `{ max, per }` table, or `"off"`.
    otp_per_recipient: toml::Value,
    sms_prefix_allowlist: Vec<String>,
    allow_premium_rate: bool,
    max_body_bytes: usize,
    request_timeout: String,
    metrics_need_key: bool,
    header_read_timeout: String,
    body_read_timeout: String,
    idle_timeout: String,
    max_connections: usize,
    max_header_bytes: usize,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            otp_per_recipient: toml::Value::Table(toml::Table::from_iter([
                ("max".to_owned(), toml::Value::Integer(5)),
                ("per".to_owned(), toml::Value::String("15m".into())),
            ])),
            sms_prefix_allowlist: Vec::new(),
            allow_premium_rate: false,
            max_body_bytes: 16 * 1024,
            request_timeout: "5s".into(),
            metrics_need_key: false,
            header_read_timeout: "10s".into(),
            body_read_timeout: "30s".into(),
            idle_timeout: "60s".into(),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
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
    late_answer_grace: Option<String>,
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
    give_up_after: String,
    initial_delay: String,
    max_delay: String,
    jitter: bool,
    after_unknown: RawAfterUnknown,
}

/// `after_unknown = "hold"` (both kinds) or `{ otp = "…", notification = "…" }`.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum RawAfterUnknown {
    #[default]
    Defaults,
    Both(String),
    PerKind(RawAfterUnknownPerKind),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAfterUnknownPerKind {
    otp: Option<String>,
    notification: Option<String>,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            max_attempts: 200,
            give_up_after: "24h".into(),
            initial_delay: "2s".into(),
            max_delay: "10m".into(),
            jitter: true,
            after_unknown: RawAfterUnknown::Defaults,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOtp {
    ttl: String,
    default_region: String,
    allow_fixed_line: bool,
    allow_satellite: bool,
    key_env: Option<String>,
    previous_key_env: Option<String>,
}

impl Default for RawOtp {
    fn default() -> Self {
        RawOtp {
            ttl: "5m".into(),
            default_region: "KE".into(),
            allow_fixed_line: false,
            allow_satellite: false,
            key_env: None,
            previous_key_env: None,
        }
    }
}

/// An environment variable's name as written in the file: letters, digits
/// and `_`, not starting with a digit.
fn env_name(name: Option<String>) -> Result<Option<String>, String> {
    match name {
        None => Ok(None),
        Some(n)
            if !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Ok(Some(n))
        }
        Some(n) => Err(format!(
            "`{n}` is not an environment variable name (letters, digits and _, \
             not starting with a digit)"
        )),
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
    /// Read by tumas whose workers sent heartbeats; leases replaced them.
    /// Still accepted (and range-checked) so such a file loads unchanged.
    heartbeat: Option<String>,
    sweep_interval: String,
    rate_limit_wait: String,
}

impl Default for RawWorker {
    fn default() -> Self {
        RawWorker {
            otp_concurrency: 8,
            notification_concurrency: 64,
            poll_interval: "500ms".into(),
            heartbeat: None,
            sweep_interval: "10s".into(),
            rate_limit_wait: "5s".into(),
        }
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

#[cfg(test)]
mod range_tests {
    use super::*;

    const BASE: &str = "[[provider]]\nname = \"o\"\nkind = \"outbox\"\ndir = \"outbox\"\n\
        KEYS\n\
        [[route]]\nchannel = \"sms\"\nproviders = [\"o\"]\n\n\
        [[route]]\nchannel = \"email\"\nproviders = [\"o\"]\n\n";

    /// `provider` goes into the provider's table, `rest` after the routes.
    fn parse(provider: &str, rest: &str) -> Result<Config, ConfigError> {
        let text = format!("{}{rest}", BASE.replace("KEYS", provider));
        Config::parse(&text, Path::new("providers.toml"))
    }

    #[test]
    fn every_duration_and_count_outside_its_range_is_refused_naming_the_key() {
        for (provider, rest, key, reason) in [
            (
                "timeout = \"0s\"",
                "",
                "provider[o].timeout",
                "0s is below the minimum 100ms",
            ),
            (
                "timeout = \"100000000000h\"",
                "",
                "provider[o].timeout",
                "above the maximum",
            ),
            (
                "latency = \"2h\"",
                "",
                "provider[o].latency",
                "above the maximum 1m",
            ),
            (
                "rate_limit = { per_second = 2000000, burst = 1 }",
                "",
                "provider[o].rate_limit.per_second",
                "above the maximum",
            ),
            (
                "rate_limit = { per_second = 1, burst = 4000000000 }",
                "",
                "provider[o].rate_limit.burst",
                "above the maximum",
            ),
            (
                "",
                "[retry]\ninitial_delay = \"100000000000h\"\n",
                "retry.initial_delay",
                "above the maximum",
            ),
            (
                "",
                "[retry]\nmax_delay = \"100000000000h\"\n",
                "retry.max_delay",
                "above the maximum",
            ),
            (
                "",
                "[retry]\ninitial_delay = \"1m\"\nmax_delay = \"10s\"\n",
                "retry.max_delay",
                "initial_delay",
            ),
            (
                "",
                "[retry]\nmax_attempts = 0\n",
                "retry.max_attempts",
                "below the minimum 1",
            ),
            (
                "",
                "[retry]\nmax_attempts = 100000\n",
                "retry.max_attempts",
                "above the maximum",
            ),
            (
                "",
                "[otp]\nttl = \"0s\"\n",
                "otp.ttl",
                "below the minimum 30s",
            ),
            (
                "",
                "[otp]\nttl = \"400d\"\n",
                "otp.ttl",
                "above the maximum",
            ),
            (
                "",
                "[worker]\notp_concurrency = 0\n",
                "worker.otp_concurrency",
                "below the minimum 1",
            ),
            (
                "",
                "[worker]\nnotification_concurrency = 10000000\n",
                "worker.notification_concurrency",
                "above the maximum",
            ),
            (
                "",
                "[worker]\npoll_interval = \"0s\"\n",
                "worker.poll_interval",
                "below the minimum",
            ),
            (
                "",
                "[worker]\nheartbeat = \"100ms\"\n",
                "worker.heartbeat",
                "below the minimum 1s",
            ),
            (
                "",
                "[worker]\nsweep_interval = \"0s\"\n",
                "worker.sweep_interval",
                "below the minimum",
            ),
            (
                "",
                "[worker]\nrate_limit_wait = \"100000000000h\"\n",
                "worker.rate_limit_wait",
                "above the maximum",
            ),
            (
                "",
                "[circuit_breaker]\nfailures = 0\n",
                "circuit_breaker.failures",
                "below the minimum 1",
            ),
            (
                "",
                "[circuit_breaker]\ncooldown = \"100000000000h\"\n",
                "circuit_breaker.cooldown",
                "above the maximum",
            ),
            (
                "",
                "[api]\nrequest_timeout = \"0s\"\n",
                "api.request_timeout",
                "below the minimum",
            ),
            (
                "",
                "[api]\nmax_body_bytes = 100000000000\n",
                "api.max_body_bytes",
                "above the maximum",
            ),
            (
                "",
                "[api]\notp_per_recipient = { max = 5, per = \"100000000000h\" }\n",
                "api.otp_per_recipient.per",
                "above the maximum",
            ),
            (
                "",
                "[receipts]\nno_receipt_after = \"100000000000h\"\n",
                "receipts.no_receipt_after",
                "above the maximum",
            ),
            (
                "",
                "[receipts]\nreconcile_interval = \"0s\"\n",
                "receipts.reconcile_interval",
                "below the minimum 1s",
            ),
            (
                "",
                "[receipts]\ngive_up_after = \"100000000000h\"\n",
                "receipts.give_up_after",
                "above the maximum",
            ),
        ] {
            let e = parse(provider, rest).expect_err(&format!("{provider}{rest} was accepted"));
            assert_eq!(e.key, key, "{provider}{rest}");
            assert!(e.reason.contains(reason), "{provider}{rest}: {}", e.reason);
        }
    }

    #[test]
    fn every_duration_at_its_maximum_still_makes_a_timestamp() {
        let c = parse(
            "timeout = \"10m\"\nlatency = \"1m\"\nrate_limit = { per_second = 1000000, burst = 1000000 }",
            "[retry]\ninitial_delay = \"1h\"\nmax_delay = \"7d\"\nmax_attempts = 100\n\
             [otp]\nttl = \"24h\"\n\
             [worker]\npoll_interval = \"10m\"\nheartbeat = \"10m\"\nsweep_interval = \"1h\"\nrate_limit_wait = \"10m\"\n\
             otp_concurrency = 1024\nnotification_concurrency = 1024\n\
             [circuit_breaker]\ncooldown = \"1d\"\nfailures = 10000\n\
             [api]\nrequest_timeout = \"10m\"\notp_per_recipient = { max = 5, per = \"30d\" }\n\
             [receipts]\nno_receipt_after = \"365d\"\nreconcile_after = \"364d\"\ngive_up_after = \"365d\"\nreconcile_interval = \"1d\"\n",
        )
        .expect("every maximum is accepted");
        let now = chrono::Utc::now();
        for d in [
            c.longest_send() * 2,
            c.retry.max_delay * 2,
            c.otp.ttl,
            c.circuit_breaker.cooldown,
            c.receipts.give_up_after,
            c.api.otp_per_recipient.map(|l| l.per).unwrap_or_default(),
        ] {
            let d = chrono::Duration::from_std(d).expect("fits a TimeDelta");
            assert!(now.checked_sub_signed(d).is_some() && now.checked_add_signed(d).is_some());
        }
    }

    #[test]
    fn the_otp_recipient_limit_stays_unless_switched_off_explicitly() {
        let default = Some(RecipientLimit {
            max: 5,
            per: Duration::from_secs(900),
        });
        assert_eq!(parse("", "").unwrap().api.otp_per_recipient, default);
        // An [api] section without the key keeps the default limit.
        let c = parse("", "[api]\nmax_body_bytes = 4096\n").unwrap();
        assert_eq!(c.api.otp_per_recipient, default);
        let c = parse("", "[api]\notp_per_recipient = \"off\"\n").unwrap();
        assert_eq!(c.api.otp_per_recipient, None);
        let c = parse("", "[api]\notp_per_recipient = { max = 2, per = \"1h\" }\n").unwrap();
        assert_eq!(c.api.otp_per_recipient.map(|l| l.max), Some(2));
        for (value, key, reason) in [
            ("\"none\"", "api.otp_per_recipient", "\"off\""),
            (
                "{ max = 0, per = \"1h\" }",
                "api.otp_per_recipient.max",
                "\"off\"",
            ),
            ("{ max = 5 }", "api.otp_per_recipient.per", "missing"),
            (
                "{ max = 5, per = \"1h\", burst = 2 }",
                "api.otp_per_recipient.burst",
                "unknown",
            ),
        ] {
            let e = parse("", &format!("[api]\notp_per_recipient = {value}\n")).unwrap_err();
            assert_eq!(e.key, key, "{value}");
            assert!(e.reason.contains(reason), "{value}: {}", e.reason);
        }
    }

    #[test]
    fn a_price_in_an_unknown_currency_is_refused() {
        let price = |cur: &str| {
            format!(
                "[[price]]\nprovider = \"o\"\nprefix = \"+254\"\nper_segment = \"0.80\"\ncurrency = \"{cur}\"\n"
            )
        };
        let e = parse("", &price("KSH")).unwrap_err();
        assert_eq!(e.key, "price[0].currency");
        assert!(e.reason.contains("ISO 4217"), "{}", e.reason);
        assert!(parse("", &price("ZZZ")).is_err());
        assert!(parse("", &price("kes")).is_ok());
        assert!(parse("", &price("NGN")).is_ok());
        let sorted = crate::domain::money::ISO_4217_ACTIVE
            .windows(2)
            .all(|w| w[0] < w[1]);
        assert!(sorted, "binary search needs a sorted list");
    }

    #[test]
    fn a_missing_templates_folder_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("providers.toml");
        std::fs::write(&file, BASE.replace("KEYS", "")).unwrap();
        let e = Config::load(&file).unwrap_err();
        assert_eq!(e.key, "templates.dir");
        assert!(e.reason.contains("does not exist"), "{}", e.reason);
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        Config::load(&file).expect("with the folder");
    }
}
