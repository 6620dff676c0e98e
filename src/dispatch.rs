//! The dispatcher: what a worker does with one claimed delivery.
//!
//! Take the delivery as the claim read it; do nothing if the claim is stale;
//! expire a stale OTP instead of sending it; pick the provider for this
//! attempt (failover after transient errors); wait for the provider's
//! rate-limit slot; reserve the estimate in its budgets (or hold it); record
//! the attempt as `sending`; call the provider under a timeout; record the
//! outcome and, for a transient error, the time the delivery is due again,
//! together; settle the reservation.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::{Instrument, debug, info, warn};

use crate::app::App;
use crate::domain::email::EmailAddress;
use crate::domain::otp::OtpCode;
use crate::domain::phone::PhoneNumber;
use crate::domain::segments::count_segments;
use crate::domain::unknown::{AfterUnknown, UnknownCause};
use crate::domain::{Channel, DeliveryKind, DeliveryStatus, Recipient};
use crate::intake::with_code;
use crate::providers::capability::Lookup;
use crate::providers::{Accepted, Content, OutgoingMessage, ProviderHandle, SendError};
use crate::queue::{DeliveryJob, Lane};
use crate::retry::{AfterFailure, after_failure, delay_after};
use crate::store::{AttemptResult, AttemptSummary, Delivery, NextStep, Outcome, StoreError};
use crate::unsettled::Remembered;

/// Handles one job. Errors are database errors only: every delivery outcome,
/// good or bad, is recorded and returns `Ok`.
pub async fn handle_job(app: &Arc<App>, lane: Lane, job: &DeliveryJob) -> Result<(), StoreError> {
    handle_claimed(app, lane, job, None).await
}

/// [`handle_job`], given the delivery (and its code) as the claim read it,
/// when it did; else it is read first.
pub async fn handle_claimed(
    app: &Arc<App>,
    lane: Lane,
    job: &DeliveryJob,
    claimed: Option<(Delivery, Option<String>)>,
) -> Result<(), StoreError> {
    let read = match claimed {
        Some(row) => Some(row),
        None => app.batcher.delivery_to_send(lane, &job.delivery_id).await?,
    };
    let Some((delivery, code)) = read else {
        warn!("job for a delivery that does not exist; dropped");
        return Ok(());
    };
    if delivery.row.job_id.as_deref() != Some(job.job_id.as_str()) {
        debug!("stale claim; the delivery has moved on");
        return Ok(());
    }
    // Only a pending delivery is sent; one in `sending` under this token is
    // settled by whoever finds its lease run out (`sweeper`).
    if delivery.status != DeliveryStatus::Pending {
        return Ok(());
    }

    let now = app.clock.now();
    let id = delivery.row.id.as_str();
    if delivery.row.expires_at.is_some_and(|at| at <= now) {
        if app
            .db
            .close_pending(
                id,
                &job.job_id,
                DeliveryStatus::Expired,
                match delivery.kind {
                    DeliveryKind::Otp => "the code expired before it could be sent",
                    DeliveryKind::Notification => "its own deadline passed before it could be sent",
                },
                now,
            )
            .await?
        {
            info!("expired before it could be sent");
        }
        return Ok(());
    }
    // A notification past its retry time is never sent late.
    if delivery.kind == DeliveryKind::Notification && retry_deadline(app, &delivery) < now {
        return give_up_unsent(app, job, &delivery, now).await;
    }
    if let Some(due) = delivery.row.next_attempt_at
        && due > now
    {
        // Run early (clock skew between hosts): put it back for its time.
        app.db
            .requeue(id, Some(&job.job_id), Some(due), now)
            .await?;
        return Ok(());
    }

    let recipient = match parse_stored_recipient(&delivery) {
        Ok(r) => r,
        Err(reason) => return fail_unsendable(app, job, &reason).await,
    };
    // What the earlier attempts say: read for a retry only.
    let history = if delivery.row.attempts > 0 {
        app.db.attempt_history(id).await?
    } else {
        Vec::new()
    };
    if history.iter().any(|a| a.outcome == Some(Outcome::Accepted)) {
        // A late acceptance was recorded and the delivery not yet moved.
        if app.db.promote_late_acceptance(id, now).await? {
            info!("an earlier attempt was accepted late: sent");
        }
        return Ok(());
    }
    let rule = app.config.retry.after_unknown(delivery.kind);
    let unknowns: Vec<&AttemptSummary> = history.iter().filter(|a| is_call_unknown(a)).collect();
    let attempt = u32::try_from(delivery.row.attempts + 1).unwrap_or(u32::MAX);
    let mut candidates = app.router.providers_for_attempt(&recipient, attempt);
    let mut message = match build_message(app, &delivery, code.as_deref(), &recipient) {
        Ok(m) => m,
        Err(reason) => return fail_unsendable(app, job, &reason).await,
    };
    let mut resend = None;
    if let Some(last) = history.last().filter(|a| is_call_unknown(a)) {
        match rule {
            AfterUnknown::Resolve => {
                match resolve(app, &delivery, job, last, &mut message, now).await? {
                    Resolved::Settled => return Ok(()),
                    Resolved::SendAgain(why) => resend = Some(why),
                }
            }
            AfterUnknown::Resend | AfterUnknown::Hold => {
                resend = Some(format!(
                    "resend: attempt {} ({}) had no answer",
                    last.attempt, last.provider
                ));
            }
        }
    }
    if rule == AfterUnknown::Resend {
        // Once per provider: one that may already have it is not asked again.
        let fresh: Vec<&str> = candidates
            .iter()
            .copied()
            .filter(|p| !unknowns.iter().any(|u| u.provider == *p))
            .collect();
        if !fresh.is_empty() {
            candidates = fresh;
        }
    }
    let (provider_name, why) = match choose_provider(app, &candidates, attempt, now) {
        Ok(Choice::Call(name, why)) => match &resend {
            Some(first) => (name, format!("{first}; {why}")),
            None => (name, why),
        },
        Ok(Choice::Wait { until, open }) => {
            return wait_for_circuits(app, job, &delivery, until, &open, now).await;
        }
        Err(reason) => return fail_unsendable(app, job, &reason).await,
    };
    let Some(handle) = app.providers.get(provider_name) else {
        let reason = format!("provider `{provider_name}` is not configured");
        return fail_unsendable(app, job, &reason).await;
    };

    if !crate::global_rate::slot(app, handle, app.config.worker.rate_limit_wait).await? {
        debug!(provider = %provider_name, "rate limit: no slot in time; put back");
        let later = now + chrono::Duration::seconds(1);
        app.db
            .requeue(id, Some(&job.job_id), Some(later), now)
            .await?;
        return Ok(());
    }

    // The spend guard: the estimate is reserved in the delivery's budgets,
    // or the delivery is held when one is reached.
    let reserved = match crate::spend::before_send(
        app,
        &delivery,
        job,
        estimate(app, provider_name, &message),
        app.clock.now(),
    )
    .await?
    {
        crate::spend::Guard::Go { reserved } => reserved,
        crate::spend::Guard::Held => return Ok(()),
    };
    let deadline = retry_deadline(app, &delivery);
    let started_at = app.clock.now();
    let Some(attempt) = app
        .batcher
        .begin_attempt(lane, job, provider_name, &why, started_at)
        .await?
    else {
        debug!("taken by another worker");
        if reserved {
            crate::spend::after_send(app, lane, id, None).await?;
        }
        return Ok(());
    };
    // What an OTP has left, as the call starts: the carrier may drop it after.
    message.valid_for = delivery
        .row
        .expires_at
        .map(|at| (at - started_at).to_std().unwrap_or_default());
    let started = Instant::now();
    // The call runs on its own: past the timeout the slot is freed, but the
    // call is not dropped (the request may have reached the provider), and
    // its late answer is recorded on this attempt.
    let provider = handle.provider.clone();
    let call_message = message.clone();
    let mut call = Box::pin(async move { provider.send(&call_message).await });
    let (sent, closed) = match tokio::time::timeout(handle.timeout, &mut call).await {
        Ok(answer) => (answer, None),
        Err(_) => {
            let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
            listen_late(
                app,
                LateCall {
                    delivery_id: id.to_owned(),
                    attempt: i64::from(attempt_number(attempt)),
                    provider: provider_name.to_owned(),
                    grace: handle.late_answer_grace,
                    started,
                    message: message.clone(),
                },
                call,
                closed_rx,
            );
            let unknown = SendError::unknown(
                UnknownCause::NoAnswer {
                    timeout: handle.timeout,
                },
                "",
            );
            (Err(unknown), Some(closed_tx))
        }
    };
    let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let finished_at = app.clock.now();

    match &sent {
        Ok(_) | Err(SendError::Permanent { .. }) => handle.breaker.record_answer(),
        Err(SendError::Transient { .. }) => {
            if handle.breaker.record_failure(finished_at) {
                warn!(provider = %provider_name, "circuit opened: provider skipped while it cools down");
                crate::shared_circuits::opened(app, handle, finished_at).await;
            }
        }
        // Silence is no refusal: the provider may have taken it.
        Err(SendError::Unknown { .. }) => {}
    }
    let (mut result, gone) = result_of(app, handle, &message, sent, finished_at, latency_ms);
    let next = match result.outcome {
        Outcome::Accepted => NextStep::Sent,
        Outcome::Permanent => NextStep::Failed,
        Outcome::Transient => {
            after_transient(app, &delivery, attempt, finished_at, deadline, &mut result)
        }
        Outcome::Unknown => after_unknown(
            app,
            &delivery,
            &recipient,
            &history,
            provider_name,
            UnknownAt {
                attempt,
                now: finished_at,
                deadline,
                grace: closed.is_some().then_some(handle.late_answer_grace),
            },
            &mut result,
        ),
    };
    let error = result.error.clone().unwrap_or_default();
    let recorded = match app
        .batcher
        .finish_attempt(
            job,
            result.clone(),
            next.clone(),
            Lane::for_kind(delivery.kind),
        )
        .await
    {
        Ok(recorded) => recorded,
        Err(e) => {
            // The provider's answer is known here only: keep it, so the
            // sweeper records it once the database answers again.
            warn!(attempt, error = %e, "the provider answered but recording it failed; kept for the sweeper");
            app.unsettled
                .keep_answer(&job.job_id, result, next, e.to_string());
            return Err(e);
        }
    };
    // The late listener records only on an attempt closed as awaiting it.
    if let Some(closed) = closed {
        let _ = closed.send(());
    }
    if !recorded {
        warn!(
            attempt,
            "the sweeper took this delivery over during the call"
        );
        return Ok(());
    }
    // An earlier attempt's late acceptance that came while this one was
    // open: the delivery was sent after all.
    if attempt > 1
        && !matches!(next, NextStep::Sent)
        && app.db.promote_late_acceptance(id, finished_at).await?
    {
        info!(attempt, "an earlier attempt was accepted late: sent");
    }
    if let (Some(reason), NextStep::Failed) = (gone, &next)
        && let Err(e) = crate::suppression::record(
            app,
            &delivery,
            provider_name,
            result.error_code.as_deref(),
            reason,
            finished_at,
        )
        .await
    {
        warn!(error = %e, "suppressing the recipient failed");
    }
    if reserved {
        let sent = matches!(next, NextStep::Sent).then_some(result.cost.map(|(m, _)| m));
        if let Err(e) = crate::spend::after_send(app, Lane::for_kind(delivery.kind), id, sent).await
        {
            // The reservation stays; the sweeper settles it from the delivery.
            warn!(error = %e, "settling the budget reservation failed; left to the sweeper");
        }
    }
    match &next {
        NextStep::Sent => {
            info!(provider = %provider_name, attempt, latency_ms, "sent")
        }
        NextStep::Failed => {
            warn!(provider = %provider_name, attempt, error, "failed")
        }
        NextStep::Unknown => {
            warn!(provider = %provider_name, attempt, error, "outcome unknown: left for ops")
        }
        NextStep::Retry { at, .. } if result.outcome == Outcome::Unknown => {
            warn!(provider = %provider_name, attempt, next_at = %at, error, "outcome unknown")
        }
        NextStep::Retry { at, .. } => {
            info!(provider = %provider_name, attempt, retry_at = %at, error, "transient error; retry scheduled")
        }
    }
    Ok(())
}

fn attempt_number(attempt: i64) -> u32 {
    u32::try_from(attempt).unwrap_or(u32::MAX)
}

/// The attempt's record of the provider's answer (`Err` when it never
/// came), and, for a permanent error the adapter marks as "no such
/// recipient", the reason to suppress it.
fn result_of(
    app: &App,
    handle: &ProviderHandle,
    message: &OutgoingMessage,
    sent: Result<Accepted, SendError>,
    finished_at: DateTime<Utc>,
    latency_ms: i64,
) -> (AttemptResult, Option<&'static str>) {
    let provider_name = handle.name.as_str();
    let our_segments = match &message.content {
        Content::Sms { text, .. } => Some(count_segments(text).segments),
        Content::Email { .. } => None,
    };
    let mut gone = None;
    let mut result = match sent {
        Ok(accepted) => {
            if let (Some(theirs), Some(ours)) = (accepted.segments, our_segments)
                && theirs != ours
            {
                warn!(provider = %provider_name, theirs, ours, "segment counts differ");
            }
            // Bill by the provider's count when it gives one.
            let billed = accepted.segments.or(our_segments);
            // The provider's own figure is the actual cost; else the price table's estimate.
            let cost = accepted
                .cost
                .map(|m| (m, false))
                .or_else(|| match &message.content {
                    Content::Sms { to, .. } => app
                        .pricing
                        .estimate(provider_name, to.as_str(), billed.unwrap_or(1))
                        .map(|m| (m, true)),
                    Content::Email { .. } => None,
                });
            AttemptResult {
                outcome: Outcome::Accepted,
                finished_at,
                provider_message_id: Some(accepted.provider_message_id),
                provider_status: accepted.provider_status,
                error_code: None,
                error: None,
                cost,
                segments: our_segments,
                provider_segments: accepted.segments,
                latency_ms: None,
                part_ids: accepted.part_ids,
            }
        }
        Err(SendError::Permanent {
            code,
            message: text,
        }) => {
            gone = handle.provider.recipient_gone(code.as_deref(), &text);
            let mut r = AttemptResult::error(Outcome::Permanent, finished_at, text);
            r.error_code = code;
            r
        }
        Err(SendError::Transient {
            code,
            message: text,
        }) => {
            let mut r = AttemptResult::error(Outcome::Transient, finished_at, text);
            r.error_code = code;
            r
        }
        Err(SendError::Unknown {
            cause,
            message: text,
        }) => {
            let described = if text.is_empty() {
                cause.describe()
            } else {
                format!("{text}: {}", cause.describe())
            };
            let mut r = AttemptResult::error(Outcome::Unknown, finished_at, described);
            r.error_code = Some(cause.code().to_owned());
            r
        }
    };
    result.latency_ms = Some(latency_ms);
    (result, gone)
}

/// A call past its timeout, still listened to.
struct LateCall {
    delivery_id: String,
    attempt: i64,
    provider: String,
    grace: Duration,
    started: Instant,
    message: OutgoingMessage,
}

/// Listens on for `call`'s answer for the provider's grace, and records it
/// on its attempt once the dispatcher has closed that attempt as unknown
/// (`closed`): an acceptance moves the delivery to `sent` and cancels a
/// retry that was waiting; a refusal is recorded too.
fn listen_late(
    app: &Arc<App>,
    late: LateCall,
    call: std::pin::Pin<Box<dyn Future<Output = Result<Accepted, SendError>> + Send>>,
    closed: tokio::sync::oneshot::Receiver<()>,
) {
    let app = app.clone();
    let span = tracing::Span::current();
    app.late.clone().spawn(
        async move {
            let answer = tokio::time::timeout(late.grace, call).await;
            // Until the attempt is closed there is nothing to record on.
            let _ = closed.await;
            // Silence to the end, or a call that broke off: still no answer.
            let answer = match answer {
                Ok(Err(SendError::Unknown { .. })) | Err(_) => {
                    debug!(attempt = late.attempt, "no late answer within the grace");
                    return;
                }
                Ok(answer) => answer,
            };
            let Some(handle) = app.providers.get(&late.provider) else {
                return;
            };
            let latency_ms = i64::try_from(late.started.elapsed().as_millis()).unwrap_or(i64::MAX);
            let now = app.clock.now();
            let (result, _) = result_of(&app, handle, &late.message, answer, now, latency_ms);
            match app
                .db
                .record_late_answer(&late.delivery_id, late.attempt, &result, now)
                .await
            {
                Ok(record) if record.recorded => {
                    info!(
                        attempt = late.attempt,
                        outcome = %result.outcome,
                        latency_ms,
                        moved_to = record.moved_to.map(|s| s.as_str()).unwrap_or("-"),
                        "late answer recorded"
                    );
                    if record.moved_to == Some(DeliveryStatus::Pending)
                        || result.outcome != Outcome::Accepted
                    {
                        app.wakers.wake(Lane::for_kind(late.message.kind));
                    }
                }
                Ok(_) => debug!(
                    attempt = late.attempt,
                    "late answer for an attempt already settled"
                ),
                Err(e) => {
                    warn!(attempt = late.attempt, error = %e, "recording a late answer failed")
                }
            }
        }
        .instrument(span),
    );
}

/// Where an attempt with an unknown outcome stands.
struct UnknownAt {
    attempt: i64,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    /// How long the call is still listened to, when it is.
    grace: Option<Duration>,
}

/// The step after an attempt whose outcome is unknown, by the delivery's
/// `retry.after_unknown` rule: `resend` at once through a provider of the
/// route that has not had an unknown outcome yet (else left `unknown`);
/// `resolve`: due again once the late answer had its grace, when the
/// provider is asked (the resolve step in [`handle_claimed`]) and only
/// without a record sent again, once; `hold`: left `unknown`. Never past
/// the deadline: out of time or attempts it is left `unknown`, not failed
/// (it may have been sent).
fn after_unknown(
    app: &App,
    delivery: &Delivery,
    recipient: &Recipient,
    history: &[AttemptSummary],
    provider: &str,
    at: UnknownAt,
    result: &mut AttemptResult,
) -> NextStep {
    let rule = app.config.retry.after_unknown(delivery.kind);
    let earlier: Vec<&str> = history
        .iter()
        .filter(|a| is_call_unknown(a))
        .map(|a| a.provider.as_str())
        .collect();
    let retry_at = match rule {
        AfterUnknown::Hold => None,
        AfterUnknown::Resend => {
            let route = app.router.providers_for_attempt(recipient, 1);
            let untried = route.iter().any(|p| *p != provider && !earlier.contains(p));
            untried.then_some(at.now)
        }
        AfterUnknown::Resolve if !earlier.is_empty() => None,
        AfterUnknown::Resolve => {
            let wait = at.grace.unwrap_or_default();
            Some(at.now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
        }
    };
    let then = match (rule, retry_at) {
        (AfterUnknown::Hold, _) => "left for ops (retry.after_unknown = \"hold\")".to_owned(),
        (AfterUnknown::Resend, None) => {
            "every provider of the route had no answer: left for ops".to_owned()
        }
        (AfterUnknown::Resolve, None) => "it was already sent again once: left for ops".to_owned(),
        (AfterUnknown::Resend, Some(_)) => "sending again through the next provider".to_owned(),
        (AfterUnknown::Resolve, Some(_)) => match at.grace {
            Some(grace) => format!(
                "listening for a late answer for {}, then asking the provider",
                humantime::format_duration(grace)
            ),
            None => "asking the provider".to_owned(),
        },
    };
    let error = result.error.take().unwrap_or_default();
    let max = u32::try_from(delivery.row.max_attempts).unwrap_or(1);
    match retry_at.map(|when| {
        after_failure(
            attempt_number(at.attempt),
            max,
            Duration::ZERO,
            when,
            at.deadline,
        )
    }) {
        Some(AfterFailure::RetryAt(when)) => {
            result.error = Some(format!("{error}; {then}"));
            NextStep::Retry {
                job: DeliveryJob::new(&delivery.row.id),
                at: when,
            }
        }
        Some(AfterFailure::OutOfAttempts) => {
            result.error = Some(format!(
                "{error}; not sent again: {} attempts made (retry.max_attempts)",
                at.attempt
            ));
            NextStep::Unknown
        }
        Some(AfterFailure::OutOfTime) => {
            result.error = Some(format!("{error}; not sent again: out of time"));
            NextStep::Unknown
        }
        None => {
            result.error = Some(format!("{error}; {then}"));
            NextStep::Unknown
        }
    }
}

/// Whether an attempt ended unknown in the call itself (no answer, a
/// connection lost after the write, an unreadable answer), not because
/// tuma's own worker stopped.
fn is_call_unknown(a: &AttemptSummary) -> bool {
    a.outcome == Some(Outcome::Unknown)
        && matches!(
            a.error_code.as_deref(),
            Some("tuma.no_answer" | "tuma.connection_lost" | "tuma.unreadable_answer")
        )
}

/// What the resolve step decided.
enum Resolved {
    /// The provider has it (recorded as sent), or the delivery was put back
    /// to ask again later: nothing more to do now.
    Settled,
    /// Send it again, once, for this reason.
    SendAgain(String),
}

/// The resolve step (`retry.after_unknown = "resolve"`), once the late
/// answer to `last` had its grace: asks the provider, where it can say,
/// whether it took the message. Found: recorded on that attempt as
/// accepted, the delivery `sent`, nothing sent again. Not found, or the
/// provider cannot say: sent again, once. A lookup that fails for now is
/// asked again after the backoff delay (within the retry time).
async fn resolve(
    app: &App,
    delivery: &Delivery,
    job: &DeliveryJob,
    last: &AttemptSummary,
    message: &mut OutgoingMessage,
    now: DateTime<Utc>,
) -> Result<Resolved, StoreError> {
    let Some(lookup) = app.providers.message_lookup(&last.provider) else {
        return Ok(Resolved::SendAgain(format!(
            "resend: attempt {} ({}) had no answer, and {} cannot say whether it has the message",
            last.attempt, last.provider, last.provider
        )));
    };
    // Clocks differ: a minute's margin before the attempt began.
    let since = last.started_at - chrono::Duration::minutes(1);
    message.valid_for = None;
    match lookup.find_sent(message, since).await {
        Ok(Lookup::Found(found)) => {
            let Some(handle) = app.providers.get(&last.provider) else {
                return Ok(Resolved::SendAgain(format!(
                    "resend: attempt {} ({}) had no answer, and {} is no longer configured",
                    last.attempt, last.provider, last.provider
                )));
            };
            // Recorded as the acceptance that never reached tuma would have been.
            let accepted = Accepted {
                provider_message_id: found.provider_message_id,
                provider_status: found.provider_status,
                cost: found.cost,
                segments: found.segments,
                part_ids: Vec::new(),
            };
            let (mut result, _) = result_of(app, handle, message, Ok(accepted), now, 0);
            result.latency_ms = None;
            let record = app
                .db
                .record_late_answer(&delivery.row.id, last.attempt, &result, now)
                .await?;
            info!(
                attempt = last.attempt,
                provider = %last.provider,
                moved_to = record.moved_to.map(|s| s.as_str()).unwrap_or("-"),
                "the provider has the message that had no answer: recorded as sent, not sent again"
            );
            Ok(Resolved::Settled)
        }
        Ok(Lookup::NotFound) => Ok(Resolved::SendAgain(format!(
            "resend: attempt {} ({}) had no answer, and {} has no record of it",
            last.attempt, last.provider, last.provider
        ))),
        Err(SendError::Permanent { message: why, .. }) => Ok(Resolved::SendAgain(format!(
            "resend: attempt {} ({}) had no answer, and asking {} failed: {why}",
            last.attempt, last.provider, last.provider
        ))),
        Err(e @ (SendError::Transient { .. } | SendError::Unknown { .. })) => {
            let later = now
                + chrono::Duration::from_std(
                    app.config.retry.initial_delay.max(Duration::from_secs(1)),
                )
                .unwrap_or(chrono::Duration::MAX);
            let deadline = retry_deadline(app, delivery);
            if later >= deadline {
                return Ok(Resolved::SendAgain(format!(
                    "resend: attempt {} ({}) had no answer, and {} could not be asked in time: {e}",
                    last.attempt, last.provider, last.provider
                )));
            }
            warn!(provider = %last.provider, error = %e, "asking the provider about an unanswered send failed; asking again later");
            app.db
                .requeue(&delivery.row.id, Some(&job.job_id), Some(later), now)
                .await?;
            Ok(Resolved::Settled)
        }
    }
}

/// What [`choose_provider`] decided.
enum Choice<'a> {
    /// Call this provider; the reason is recorded on the attempt.
    Call(&'a str, String),
    /// Every provider of the route is cooling down: wait until the first
    /// circuit lets a probe through, spending no attempt.
    Wait {
        until: DateTime<Utc>,
        open: Vec<&'a str>,
    },
}

/// Picks the provider for this attempt from the route's ordered candidates,
/// skipping any whose circuit is open; when every circuit is open, the
/// delivery waits for the one that reopens first.
fn choose_provider<'a>(
    app: &App,
    candidates: &[&'a str],
    attempt: u32,
    now: DateTime<Utc>,
) -> Result<Choice<'a>, String> {
    let mut skipped = Vec::new();
    let mut soonest: Option<DateTime<Utc>> = None;
    // A half-open probe holds its circuit for at most the longest send.
    let lease = app.config.longest_send();
    for (i, name) in candidates.iter().enumerate() {
        let Some(handle) = app.providers.get(name) else {
            return Err(format!("provider `{name}` is not configured"));
        };
        match handle.breaker.open_until(now, lease) {
            None => {
                let mut why = match (attempt, i) {
                    (1, 0) => "primary".to_owned(),
                    (_, 0) => format!("failover: attempt {attempt}"),
                    _ => format!("attempt {attempt}"),
                };
                if !skipped.is_empty() {
                    why.push_str(&format!("; skipped {} (circuit open)", skipped.join(", ")));
                }
                return Ok(Choice::Call(name, why));
            }
            Some(until) => {
                skipped.push(*name);
                if soonest.is_none_or(|u| until < u) {
                    soonest = Some(until);
                }
            }
        }
    }
    match soonest {
        Some(until) => Ok(Choice::Wait {
            until,
            open: skipped,
        }),
        None => Err("the route has no providers".to_owned()),
    }
}

/// Puts a delivery whose every provider is cooling down back until the first
/// circuit reopens (an OTP no later than its expiry, where it expires),
/// spending no attempt; its `last_error` says why.
async fn wait_for_circuits(
    app: &App,
    job: &DeliveryJob,
    delivery: &Delivery,
    until: DateTime<Utc>,
    open: &[&str],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // No later than the end of its retry time (an OTP's expiry); a
    // notification whose time ends now is not put back again.
    let at = until.min(retry_deadline(app, delivery));
    if at <= now && delivery.kind == DeliveryKind::Notification {
        return give_up_unsent(app, job, delivery, now).await;
    }
    let why = format!(
        "waiting, no attempt spent: every provider of the route has its circuit open ({}) until {}",
        open.join(", "),
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    if app
        .db
        .postpone(&delivery.row.id, &job.job_id, at, &why, now)
        .await?
    {
        debug!(until = %at, "every circuit open: waiting");
    }
    Ok(())
}

/// When retrying must stop: an OTP's (or a notification's own) expiry;
/// else `retry.give_up_after` from when the delivery was first due (its
/// acceptance, or the time it was scheduled for), so a notification queued
/// through an outage is not sent later than that.
fn retry_deadline(app: &App, delivery: &Delivery) -> DateTime<Utc> {
    let budget = delivery.row.send_at.unwrap_or(delivery.row.created_at)
        + chrono::Duration::from_std(app.config.retry.give_up_after)
            .unwrap_or(chrono::Duration::MAX);
    match (delivery.kind, delivery.row.expires_at) {
        (DeliveryKind::Otp, Some(expires_at)) => expires_at,
        (_, Some(expires_at)) => expires_at.min(budget),
        (_, None) => budget,
    }
}

/// The step after a transient error (or an unknown outcome) on attempt
/// `attempt`: a retry after the backoff delay (or at once, for a call whose
/// outcome was lost, which says nothing against the provider), never past
/// `deadline`; or failure once the deadline passed or `retry.max_attempts`
/// calls are spent (noted in the attempt's error).
fn after_transient(
    app: &App,
    delivery: &Delivery,
    attempt: i64,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    result: &mut AttemptResult,
) -> NextStep {
    let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
    let max = u32::try_from(delivery.row.max_attempts).unwrap_or(1);
    let delay = match result.outcome {
        Outcome::Unknown => Duration::ZERO,
        _ => delay_after(&app.config.retry, attempt),
    };
    let why = match after_failure(attempt, max, delay, now, deadline) {
        AfterFailure::RetryAt(at) => {
            return NextStep::Retry {
                job: DeliveryJob::new(&delivery.row.id),
                at,
            };
        }
        AfterFailure::OutOfAttempts => format!("gave up after {attempt} attempts"),
        AfterFailure::OutOfTime if delivery.row.expires_at == Some(deadline) => match delivery.kind
        {
            DeliveryKind::Otp => format!("gave up after {attempt} attempts: the code expired"),
            DeliveryKind::Notification => {
                format!("gave up after {attempt} attempts: its own deadline passed")
            }
        },
        AfterFailure::OutOfTime => format!(
            "gave up after {attempt} attempts over {} (retry.give_up_after)",
            humantime::format_duration(app.config.retry.give_up_after)
        ),
    };
    let error = result.error.take().unwrap_or_default();
    result.error = Some(format!("{why}; last error: {error}"));
    NextStep::Failed
}

/// Settles a delivery left in `sending` (its worker died or lost the call,
/// or recording the answer failed). When this process still holds the
/// provider's answer, that answer is recorded, as it happened; else the
/// attempt is closed as `unknown` with the `cause` (or what this process
/// knows of it) and the delivery retried at once, on the route's next
/// provider (or failed when out of attempts or time). Used by the dispatcher
/// and the sweeper.
pub async fn resolve_interrupted(
    app: &App,
    delivery: &Delivery,
    cause: UnknownCause,
) -> Result<(), StoreError> {
    let Some(job_id) = delivery.row.job_id.as_deref() else {
        return Ok(());
    };
    let now = app.clock.now();
    let lane = Lane::for_kind(delivery.kind);
    let (result, next, known) = match app.unsettled.get(job_id) {
        Some(Remembered::Answer {
            mut result,
            next,
            error,
        }) => {
            let late = format!("recorded late: the database failed when the answer came ({error})");
            result.error = Some(match result.error.take() {
                Some(e) => format!("{e}; {late}"),
                None => late,
            });
            (*result, next, true)
        }
        remembered => {
            let cause = match remembered {
                Some(Remembered::Lost(known)) => known,
                _ => cause,
            };
            let mut result = AttemptResult::error(Outcome::Unknown, now, cause.describe());
            result.error_code = Some(cause.code().to_owned());
            let deadline = retry_deadline(app, delivery);
            let next = after_transient(
                app,
                delivery,
                delivery.row.attempts,
                now,
                deadline,
                &mut result,
            );
            (result, next, false)
        }
    };
    let job = DeliveryJob {
        delivery_id: delivery.row.id.clone(),
        job_id: job_id.to_owned(),
    };
    let settled = app
        .batcher
        .finish_attempt(&job, result.clone(), next, lane)
        .await?;
    app.unsettled.forget(job_id);
    if settled {
        if known {
            warn!(
                attempt = delivery.row.attempts,
                "the provider's answer recorded after the database came back"
            );
        } else {
            warn!(
                attempt = delivery.row.attempts,
                code = result.error_code.as_deref().unwrap_or_default(),
                "interrupted attempt settled as unknown"
            );
        }
    }
    Ok(())
}

/// Fails a notification whose retry time ran out before a provider took
/// it, without a call.
async fn give_up_unsent(
    app: &App,
    job: &DeliveryJob,
    delivery: &Delivery,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let why = format!(
        "not sent: its retry time ran out ({} after it was due, retry.give_up_after) before a provider took it{}",
        humantime::format_duration(app.config.retry.give_up_after),
        delivery
            .row
            .last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    );
    if app
        .db
        .close_pending(
            &delivery.row.id,
            &job.job_id,
            DeliveryStatus::Failed,
            &why,
            now,
        )
        .await?
    {
        warn!("its retry time ran out before it could be sent");
    }
    Ok(())
}

async fn fail_unsendable(app: &App, job: &DeliveryJob, reason: &str) -> Result<(), StoreError> {
    let now = app.clock.now();
    if app
        .db
        .close_pending(
            &job.delivery_id,
            &job.job_id,
            DeliveryStatus::Failed,
            reason,
            now,
        )
        .await?
    {
        warn!(reason, "failed without a provider call");
    }
    Ok(())
}

/// The estimated cost of `message` through `provider` (SMS only: the price
/// table's rate times tuma's segment count), for the spend guard.
fn estimate(
    app: &App,
    provider: &str,
    message: &OutgoingMessage,
) -> Option<crate::domain::money::Money> {
    match &message.content {
        Content::Sms { to, text } => {
            app.pricing
                .estimate(provider, to.as_str(), count_segments(text).segments)
        }
        Content::Email { .. } => None,
    }
}

fn parse_stored_recipient(delivery: &Delivery) -> Result<Recipient, String> {
    let to = &delivery.row.recipient;
    match delivery.channel {
        Channel::Sms => PhoneNumber::parse_e164(to)
            .map(Recipient::Phone)
            .map_err(|e| format!("stored recipient `{to}` is not usable: {e}")),
        Channel::Email => EmailAddress::parse(to)
            .map(Recipient::Email)
            .map_err(|e| format!("stored recipient `{to}` is not usable: {e}")),
    }
}

/// Renders the message again, now with the OTP code, exactly as validated at intake.
fn build_message(
    app: &App,
    delivery: &Delivery,
    code: Option<&str>,
    recipient: &Recipient,
) -> Result<OutgoingMessage, String> {
    let row = &delivery.row;
    let code = match delivery.kind {
        DeliveryKind::Otp => match code {
            Some(c) => match app.otp_keys.open(&row.id, c) {
                Ok(code) => Some(code),
                // Written by a tuma from before codes were sealed: still sent
                // (it is wiped like any other), so an upgrade drops no pending OTP.
                Err(crate::secrets::OpenError::NotSealed) if OtpCode::parse(c).is_ok() => {
                    OtpCode::parse(c).ok()
                }
                Err(e) => return Err(format!("cannot decrypt the code: {e}")),
            },
            None => return Err("the OTP code is no longer stored".into()),
        },
        DeliveryKind::Notification => None,
    };
    let vars = match serde_json::from_str::<serde_json::Value>(&row.vars) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err("stored template variables are not a JSON object".into()),
    };
    let rendered = match app.templates.render(
        &row.template,
        &row.locale,
        delivery.channel,
        &with_code(&vars, code.as_ref()),
    ) {
        Ok(r) => r,
        Err(e) => return Err(e.to_string()),
    };
    let content = match recipient {
        Recipient::Phone(to) => Content::Sms {
            to: to.clone(),
            text: rendered.text,
        },
        Recipient::Email(to) => Content::Email {
            to: to.clone(),
            subject: rendered.subject.unwrap_or_default(),
            text: rendered.text,
            html: rendered.html,
        },
    };
    Ok(OutgoingMessage {
        delivery_id: row.id.clone(),
        kind: delivery.kind,
        content,
        code,
        valid_for: None,
    })
}
