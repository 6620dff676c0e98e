//! Canceling a delivery: the one status change a caller makes. It is one
//! transaction of its own, so whatever must happen with it (an event to
//! announce it) is written in the same commit.

use chrono::{DateTime, Utc};

use super::{Db, Doing, StoreError};
use crate::domain::DeliveryStatus;

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canceled {
    /// It was pending: it is `canceled` now, its code wiped and its job
    /// released (the job finds the delivery gone from its hands).
    Done,
    /// It has moved on (a provider has it, or it is finished): unchanged.
    TooLate(DeliveryStatus),
    /// No delivery has the id.
    NotFound,
}

impl Db {
    /// Cancels the delivery `id` if no provider has had it yet (`pending`, or
    /// `held` for its budget, which reserves nothing): guarded by the statuses
    /// `DeliveryStatus::allowed_sources` gives, like every change, so a worker
    /// that opened an attempt first wins and the cancel answers
    /// `TooLate(sending)`, and a worker coming after finds it canceled and
    /// sends nothing.
    pub async fn cancel_delivery(
        &self,
        id: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Canceled, StoreError> {
        let sources: Vec<String> = DeliveryStatus::allowed_sources(DeliveryStatus::Canceled)
            .into_iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        // The guard lists only the fixed status names, never request data.
        let update = format!(
            "UPDATE deliveries SET status = 'canceled', job_id = NULL, \
             lease_until = NULL, leased_by = NULL, held_budget = NULL, \
             next_attempt_at = NULL, otp_code = NULL, last_error = $2, updated_at = $3 \
             WHERE id = $1 AND status IN ({})",
            sources.join(", ")
        );
        const STATUS: &str = "SELECT status FROM deliveries WHERE id = $1";
        let reason = format!("canceled by {by}");
        let (changed, status): (u64, Option<String>) = match self {
            Db::Sqlite(pool) => {
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .doing("starting a transaction")?;
                let changed = sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
                    .bind(id)
                    .bind(&reason)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .doing("canceling a delivery")?
                    .rows_affected();
                let status = sqlx::query_scalar(STATUS)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .doing("reading a delivery's status")?;
                tx.commit().await.doing("committing a cancel")?;
                (changed, status)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.doing("starting a transaction")?;
                let changed = sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
                    .bind(id)
                    .bind(&reason)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .doing("canceling a delivery")?
                    .rows_affected();
                let status = sqlx::query_scalar(STATUS)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .doing("reading a delivery's status")?;
                tx.commit().await.doing("committing a cancel")?;
                (changed, status)
            }
        };
        match (changed, status) {
            (1, _) => Ok(Canceled::Done),
            (_, None) => Ok(Canceled::NotFound),
            (_, Some(s)) => s
                .parse()
                .map(Canceled::TooLate)
                .map_err(|_| StoreError::Corrupt(format!("delivery {id}: status `{s}`"))),
        }
    }
}
