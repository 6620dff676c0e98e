//! `receipts`: what providers later said about a message they took. Each
//! receipt is stored against its delivery and attempt, and the delivery's
//! status, `delivered_at` and error move in the same transaction, only from
//! `sent` (the rule of `DeliveryStatus::check_transition`): a late or repeated
//! receipt is recorded and changes nothing. A message the provider split into
//! parts, each with its own id, is found by any part's id: the first receipt,
//! of whichever part, that says delivered or undelivered moves the delivery;
//! the other parts' receipts are recorded against it and move nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::spend::CounterTx;
use super::{Db, Delivery, Doing, StoreError, on_pool};
use crate::domain::DeliveryStatus;
use crate::domain::budget::{BudgetTerms, Crossing};

use crate::domain::receipt;
pub use crate::domain::receipt::ReceiptVerdict;

/// A receipt as it arrived, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReceipt {
    /// The configured provider it is for.
    pub provider: String,
    /// The provider's id of the message.
    pub provider_message_id: String,
    /// The provider's status word, as sent.
    pub status: String,
    /// What it means.
    pub verdict: ReceiptVerdict,
    /// The provider's error code.
    pub error_code: Option<String>,
    /// The error as tuma shows it (`30007 filtered as spam (permanent)`).
    pub error: Option<String>,
    /// Every field the provider sent (never a signature or URL secret).
    pub fields: serde_json::Value,
    /// When tuma received it.
    pub received_at: DateTime<Utc>,
}

/// What recording a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// No attempt of this provider has that message id: nothing was written.
    UnknownMessage,
    /// Stored against this delivery; `changed` when it moved the delivery's status.
    Recorded {
        /// The delivery it belongs to.
        delivery_id: String,
        /// Whether the delivery's status changed.
        changed: bool,
    },
}

/// A stored receipt.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct ReceiptRow {
    pub attempt: i64,
    pub provider: String,
    pub provider_message_id: String,
    pub status: String,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub applied: bool,
    pub fields: String,
    pub received_at: DateTime<Utc>,
}

impl Delivery {
    /// [`receipt::no_receipt`] of this delivery.
    pub fn no_receipt(&self, now: DateTime<Utc>, horizon: std::time::Duration) -> bool {
        receipt::no_receipt(self.status, self.row.sent_at, now, horizon)
    }

    /// [`receipt::display_status`] of this delivery.
    pub fn display_status(&self, now: DateTime<Utc>, horizon: std::time::Duration) -> String {
        receipt::display_status(self.status, self.row.sent_at, now, horizon)
    }
}

impl Db {
    /// Stores a receipt against the attempt that has its message id and, for a
    /// final verdict, moves the delivery from `sent` (setting `delivered_at`,
    /// or `last_error`), in one transaction.
    pub async fn record_receipt(&self, r: &NewReceipt) -> Result<ReceiptOutcome, StoreError> {
        let target = r.verdict.target();
        let sources: Vec<&'static str> = target
            .map(DeliveryStatus::allowed_sources)
            .unwrap_or_default()
            .into_iter()
            .map(DeliveryStatus::as_str)
            .collect();
        // The guard lists only the fixed status names, never request data.
        let guard = sources
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let update = format!(
            "UPDATE deliveries SET status = $2, updated_at = $3, \
             delivered_at = CASE WHEN $2 = 'delivered' THEN $3 ELSE delivered_at END, \
             last_error = CASE WHEN $2 = 'undelivered' THEN $4 ELSE last_error END \
             WHERE id = $1 AND status IN ({guard})"
        );
        let begin = match self {
            Db::Sqlite(_) => "BEGIN IMMEDIATE",
            Db::Postgres(_) => "BEGIN",
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(begin).await.doing("starting a transaction")?;
            let found: Option<(String, i64)> = sqlx::query_as(
                "SELECT delivery_id, attempt FROM delivery_attempts \
                 WHERE provider = $1 AND provider_message_id = $2 \
                 ORDER BY attempt DESC LIMIT 1",
            )
            .bind(&r.provider)
            .bind(&r.provider_message_id)
            .fetch_optional(&mut *tx)
            .await
            .doing("finding a receipt's delivery")?;
            // A later part of a message sent in several parts.
            let found = match found {
                Some(found) => Some(found),
                None => sqlx::query_as(
                    "SELECT delivery_id, attempt FROM provider_message_parts \
                     WHERE provider = $1 AND message_id = $2",
                )
                .bind(&r.provider)
                .bind(&r.provider_message_id)
                .fetch_optional(&mut *tx)
                .await
                .doing("finding a receipt's message part")?,
            };
            let Some((delivery_id, attempt)) = found else {
                return Ok(ReceiptOutcome::UnknownMessage);
            };
            let changed = match target {
                Some(to) if !sources.is_empty() => {
                    sqlx::query(sqlx::AssertSqlSafe(update))
                        .bind(&delivery_id)
                        .bind(to.as_str())
                        .bind(r.received_at)
                        .bind(&r.error)
                        .execute(&mut *tx)
                        .await
                        .doing("applying a receipt")?
                        .rows_affected()
                        == 1
                }
                _ => false,
            };
            sqlx::query(
                "INSERT INTO receipts (delivery_id, attempt, provider, provider_message_id, \
                 status, error_code, error, applied, fields, received_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&delivery_id)
            .bind(attempt)
            .bind(&r.provider)
            .bind(&r.provider_message_id)
            .bind(&r.status)
            .bind(&r.error_code)
            .bind(&r.error)
            .bind(changed)
            .bind(r.fields.to_string())
            .bind(r.received_at)
            .execute(&mut *tx)
            .await
            .doing("recording a receipt")?;
            tx.commit().await.doing("committing a receipt")?;
            Ok(ReceiptOutcome::Recorded { delivery_id, changed })
        })
    }

    /// A delivery's receipts, in the order they arrived.
    pub async fn receipts(&self, delivery_id: &str) -> Result<Vec<ReceiptRow>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT attempt, provider, provider_message_id, status, error_code, error, \
                 applied, fields, received_at FROM receipts WHERE delivery_id = $1 \
                 ORDER BY received_at, id",
            )
            .bind(delivery_id)
            .fetch_all(pool)
            .await
            .doing("reading receipts")?
        }))
    }
}

/// A delivery waiting for its provider's actual price.
#[derive(Debug, Clone, FromRow)]
pub struct Unpriced {
    pub id: String,
    pub provider_message_id: String,
    pub status: String,
    pub attempts: i64,
    pub sent_at: DateTime<Utc>,
}

impl Db {
    /// Deliveries of `provider` sent at or before `sent_before`, with a message
    /// id and no actual price yet, not given up: oldest first.
    pub async fn unpriced(
        &self,
        provider: &str,
        sent_before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Unpriced>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, provider_message_id, status, attempts, sent_at FROM deliveries \
                 WHERE provider = $1 AND provider_message_id IS NOT NULL \
                 AND sent_at IS NOT NULL AND sent_at <= $2 AND reconciled_at IS NULL \
                 AND status IN ('sent', 'delivered', 'undelivered') \
                 ORDER BY sent_at, id LIMIT $3",
            )
            .bind(provider)
            .bind(sent_before)
            .bind(limit)
            .fetch_all(pool)
            .await
            .doing("finding deliveries without a price")?
        }))
    }

    /// Records the provider's actual price (and billed segments) on the
    /// delivery and its last attempt, and replaces what the delivery was
    /// charged in its budgets (`terms`) by it, in one transaction; a price
    /// already recorded is kept. Returns the budget thresholds crossed.
    pub async fn record_actual_price(
        &self,
        delivery_id: &str,
        attempt: i64,
        price: crate::domain::money::Money,
        segments: Option<u32>,
        terms: &[BudgetTerms],
        now: DateTime<Utc>,
    ) -> Result<Vec<Crossing>, StoreError> {
        let segments = segments.map(i64::from);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            let priced = sqlx::query(
                "UPDATE deliveries SET cost_micros = $2, currency = $3, cost_is_estimate = FALSE, \
                 segments = COALESCE($4, segments), reconciled_at = $5, \
                 reconcile_note = 'actual price', updated_at = $5 \
                 WHERE id = $1 AND reconciled_at IS NULL",
            )
            .bind(delivery_id)
            .bind(price.micros)
            .bind(price.currency.as_str())
            .bind(segments)
            .bind(now)
            .execute(&mut *tx)
            .await
            .doing("recording an actual price")?
            .rows_affected()
                == 1;
            sqlx::query(
                "UPDATE delivery_attempts SET cost_micros = $3, currency = $4, \
                 cost_is_estimate = FALSE, provider_segments = COALESCE($5, provider_segments) \
                 WHERE delivery_id = $1 AND attempt = $2",
            )
            .bind(delivery_id)
            .bind(attempt)
            .bind(price.micros)
            .bind(price.currency.as_str())
            .bind(segments)
            .execute(&mut *tx)
            .await
            .doing("recording an attempt's actual price")?;
            let crossed = if priced {
                tx.recharge(delivery_id, price, terms, now).await?
            } else {
                Vec::new()
            };
            tx.commit().await.doing("committing an actual price")?;
            Ok(crossed)
        })
    }

    /// Records the price a receipt reports for message `provider_message_id`
    /// of `provider` as the actual price of its delivery and attempt. A
    /// receipt's price is that of the one message part it names, so it
    /// reconciles only a message sent in one part (a message in several
    /// keeps the parts' summed price from the send). Returns whether it
    /// recorded the price, and the budget thresholds it crossed.
    pub async fn record_receipt_price(
        &self,
        provider: &str,
        provider_message_id: &str,
        price: crate::domain::money::Money,
        terms: &[BudgetTerms],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Crossing>>, StoreError> {
        let found: Option<(String, i64, Option<i64>)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT delivery_id, attempt, COALESCE(provider_segments, segments) \
                 FROM delivery_attempts WHERE provider = $1 AND provider_message_id = $2 \
                 ORDER BY attempt DESC LIMIT 1",
            )
            .bind(provider)
            .bind(provider_message_id)
            .fetch_optional(pool)
            .await
            .doing("finding a priced receipt's attempt")?
        });
        match found {
            Some((delivery_id, attempt, segments)) if segments.unwrap_or(1) <= 1 => {
                let crossed = self
                    .record_actual_price(&delivery_id, attempt, price, None, terms, now)
                    .await?;
                Ok(Some(crossed))
            }
            _ => Ok(None),
        }
    }

    /// Stops looking for a delivery's price, saying why.
    pub async fn give_up_price(
        &self,
        delivery_id: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET reconciled_at = $2, reconcile_note = $3 \
                 WHERE id = $1 AND reconciled_at IS NULL",
            )
            .bind(delivery_id)
            .bind(now)
            .bind(why)
            .execute(pool)
            .await
            .doing("giving up a price")?;
        });
        Ok(())
    }
}
