//! What a delivery is shown with, read for many deliveries at once: their
//! attempts, receipts, replays and what each replays. One query each for a
//! whole page (Postgres `= ANY($1)`, SQLite `IN (SELECT value FROM
//! json_each($1))`), never one per delivery.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{AttemptRow, Db, Doing, ReceiptRow, ReplayInfo, ReplayOrigin, StoreError};

/// An attempt with the delivery it belongs to.
#[derive(FromRow)]
struct AttemptOf {
    delivery_id: String,
    #[sqlx(flatten)]
    row: AttemptRow,
}

/// One part of a message sent in several, with its delivery and attempt.
#[derive(FromRow)]
struct PartOf {
    delivery_id: String,
    attempt: i64,
    message_id: String,
}

/// A receipt with the delivery it belongs to.
#[derive(FromRow)]
struct ReceiptOf {
    delivery_id: String,
    #[sqlx(flatten)]
    row: ReceiptRow,
}

/// A replay with the delivery it replays.
#[derive(FromRow)]
struct ReplayOf {
    replay_of: String,
    #[sqlx(flatten)]
    row: ReplayInfo,
}

/// What a delivery replays, with its own id.
#[derive(FromRow)]
struct OriginOf {
    id: String,
    replay_of: String,
    replayed_by: Option<String>,
    replayed_at: Option<DateTime<Utc>>,
    replay_note: Option<String>,
}

/// Everything shown beside the delivery rows of a page, by delivery id.
#[derive(Debug, Default)]
pub struct DeliveryDetails {
    /// Attempts, oldest first.
    pub attempts: HashMap<String, Vec<AttemptRow>>,
    /// Receipts, in arrival order.
    pub receipts: HashMap<String, Vec<ReceiptRow>>,
    /// Replays of each delivery, oldest first.
    pub replays: HashMap<String, Vec<ReplayInfo>>,
    /// What each delivery that is a replay replays.
    pub origins: HashMap<String, ReplayOrigin>,
}

impl Db {
    /// Runs `select` (ending in `WHERE <column>`) for the deliveries `ids`.
    async fn rows_for_ids<T>(
        &self,
        select: &str,
        order: &str,
        ids: &[String],
        doing: &'static str,
    ) -> Result<Vec<T>, StoreError>
    where
        T: for<'r> FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        match self {
            Db::Postgres(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{select} = ANY($1) {order}")))
                    .bind(ids)
                    .fetch_all(pool)
                    .await
            }
            Db::Sqlite(pool) => {
                let ids =
                    serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{select} IN (SELECT value FROM json_each($1)) {order}"
                )))
                .bind(ids)
                .fetch_all(pool)
                .await
            }
        }
        .doing(doing)
    }

    /// The attempts (with their message parts), receipts, replays and replay
    /// origins of `ids`, in five queries whatever their number.
    pub async fn delivery_details(&self, ids: &[String]) -> Result<DeliveryDetails, StoreError> {
        let mut details = DeliveryDetails::default();
        if ids.is_empty() {
            return Ok(details);
        }
        let attempts: Vec<AttemptOf> = self
            .rows_for_ids(
                "SELECT delivery_id, attempt, provider, reason, started_at, finished_at, outcome, \
                 provider_message_id, provider_status, error_code, error, cost_micros, currency, \
                 cost_is_estimate, segments, provider_segments, latency_ms \
                 FROM delivery_attempts WHERE delivery_id",
                "ORDER BY delivery_id, attempt",
                ids,
                "reading attempts",
            )
            .await?;
        for a in attempts {
            details
                .attempts
                .entry(a.delivery_id)
                .or_default()
                .push(a.row);
        }
        let parts: Vec<PartOf> = self
            .rows_for_ids(
                "SELECT delivery_id, attempt, message_id FROM provider_message_parts \
                 WHERE delivery_id",
                "ORDER BY delivery_id, attempt, part",
                ids,
                "reading messages' parts",
            )
            .await?;
        for p in parts {
            if let Some(a) = details
                .attempts
                .get_mut(&p.delivery_id)
                .and_then(|list| list.iter_mut().find(|a| a.attempt == p.attempt))
            {
                a.part_ids.push(p.message_id);
            }
        }
        let receipts: Vec<ReceiptOf> = self
            .rows_for_ids(
                "SELECT delivery_id, attempt, provider, provider_message_id, status, error_code, \
                 error, applied, fields, received_at FROM receipts WHERE delivery_id",
                "ORDER BY received_at, id",
                ids,
                "reading receipts",
            )
            .await?;
        for r in receipts {
            details
                .receipts
                .entry(r.delivery_id)
                .or_default()
                .push(r.row);
        }
        let replays: Vec<ReplayOf> = self
            .rows_for_ids(
                "SELECT replay_of, id, status, replayed_by, replayed_at FROM deliveries \
                 WHERE replay_of",
                "ORDER BY created_at, id",
                ids,
                "reading replays",
            )
            .await?;
        for r in replays {
            details.replays.entry(r.replay_of).or_default().push(r.row);
        }
        let origins: Vec<OriginOf> = self
            .rows_for_ids(
                "SELECT id, replay_of, replayed_by, replayed_at, replay_note FROM deliveries \
                 WHERE replay_of IS NOT NULL AND id",
                "",
                ids,
                "reading what replays replay",
            )
            .await?;
        for o in origins {
            details.origins.insert(
                o.id,
                ReplayOrigin {
                    replay_of: o.replay_of,
                    replayed_by: o.replayed_by,
                    replayed_at: o.replayed_at,
                    replay_note: o.replay_note,
                },
            );
        }
        Ok(details)
    }
}
