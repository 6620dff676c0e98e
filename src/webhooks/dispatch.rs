//! The webhook dispatcher: started with the workers, it sends due events,
//! records every attempt and moves each event on.
//!
//! - At least once: an event is leased (its `next_attempt_at` moved past
//!   the attempt's end) before it is sent, and moved on only after; a
//!   process that dies in between leaves it to be sent again when the
//!   lease ends, under the same `webhook-id` and the same body.
//! - In order: for each delivery and endpoint only the first pending event
//!   is due, so event n+1 waits until n was delivered or given up.
//! - Endpoints never wait on each other: each has its own slots in this
//!   process (`webhooks.concurrency` sends at once, one while its latest
//!   attempt failed or before its first), and a send that ends frees its
//!   slot for that endpoint's next event at once. A receiver that hangs
//!   holds only its own slots until `webhooks.timeout`; there is no round
//!   that waits for the slowest send.
//! - Retries: 2xx is done; anything else is tried again `first_retry` after
//!   the failure, doubling up to `max_retry_delay`, until `give_up_after`
//!   from the status change. The dispatcher sleeps until the next event is
//!   due on tuma's clock ([`crate::clock::Clock::sleep_until`]), so a
//!   retry goes at its time, not at a later poll; `poll_interval` only
//!   bounds how late it notices events written meanwhile.
//! - Disabling: an endpoint that answers 410 Gone is disabled after that
//!   one attempt (Standard Webhooks); one whose every attempt failed for
//!   `disable_after` is disabled too. Either way its pending events are
//!   given up, the reason is stored, and a line is logged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::task::{JoinError, JoinSet};
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
/// later, or given up once `give_up_after` has passed since it happened or
/// its endpoint answered 410 Gone.
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
    if gone(sent) {
        return EventNext::GiveUp;
    }
    let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let next = now + span(backoff(config, attempts));
    if next - happened > span(config.give_up_after) {
        EventNext::GiveUp
    } else {
        EventNext::Retry(next)
    }
}

/// Whether the receiver answered 410 Gone: it is gone for good, and its
/// endpoint is disabled at once (Standard Webhooks).
fn gone(sent: &Sent) -> bool {
    sent.status_code == Some(410)
}

/// Why an attempt's answer, at `at`, disables its endpoint at once, if it
/// does (see [`gone`]).
pub fn disable_reason(sent: &Sent, at: DateTime<Utc>) -> Option<String> {
    gone(sent).then(|| {
        format!(
            "the endpoint answered 410 Gone at {}",
            at.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    })
}

/// How many sends an endpoint may have in flight at once: all of
/// `webhooks.concurrency` while its latest attempt was delivered, else one
/// (a new endpoint, or one that is failing, is probed one event at a time,
/// so a 410 or an outage costs one attempt, not a burst).
pub fn slots(config: &WebhooksConfig, last_delivered: bool) -> usize {
    if last_delivered {
        config.concurrency.max(1)
    } else {
        1
    }
}

/// What one pass of [`run_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Events found due (at most each endpoint's free slots).
    pub due: usize,
    /// Attempts made.
    pub attempts: usize,
    /// Events delivered.
    pub delivered: usize,
}

/// What one attempt did.
#[derive(Debug, Clone)]
struct Done {
    sent: Sent,
    next: EventNext,
}

/// The lease an attempt started at `now` holds its event for.
fn lease_until(config: &WebhooksConfig, now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(config.timeout + LEASE_MARGIN).unwrap_or(chrono::Duration::MAX)
}

/// Up to `free` of `endpoint`'s due events, each leased to this process:
/// how many were found due, and those this process won.
async fn claim(
    app: &App,
    endpoint: &str,
    free: usize,
    now: DateTime<Utc>,
) -> Result<(usize, Vec<DueEvent>), StoreError> {
    let limit = i64::try_from(free).unwrap_or(i64::MAX);
    let due = app.db.due_webhook_events(endpoint, now, limit).await?;
    let found = due.len();
    let lease = lease_until(&app.config.webhooks, now);
    let mut leased = Vec::with_capacity(found);
    for event in due {
        if app.db.lease_webhook_event(&event.id, now, lease).await? {
            leased.push(event);
        }
    }
    Ok((found, leased))
}

/// One pass, for tests and tools: fills every endpoint's free slots with
/// its events due now, sends them at once and waits for all of them. (The
/// running dispatcher, [`run`], never waits for a pass: each endpoint's
/// next event goes as soon as that endpoint has a free slot.) Fails only
/// when the due events cannot be read.
pub async fn run_once(app: &App, sender: &Sender) -> Result<Round, StoreError> {
    let now = app.clock.now();
    let mut round = Round::default();
    let mut leased = Vec::new();
    for endpoint in app.db.sendable_webhook_endpoints().await? {
        let free = slots(&app.config.webhooks, endpoint.last_delivered);
        let (found, events) = claim(app, &endpoint.id, free, now).await?;
        round.due += found;
        leased.extend(events);
    }
    let results =
        futures::future::join_all(leased.into_iter().map(|e| attempt(app, sender, e, now))).await;
    for r in results {
        match r {
            Ok(done) => {
                round.attempts += 1;
                round.delivered += usize::from(done.sent.delivered());
            }
            // One event's failure stops no other: it is tried again when
            // its lease ends.
            Err(e) => warn!(error = %e, "a webhook event could not be sent"),
        }
    }
    Ok(round)
}

/// One attempt at one event this process has leased, started at `now`.
#[tracing::instrument(skip_all, fields(event = %event.id, endpoint = %event.endpoint_id))]
async fn attempt(
    app: &App,
    sender: &Sender,
    event: DueEvent,
    now: DateTime<Utc>,
) -> Result<Done, StoreError> {
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
        disable_now: disable_reason(&sent, ended),
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
            status = sent.status_code,
            error = sent.error.as_deref().unwrap_or("-"),
            "webhook given up"
        ),
    }
    if let Some(reason) = disabled {
        warn!(
            reason = %reason,
            disable_after = %humantime::format_duration(config.disable_after),
            "webhook endpoint disabled; its pending events are given up"
        );
    }
    Ok(Done { sent, next })
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

/// An endpoint's slots in this process.
#[derive(Debug, Default)]
struct Slot {
    /// Its sends in flight.
    in_flight: usize,
    /// Whether its latest attempt was delivered (see [`slots`]).
    last_delivered: bool,
}

/// The running dispatcher's state: each endpoint's slots, and the sends in
/// flight (aborted with it: dropping the set aborts them).
struct Dispatcher {
    app: Arc<App>,
    sender: Sender,
    slots: HashMap<String, Slot>,
    sends: JoinSet<Result<Done, StoreError>>,
    /// The endpoint of each send in flight, so one that panicked still
    /// frees its slot.
    sending_to: HashMap<tokio::task::Id, String>,
}

impl Dispatcher {
    /// Fills every endpoint's free slots with its due events; returns when
    /// the next event not yet due comes due.
    async fn pass(&mut self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.app.clock.now();
        let endpoints = self.app.db.sendable_webhook_endpoints().await?;
        let listed: HashSet<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        // Endpoints removed or disabled are forgotten once their sends end.
        self.slots
            .retain(|id, slot| slot.in_flight > 0 || listed.contains(id.as_str()));
        for endpoint in &endpoints {
            self.slots
                .entry(endpoint.id.clone())
                .or_default()
                .last_delivered = endpoint.last_delivered;
            self.fill(&endpoint.id, now).await?;
        }
        self.app.db.next_webhook_due(now).await
    }

    /// Starts `endpoint`'s due events in its free slots.
    async fn fill(&mut self, endpoint: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let config = &self.app.config.webhooks;
        let free = match self.slots.get(endpoint) {
            Some(slot) => slots(config, slot.last_delivered).saturating_sub(slot.in_flight),
            None => 0,
        };
        if free == 0 {
            return Ok(());
        }
        let (_, events) = claim(&self.app, endpoint, free, now).await?;
        for event in events {
            if let Some(slot) = self.slots.get_mut(endpoint) {
                slot.in_flight += 1;
            }
            let (app, sender) = (self.app.clone(), self.sender.clone());
            let send = self
                .sends
                .spawn(async move { attempt(&app, &sender, event, now).await });
            self.sending_to.insert(send.id(), endpoint.to_owned());
        }
        Ok(())
    }

    /// A send ended: frees its slot. Returns its endpoint and, when its
    /// event is to be retried, when.
    fn ended(
        &mut self,
        joined: Result<(tokio::task::Id, Result<Done, StoreError>), JoinError>,
    ) -> Option<(String, Option<DateTime<Utc>>)> {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let endpoint = self.sending_to.remove(&id)?;
        let slot = self.slots.entry(endpoint.clone()).or_default();
        slot.in_flight = slot.in_flight.saturating_sub(1);
        let mut retry = None;
        match joined {
            Ok((_, Ok(done))) => {
                slot.last_delivered = done.sent.delivered();
                if let EventNext::Retry(at) = done.next {
                    retry = Some(at);
                }
            }
            // Its event is tried again when its lease ends.
            Ok((_, Err(e))) => warn!(error = %e, "a webhook event could not be sent"),
            Err(e) => warn!(error = %e, "a webhook send stopped abnormally"),
        }
        Some((endpoint, retry))
    }
}

/// The earlier of two due times.
fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sends events until aborted (which aborts the sends in flight too).
/// Started and stopped with the workers, in the process holding the
/// housekeeping lease.
///
/// It looks at every endpoint every `webhooks.poll_interval` and when the
/// next event comes due on tuma's clock; when a send ends, at once at that
/// endpoint's next events. The first look waits a poll: what a start finds
/// due is sent a moment later, never raced with the workers starting up.
pub async fn run(app: Arc<App>) {
    let sender = match Sender::new(&app.config.webhooks) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "webhooks are not sent");
            return;
        }
    };
    let poll = app.config.webhooks.poll_interval;
    let mut d = Dispatcher {
        app: app.clone(),
        sender,
        slots: HashMap::new(),
        sends: JoinSet::new(),
        sending_to: HashMap::new(),
    };
    let mut next_due = match app.db.next_webhook_due(app.clock.now()).await {
        Ok(at) => at,
        Err(e) => {
            warn!(error = %e, "could not read when webhook events are due; polling");
            None
        }
    };
    let mut next_pass = tokio::time::Instant::now() + poll;
    loop {
        let alarm = next_due.map(|at| app.clock.sleep_until(at));
        tokio::select! {
            () = tokio::time::sleep_until(next_pass) => {}
            () = async {
                match alarm {
                    Some(alarm) => alarm.await,
                    None => std::future::pending().await,
                }
            } => {}
            Some(joined) = d.sends.join_next_with_id(), if !d.sends.is_empty() => {
                if let Some((endpoint, retry)) = d.ended(joined) {
                    next_due = earliest(next_due, retry);
                    let now = app.clock.now();
                    if let Err(e) = d.fill(&endpoint, now).await {
                        warn!(error = %e, "could not read an endpoint's due webhook events; trying again");
                    }
                }
                continue;
            }
        }
        next_due = match d.pass().await {
            Ok(at) => at,
            Err(e) => {
                warn!(error = %e, "webhook pass failed; trying again");
                None
            }
        };
        next_pass = tokio::time::Instant::now() + poll;
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

    #[test]
    fn a_410_gives_its_event_up_and_disables_its_endpoint_with_the_time_in_the_reason() {
        let c = config();
        let t0: DateTime<Utc> = "2026-12-05T10:00:03.120Z".parse().unwrap();
        let gone = Sent {
            outcome: "rejected",
            status_code: Some(410),
            latency_ms: 3,
            error: Some("the receiver answered 410 Gone".into()),
        };
        assert_eq!(next_step(&c, &gone, t0, 1, t0), EventNext::GiveUp);
        assert_eq!(
            disable_reason(&gone, t0).as_deref(),
            Some("the endpoint answered 410 Gone at 2026-12-05T10:00:03Z")
        );
        for status in [404, 500, 503] {
            let other = Sent {
                status_code: Some(status),
                ..gone.clone()
            };
            assert_eq!(disable_reason(&other, t0), None, "{status}");
            assert!(matches!(
                next_step(&c, &other, t0, 1, t0),
                EventNext::Retry(_)
            ));
        }
    }

    #[test]
    fn an_endpoint_gets_all_its_slots_only_while_its_latest_attempt_was_delivered() {
        let c = config();
        assert_eq!(slots(&c, true), c.concurrency);
        assert_eq!(slots(&c, false), 1);
    }
}
