//! The dispatcher: what a worker does with one claimed delivery.
//!
//! Take the delivery as the claim read it; do nothing if the claim is stale;
//! expire a stale OTP instead of sending it; pick the provider for this
//! attempt (failover after transient errors); wait for the provider's
//! rate-limit slot; reserve the estimate in its budgets (or hold it); record
//! the attempt as `sending`; call the provider under a timeout; record the
//! outcome and, for a transient error, the time the delivery is due again,
//! together; settle the reservation.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::domain::email::EmailAddress;
use crate::domain::otp::OtpCode;
use crate::domain::phone::PhoneNumber;
use crate::domain::segments::count_segments;
use crate::domain::unknown::UnknownCause;
use crate::domain::{Channel, DeliveryKind, DeliveryStatus, Recipient};
use crate::intake::with_code;
use crate::providers::{Content, OutgoingMessage, SendError};
use crate::queue::{DeliveryJob, Lane};
use crate::retry::{AfterFailure, after_failure, delay_after};
use crate::store::{AttemptResult, Delivery, NextStep, Outcome, StoreError};
use crate::unsettled::Remembered;

/// Handles one job. Errors are database errors only: every delivery outcome,
/// good or bad, is recorded and returns `Ok`.
pub async fn handle_job(app: &App, lane: Lane, job: &DeliveryJob) -> Result<(), StoreError> {
    handle_claimed(app, lane, job, None).await
}

/// [`handle_job`], given the delivery (and its code) as the claim read it,
/// when it did; else it is read first.
pub async fn handle_claimed(
    app: &App,
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
                "the code expired before it could be sent",
                now,
            )
            .await?
        {
            info!("expired before it could be sent");
        }
        return Ok(());
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
    let attempt = u32::try_from(delivery.row.attempts + 1).unwrap_or(u32::MAX);
    let candidates = app.router.providers_for_attempt(&recipient, attempt);
    let (provider_name, why) = match choose_provider(app, &candidates, attempt, now) {
        Ok(Choice::Call(name, why)) => (name, why),
        Ok(Choice::Wait { until, open }) => {
            return wait_for_circuits(app, job, &delivery, until, &open, now).await;
        }
        Err(reason) => return fail_unsendable(app, job, &reason).await,
    };
    let Some(handle) = app.providers.get(provider_name) else {
        let reason = format!("provider `{provider_name}` is not configured");
        return fail_unsendable(app, job, &reason).await;
    };
    let mut message = match build_message(app, &delivery, code.as_deref(), &recipient) {
        Ok(m) => m,
        Err(reason) => return fail_unsendable(app, job, &reason).await,
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
    // Read before the call: after it, a database error must not lose the answer.
    let deadline = retry_deadline(app, &delivery, i64::from(attempt), app.clock.now()).await?;
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
    let sent = tokio::time::timeout(handle.timeout, handle.provider.send(&message)).await;
    let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let finished_at = app.clock.now();
    let our_segments = match &message.content {
        Content::Sms { text, .. } => Some(count_segments(text).segments),
        Content::Email { .. } => None,
    };

    match &sent {
        Ok(Ok(_) | Err(SendError::Permanent { .. })) => handle.breaker.record_answer(),
        Ok(Err(SendError::Transient { .. } | SendError::Unknown { .. })) | Err(_) => {
            if handle.breaker.record_failure(finished_at) {
                warn!(provider = %provider_name, "circuit opened: provider skipped while it cools down");
                crate::shared_circuits::opened(app, handle, finished_at).await;
            }
        }
    }
    // A permanent error the adapter marks as "no such recipient" suppresses it.
    let mut gone = None;
    let (result, next) = match sent {
        Ok(Ok(accepted)) => {
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
            let result = AttemptResult {
                outcome: Outcome::Accepted,
                finished_at,
                provider_message_id: Some(accepted.provider_message_id),
                provider_status: accepted.provider_status,
                error_code: None,
                error: None,
                cost,
                segments: our_segments,
                provider_segments: accepted.segments,
                latency_ms: Some(latency_ms),
                part_ids: accepted.part_ids,
            };
            (result, NextStep::Sent)
        }
        Ok(Err(SendError::Permanent { code, message })) => {
            gone = handle.provider.recipient_gone(code.as_deref(), &message);
            let mut r = AttemptResult::error(Outcome::Permanent, finished_at, message);
            r.error_code = code;
            r.latency_ms = Some(latency_ms);
            (r, NextStep::Failed)
        }
        Ok(Err(SendError::Unknown { cause, message })) => {
            let mut r = AttemptResult::error(Outcome::Transient, finished_at, message);
            r.error_code = Some(cause.code().to_owned());
            r.latency_ms = Some(latency_ms);
            let next = after_transient(app, &delivery, attempt, finished_at, deadline, &mut r);
            (r, next)
        }
        Ok(Err(SendError::Transient { code, message })) => {
            let mut r = AttemptResult::error(Outcome::Transient, finished_at, message);
            r.error_code = code;
            r.latency_ms = Some(latency_ms);
            let next = after_transient(app, &delivery, attempt, finished_at, deadline, &mut r);
            (r, next)
        }
        Err(_) => {
            let mut r = AttemptResult::error(
                Outcome::Transient,
                finished_at,
                format!(
                    "no answer within {}",
                    humantime::format_duration(handle.timeout)
                ),
            );
            r.latency_ms = Some(latency_ms);
            let next = after_transient(app, &delivery, attempt, finished_at, deadline, &mut r);
            (r, next)
        }
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
    if !recorded {
        warn!(
            attempt,
            "the sweeper took this delivery over during the call"
        );
        return Ok(());
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
        NextStep::Retry { at, .. } => {
            info!(provider = %provider_name, attempt, retry_at = %at, error, "transient error; retry scheduled")
        }
    }
    Ok(())
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
    let at = delivery.row.expires_at.map_or(until, |e| until.min(e));
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

/// When retrying attempt `attempt` (begun at `started_at`) must stop: an
/// OTP's expiry; for a notification, `retry.give_up_after` from its first
/// attempt.
async fn retry_deadline(
    app: &App,
    delivery: &Delivery,
    attempt: i64,
    started_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, StoreError> {
    if let Some(expires_at) = delivery.row.expires_at {
        return Ok(expires_at);
    }
    let first = if attempt <= 1 {
        started_at
    } else {
        app.db
            .first_attempt_at(&delivery.row.id)
            .await?
            .unwrap_or(started_at)
    };
    Ok(first
        + chrono::Duration::from_std(app.config.retry.give_up_after)
            .unwrap_or(chrono::Duration::MAX))
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
        AfterFailure::OutOfTime if delivery.row.expires_at.is_some() => {
            format!("gave up after {attempt} attempts: the code expired")
        }
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
            let deadline = retry_deadline(app, delivery, delivery.row.attempts, now).await?;
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
