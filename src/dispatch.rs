//! The dispatcher: what a worker does with one queue job.
//!
//! Load the delivery; ignore the job if it is stale; expire a stale OTP
//! instead of sending it; pick the provider for this attempt (failover after
//! transient errors); wait for the provider's rate-limit slot; record the
//! attempt as `sending`; call the provider under a timeout; record the outcome
//! and, for a transient error, schedule the next attempt as a new job in the
//! same transaction.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::domain::email::EmailAddress;
use crate::domain::otp::OtpCode;
use crate::domain::phone::PhoneNumber;
use crate::domain::segments::count_segments;
use crate::domain::{Channel, DeliveryKind, DeliveryStatus, Recipient};
use crate::intake::with_code;
use crate::providers::{Content, OutgoingMessage, SendError};
use crate::queue::{DeliveryJob, Lane};
use crate::retry::delay_after;
use crate::store::{AttemptResult, Delivery, NextStep, Outcome, StoreError};

/// Handles one job. Errors are database errors only: every delivery outcome,
/// good or bad, is recorded and returns `Ok`.
pub async fn handle_job(app: &App, lane: Lane, job: &DeliveryJob) -> Result<(), StoreError> {
    let Some((delivery, code)) = app.batcher.delivery_to_send(lane, &job.delivery_id).await? else {
        warn!(delivery = %job.delivery_id, "job for a delivery that does not exist; dropped");
        return Ok(());
    };
    if delivery.row.job_id.as_deref() != Some(job.job_id.as_str()) {
        debug!(delivery = %job.delivery_id, "stale job; the delivery has moved on");
        return Ok(());
    }
    match delivery.status {
        DeliveryStatus::Pending => {}
        DeliveryStatus::Sending => {
            // This job was re-run after its worker died mid-call.
            return resolve_interrupted(app, &delivery).await;
        }
        _ => return Ok(()),
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
            info!(delivery = %id, "expired before it could be sent");
        }
        return Ok(());
    }
    if let Some(due) = delivery.row.next_attempt_at
        && due > now
    {
        // Run early (clock skew between hosts): put it back for its time.
        app.db
            .requeue(id, Some(&job.job_id), delivery.kind, Some(due), now)
            .await?;
        return Ok(());
    }

    let recipient = match parse_stored_recipient(&delivery) {
        Ok(r) => r,
        Err(reason) => return fail_unsendable(app, job, &reason).await,
    };
    let attempt = u32::try_from(delivery.row.attempts + 1).unwrap_or(u32::MAX);
    let candidates = app.router.providers_for_attempt(&recipient, attempt);
    let (provider_name, why) = match choose_provider(app, &candidates, attempt) {
        Ok(choice) => choice,
        Err(reason) => return fail_unsendable(app, job, &reason).await,
    };
    let Some(handle) = app.providers.get(provider_name) else {
        let reason = format!("provider `{provider_name}` is not configured");
        return fail_unsendable(app, job, &reason).await;
    };
    let message = match build_message(app, &delivery, code.as_deref(), &recipient) {
        Ok(m) => m,
        Err(reason) => return fail_unsendable(app, job, &reason).await,
    };

    if tokio::time::timeout(
        app.config.worker.rate_limit_wait,
        handle.limiter.until_ready(),
    )
    .await
    .is_err()
    {
        debug!(delivery = %id, provider = %provider_name, "rate limit: no slot in time; put back");
        let later = now + chrono::Duration::seconds(1);
        app.db
            .requeue(id, Some(&job.job_id), delivery.kind, Some(later), now)
            .await?;
        return Ok(());
    }

    let started_at = app.clock.now();
    let Some(attempt) = app
        .batcher
        .begin_attempt(lane, job, provider_name, &why, started_at)
        .await?
    else {
        debug!(delivery = %id, "taken by another worker");
        return Ok(());
    };
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
        Ok(Err(SendError::Transient { .. })) | Err(_) => {
            if handle.breaker.record_failure() {
                warn!(provider = %provider_name, "circuit opened: provider skipped while it cools down");
            }
        }
    }
    let (result, next) = match sent {
        Ok(Ok(accepted)) => {
            if let (Some(theirs), Some(ours)) = (accepted.segments, our_segments)
                && theirs != ours
            {
                warn!(delivery = %id, provider = %provider_name, theirs, ours, "segment counts differ");
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
            };
            (result, NextStep::Sent)
        }
        Ok(Err(SendError::Permanent { code, message })) => {
            let mut r = AttemptResult::error(Outcome::Permanent, finished_at, message);
            r.error_code = code;
            r.latency_ms = Some(latency_ms);
            (r, NextStep::Failed)
        }
        Ok(Err(SendError::Transient { code, message })) => {
            let mut r = AttemptResult::error(Outcome::Transient, finished_at, message);
            r.error_code = code;
            r.latency_ms = Some(latency_ms);
            let next = after_transient(app, &delivery, attempt, finished_at, &mut r);
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
            let next = after_transient(app, &delivery, attempt, finished_at, &mut r);
            (r, next)
        }
    };
    let error = result.error.clone().unwrap_or_default();
    let recorded = app
        .batcher
        .finish_attempt(job, result, next.clone(), Lane::for_kind(delivery.kind))
        .await?;
    if !recorded {
        warn!(delivery = %id, attempt, "the sweeper took this delivery over during the call");
        return Ok(());
    }
    match &next {
        NextStep::Sent => {
            info!(delivery = %id, provider = %provider_name, attempt, latency_ms, "sent")
        }
        NextStep::Failed => {
            warn!(delivery = %id, provider = %provider_name, attempt, error, "failed")
        }
        NextStep::Retry { at, .. } => {
            info!(delivery = %id, provider = %provider_name, attempt, retry_at = %at, error, "transient error; retry scheduled")
        }
    }
    Ok(())
}

/// Picks the provider for this attempt from the route's ordered candidates,
/// skipping any whose circuit is open; when every circuit is open, the one
/// that reopens first. Returns it with the reason recorded on the attempt.
fn choose_provider<'a>(
    app: &App,
    candidates: &[&'a str],
    attempt: u32,
) -> Result<(&'a str, String), String> {
    let mut skipped = Vec::new();
    let mut soonest: Option<(&'a str, tokio::time::Instant)> = None;
    for (i, name) in candidates.iter().enumerate() {
        let Some(handle) = app.providers.get(name) else {
            return Err(format!("provider `{name}` is not configured"));
        };
        match handle.breaker.open_until() {
            None => {
                let mut why = match (attempt, i) {
                    (1, 0) => "primary".to_owned(),
                    (_, 0) => format!("failover: attempt {attempt}"),
                    _ => format!("attempt {attempt}"),
                };
                if !skipped.is_empty() {
                    why.push_str(&format!("; skipped {} (circuit open)", skipped.join(", ")));
                }
                return Ok((name, why));
            }
            Some(until) => {
                skipped.push(*name);
                if soonest.is_none_or(|(_, u)| until < u) {
                    soonest = Some((name, until));
                }
            }
        }
    }
    match soonest {
        Some((name, _)) => Ok((
            name,
            format!(
                "every circuit open ({}): trying the one that reopens first",
                skipped.join(", ")
            ),
        )),
        None => Err("the route has no providers".to_owned()),
    }
}

/// The step after a transient error on attempt `attempt`: a retry after the
/// backoff delay (or at once, for a call cut short by a dead worker, which
/// says nothing against the provider), or failure once every attempt is used
/// (noted in the attempt's error).
fn after_transient(
    app: &App,
    delivery: &Delivery,
    attempt: i64,
    now: DateTime<Utc>,
    result: &mut AttemptResult,
) -> NextStep {
    let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
    let max = u32::try_from(delivery.row.max_attempts).unwrap_or(1);
    if attempt >= max {
        let error = result.error.take().unwrap_or_default();
        result.error = Some(format!(
            "gave up after {attempt} attempts; last error: {error}"
        ));
        return NextStep::Failed;
    }
    let delay = match result.outcome {
        Outcome::Unknown => std::time::Duration::ZERO,
        _ => delay_after(&app.config.retry, attempt),
    };
    let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    NextStep::Retry {
        job: DeliveryJob::new(&delivery.row.id),
        at,
    }
}

/// Settles a delivery whose worker died during the provider call: the attempt
/// is closed as `unknown` and the delivery retried at once, on the route's
/// next provider (or failed when out of attempts). Used by the dispatcher and
/// the sweeper.
pub async fn resolve_interrupted(app: &App, delivery: &Delivery) -> Result<(), StoreError> {
    let Some(job_id) = delivery.row.job_id.as_deref() else {
        return Ok(());
    };
    let now = app.clock.now();
    let mut result = AttemptResult::error(
        Outcome::Unknown,
        now,
        "the worker stopped during the provider call; the message may or may not have been sent",
    );
    let next = after_transient(app, delivery, delivery.row.attempts, now, &mut result);
    if app
        .db
        .finish_attempt(
            &delivery.row.id,
            job_id,
            &result,
            &next,
            Lane::for_kind(delivery.kind),
        )
        .await?
    {
        warn!(delivery = %delivery.row.id, attempt = delivery.row.attempts, "interrupted attempt settled as unknown");
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
        warn!(delivery = %job.delivery_id, reason, "failed without a provider call");
    }
    Ok(())
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
            Some(c) => match OtpCode::parse(c) {
                Ok(code) => Some(code),
                Err(e) => return Err(format!("stored code is not usable: {e}")),
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
    })
}
