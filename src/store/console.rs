//! What the web console reads and keeps: its sessions (only the SHA-256 of a
//! session id), delivery searches with keyset pages, failures grouped for
//! replay, the overview's figures, and the per-day cost rollups. The
//! console's handlers write no SQL.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::FromRow;

use super::{CostSource, DELIVERY_COLUMNS, Db, Delivery, DeliveryRow, Doing, StoreError, on_pool};
use crate::domain::phone::region_code_of;
use crate::domain::{Channel, DeliveryKind, DeliveryStatus};

/// A live console session and the key it was opened with.
#[derive(Debug, Clone, FromRow)]
pub struct ConsoleSession {
    pub api_key_id: i64,
    pub key_name: String,
    pub scopes: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The key was revoked (the session ends with it).
    pub key_revoked_at: Option<DateTime<Utc>>,
    /// The key was rotated out and works until then.
    pub key_expires_at: Option<DateTime<Utc>>,
}

/// A console search of deliveries, newest first; every field optional.
#[derive(Debug, Clone, Default)]
pub struct ConsoleFilter {
    /// The stored recipient (E.164 or lower-cased email), exactly.
    pub recipient: Option<String>,
    /// One delivery id.
    pub id: Option<String>,
    /// The (latest) provider.
    pub provider: Option<String>,
    /// These statuses.
    pub statuses: Vec<DeliveryStatus>,
    /// The latest attempt's provider error code.
    pub error_code: Option<String>,
    pub channel: Option<Channel>,
    pub kind: Option<DeliveryKind>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
    /// Strictly after this `(created_at, id)` in newest-first order.
    pub after: Option<(DateTime<Utc>, String)>,
    pub limit: i64,
}

/// Failed, undelivered or expired deliveries of one provider and error code.
#[derive(Debug, Clone, FromRow)]
pub struct FailureGroup {
    pub provider: Option<String>,
    pub error_code: Option<String>,
    pub status: String,
    pub count: i64,
}

/// Deliveries created since some time, by channel and status.
#[derive(Debug, Clone, FromRow)]
pub struct StatusCount {
    pub channel: String,
    pub status: String,
    pub count: i64,
}

/// One lane's waiting deliveries.
#[derive(Debug, Clone, FromRow)]
pub struct LaneDepth {
    pub kind: String,
    /// Pending or sending.
    pub waiting: i64,
    /// Pending and due now.
    pub due: i64,
    /// The earliest due time of a pending delivery that is due.
    pub oldest_due: Option<DateTime<Utc>>,
}

/// One attempt, for provider health.
#[derive(Debug, Clone, FromRow)]
pub struct RecentAttempt {
    pub provider: String,
    pub outcome: Option<String>,
    pub latency_ms: Option<i64>,
}

/// A provider's latest failed attempt.
#[derive(Debug, Clone, FromRow)]
pub struct LastError {
    pub provider: String,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// A bound value of a query built from present filters only (so each
/// filter can use its index).
enum Param {
    Text(String),
    Time(DateTime<Utc>),
    Int(i64),
}

impl Db {
    /// Records a session by the SHA-256 of its id.
    pub async fn create_console_session(
        &self,
        id_hash: &str,
        api_key_id: i64,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO console_sessions (id_hash, api_key_id, created_at, last_seen_at, expires_at) \
                 VALUES ($1, $2, $3, $3, $4)",
            )
            .bind(id_hash)
            .bind(api_key_id)
            .bind(now)
            .bind(expires_at)
            .execute(pool)
            .await
            .doing("opening a console session")?;
        });
        Ok(())
    }

    /// The session whose id hashes to `id_hash`, with its key, if stored.
    pub async fn console_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT s.api_key_id, k.name AS key_name, k.scopes, s.created_at, s.last_seen_at, \
                 s.expires_at, k.revoked_at AS key_revoked_at, k.expires_at AS key_expires_at \
                 FROM console_sessions s JOIN api_keys k ON k.id = s.api_key_id WHERE s.id_hash = $1",
            )
            .bind(id_hash)
            .fetch_optional(pool)
            .await
            .doing("reading a console session")?
        }))
    }

    /// Notes a session's use at `now` (its idle time starts again).
    pub async fn touch_console_session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE console_sessions SET last_seen_at = $2 WHERE id_hash = $1")
                .bind(id_hash)
                .bind(now)
                .execute(pool)
                .await
                .doing("noting a console session's use")?;
        });
        Ok(())
    }

    /// Ends a session (sign-out, or found expired).
    pub async fn end_console_session(&self, id_hash: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(pool)
                .await
                .doing("ending a console session")?;
        });
        Ok(())
    }

    /// Deletes sessions past their lifetime or idle since before `idle_before`.
    pub async fn purge_console_sessions(
        &self,
        now: DateTime<Utc>,
        idle_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1 OR last_seen_at < $2")
                .bind(now)
                .bind(idle_before)
                .execute(pool)
                .await
                .doing("deleting old console sessions")?
                .rows_affected()
        }))
    }

    /// Deliveries matching `f`, newest first (keyset `created_at DESC, id DESC`).
    pub async fn console_deliveries(&self, f: &ConsoleFilter) -> Result<Vec<Delivery>, StoreError> {
        let mut wheres: Vec<String> = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        let mut bind = |p: Param| {
            params.push(p);
            format!("${}", params.len())
        };
        if let Some(r) = &f.recipient {
            wheres.push(format!("recipient = {}", bind(Param::Text(r.clone()))));
        }
        if let Some(id) = &f.id {
            wheres.push(format!("id = {}", bind(Param::Text(id.clone()))));
        }
        if let Some(p) = &f.provider {
            wheres.push(format!("provider = {}", bind(Param::Text(p.clone()))));
        }
        if !f.statuses.is_empty() {
            let list: Vec<String> = f
                .statuses
                .iter()
                .map(|s| bind(Param::Text(s.as_str().to_owned())))
                .collect();
            wheres.push(format!("status IN ({})", list.join(", ")));
        }
        if let Some(c) = f.channel {
            wheres.push(format!(
                "channel = {}",
                bind(Param::Text(c.as_str().into()))
            ));
        }
        if let Some(k) = f.kind {
            wheres.push(format!("kind = {}", bind(Param::Text(k.as_str().into()))));
        }
        if let Some(t) = f.from {
            wheres.push(format!("created_at >= {}", bind(Param::Time(t))));
        }
        if let Some(t) = f.to {
            wheres.push(format!("created_at < {}", bind(Param::Time(t))));
        }
        if let Some(code) = &f.error_code {
            let code = bind(Param::Text(code.clone()));
            wheres.push(format!(
                "EXISTS (SELECT 1 FROM delivery_attempts a WHERE a.delivery_id = deliveries.id \
                 AND a.attempt = deliveries.attempts AND a.error_code = {code})"
            ));
        }
        if let Some((at, id)) = &f.after {
            let at = bind(Param::Time(*at));
            let id = bind(Param::Text(id.clone()));
            wheres.push(format!(
                "(created_at < {at} OR (created_at = {at} AND id < {id}))"
            ));
        }
        let limit = bind(Param::Int(f.limit));
        let clause = if wheres.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", wheres.join(" AND "))
        };
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries {clause} \
             ORDER BY created_at DESC, id DESC LIMIT {limit}"
        );
        let rows: Vec<DeliveryRow> = on_pool!(self, pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            for p in params {
                q = match p {
                    Param::Text(s) => q.bind(s),
                    Param::Time(t) => q.bind(t),
                    Param::Int(i) => q.bind(i),
                };
            }
            q.fetch_all(pool).await.doing("searching deliveries")?
        });
        rows.into_iter().map(Delivery::try_from).collect()
    }

    /// Failed, undelivered, expired and unknown deliveries created since
    /// `since`, by provider, error code of the latest attempt, and status;
    /// largest first.
    pub async fn failure_groups(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<FailureGroup>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT d.provider, a.error_code, d.status, COUNT(*) AS count FROM deliveries d \
                 LEFT JOIN delivery_attempts a ON a.delivery_id = d.id AND a.attempt = d.attempts \
                 WHERE d.status IN ('failed', 'undelivered', 'expired', 'unknown') \
                 AND d.created_at >= $1 \
                 GROUP BY d.provider, a.error_code, d.status ORDER BY 4 DESC, 1, 2, 3",
            )
            .bind(since)
            .fetch_all(pool)
            .await
            .doing("grouping failures")?
        }))
    }

    /// Deliveries created since `since`, by channel and status.
    pub async fn status_counts_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<StatusCount>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT channel, status, COUNT(*) AS count FROM deliveries WHERE created_at >= $1 \
                 GROUP BY channel, status ORDER BY channel, status",
            )
            .bind(since)
            .fetch_all(pool)
            .await
            .doing("counting recent deliveries")?
        }))
    }

    /// Each lane's waiting deliveries at `now` (kind `otp` is the OTP lane).
    pub async fn lane_depths(&self, now: DateTime<Utc>) -> Result<Vec<LaneDepth>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT kind, COUNT(*) AS waiting, \
                 CAST(SUM(CASE WHEN status = 'pending' AND next_attempt_at <= $1 THEN 1 ELSE 0 END) AS BIGINT) AS due, \
                 MIN(CASE WHEN status = 'pending' AND next_attempt_at <= $1 THEN next_attempt_at END) AS oldest_due \
                 FROM deliveries WHERE status IN ('pending', 'sending') GROUP BY kind ORDER BY kind",
            )
            .bind(now)
            .fetch_all(pool)
            .await
            .doing("measuring the lanes")?
        }))
    }

    /// Attempts started since `since`, for success rates and latency.
    pub async fn attempts_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<RecentAttempt>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT provider, outcome, latency_ms FROM delivery_attempts WHERE started_at >= $1",
            )
            .bind(since)
            .fetch_all(pool)
            .await
            .doing("reading recent attempts")?
        }))
    }

    /// `provider`'s latest failed attempt started since `since`. One
    /// provider at a time, newest first through `delivery_attempts_started`:
    /// a `GROUP BY provider` over all of them made SQLite walk every attempt.
    pub async fn last_error(
        &self,
        provider: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<LastError>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT provider, error, error_code, started_at FROM delivery_attempts \
                 WHERE started_at >= $2 AND provider = $1 \
                 AND outcome IN ('transient', 'permanent', 'unknown') \
                 ORDER BY started_at DESC LIMIT 1",
            )
            .bind(provider)
            .bind(since)
            .fetch_optional(pool)
            .await
            .doing("reading a provider's last error")?
        }))
    }
}

/// One row of the per-day cost rollups (`cost_rollups`, kept by triggers on
/// `deliveries`): what the cost report adds up for one UTC day, channel,
/// provider, country, template and currency.
#[derive(Debug, Clone, FromRow)]
pub struct CostRollup {
    pub day: NaiveDate,
    pub channel: String,
    /// Empty when no provider was tried yet.
    pub provider: String,
    /// An SMS recipient's ISO country code; empty when it has none, and
    /// for email.
    pub country: String,
    pub template: String,
    /// Empty for deliveries without a cost.
    pub currency: String,
    pub deliveries: i64,
    pub messages: i64,
    pub segments: i64,
    pub delivered: i64,
    pub undelivered: i64,
    pub failed: i64,
    pub expired: i64,
    /// Status `sent`: no receipt yet.
    pub sent: i64,
    pub actual_micros: i64,
    pub estimated_micros: i64,
}

impl Db {
    /// The cost rollups of the UTC days `[from, to)` that hold a delivery.
    pub async fn cost_rollups(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<CostRollup>, StoreError> {
        const SQL: &str = "SELECT day, channel, provider, country, template, currency, deliveries, \
            messages, segments, delivered, undelivered, failed, expired, sent, actual_micros, \
            estimated_micros FROM cost_rollups WHERE day >= $1 AND day < $2 AND deliveries > 0 \
            ORDER BY day";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(SQL)
                .bind(from)
                .bind(to)
                .fetch_all(pool)
                .await
                .doing("reading the cost rollups")?
        }))
    }

    /// Deliveries created in `[from, to)` that are `sent` and were sent
    /// after `sent_after`: still awaiting their receipt (few: those sent
    /// within the receipt horizon).
    pub async fn awaiting_receipts(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        sent_after: DateTime<Utc>,
    ) -> Result<Vec<CostSource>, StoreError> {
        const SQL: &str = "SELECT created_at, channel, status, provider, recipient, template, \
            segments, cost_micros, currency, cost_is_estimate, sent_at FROM deliveries \
            WHERE status = 'sent' AND sent_at > $3 AND created_at >= $1 AND created_at < $2";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(SQL)
                .bind(from)
                .bind(to)
                .bind(sent_after)
                .fetch_all(pool)
                .await
                .doing("reading the deliveries awaiting a receipt")?
        }))
    }

    /// Gives SMS deliveries recorded before `deliveries.country` existed
    /// their country, one statement per 500 numbers (each its own
    /// transaction, and a no-op for rows another process got to first); the
    /// rollup triggers move their counts as it goes. Returns the rows changed.
    pub async fn derive_countries(&self) -> Result<u64, StoreError> {
        const BATCH: i64 = 500;
        let doing = "giving older deliveries their country";
        let mut changed = 0;
        loop {
            let recipients: Vec<(String,)> = on_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT DISTINCT recipient FROM deliveries \
                     WHERE channel = 'sms' AND country IS NULL LIMIT $1",
                )
                .bind(BATCH)
                .fetch_all(pool)
                .await
                .doing(doing)?
            });
            if recipients.is_empty() {
                return Ok(changed);
            }
            let cases: Vec<String> = (0..recipients.len())
                .map(|i| format!("WHEN ${} THEN ${}", 2 * i + 1, 2 * i + 2))
                .collect();
            let list: Vec<String> = (0..recipients.len())
                .map(|i| format!("${}", 2 * i + 1))
                .collect();
            let sql = format!(
                "UPDATE deliveries SET country = CASE recipient {} END \
                 WHERE channel = 'sms' AND country IS NULL AND recipient IN ({})",
                cases.join(" "),
                list.join(", ")
            );
            changed += on_pool!(self, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (recipient,) in &recipients {
                    q = q.bind(recipient.as_str()).bind(region_code_of(recipient));
                }
                q.execute(pool).await.doing(doing)?.rows_affected()
            });
            if i64::try_from(recipients.len()).unwrap_or(0) < BATCH {
                return Ok(changed);
            }
        }
    }
}

/// One HTTP attempt at a webhook endpoint, for the keys page.
#[derive(Debug, Clone, FromRow)]
pub struct EndpointAttempt {
    pub started_at: DateTime<Utc>,
    /// The event's type (`delivery.sent`); none for a `webhooks test`.
    pub event_type: Option<String>,
    pub delivery_id: Option<String>,
    /// `delivered`, `rejected`, `error` or `refused`.
    pub outcome: String,
    /// The endpoint's HTTP status, when it answered.
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

impl Db {
    /// `endpoint_id`'s latest `limit` attempts, newest first.
    pub async fn endpoint_attempts(
        &self,
        endpoint_id: &str,
        limit: i64,
    ) -> Result<Vec<EndpointAttempt>, StoreError> {
        const SQL: &str = "SELECT a.started_at, e.type AS event_type, e.delivery_id, a.outcome, \
            a.status_code, a.latency_ms, a.error FROM webhook_attempts a \
            LEFT JOIN webhook_events e ON e.id = a.event_id \
            WHERE a.endpoint_id = $1 ORDER BY a.id DESC LIMIT $2";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(SQL)
                .bind(endpoint_id)
                .bind(limit)
                .fetch_all(pool)
                .await
                .doing("reading an endpoint's webhook attempts")?
        }))
    }
}
