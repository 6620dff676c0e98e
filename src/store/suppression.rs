//! `suppressions`: recipients a provider said do not exist, blacklisted the
//! sender or unsubscribed, one row per channel and recipient.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::{Db, Doing, StoreError, on_pool};
use crate::domain::Channel;

/// A suppressed recipient.
#[derive(Debug, Clone, PartialEq, Eq, FromRow, Serialize)]
pub struct Suppression {
    /// `sms` or `email`.
    pub channel: String,
    /// The E.164 number or address.
    pub recipient: String,
    /// What the provider said, in words.
    pub reason: String,
    /// The delivery whose failure caused it.
    pub delivery_id: String,
    /// The provider that said it.
    pub provider: String,
    /// The provider's error code.
    pub error_code: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "channel, recipient, reason, delivery_id, provider, error_code, created_at";

impl Db {
    /// Suppresses a recipient (again: the newest failure is kept).
    pub async fn suppress(&self, s: &Suppression) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO suppressions (channel, recipient, reason, delivery_id, provider, error_code, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (channel, recipient) DO UPDATE SET reason = excluded.reason, \
                 delivery_id = excluded.delivery_id, provider = excluded.provider, \
                 error_code = excluded.error_code, created_at = excluded.created_at",
            )
            .bind(&s.channel)
            .bind(&s.recipient)
            .bind(&s.reason)
            .bind(&s.delivery_id)
            .bind(&s.provider)
            .bind(&s.error_code)
            .bind(s.created_at)
            .execute(pool)
            .await
            .doing("suppressing a recipient")?;
        });
        Ok(())
    }

    /// The recipient's suppression made after `since` (older ones expired).
    pub async fn suppression(
        &self,
        channel: Channel,
        recipient: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<Suppression>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM suppressions WHERE channel = $1 AND recipient = $2 AND created_at > $3"
        );
        on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(channel.as_str())
                .bind(recipient)
                .bind(since)
                .fetch_optional(pool)
                .await
                .doing("reading a suppression")
        })
    }

    /// Suppressions made after `since`, newest first.
    pub async fn suppressions(&self, since: DateTime<Utc>) -> Result<Vec<Suppression>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM suppressions WHERE created_at > $1 ORDER BY created_at DESC, recipient"
        );
        on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(since)
                .fetch_all(pool)
                .await
                .doing("listing suppressions")
        })
    }

    /// Lifts a recipient's suppressions (every channel); how many.
    pub async fn unsuppress(&self, recipient: &str) -> Result<u64, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query("DELETE FROM suppressions WHERE recipient = $1")
                .bind(recipient)
                .execute(pool)
                .await
                .doing("lifting a suppression")?
                .rows_affected()
        }))
    }

    /// Deletes suppressions made at or before `before` (expired).
    pub async fn purge_suppressions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query("DELETE FROM suppressions WHERE created_at <= $1")
                .bind(before)
                .execute(pool)
                .await
                .doing("deleting expired suppressions")?
                .rows_affected()
        }))
    }
}
