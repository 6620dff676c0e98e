//! The queue's statements over `deliveries`: claim what is due with a lease,
//! find when the next retry comes due, give back claims a stopping worker
//! never started, find sends whose lease ran out, and retire the tables of
//! the apalis queue tuma used before.
//!
//! A delivery is due when it is `pending`, its `next_attempt_at` has come
//! and no live lease holds it. A lane is the predicate `kind = …`, each with
//! its own partial index (`deliveries_due_otp`, `deliveries_due_notification`),
//! so the SQL names the kind as a literal: a generic plan with a parameter
//! could not use them.

use chrono::{DateTime, Utc};

use super::deliveries::DELIVERY_COLUMNS;
use super::{Db, Delivery, DeliveryRow, Doing, StoreError};
use crate::domain::DeliveryKind;
use crate::queue::{DeliveryJob, Lane};

/// A claimed row: the delivery as the claim left it, and its OTP code
/// while it is stored (sealed).
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    row: DeliveryRow,
    otp_code: Option<String>,
}

/// A delivery claimed for a worker: its job, and the row as the claim read
/// it, so the dispatcher need not read it again. The code stays apart from
/// [`Delivery`], which is shown and logged.
pub struct ClaimedDelivery {
    /// The claim.
    pub job: DeliveryJob,
    /// The delivery, with its OTP code while stored.
    pub row: Option<(Delivery, Option<String>)>,
}

impl std::fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the code, nor the message.
        f.debug_struct("ClaimedDelivery")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

/// The lane's kind as its literal, and its partial index.
fn lane_sql(lane: Lane) -> (&'static str, &'static str) {
    match lane.kind() {
        DeliveryKind::Otp => ("otp", "deliveries_due_otp"),
        DeliveryKind::Notification => ("notification", "deliveries_due_notification"),
    }
}

/// The claim, for one lane: `$1` now, `$2` the lease's end, `$3` the owner,
/// `$4` how many. `{token}` is a fresh random token per row, `{lock}` the
/// Postgres row lock, `{from}` the table (SQLite names the lane's index:
/// without statistics it would walk `(status, next_attempt_at)` through
/// the other lane's backlog).
fn claim_sql(lane: Lane, token: &str, lock: &str, sqlite: bool) -> String {
    let (kind, index) = lane_sql(lane);
    let from = if sqlite {
        format!("deliveries INDEXED BY {index}")
    } else {
        "deliveries".to_owned()
    };
    format!(
        "UPDATE deliveries SET job_id = {token}, lease_until = $2, leased_by = $3 \
         WHERE id IN (SELECT id FROM {from} WHERE status = 'pending' AND kind = '{kind}' \
         AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1) \
         ORDER BY next_attempt_at LIMIT $4{lock}) \
         RETURNING {DELIVERY_COLUMNS}, otp_code"
    )
}

fn next_due_sql(lane: Lane, sqlite: bool) -> String {
    let (kind, index) = lane_sql(lane);
    let indexed = if sqlite {
        format!(" INDEXED BY {index}")
    } else {
        String::new()
    };
    format!(
        "SELECT MIN(next_attempt_at) FROM deliveries{indexed} \
         WHERE status = 'pending' AND kind = '{kind}' AND next_attempt_at > $1"
    )
}

impl Db {
    /// Claims up to `limit` deliveries of `lane` due at `now`, oldest due
    /// first, in one statement: each gets a new token (`job_id`) and a lease
    /// held by `owner` until `lease_until`. The row stays `pending`: the
    /// dispatcher's guarded `pending` → `sending` opens the attempt, so a
    /// cancel, a budget hold or an expiry can still win before it.
    ///
    /// Postgres: `FOR UPDATE SKIP LOCKED`, so concurrent claimers (in any
    /// process) take disjoint rows without waiting. SQLite: one
    /// `BEGIN IMMEDIATE` transaction, one writer at a time.
    pub async fn claim_due(
        &self,
        lane: Lane,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DeliveryJob>, StoreError> {
        Ok(self
            .claim_due_rows(lane, owner, now, lease_until, limit)
            .await?
            .into_iter()
            .map(|c| c.job)
            .collect())
    }

    /// [`Db::claim_due`], with each delivery as the claim left it (the
    /// statement returns the rows it updates, so the dispatcher starts
    /// without reading them again).
    pub async fn claim_due_rows(
        &self,
        lane: Lane,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<ClaimedRow> = match self {
            Db::Postgres(pool) => {
                let sql = claim_sql(
                    lane,
                    "gen_random_uuid()::text",
                    " FOR UPDATE SKIP LOCKED",
                    false,
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(lease_until)
                    .bind(owner)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .doing("claiming due deliveries")?
            }
            Db::Sqlite(pool) => {
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .doing("starting a claim")?;
                let sql = claim_sql(lane, "lower(hex(randomblob(16)))", "", true);
                let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(lease_until)
                    .bind(owner)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await
                    .doing("claiming due deliveries")?;
                tx.commit().await.doing("committing a claim")?;
                rows
            }
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            let job = DeliveryJob {
                delivery_id: r.row.id.clone(),
                job_id: r.row.job_id.clone().unwrap_or_default(),
            };
            let due = r.row.next_attempt_at;
            claimed.push((
                due,
                ClaimedDelivery {
                    job,
                    row: Some((Delivery::try_from(r.row)?, r.otp_code)),
                },
            ));
        }
        // RETURNING keeps no order: the oldest due goes first.
        claimed.sort_by(|a, b| (a.0, &a.1.job.delivery_id).cmp(&(b.0, &b.1.job.delivery_id)));
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    /// When the next delivery of `lane` not yet due at `now` comes due (a
    /// retry, a scheduled send): what the lane's timer waits for.
    pub async fn next_due(
        &self,
        lane: Lane,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let sqlite = matches!(self, Db::Sqlite(_));
        Ok(super::on_pool!(self, pool => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(next_due_sql(lane, sqlite)))
                .bind(now)
                .fetch_one(pool)
                .await
                .doing("finding the next due delivery")?
        }))
    }

    /// Gives back claims a stopping worker never started: their deliveries
    /// are due again at once for any worker. Returns how many were given back.
    pub async fn release_claims(&self, jobs: &[DeliveryJob]) -> Result<u64, StoreError> {
        let mut released = 0;
        for job in jobs {
            released += super::on_pool!(self, pool => {
                sqlx::query(
                    "UPDATE deliveries SET lease_until = NULL, leased_by = NULL \
                     WHERE id = $1 AND job_id = $2 AND status = 'pending'",
                )
                .bind(&job.delivery_id)
                .bind(&job.job_id)
                .execute(pool)
                .await
                .doing("giving back a claim")?
                .rows_affected()
            });
        }
        Ok(released)
    }

    /// Deliveries in `sending` whose lease ran out by `now` (or that have
    /// none: no worker holds them), oldest first: their worker died or lost
    /// the call, and whichever process finds them settles them.
    pub async fn expired_leases(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(super::on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT id FROM deliveries WHERE status = 'sending' \
                 AND (lease_until IS NULL OR lease_until <= $1) \
                 ORDER BY lease_until, id LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await
            .doing("finding sends whose lease ran out")?
        }))
    }

    /// Retires the apalis queue an earlier tuma kept beside `deliveries`
    /// (SQLite `Jobs` and `Workers`, Postgres schema `apalis`): its jobs only
    /// pointed at deliveries, which are the queue now, so the jobs of
    /// deliveries no longer `pending` or `sending` go at once, and the tables
    /// once no job is left (on Postgres the schema `apalis` with its
    /// functions; the `hstore` and `pgcrypto` extensions it asked for, and
    /// the history table of its migrations, `public._sqlx_migrations`, which
    /// another program may share, stay). Until then a tuma of the old version still
    /// running beside this one finds its jobs stale (the claim renews the
    /// token), so nothing is sent twice. Returns whether the tables are gone
    /// (or never were).
    pub async fn retire_apalis_queue(&self) -> Result<bool, StoreError> {
        let doing = "retiring the old queue's tables";
        match self {
            Db::Sqlite(pool) => {
                let exists: Option<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'Jobs'",
                )
                .fetch_optional(pool)
                .await
                .doing(doing)?;
                if exists.is_none() {
                    return Ok(true);
                }
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.doing(doing)?;
                sqlx::query(
                    "DELETE FROM Jobs WHERE NOT EXISTS (SELECT 1 FROM deliveries d \
                     WHERE d.job_id = Jobs.id AND d.status IN ('pending', 'sending'))",
                )
                .execute(&mut *tx)
                .await
                .doing(doing)?;
                let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Jobs")
                    .fetch_one(&mut *tx)
                    .await
                    .doing(doing)?;
                if left == 0 {
                    // apalis's tables, and the history of the migrations that made them.
                    let tables: Vec<String> = sqlx::query_scalar(
                        "SELECT name FROM sqlite_master WHERE type = 'table' \
                         AND name IN ('Jobs', 'Workers', '_sqlx_migrations')",
                    )
                    .fetch_all(&mut *tx)
                    .await
                    .doing(doing)?;
                    for table in tables {
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE \"{table}\"")))
                            .execute(&mut *tx)
                            .await
                            .doing(doing)?;
                    }
                    // The planner statistics an earlier tuma wrote for them.
                    let stats: Option<String> = sqlx::query_scalar(
                        "SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'",
                    )
                    .fetch_optional(&mut *tx)
                    .await
                    .doing(doing)?;
                    if stats.is_some() {
                        sqlx::query("DELETE FROM sqlite_stat1 WHERE tbl IN ('Jobs', 'Workers')")
                            .execute(&mut *tx)
                            .await
                            .doing(doing)?;
                    }
                }
                tx.commit().await.doing(doing)?;
                Ok(left == 0)
            }
            Db::Postgres(pool) => {
                let exists: Option<String> = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = 'apalis' AND table_name = 'jobs'",
                )
                .fetch_optional(pool)
                .await
                .doing(doing)?;
                if exists.is_none() {
                    return Ok(true);
                }
                let mut tx = pool.begin().await.doing(doing)?;
                sqlx::query(
                    "DELETE FROM apalis.jobs j WHERE NOT EXISTS (SELECT 1 FROM deliveries d \
                     WHERE d.job_id = j.id AND d.status IN ('pending', 'sending'))",
                )
                .execute(&mut *tx)
                .await
                .doing(doing)?;
                let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM apalis.jobs")
                    .fetch_one(&mut *tx)
                    .await
                    .doing(doing)?;
                if left == 0 {
                    sqlx::query("DROP SCHEMA apalis CASCADE")
                        .execute(&mut *tx)
                        .await
                        .doing(doing)?;
                }
                tx.commit().await.doing(doing)?;
                Ok(left == 0)
            }
        }
    }
}
