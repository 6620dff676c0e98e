//! The rows behind the cost report: one per delivery accepted in a period,
//! read as a stream so a month of traffic is never held in memory at once.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::FromRow;

use super::{Db, Doing, StoreError, on_pool};
use crate::domain::DeliveryStatus;

/// What the cost report needs of one delivery.
#[derive(Debug, Clone, FromRow)]
pub struct CostSource {
    /// When it was accepted (the report's time axis).
    pub created_at: DateTime<Utc>,
    /// `sms` or `email`.
    pub channel: String,
    /// Its status.
    pub status: DeliveryStatus,
    /// The provider of its latest attempt.
    pub provider: Option<String>,
    /// E.164 number or email address.
    pub recipient: String,
    /// Template name.
    pub template: String,
    /// SMS segments (the provider's count when it gave one).
    pub segments: Option<i64>,
    /// Cost in micro-units.
    pub cost_micros: Option<i64>,
    /// ISO 4217 code of the cost.
    pub currency: Option<String>,
    /// Whether the cost is the price table's estimate.
    pub cost_is_estimate: Option<bool>,
    /// When a provider accepted it.
    pub sent_at: Option<DateTime<Utc>>,
}

impl Db {
    /// Feeds `f` every delivery created in `[from, to)`, oldest first.
    pub async fn each_cost_source<E: From<StoreError>>(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        mut f: impl FnMut(CostSource) -> Result<(), E>,
    ) -> Result<(), E> {
        const SQL: &str = "SELECT created_at, channel, status, provider, recipient, template, \
            segments, cost_micros, currency, cost_is_estimate, sent_at FROM deliveries \
            WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at, id";
        on_pool!(self, pool => {
            let mut rows = sqlx::query_as::<_, CostSource>(SQL).bind(from).bind(to).fetch(pool);
            while let Some(row) = rows.try_next().await.doing("reading deliveries for a report")? {
                f(row)?;
            }
        });
        Ok(())
    }
}
