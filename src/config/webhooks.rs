//! `[webhooks]`: where status webhooks may go and how hard tuma tries.

use std::time::Duration;

use serde::Deserialize;

use super::{count_in, parse_duration_in};
use crate::egress::{Cidr, Policy};

/// Status webhook delivery.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Address ranges endpoints may resolve to although they are private,
    /// link-local or otherwise refused (`allow_ranges = ["10.0.0.0/8"]`).
    pub allow_ranges: Vec<Cidr>,
    /// One HTTP attempt, connection to last byte read.
    pub timeout: Duration,
    /// The first retry's delay; each next one doubles, up to `max_retry_delay`.
    pub first_retry: Duration,
    /// The longest delay between two attempts at an event.
    pub max_retry_delay: Duration,
    /// An event not delivered this long after it happened is given up.
    pub give_up_after: Duration,
    /// An endpoint whose every attempt failed for this long is disabled.
    pub disable_after: Duration,
    /// How often the dispatcher looks for events written meanwhile (a
    /// retry goes at its own time, not at a poll).
    pub poll_interval: Duration,
    /// Events sent at once to one endpoint by one process (one while its
    /// latest attempt failed): each endpoint has its own slots.
    pub concurrency: usize,
}

impl Default for WebhooksConfig {
    /// The defaults of an absent `[webhooks]` table.
    fn default() -> Self {
        parse(None).unwrap_or_else(|(key, reason)| unreachable!("default {key}: {reason}"))
    }
}

impl WebhooksConfig {
    /// The address policy of `allow_ranges`.
    pub fn policy(&self) -> Policy {
        Policy {
            allow: self.allow_ranges.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWebhooks {
    allow_ranges: Vec<String>,
    timeout: String,
    first_retry: String,
    max_retry_delay: String,
    give_up_after: String,
    disable_after: String,
    poll_interval: String,
    concurrency: usize,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        RawWebhooks {
            allow_ranges: Vec::new(),
            timeout: "10s".into(),
            first_retry: "5s".into(),
            max_retry_delay: "1h".into(),
            give_up_after: "24h".into(),
            disable_after: "3d".into(),
            poll_interval: "100ms".into(),
            concurrency: 8,
        }
    }
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const DAY: u64 = 24 * 60 * 60;

/// Parses the `[webhooks]` table (absent: the defaults). Errors are
/// `(key, reason)`.
pub(super) fn parse(raw: Option<toml::Value>) -> Result<WebhooksConfig, (String, String)> {
    let raw = match raw {
        None => RawWebhooks::default(),
        Some(value) => RawWebhooks::deserialize(value)
            .map_err(|e| ("webhooks".to_owned(), e.message().to_owned()))?,
    };
    let key = |k: &str| format!("webhooks.{k}");
    let mut allow_ranges = Vec::new();
    for (i, r) in raw.allow_ranges.iter().enumerate() {
        allow_ranges.push(
            r.parse()
                .map_err(|e| (format!("webhooks.allow_ranges[{i}]"), e))?,
        );
    }
    let duration = |name: &str, text: &str, min: Duration, max: Duration| {
        parse_duration_in(text, min, max).map_err(|e| (key(name), e))
    };
    let config = WebhooksConfig {
        allow_ranges,
        timeout: duration("timeout", &raw.timeout, secs(1), secs(60))?,
        first_retry: duration("first_retry", &raw.first_retry, secs(1), secs(DAY))?,
        max_retry_delay: duration("max_retry_delay", &raw.max_retry_delay, secs(1), secs(DAY))?,
        give_up_after: duration("give_up_after", &raw.give_up_after, secs(1), secs(30 * DAY))?,
        disable_after: duration(
            "disable_after",
            &raw.disable_after,
            secs(1),
            secs(365 * DAY),
        )?,
        poll_interval: duration(
            "poll_interval",
            &raw.poll_interval,
            Duration::from_millis(10),
            secs(60),
        )?,
        concurrency: count_in(raw.concurrency, 1, 256).map_err(|e| (key("concurrency"), e))?,
    };
    if config.max_retry_delay < config.first_retry {
        return Err((
            key("max_retry_delay"),
            "must be at least webhooks.first_retry".into(),
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Option<toml::Value> {
        let doc: toml::Table = toml::from_str(text).unwrap();
        doc.get("webhooks").cloned()
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = parse(None).unwrap();
        assert_eq!(c.timeout, secs(10));
        assert_eq!(c.give_up_after, secs(DAY));
        assert_eq!(c.disable_after, secs(3 * DAY));
        let c = parse(table("[webhooks]\nallow_ranges = [\"10.0.0.0/8\"]")).unwrap();
        assert!(c.policy().check_ip("10.2.3.4".parse().unwrap()).is_ok());
        for (text, key) in [
            (
                "[webhooks]\nallow_ranges = [\"10.0.0.0\"]",
                "webhooks.allow_ranges[0]",
            ),
            ("[webhooks]\ntimeout = \"2h\"", "webhooks.timeout"),
            ("[webhooks]\nconcurrency = 0", "webhooks.concurrency"),
            (
                "[webhooks]\nfirst_retry = \"2h\"",
                "webhooks.max_retry_delay",
            ),
            ("[webhooks]\nretries = 3", "webhooks"),
        ] {
            let (k, reason) = parse(table(text)).unwrap_err();
            assert_eq!(k, key, "{text}: {reason}");
        }
    }
}
