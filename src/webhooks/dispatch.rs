//! The webhook dispatcher: started with the workers, it sends due events,
//! records every attempt and moves each event on.
//!
//! - At least once: an event is leased (its `next_attempt_at` moved past
//!   the attempt's end) before it is sent, and moved on only after; a
//!   process that dies in between leaves it to be sent again when the
//!   lease ends, under the same `webhook-id` and the same body.
//! - In order: for each delivery and endpoint only the first pending event
//!   is due, so event n+1 waits until n was delivered or given up.
//! - Retries: 2xx is done; anything else is tried again after
//!   `first_retry`, doubling up to `max_retry_delay`, until `give_up_after`
//!   from the status change. An endpoint whose every attempt failed for
//!   `disable_after` is disabled (a log line, and `/metrics`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::{info, warn};

use super::target::{CheckedResolver, Policy, Refused};
use super::{ErrorInfo, EventType, payload, secret_key, sign};
use crate::app::App;
use crate::config::WebhooksConfig;
use crate::store::{
    AttemptRecord, DueEvent, EndpointRow, EventNext, StoreError, WebhookAttemptRow,
};

/// The most of a receiver's answer that is read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How long past the attempt's timeout a lease lasts.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// What one HTTP attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// `delivered` (2xx), `rejected` (another status), `error` (no answer:
    /// connection, TLS, timeout) or `refused` (the address is not allowed).
    pub outcome: &'static str,
    /// The HTTP status, when there was one.
    pub status_code: Option<u16>,
    /// From the start of the request to the last byte read.
    pub latency_ms: i64,
    /// What went wrong (never the body or the secret).
    pub error: Option<String>,
}

impl Sent {
    /// Whether the receiver took it.
    pub fn delivered(&self) -> bool {
        self.outcome == "delivered"
    }
}

/// Sends signed webhooks through an HTTP client that connects only to
/// checked addresses and never follows a redirect.
#[derive(Debug, Clone)]
pub struct Sender {
    http: reqwest::Client,
    policy: Arc<Policy>,
}

impl Sender {
    /// A sender under `config`'s timeout and address policy.
    pub fn new(config: &WebhooksConfig) -> Result<Sender, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(config.policy());
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver(policy.clone())))
            .user_agent(concat!("tuma-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Sender { http, policy })
    }

    /// POSTs `body` to `url`, signed with `secret` as message `id` at `now`.
    pub async fn send(
        &self,
        url: &str,
        secret: &str,
        id: &str,
        body: &str,
        now: DateTime<Utc>,
    ) -> Sent {
        let started = Instant::now();
        let elapsed =
            |started: Instant| i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let fail = |outcome, error: String| Sent {
            outcome,
            status_code: None,
            latency_ms: elapsed(started),
            error: Some(error),
        };
        // An address host is not resolved by the client: checked here.
        let url = match self.policy.check_url(url) {
            Ok(url) => url,
            Err(Refused(why)) => return fail("refused", why),
        };
        let key = match secret_key(secret) {
            Ok(key) => key,
            Err(why) => return fail("error", format!("the endpoint's secret is unusable: {why}")),
        };
        let timestamp = now.timestamp();
        let request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sign(&key, id, timestamp, body))
            .body(body.to_owned());
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let refused = refusal(&e);
                return match refused {
                    Some(why) => fail("refused", why),
                    None => fail("error", describe(e)),
                };
            }
        };
        let status = response.status();
        // Read at most MAX_RESPONSE_BYTES of the answer, then hang up.
        let mut read = 0;
        let mut body_error = None;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(describe(e));
                    break;
                }
            }
        }
        let latency_ms = elapsed(started);
        if status.is_success() {
            Sent {
                outcome: "delivered",
                status_code: Some(status.as_u16()),
                latency_ms,
                error: None,
            }
        } else {
            let mut error = format!("the receiver answered {status}");
            if status.is_redirection() {
                error.push_str(" (redirects are not followed)");
            }
            if let Some(e) = body_error {
                error = format!("{error}; reading its answer failed: {e}");
            }
            Sent {
                outcome: "rejected",
                status_code: Some(status.as_u16()),
                latency_ms,
                error: Some(error),
            }
        }
    }
}

/// The address refusal inside a client error, if that is what it was.
fn refusal(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(Refused(why)) = s.downcast_ref::<Refused>() {
            return Some(why.clone());
        }
        source = s.source();
    }
    None
}

/// A client error and its causes, without the URL (which may hold a token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The delay before attempt `attempts + 1`, after `attempts` failed ones:
/// `first_retry`, doubling, at most `max_retry_delay`.
pub fn backoff(config: &WebhooksConfig, attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    config
        .first_retry
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(config.max_retry_delay)
}

/// Where an event goes after an attempt that ended at `now`: done, again
/// later, or given up once `give_up_after` has passed since it happened.
pub fn next_step(
    config: &WebhooksConfig,
    sent: &Sent,
    happened: DateTime<Utc>,
    attempts: i64,
    now: DateTime<Utc>,
) -> EventNext {
    if sent.delivered() {
        return EventNext::Delivered;
    }
    let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let next = now + span(backoff(config, attempts));
    if next - happened > span(config.give_up_after) {
        EventNext::GiveUp
    } else {
        EventNext::Retry(next)
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Events found due.
    pub due: usize,
    /// Attempts made.
    pub attempts: usize,
    /// Events delivered.
    pub delivered: usize,
}

/// Sends every event due now (up to a few times `webhooks.concurrency`,
/// that many at once). Fails only when the due events cannot be read.
pub async fn run_once(app: &App, sender: &Sender) -> Result<Round, StoreError> {
    let config = &app.config.webhooks;
    let now = app.clock.now();
    let limit = i64::try_from(config.concurrency * 4).unwrap_or(i64::MAX);
    let due = app.db.due_webhook_events(now, limit).await?;
    let mut round = Round {
        due: due.len(),
        ..Round::default()
    };
    let lease = now
        + chrono::Duration::from_std(config.timeout + LEASE_MARGIN)
            .unwrap_or(chrono::Duration::MAX);
    let results: Vec<Result<Option<Sent>, StoreError>> = futures::stream::iter(due)
        .map(|event| deliver(app, sender, event, now, lease))
        .buffer_unordered(config.concurrency)
        .collect()
        .await;
    for r in results {
        match r {
            Ok(Some(sent)) => {
                round.attempts += 1;
                round.delivered += usize::from(sent.delivered());
            }
            Ok(None) => {}
            // One event's failure stops no other: it is tried again when
            // its lease ends.
            Err(e) => warn!(error = %e, "a webhook event could not be sent"),
        }
    }
    Ok(round)
}

/// One attempt at one event, if this process wins its lease.
#[tracing::instrument(skip_all, fields(event = %event.id, endpoint = %event.endpoint_id))]
async fn deliver(
    app: &App,
    sender: &Sender,
    event: DueEvent,
    now: DateTime<Utc>,
    lease: DateTime<Utc>,
) -> Result<Option<Sent>, StoreError> {
    if !app.db.lease_webhook_event(&event.id, now, lease).await? {
        return Ok(None);
    }
    let body = match &event.payload {
        Some(body) => body.clone(),
        None => {
            let built = build_payload(app, &event).await?;
            app.db.fix_webhook_payload(&event.id, &built).await?
        }
    };
    let sent = sender
        .send(&event.url, &event.secret, &event.id, &body, app.clock.now())
        .await;
    let ended = app.clock.now();
    let config = &app.config.webhooks;
    let attempts = event.attempts + 1;
    let next = next_step(config, &sent, event.created_at, attempts, ended);
    let record = AttemptRecord {
        attempt: WebhookAttemptRow {
            event_id: event.id.clone(),
            endpoint_id: event.endpoint_id.clone(),
            started_at: now,
            outcome: sent.outcome.to_owned(),
            status_code: sent.status_code.map(i64::from),
            latency_ms: sent.latency_ms,
            error: sent.error.clone(),
        },
        next,
        now: ended,
        disable_if_failing_since: ended
            - chrono::Duration::from_std(config.disable_after).unwrap_or(chrono::Duration::MAX),
    };
    let disabled = app.db.record_webhook_attempt(&record).await?;
    match next {
        EventNext::Delivered => info!(
            event_type = %event.event_type,
            attempt = attempts,
            status = sent.status_code,
            latency_ms = sent.latency_ms,
            "webhook delivered"
        ),
        EventNext::Retry(at) => warn!(
            event_type = %event.event_type,
            attempt = attempts,
            outcome = sent.outcome,
            status = sent.status_code,
            error = sent.error.as_deref().unwrap_or("-"),
            retry_at = %at,
            "webhook attempt failed; will retry"
        ),
        EventNext::GiveUp => warn!(
            event_type = %event.event_type,
            attempt = attempts,
            outcome = sent.outcome,
            error = sent.error.as_deref().unwrap_or("-"),
            "webhook given up"
        ),
    }
    if let Some(since) = disabled {
        warn!(
            failing_since = %since,
            disable_after = %humantime::format_duration(config.disable_after),
            "webhook endpoint disabled: every attempt failed for longer than webhooks.disable_after"
        );
    }
    Ok(Some(sent))
}

/// The body of an event at its first send (see [`payload`]).
async fn build_payload(app: &App, event: &DueEvent) -> Result<String, StoreError> {
    let event_type: EventType = event
        .event_type
        .parse()
        .map_err(|e: String| StoreError::Corrupt(format!("webhook event {}: {e}", event.id)))?;
    let delivery_id = event.delivery_id.as_deref().unwrap_or_default();
    let d = app.db.delivery(delivery_id).await?.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "webhook event {} names delivery {delivery_id}, which is gone",
            event.id
        ))
    })?;
    let error = match event_type {
        EventType::Failed => Some(match app.db.attempts(delivery_id).await?.pop() {
            Some(a) => ErrorInfo {
                class: a.outcome.map_or("unknown", |o| o.as_str()).to_owned(),
                code: a.error_code,
            },
            None => ErrorInfo {
                class: "not_sent".into(),
                code: None,
            },
        }),
        EventType::Undelivered => Some(ErrorInfo {
            class: "undelivered".into(),
            code: app
                .db
                .receipts(delivery_id)
                .await?
                .into_iter()
                .rev()
                .find(|r| r.applied)
                .and_then(|r| r.error_code),
        }),
        _ => None,
    };
    Ok(payload(
        event_type,
        event.created_at,
        event.sequence,
        &d,
        error.as_ref(),
        event.with_recipient,
    )
    .to_string())
}

/// Sends a signed `webhook.test` event to `endpoint` now, once (not queued,
/// not retried), and records the attempt.
pub async fn test_endpoint(
    db: &crate::store::Db,
    sender: &Sender,
    endpoint: &EndpointRow,
    now: DateTime<Utc>,
) -> Result<(String, Sent), StoreError> {
    let id = super::new_event_id();
    let body = serde_json::json!({
        "type": "webhook.test",
        "timestamp": now,
        "data": { "endpoint_id": endpoint.id },
    })
    .to_string();
    let sent = sender
        .send(&endpoint.url, &endpoint.secret, &id, &body, now)
        .await;
    db.record_webhook_test(&WebhookAttemptRow {
        event_id: id.clone(),
        endpoint_id: endpoint.id.clone(),
        started_at: now,
        outcome: sent.outcome.to_owned(),
        status_code: sent.status_code.map(i64::from),
        latency_ms: sent.latency_ms,
        error: sent.error.clone(),
    })
    .await?;
    Ok((id, sent))
}

/// Runs rounds every `webhooks.poll_interval` (at once again after a full
/// one) until aborted. Started and stopped with the workers.
pub async fn run(app: Arc<App>) {
    let sender = match Sender::new(&app.config.webhooks) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "webhooks are not sent");
            return;
        }
    };
    let full = app.config.webhooks.concurrency * 4;
    let mut busy = false;
    loop {
        // The first round waits a poll too: what a start finds due is sent
        // a moment later, never raced with the workers starting up.
        if !busy {
            tokio::time::sleep(app.config.webhooks.poll_interval).await;
        }
        busy = match run_once(&app, &sender).await {
            Ok(round) => round.due >= full,
            Err(e) => {
                warn!(error = %e, "webhook round failed; trying again");
                false
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebhooksConfig {
        WebhooksConfig::default()
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_gives_up_after_a_day() {
        let c = config();
        let secs = |n| Duration::from_secs(n);
        assert_eq!(backoff(&c, 1), secs(5));
        assert_eq!(backoff(&c, 2), secs(10));
        assert_eq!(backoff(&c, 5), secs(80));
        assert_eq!(backoff(&c, 12), secs(3600));
        assert_eq!(backoff(&c, 1_000), secs(3600));
        let failed = Sent {
            outcome: "rejected",
            status_code: Some(500),
            latency_ms: 3,
            error: None,
        };
        let t0 = Utc::now();
        let later = |s| t0 + chrono::Duration::seconds(s);
        assert_eq!(
            next_step(&c, &failed, t0, 1, later(1)),
            EventNext::Retry(later(6))
        );
        assert_eq!(
            next_step(&c, &failed, t0, 30, later(23 * 3600 + 1800)),
            EventNext::GiveUp,
            "the next try would fall past the day"
        );
        let ok = Sent {
            outcome: "delivered",
            status_code: Some(204),
            ..failed
        };
        assert_eq!(
            next_step(&c, &ok, t0, 30, later(23 * 3600)),
            EventNext::Delivered
        );
    }
}
