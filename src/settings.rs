//! Leaf helpers shared by the configuration and the provider folders:
//! durations and counts with ranges, secrets from the environment, a
//! provider table's deserialization errors, and the small settings every
//! provider has (rate limit, circuit breaker). This module imports nothing
//! of tuma's, so both `config` and `providers` can use it without importing
//! each other.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

/// Whether the configuration's loader reads the secrets that providers name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read every `*_env` variable; an unset one is an error naming the
    /// provider, the key and the variable (`serve`, `worker`, `check`,
    /// `providers test`).
    Read,
    /// Read none: for commands that only touch the database (reports,
    /// `deliveries`, `keys`, `send`, `replay`), so finance needs no API key.
    Skip,
}

/// What a secret holds when it was not read ([`Secrets::Skip`]); long enough
/// to pass the length checks, and never sent anywhere.
pub const UNREAD_SECRET: &str = "(not read: this command talks to no provider)";

/// Circuit breaker settings, per provider.
#[derive(Debug, Clone, Copy)]
pub struct CircuitBreakerConfig {
    /// Consecutive transient failures that open the circuit.
    pub failures: u32,
    /// How long an open circuit skips the provider.
    pub cooldown: Duration,
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

/// Parses a duration such as `2s`, `500ms`, `10m` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. \"2s\", \"500ms\", \"10m\"")
    })
}

/// Parses a duration that must lie in `min..=max`: every duration key goes
/// through this, so no value the file accepts can overflow a timestamp or
/// make a loop spin later. The reason reads "0s is below the minimum 100ms";
/// the caller adds the key.
pub fn parse_duration_in(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    let shown = || humantime::format_duration(d).to_string();
    if d < min {
        return Err(format!(
            "{} is below the minimum {}",
            shown(),
            humantime::format_duration(min)
        ));
    }
    if d > max {
        return Err(format!(
            "`{}` is above the maximum {}",
            text.trim(),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// A count that must lie in `min..=max`, with a reason like
/// "0 is below the minimum 1"; the caller adds the key.
pub fn count_in<T: PartialOrd + std::fmt::Display>(value: T, min: T, max: T) -> Result<T, String> {
    if value < min {
        Err(format!("{value} is below the minimum {min}"))
    } else if value > max {
        Err(format!("{value} is above the maximum {max}"))
    } else {
        Ok(value)
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
