//! What many tuma processes on one database share: providers' rate-limit
//! buckets (Postgres), open circuits, and the housekeeping lease.
//!
//! Each is one row per provider (or per lease) changed by one statement, so
//! two processes racing on it serialise on the row: on Postgres the second
//! `UPDATE` waits for the first's row lock and then evaluates its `SET`
//! against the first's result; SQLite has one writer.

use chrono::{DateTime, Utc};

use super::{Db, Doing, StoreError, on_pool};
use crate::domain::gcra::Gcra;

/// What one take from a shared bucket got (`domain::gcra`'s rule, run by
/// the database on its own clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateTake {
    /// Tokens granted.
    pub granted: u32,
    /// The bucket's theoretical arrival time after the take, in microseconds.
    pub tat_us: i64,
    /// The database's clock at the take, in microseconds.
    pub now_us: i64,
}

/// One provider's open circuit, as shared.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SharedCircuit {
    /// The provider's name.
    pub provider: String,
    /// Until when every process skips it.
    pub open_until: DateTime<Utc>,
}

impl Db {
    /// Takes up to `want` tokens from `provider`'s shared bucket under
    /// `gcra`, creating the bucket (full) on first use. `None` on SQLite,
    /// where each process keeps its own limiter.
    pub async fn take_rate_tokens(
        &self,
        provider: &str,
        gcra: &Gcra,
        want: u32,
    ) -> Result<Option<RateTake>, StoreError> {
        let Db::Postgres(pool) = self else {
            return Ok(None);
        };
        let doing = "taking tokens from a provider's shared rate bucket";
        // Both the TAT and the count granted are computed from the row as
        // it is when this statement holds its lock: the same arithmetic as
        // `Gcra::take`, with e = GREATEST(tat_us, now).
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "UPDATE provider_rate_buckets AS b
             SET tat_us = GREATEST(b.tat_us, n.us)
                    + LEAST($4, GREATEST(0, (n.us + $3 + $2 - GREATEST(b.tat_us, n.us)) / $2)) * $2,
                 granted = LEAST($4, GREATEST(0, (n.us + $3 + $2 - GREATEST(b.tat_us, n.us)) / $2))
             FROM (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT AS us) AS n
             WHERE b.provider = $1
             RETURNING b.granted, b.tat_us, n.us",
        )
        .bind(provider)
        .bind(gcra.interval_us)
        .bind(gcra.tolerance_us)
        .bind(i64::from(want))
        .fetch_optional(pool)
        .await
        .doing(doing)?;
        let row = match row {
            Some(row) => row,
            None => {
                // First use anywhere: a full bucket (its TAT in the past),
                // then the take above.
                sqlx::query(
                    "INSERT INTO provider_rate_buckets (provider, tat_us, granted)
                     VALUES ($1, 0, 0) ON CONFLICT (provider) DO NOTHING",
                )
                .bind(provider)
                .execute(pool)
                .await
                .doing(doing)?;
                return Box::pin(self.take_rate_tokens(provider, gcra, want)).await;
            }
        };
        let (granted, tat_us, now_us) = row;
        Ok(Some(RateTake {
            granted: u32::try_from(granted).unwrap_or(0),
            tat_us,
            now_us,
        }))
    }

    /// The bucket's TAT for `provider` (tests and `tuma check`-style looks).
    pub async fn rate_bucket_tat(&self, provider: &str) -> Result<Option<i64>, StoreError> {
        on_pool!(self, pool => sqlx::query_scalar(
            "SELECT tat_us FROM provider_rate_buckets WHERE provider = $1",
        )
        .bind(provider)
        .fetch_optional(pool)
        .await
        .doing("reading a provider's shared rate bucket"))
    }

    /// Records that `holder` opened `provider`'s circuit until `open_until`
    /// (kept if another process already holds it open for longer).
    pub async fn open_shared_circuit(
        &self,
        provider: &str,
        open_until: DateTime<Utc>,
        holder: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO provider_circuits (provider, open_until, opened_by, opened_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (provider) DO UPDATE
             SET open_until = excluded.open_until, opened_by = excluded.opened_by,
                 opened_at = excluded.opened_at
             WHERE provider_circuits.open_until < excluded.open_until",
        )
        .bind(provider)
        .bind(open_until)
        .bind(holder)
        .bind(now)
        .execute(pool)
        .await
        .doing("sharing an open circuit")
        .map(|_| ()))
    }

    /// Circuits still open at `now`.
    pub async fn open_shared_circuits(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<SharedCircuit>, StoreError> {
        on_pool!(self, pool => sqlx::query_as(
            "SELECT provider, open_until FROM provider_circuits WHERE open_until > $1",
        )
        .bind(now)
        .fetch_all(pool)
        .await
        .doing("reading shared circuits"))
    }

    /// Takes or renews lease `name` for `holder` until `until`: true when
    /// `holder` has it (it was free, expired at `now`, or already its own).
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO housekeeping_leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE
             SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE housekeeping_leases.holder = excluded.holder
                OR housekeeping_leases.expires_at <= $4",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(pool)
        .await
        .doing("taking the housekeeping lease")
        .map(|r| r.rows_affected() > 0))
    }

    /// Gives lease `name` up, if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "DELETE FROM housekeeping_leases WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(holder)
        .execute(pool)
        .await
        .doing("releasing the housekeeping lease")
        .map(|_| ()))
    }

    /// Who holds lease `name` and until when.
    pub async fn lease_holder(
        &self,
        name: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        on_pool!(self, pool => sqlx::query_as(
            "SELECT holder, expires_at FROM housekeeping_leases WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await
        .doing("reading the housekeeping lease"))
    }
}
