//! What a delivery's earlier attempts say, for the dispatcher's rule after
//! an unknown outcome, and the late answers heard after a provider's
//! timeout: recorded on the attempt they answer, moving the delivery as the
//! answer says.

use chrono::{DateTime, Utc};

use super::{Db, Doing, StoreError, on_pool};
use crate::domain::DeliveryStatus;
use crate::domain::attempt::{AttemptResult, Outcome};

/// One earlier attempt of a delivery, as the dispatcher weighs what follows.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptSummary {
    /// Its number (1-based).
    pub attempt: i64,
    /// The provider it went to.
    pub provider: String,
    /// How it ended; `None` while open.
    pub outcome: Option<Outcome>,
    /// The provider's or tuma's code (`tuma.no_answer`).
    pub error_code: Option<String>,
    /// Why that provider (`primary`, `resend …`).
    pub reason: Option<String>,
    /// When it began.
    pub started_at: DateTime<Utc>,
}

/// Where a late answer left the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateRecord {
    /// The attempt was still waiting for its answer and now holds it.
    pub recorded: bool,
    /// The delivery's new status, when the answer moved it.
    pub moved_to: Option<DeliveryStatus>,
}

/// An attempt still waiting for its answer: closed `unknown` by the call
/// itself (no answer within the timeout, with tuma listening on; a
/// connection lost after the write; an unreadable answer), so a late answer
/// or the provider's own record settles it.
const AWAITING: &str = "outcome = 'unknown' AND error_code IN \
     ('tuma.no_answer', 'tuma.connection_lost', 'tuma.unreadable_answer')";

impl Db {
    /// Every attempt of the delivery, in order.
    pub async fn attempt_history(&self, id: &str) -> Result<Vec<AttemptSummary>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT attempt, provider, outcome, error_code, reason, started_at \
                 FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind(id)
            .fetch_all(pool)
            .await
            .doing("reading a delivery's attempts")?
        }))
    }

    /// Records the answer that came for attempt `attempt` after its timeout,
    /// or the provider's own record of it (an attempt closed `unknown` by
    /// the call; any other is left alone). An acceptance moves the delivery to `sent` from any of
    /// [`DeliveryStatus::late_acceptance_sources`], cancelling a retry that
    /// was waiting; a refusal moves an `unknown` delivery on (`failed`, or
    /// due again at `now` for a transient one) and brings a retry that was
    /// waiting for the answer forward to `now`.
    pub async fn record_late_answer(
        &self,
        id: &str,
        attempt: i64,
        result: &AttemptResult,
        now: DateTime<Utc>,
    ) -> Result<LateRecord, StoreError> {
        if result.outcome == Outcome::Unknown {
            // Still no answer: nothing to record.
            return Ok(LateRecord {
                recorded: false,
                moved_to: None,
            });
        }
        let cost = result.cost.as_ref();
        let recorded = on_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE delivery_attempts SET outcome = $3, finished_at = $4, \
                 provider_message_id = $5, provider_status = $6, error_code = $7, error = $8, \
                 cost_micros = $9, currency = $10, cost_is_estimate = $11, segments = $12, \
                 provider_segments = $13, latency_ms = $14 \
                 WHERE delivery_id = $1 AND attempt = $2 AND {AWAITING}"
            )))
            .bind(id)
            .bind(attempt)
            .bind(result.outcome.as_str())
            .bind(result.finished_at)
            .bind(result.provider_message_id.as_deref())
            .bind(result.provider_status.as_deref())
            .bind(result.error_code.as_deref())
            .bind(result.error.as_deref())
            .bind(cost.map(|(m, _)| m.micros))
            .bind(cost.map(|(m, _)| m.currency.as_str()))
            .bind(cost.map(|(_, estimate)| *estimate))
            .bind(result.segments.map(i64::from))
            .bind(result.provider_segments.map(i64::from))
            .bind(result.latency_ms)
            .execute(pool)
            .await
            .doing("recording a late answer")?
            .rows_affected()
        }) == 1;
        if !recorded {
            return Ok(LateRecord {
                recorded,
                moved_to: None,
            });
        }
        if result.outcome == Outcome::Accepted && result.part_ids.len() > 1 {
            for (n, part) in (1_i64..).zip(&result.part_ids) {
                on_pool!(self, pool => {
                    sqlx::query(
                        "INSERT INTO provider_message_parts \
                         (provider, message_id, delivery_id, attempt, part) \
                         SELECT provider, $3, delivery_id, attempt, $4 FROM delivery_attempts \
                         WHERE delivery_id = $1 AND attempt = $2 ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(attempt)
                    .bind(part)
                    .bind(n)
                    .execute(pool)
                    .await
                    .doing("recording a late answer's parts")?;
                });
            }
        }
        let moved_to = match result.outcome {
            Outcome::Accepted => self
                .promote_late_acceptance(id, now)
                .await?
                .then_some(DeliveryStatus::Sent),
            Outcome::Permanent => self
                .settle_unknown(id, DeliveryStatus::Failed, result.error.as_deref(), now)
                .await?
                .then_some(DeliveryStatus::Failed),
            Outcome::Transient | Outcome::Unknown => {
                if self
                    .settle_unknown(id, DeliveryStatus::Pending, result.error.as_deref(), now)
                    .await?
                {
                    Some(DeliveryStatus::Pending)
                } else if self
                    .settle_unknown(id, DeliveryStatus::Failed, result.error.as_deref(), now)
                    .await?
                {
                    // An OTP left unknown has no code left to send again.
                    Some(DeliveryStatus::Failed)
                } else {
                    // A retry waiting for this answer need wait no longer.
                    on_pool!(self, pool => {
                        sqlx::query(
                            "UPDATE deliveries SET next_attempt_at = $2, updated_at = $2 \
                             WHERE id = $1 AND status = 'pending' AND next_attempt_at > $2 \
                             AND lease_until IS NULL",
                        )
                        .bind(id)
                        .bind(now)
                        .execute(pool)
                        .await
                        .doing("bringing a retry forward")?;
                    });
                    None
                }
            }
        };
        Ok(LateRecord { recorded, moved_to })
    }

    /// Moves the delivery to `sent` when one of its attempts was accepted
    /// and it is in one of [`DeliveryStatus::late_acceptance_sources`]: the
    /// first accepted attempt's provider, id and cost become the delivery's,
    /// and a waiting retry is cancelled (its claim token cleared, so a
    /// worker about to open an attempt finds the delivery gone). Returns
    /// whether it moved.
    pub async fn promote_late_acceptance(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let sources = DeliveryStatus::late_acceptance_sources()
            .map(|s| format!("'{}'", s.as_str()))
            .join(", ");
        let moved = on_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE deliveries SET status = 'sent', provider = a.provider, \
                 provider_message_id = a.provider_message_id, sent_at = a.finished_at, \
                 cost_micros = a.cost_micros, currency = a.currency, \
                 cost_is_estimate = a.cost_is_estimate, \
                 segments = COALESCE(a.provider_segments, a.segments, deliveries.segments), \
                 last_error = NULL, next_attempt_at = NULL, job_id = NULL, \
                 lease_until = NULL, leased_by = NULL, otp_code = NULL, updated_at = $2 \
                 FROM (SELECT provider, provider_message_id, finished_at, cost_micros, currency, \
                 cost_is_estimate, segments, provider_segments FROM delivery_attempts \
                 WHERE delivery_id = $1 AND outcome = 'accepted' ORDER BY attempt LIMIT 1) AS a \
                 WHERE deliveries.id = $1 AND deliveries.status IN ({sources})"
            )))
            .bind(id)
            .bind(now)
            .execute(pool)
            .await
            .doing("recording a late acceptance")?
            .rows_affected()
        });
        Ok(moved == 1)
    }

    /// Moves an `unknown` delivery to `to` (`failed`, or `pending` and due
    /// at `now`: a notification only, since an OTP's code was wiped when it
    /// became `unknown`) after a late refusal.
    async fn settle_unknown(
        &self,
        id: &str,
        to: DeliveryStatus,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        DeliveryStatus::Unknown
            .check_transition(to)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let retry_at = (to == DeliveryStatus::Pending).then_some(now);
        let job_id = retry_at.map(|_| crate::queue::DeliveryJob::new(id).job_id);
        let moved = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET status = $2, next_attempt_at = $3, job_id = $4, \
                 last_error = $5, updated_at = $6 WHERE id = $1 AND status = 'unknown' \
                 AND ($2 <> 'pending' OR kind = 'notification')",
            )
            .bind(id)
            .bind(to.as_str())
            .bind(retry_at)
            .bind(job_id)
            .bind(error)
            .bind(now)
            .execute(pool)
            .await
            .doing("settling an unknown delivery")?
            .rows_affected()
        });
        Ok(moved == 1)
    }
}
