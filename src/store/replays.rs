//! Replays: a new delivery linked to the one it replays. The link, and the
//! rule that a delivery has at most one replay still going or gone through,
//! live in the database (`deliveries_one_replay`), so two replays of the same
//! delivery at once record one.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::{Db, Doing, InsertGuards, Inserted, NewDelivery, ReplayLink, StoreError, on_pool};
use crate::domain::DeliveryStatus;
use crate::queue::DeliveryJob;

/// A replay of a delivery, as the original shows it.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct ReplayInfo {
    /// The replay's delivery id.
    pub id: String,
    /// The replay's status.
    pub status: DeliveryStatus,
    /// Who replayed it.
    pub replayed_by: Option<String>,
    /// When.
    pub replayed_at: Option<DateTime<Utc>>,
}

/// What a delivery replays, if it is a replay.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct ReplayOrigin {
    /// The delivery it replays.
    pub replay_of: String,
    /// Who replayed it.
    pub replayed_by: Option<String>,
    /// When.
    pub replayed_at: Option<DateTime<Utc>>,
    /// How it was made, when ops should know (sent past the suppression list).
    pub replay_note: Option<String>,
}

impl Db {
    /// Records a replay (due at once) in one transaction. Returns
    /// `None`, writing nothing, when the original already has a replay that
    /// is still going or went through (someone replayed it first).
    pub async fn insert_replay(
        &self,
        d: &NewDelivery,
        link: &ReplayLink,
    ) -> Result<Option<DeliveryJob>, StoreError> {
        let guards = InsertGuards {
            replay: Some(link.clone()),
            ..InsertGuards::default()
        };
        match self.insert_delivery_guarded(d, &guards).await {
            Ok(Inserted::Created(job)) => Ok(Some(job)),
            Ok(other) => Err(StoreError::Corrupt(format!(
                "a replay's insert was refused by a guard it does not set: {other:?}"
            ))),
            Err(StoreError::Query { source, .. })
                if source
                    .as_database_error()
                    .is_some_and(|e| e.is_unique_violation()) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The replays of a delivery, oldest first.
    pub async fn replays_of(&self, id: &str) -> Result<Vec<ReplayInfo>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, status, replayed_by, replayed_at FROM deliveries \
                 WHERE replay_of = $1 ORDER BY created_at, id",
            )
            .bind(id)
            .fetch_all(pool)
            .await
            .doing("reading a delivery's replays")?
        }))
    }

    /// The delivery this one replays, when it is a replay.
    pub async fn replay_origin(&self, id: &str) -> Result<Option<ReplayOrigin>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT replay_of, replayed_by, replayed_at, replay_note FROM deliveries \
                 WHERE id = $1 AND replay_of IS NOT NULL",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
            .doing("reading what a delivery replays")?
        }))
    }
}
