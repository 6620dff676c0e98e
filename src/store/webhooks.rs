//! `webhook_endpoints`, `webhook_events` and `webhook_attempts`. The event
//! rows themselves are written in the transaction of the change they tell:
//! delivery events by the database trigger of the webhooks migration, in the
//! statement that changes a delivery's status; `budget.threshold` events by
//! the budget counters' statements (`store/spend.rs`). This file
//! reads them, leases them to a dispatcher and records what each attempt got.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Db, Doing, StoreError, on_pool};

/// A registered endpoint. `secret` is the signing secret: never listed,
/// printed or logged.
#[derive(Clone, FromRow)]
pub struct EndpointRow {
    pub id: String,
    pub api_key_name: String,
    pub url: String,
    pub secret: String,
    pub events: String,
    pub with_recipient: bool,
    pub created_at: DateTime<Utc>,
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
}

impl std::fmt::Debug for EndpointRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointRow")
            .field("id", &self.id)
            .field("api_key_name", &self.api_key_name)
            .field("url", &self.url)
            .field("secret", &"********")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// An event due to be sent, with where it goes.
#[derive(Clone, FromRow)]
pub struct DueEvent {
    pub id: String,
    pub endpoint_id: String,
    pub delivery_id: Option<String>,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub sequence: i64,
    pub payload: Option<String>,
    pub created_at: DateTime<Utc>,
    pub attempts: i64,
    pub url: String,
    pub secret: String,
    pub with_recipient: bool,
}

/// An endpoint the dispatcher may send to.
#[derive(Debug, Clone, FromRow)]
pub struct SendableEndpoint {
    pub id: String,
    /// Whether its latest attempt (of any event, or a test) was delivered;
    /// false when it has none yet.
    pub last_delivered: bool,
}

/// An event as stored (no endpoint secret).
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct EventRow {
    pub id: String,
    pub endpoint_id: String,
    pub delivery_id: Option<String>,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub event_type: String,
    pub sequence: i64,
    pub payload: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub attempts: i64,
    pub status: String,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One HTTP attempt at an event.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct WebhookAttemptRow {
    pub event_id: String,
    pub endpoint_id: String,
    pub started_at: DateTime<Utc>,
    pub outcome: String,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

/// What became of an event after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventNext {
    /// A 2xx: done.
    Delivered,
    /// Try again at this time.
    Retry(DateTime<Utc>),
    /// Given up (past `webhooks.give_up_after`).
    GiveUp,
}

/// An attempt to record, and where its event goes next.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The attempt.
    pub attempt: WebhookAttemptRow,
    /// Where the event goes next.
    pub next: EventNext,
    /// When it ended (tuma's clock).
    pub now: DateTime<Utc>,
    /// Disable the endpoint if it has failed since before this.
    pub disable_if_failing_since: DateTime<Utc>,
    /// Disable the endpoint now, for this reason (it answered 410 Gone).
    pub disable_now: Option<String>,
}

/// Webhook figures for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct WebhookFigures {
    /// Events waiting to be sent (to enabled endpoints).
    pub pending: i64,
    /// When the oldest of them happened.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// Endpoints disabled for failing.
    pub disabled_endpoints: i64,
    /// Attempts by outcome.
    pub attempts: Vec<(String, i64)>,
}

const ENDPOINT_COLUMNS: &str = "id, api_key_name, url, secret, events, with_recipient, created_at, \
    failing_since, disabled_at, disabled_reason";

const EVENT_COLUMNS: &str = "id, endpoint_id, delivery_id, type, sequence, payload, created_at, \
    next_attempt_at, attempts, status, finished_at";

impl Db {
    /// The scopes (`send,read`) of the live (neither revoked nor expired)
    /// API key with this name, if there is one.
    pub async fn live_api_key_scopes(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT scopes FROM api_keys WHERE name = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > $2) LIMIT 1",
            )
            .bind(name)
            .bind(now)
            .fetch_optional(pool)
            .await
            .doing("looking up an API key by name")?
        }))
    }

    /// Registers an endpoint.
    pub async fn create_webhook_endpoint(&self, e: &EndpointRow) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, api_key_name, url, secret, events, \
                 with_recipient, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&e.id)
            .bind(&e.api_key_name)
            .bind(&e.url)
            .bind(&e.secret)
            .bind(&e.events)
            .bind(e.with_recipient)
            .bind(e.created_at)
            .execute(pool)
            .await
            .doing("registering a webhook endpoint")?;
        });
        Ok(())
    }

    /// Endpoints, oldest first; only `key`'s when given.
    pub async fn webhook_endpoints(
        &self,
        key: Option<&str>,
    ) -> Result<Vec<EndpointRow>, StoreError> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
             WHERE ($1 IS NULL OR api_key_name = $1) ORDER BY created_at, id"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(key)
                .fetch_all(pool)
                .await
                .doing("listing webhook endpoints")?
        }))
    }

    /// One endpoint.
    pub async fn webhook_endpoint(&self, id: &str) -> Result<Option<EndpointRow>, StoreError> {
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1");
        Ok(on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await
                .doing("reading a webhook endpoint")?
        }))
    }

    /// Removes an endpoint with its events and attempts. False when there
    /// was none.
    pub async fn remove_webhook_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            for sql in [
                "DELETE FROM webhook_attempts WHERE endpoint_id = $1",
                "DELETE FROM webhook_events WHERE endpoint_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .doing("removing a webhook endpoint's events")?;
            }
            let removed = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .doing("removing a webhook endpoint")?
                .rows_affected();
            tx.commit().await.doing("committing a removal")?;
            Ok(removed == 1)
        })
    }

    /// The endpoints events may go to (not disabled), oldest first, and
    /// whether each one's latest attempt was delivered.
    pub async fn sendable_webhook_endpoints(&self) -> Result<Vec<SendableEndpoint>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT p.id, COALESCE((SELECT a.outcome = 'delivered' FROM webhook_attempts a \
                   WHERE a.endpoint_id = p.id ORDER BY a.id DESC LIMIT 1), FALSE) AS last_delivered \
                 FROM webhook_endpoints p WHERE p.disabled_at IS NULL ORDER BY p.created_at, p.id",
            )
            .fetch_all(pool)
            .await
            .doing("listing the webhook endpoints to send to")?
        }))
    }

    /// Events due at `now` to `endpoint` (if it is not disabled), at most
    /// `limit`, oldest due first; for each delivery only the first still
    /// pending, so a delivery's events go out in order.
    pub async fn due_webhook_events(
        &self,
        endpoint: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<DueEvent>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT e.id, e.endpoint_id, e.delivery_id, e.type, e.sequence, e.payload, \
                 e.created_at, e.attempts, p.url, p.secret, p.with_recipient \
                 FROM webhook_events e JOIN webhook_endpoints p ON p.id = e.endpoint_id \
                 WHERE e.endpoint_id = $1 AND e.status = 'pending' AND e.next_attempt_at <= $2 \
                 AND p.disabled_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM webhook_events b WHERE b.delivery_id = e.delivery_id \
                   AND b.endpoint_id = e.endpoint_id AND b.status = 'pending' \
                   AND b.sequence < e.sequence) \
                 ORDER BY e.next_attempt_at, e.sequence LIMIT $3",
            )
            .bind(endpoint)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await
            .doing("reading due webhook events")?
        }))
    }

    /// When the next pending event to an endpoint that is not disabled comes
    /// due after `now` (a retry, or the end of a lease).
    pub async fn next_webhook_due(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT MIN(e.next_attempt_at) FROM webhook_events e \
                 JOIN webhook_endpoints p ON p.id = e.endpoint_id \
                 WHERE e.status = 'pending' AND e.next_attempt_at > $1 AND p.disabled_at IS NULL",
            )
            .bind(now)
            .fetch_one(pool)
            .await
            .doing("reading when the next webhook event is due")?
        }))
    }

    /// Leases a due event to this dispatcher until `until` (so another
    /// process does not send it meanwhile; a dispatcher that dies holding
    /// it is replaced when the lease ends). False when another took it.
    pub async fn lease_webhook_event(
        &self,
        id: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let leased = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE webhook_events SET next_attempt_at = $3 \
                 WHERE id = $1 AND status = 'pending' AND next_attempt_at <= $2",
            )
            .bind(id)
            .bind(now)
            .bind(until)
            .execute(pool)
            .await
            .doing("leasing a webhook event")?
            .rows_affected()
        });
        Ok(leased == 1)
    }

    /// Fixes an event's body at its first send; a body already fixed (by
    /// an earlier attempt) wins and is returned.
    pub async fn fix_webhook_payload(&self, id: &str, payload: &str) -> Result<String, StoreError> {
        let stored: Option<String> = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE webhook_events SET payload = $2 WHERE id = $1 AND payload IS NULL",
            )
            .bind(id)
            .bind(payload)
            .execute(pool)
            .await
            .doing("fixing a webhook payload")?;
            sqlx::query_scalar("SELECT payload FROM webhook_events WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .doing("reading a webhook payload")?
                .flatten()
        });
        Ok(stored.unwrap_or_else(|| payload.to_owned()))
    }

    /// Records an attempt and moves its event on, in one transaction; marks
    /// the endpoint failing or healthy, and disables it when the record says
    /// so (`disable_now`) or it has failed since before
    /// `disable_if_failing_since` (its pending events are then given up).
    /// Returns, when this call disabled the endpoint, the reason stored.
    pub async fn record_webhook_attempt(
        &self,
        r: &AttemptRecord,
    ) -> Result<Option<String>, StoreError> {
        let a = &r.attempt;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            sqlx::query(
                "INSERT INTO webhook_attempts (event_id, endpoint_id, started_at, outcome, \
                 status_code, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&a.event_id)
            .bind(&a.endpoint_id)
            .bind(a.started_at)
            .bind(&a.outcome)
            .bind(a.status_code)
            .bind(a.latency_ms)
            .bind(&a.error)
            .execute(&mut *tx)
            .await
            .doing("recording a webhook attempt")?;
            let (status, next) = match r.next {
                EventNext::Delivered => ("delivered", r.now),
                EventNext::Retry(at) => ("pending", at),
                EventNext::GiveUp => ("failed", r.now),
            };
            sqlx::query(
                "UPDATE webhook_events SET attempts = attempts + 1, status = $2, \
                 next_attempt_at = $3, \
                 finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE $4 END \
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(&a.event_id)
            .bind(status)
            .bind(next)
            .bind(r.now)
            .execute(&mut *tx)
            .await
            .doing("moving a webhook event on")?;
            let mut disabled = None;
            if r.next == EventNext::Delivered {
                sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1")
                    .bind(&a.endpoint_id)
                    .execute(&mut *tx)
                    .await
                    .doing("marking a webhook endpoint healthy")?;
            } else {
                let since: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2) \
                     WHERE id = $1 AND disabled_at IS NULL RETURNING failing_since",
                )
                .bind(&a.endpoint_id)
                .bind(a.started_at)
                .fetch_optional(&mut *tx)
                .await
                .doing("marking a webhook endpoint failing")?
                .flatten();
                // `since` is None when the endpoint was disabled already.
                let reason = match (since, &r.disable_now) {
                    (Some(_), Some(why)) => Some(why.clone()),
                    (Some(since), None) if since <= r.disable_if_failing_since => {
                        Some(format!("every attempt failed since {}", since.to_rfc3339()))
                    }
                    _ => None,
                };
                if let Some(reason) = reason {
                    sqlx::query(
                        "UPDATE webhook_endpoints SET disabled_at = $2, disabled_reason = $3 \
                         WHERE id = $1 AND disabled_at IS NULL",
                    )
                    .bind(&a.endpoint_id)
                    .bind(r.now)
                    .bind(&reason)
                    .execute(&mut *tx)
                    .await
                    .doing("disabling a webhook endpoint")?;
                    sqlx::query(
                        "UPDATE webhook_events SET status = 'failed', finished_at = $2 \
                         WHERE endpoint_id = $1 AND status = 'pending'",
                    )
                    .bind(&a.endpoint_id)
                    .bind(r.now)
                    .execute(&mut *tx)
                    .await
                    .doing("giving up a disabled endpoint's events")?;
                    disabled = Some(reason);
                }
            }
            tx.commit().await.doing("committing a webhook attempt")?;
            Ok(disabled)
        })
    }

    /// Records an attempt that belongs to no event (`webhooks test`).
    pub async fn record_webhook_test(&self, a: &WebhookAttemptRow) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO webhook_attempts (event_id, endpoint_id, started_at, outcome, \
                 status_code, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&a.event_id)
            .bind(&a.endpoint_id)
            .bind(a.started_at)
            .bind(&a.outcome)
            .bind(a.status_code)
            .bind(a.latency_ms)
            .bind(&a.error)
            .execute(pool)
            .await
            .doing("recording a webhook test")?;
        });
        Ok(())
    }

    /// A delivery's events, in order (every endpoint's).
    pub async fn webhook_events(&self, delivery_id: &str) -> Result<Vec<EventRow>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE delivery_id = $1 \
             ORDER BY sequence, endpoint_id"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(delivery_id)
                .fetch_all(pool)
                .await
                .doing("reading webhook events")?
        }))
    }

    /// An event's attempts, in order.
    pub async fn webhook_attempts(
        &self,
        event_id: &str,
    ) -> Result<Vec<WebhookAttemptRow>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT event_id, endpoint_id, started_at, outcome, status_code, latency_ms, error \
                 FROM webhook_attempts WHERE event_id = $1 ORDER BY id",
            )
            .bind(event_id)
            .fetch_all(pool)
            .await
            .doing("reading webhook attempts")?
        }))
    }

    /// Figures for `/metrics`, read at scrape time.
    pub async fn webhook_figures(&self) -> Result<WebhookFigures, StoreError> {
        on_pool!(self, pool => {
            let (pending, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(e.created_at) FROM webhook_events e \
                 JOIN webhook_endpoints p ON p.id = e.endpoint_id \
                 WHERE e.status = 'pending' AND p.disabled_at IS NULL",
            )
            .fetch_one(pool)
            .await
            .doing("counting pending webhook events")?;
            let disabled: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_endpoints WHERE disabled_at IS NOT NULL",
            )
            .fetch_one(pool)
            .await
            .doing("counting disabled webhook endpoints")?;
            let attempts: Vec<(String, i64)> = sqlx::query_as(
                "SELECT outcome, COUNT(*) FROM webhook_attempts GROUP BY outcome ORDER BY outcome",
            )
            .fetch_all(pool)
            .await
            .doing("counting webhook attempts")?;
            Ok(WebhookFigures {
                pending,
                oldest_pending: oldest,
                disabled_endpoints: disabled,
                attempts,
            })
        })
    }
}
