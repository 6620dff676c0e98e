//! What the HTTP API keeps besides deliveries: API keys (only their SHA-256),
//! saved Idempotency-Key responses, keyset pages of deliveries, and the
//! figures `/metrics` reports.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{DELIVERY_COLUMNS, Db, Delivery, DeliveryRow, Doing, StoreError, on_pool};
use crate::domain::{Channel, DeliveryStatus};

/// An API key as stored: its hash, never the key.
#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyRow {
    pub id: i64,
    pub name: String,
    pub scopes: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set when the key was rotated out: it works until then.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key with the hash it was found by.
#[derive(FromRow)]
struct KeyRow {
    key_hash: String,
    #[sqlx(flatten)]
    key: ApiKeyRow,
}

/// A saved Idempotency-Key claim.
#[derive(Debug, Clone, FromRow)]
pub struct SavedResponse {
    pub request_hash: String,
    pub delivery_id: String,
    pub response_status: i64,
    pub response_body: String,
    pub created_at: DateTime<Utc>,
}

/// A page of deliveries, newest first.
#[derive(Debug, Clone, Default)]
pub struct PageFilter {
    /// Only this recipient (as stored: E.164, or a lower-cased address).
    pub recipient: Option<String>,
    /// Only those whose latest attempt ended with this provider error code.
    pub error_code: Option<String>,
    /// Only this status.
    pub status: Option<DeliveryStatus>,
    /// Only this channel.
    pub channel: Option<Channel>,
    /// Only those whose (last) provider is this one.
    pub provider: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Strictly after this `(created_at, id)` in newest-first order: the
    /// last row of the previous page.
    pub after: Option<(DateTime<Utc>, String)>,
    /// At most this many.
    pub limit: i64,
}

/// One labelled count or sum for `/metrics`.
#[derive(Debug, Clone, FromRow)]
pub struct Figure {
    pub a: String,
    pub b: String,
    pub c: String,
    pub value: i64,
}

/// Upper bounds (ms) of the attempt latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [i64; 10] =
    [50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000];

impl Db {
    /// Records a new API key by the SHA-256 of the key. Returns false when
    /// a live key (neither revoked nor rotated out) has the name.
    pub async fn create_api_key(
        &self,
        name: &str,
        key_hash: &str,
        scopes: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(name)
            .bind(key_hash)
            .bind(scopes)
            .bind(now)
            .execute(pool)
            .await
            .doing("creating an API key")?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Every API key, by name.
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, name, scopes, created_at, revoked_at, last_used_at, expires_at \
                 FROM api_keys ORDER BY name, created_at, id",
            )
            .fetch_all(pool)
            .await
            .doing("listing API keys")?
        }))
    }

    /// The key with this hash unless revoked; the caller checks
    /// `expires_at` against its clock.
    pub async fn live_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        Ok(self
            .live_api_keys(&[key_hash.to_owned()])
            .await?
            .pop()
            .flatten())
    }

    /// [`Db::live_api_key`] for many hashes in one statement; the answers
    /// are in the order of `hashes` (a hash given twice is answered twice).
    pub async fn live_api_keys(
        &self,
        hashes: &[String],
    ) -> Result<Vec<Option<ApiKeyRow>>, StoreError> {
        const COLUMNS: &str =
            "key_hash, id, name, scopes, created_at, revoked_at, last_used_at, expires_at";
        let rows: Vec<KeyRow> = match self {
            Db::Postgres(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM api_keys \
                     WHERE key_hash = ANY($1) AND revoked_at IS NULL"
                )))
                .bind(hashes)
                .fetch_all(pool)
                .await
            }
            Db::Sqlite(pool) => {
                let hashes = serde_json::to_string(hashes)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM api_keys \
                     WHERE key_hash IN (SELECT value FROM json_each($1)) AND revoked_at IS NULL"
                )))
                .bind(hashes)
                .fetch_all(pool)
                .await
            }
        }
        .doing("looking up API keys")?;
        let found: HashMap<String, ApiKeyRow> =
            rows.into_iter().map(|r| (r.key_hash, r.key)).collect();
        Ok(hashes.iter().map(|h| found.get(h).cloned()).collect())
    }

    /// Notes that a key was used, at most once a minute per key.
    pub async fn touch_api_key(&self, id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        let stale = now - chrono::Duration::minutes(1);
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 \
                 AND (last_used_at IS NULL OR last_used_at < $3)",
            )
            .bind(id)
            .bind(now)
            .bind(stale)
            .execute(pool)
            .await
            .doing("noting an API key's use")?;
        });
        Ok(())
    }

    /// Revokes every working key of this name (a rotated-out one still in
    /// its grace too), at once. Returns false when none works.
    pub async fn revoke_api_key(&self, name: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE api_keys SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(name)
            .bind(now)
            .execute(pool)
            .await
            .doing("revoking an API key")?
            .rows_affected()
        });
        Ok(done >= 1)
    }

    /// Rotates the live key `name`: it keeps working until `old_until`, and
    /// a new key (this hash, the same scopes) works from now. One
    /// transaction. Returns the scopes, or `None` when no live key has the name.
    pub async fn rotate_api_key(
        &self,
        name: &str,
        new_hash: &str,
        old_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let doing = "rotating an API key";
        Ok(on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing(doing)?;
            let scopes: Option<(String,)> = sqlx::query_as(
                "UPDATE api_keys SET expires_at = $2 \
                 WHERE name = $1 AND revoked_at IS NULL AND expires_at IS NULL \
                 RETURNING scopes",
            )
            .bind(name)
            .bind(old_until)
            .fetch_optional(&mut *tx)
            .await
            .doing(doing)?;
            match scopes {
                None => None,
                Some((scopes,)) => {
                    sqlx::query(
                        "INSERT INTO api_keys (name, key_hash, scopes, created_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(name)
                    .bind(new_hash)
                    .bind(&scopes)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .doing(doing)?;
                    tx.commit().await.doing(doing)?;
                    Some(scopes)
                }
            }
        }))
    }

    /// The saved response of an Idempotency-Key, if it has not expired.
    pub async fn saved_response(
        &self,
        api_key_id: i64,
        key: &str,
        expired_before: DateTime<Utc>,
    ) -> Result<Option<SavedResponse>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT request_hash, delivery_id, response_status, response_body, created_at \
                 FROM idempotency_keys WHERE api_key_id = $1 AND key = $2 AND created_at >= $3",
            )
            .bind(api_key_id)
            .bind(key)
            .bind(expired_before)
            .fetch_optional(pool)
            .await
            .doing("reading an idempotency key")?
        }))
    }

    /// Deletes Idempotency-Key claims created before `before`.
    pub async fn purge_idempotency_keys(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(before)
                .execute(pool)
                .await
                .doing("purging expired idempotency keys")?
                .rows_affected()
        }))
    }

    /// A page of deliveries matching `filter`, newest first (keyset order
    /// `created_at DESC, id DESC`).
    pub async fn delivery_page(&self, filter: &PageFilter) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries \
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR channel = $2) \
             AND ($3 IS NULL OR provider = $3) AND ($4 IS NULL OR created_at >= $4) \
             AND ($5 IS NULL OR created_at < $5 OR (created_at = $5 AND id < $6)) \
             AND ($8 IS NULL OR recipient = $8) \
             AND ($9 IS NULL OR EXISTS (SELECT 1 FROM delivery_attempts a \
               WHERE a.delivery_id = deliveries.id AND a.attempt = deliveries.attempts \
               AND a.error_code = $9)) \
             ORDER BY created_at DESC, id DESC LIMIT $7"
        );
        let status = filter.status.map(|s| s.as_str());
        let channel = filter.channel.map(|c| c.as_str());
        let (after_at, after_id) = match &filter.after {
            Some((at, id)) => (Some(*at), Some(id.as_str())),
            None => (None, None),
        };
        let rows: Vec<DeliveryRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(status)
                .bind(channel)
                .bind(filter.provider.as_deref())
                .bind(filter.since)
                .bind(after_at)
                .bind(after_id)
                .bind(filter.limit)
                .bind(filter.recipient.as_deref())
                .bind(filter.error_code.as_deref())
                .fetch_all(pool)
                .await
                .doing("listing deliveries")?
        });
        rows.into_iter().map(Delivery::try_from).collect()
    }

    /// Readiness: the database answers and the queue takes writes (an
    /// update of no rows of `deliveries`, in a transaction rolled back).
    pub async fn ready(&self) -> Result<(), StoreError> {
        let jobs = "UPDATE deliveries SET status = status WHERE 1 = 0";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a readiness check")?;
            sqlx::query(jobs)
                .execute(&mut *tx)
                .await
                .doing("checking the queue is writable")?;
            tx.rollback().await.doing("ending a readiness check")?;
        });
        Ok(())
    }

    /// Deliveries by channel, provider and status.
    pub async fn delivery_counts(&self) -> Result<Vec<Figure>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT channel AS a, COALESCE(provider, '') AS b, status AS c, COUNT(*) AS value \
                 FROM deliveries GROUP BY channel, provider, status",
            )
            .fetch_all(pool)
            .await
            .doing("counting deliveries")?
        }))
    }

    /// Deliveries waiting in each lane: pending (due or scheduled) by kind.
    pub async fn queue_depths(&self) -> Result<Vec<Figure>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT kind AS a, '' AS b, '' AS c, COUNT(*) AS value FROM deliveries \
                 WHERE status IN ('pending', 'sending') GROUP BY kind",
            )
            .fetch_all(pool)
            .await
            .doing("measuring queue depth")?
        }))
    }

    /// Cost of sent deliveries per currency (`a`) and whether it is the price
    /// table's estimate (`b` = `true`) or the provider's figure, in micro-units.
    pub async fn cost_totals(&self) -> Result<Vec<Figure>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT currency AS a, \
                 CASE WHEN cost_is_estimate THEN 'true' ELSE 'false' END AS b, '' AS c, \
                 CAST(SUM(cost_micros) AS BIGINT) AS value \
                 FROM deliveries WHERE currency IS NOT NULL AND cost_micros IS NOT NULL \
                 GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .fetch_all(pool)
            .await
            .doing("summing costs")?
        }))
    }

    /// Attempts that may have sent a message a second time, by provider:
    /// each one made after an earlier attempt's outcome was unknown (its
    /// reason starts with `resend`). Attempts are never deleted nor their
    /// reason changed, so the count only grows.
    pub async fn possible_duplicates(&self) -> Result<Vec<Figure>, StoreError> {
        let rows: Vec<(String, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT provider, COUNT(*) FROM delivery_attempts \
                 WHERE reason LIKE 'resend%' GROUP BY provider ORDER BY provider",
            )
            .fetch_all(pool)
            .await
            .doing("counting possible duplicates")?
        });
        Ok(rows
            .into_iter()
            .map(|(provider, value)| Figure {
                a: provider,
                b: String::new(),
                c: String::new(),
                value,
            })
            .collect())
    }

    /// Attempt latency per provider as cumulative bucket counts: for each
    /// provider, one figure per bound in [`LATENCY_BUCKETS_MS`] (`b` = bound),
    /// then `+Inf`, then `sum` (milliseconds).
    pub async fn attempt_latency(&self) -> Result<Vec<Figure>, StoreError> {
        let mut columns = String::new();
        for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            columns.push_str(&format!(
                "SUM(CASE WHEN latency_ms <= {bound} THEN 1 ELSE 0 END) AS b{i}, "
            ));
        }
        let sql = format!(
            "SELECT provider, {columns} COUNT(*) AS total, \
             CAST(COALESCE(SUM(latency_ms), 0) AS BIGINT) AS sum_ms \
             FROM delivery_attempts WHERE latency_ms IS NOT NULL GROUP BY provider"
        );
        let mut figures = Vec::new();
        on_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .doing("measuring attempt latency")?;
            for row in rows {
                use sqlx::Row;
                let provider: String = row.try_get("provider").doing("reading latency")?;
                for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
                    let n: Option<i64> = row.try_get(i + 1).doing("reading latency")?;
                    figures.push(Figure { a: provider.clone(), b: bound.to_string(), c: String::new(), value: n.unwrap_or(0) });
                }
                let total: i64 = row.try_get("total").doing("reading latency")?;
                let sum: i64 = row.try_get("sum_ms").doing("reading latency")?;
                figures.push(Figure { a: provider.clone(), b: "+Inf".into(), c: String::new(), value: total });
                figures.push(Figure { a: provider, b: "sum".into(), c: String::new(), value: sum });
            }
        });
        Ok(figures)
    }
}
