//! `deliveries` and `delivery_attempts`: every state change of a delivery is
//! one transaction, guarded by the delivery's current job id and status, so
//! two workers (or a worker and the sweeper) can never both move it.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::{Db, Doing, StoreError, on_pool};
use crate::domain::money::{Currency, Money};
use crate::domain::{Channel, DeliveryKind, DeliveryStatus};
use crate::queue::{DeliveryJob, Lane, PgJobs, PushJob};

/// A delivery to be recorded, with its first job.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Its id (a UUIDv7: sortable by creation).
    pub id: String,
    /// OTP or notification.
    pub kind: DeliveryKind,
    /// SMS or email.
    pub channel: Channel,
    /// E.164 number or email address.
    pub recipient: String,
    /// Template name.
    pub template: String,
    /// Template locale.
    pub locale: String,
    /// Template variables (never the OTP code).
    pub vars: serde_json::Value,
    /// Email subject, with any OTP code redacted.
    pub subject: Option<String>,
    /// Text body, with any OTP code redacted.
    pub body: String,
    /// Email HTML body, with any OTP code redacted.
    pub body_html: Option<String>,
    /// The OTP code, kept only while the delivery can still be sent.
    pub otp_code: Option<String>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// After this an OTP is `expired` rather than sent.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When the first attempt may start.
    pub send_at: DateTime<Utc>,
    /// SMS segments by tuma's own count.
    pub segments: Option<u32>,
    /// SMS encoding (`gsm7` / `ucs2`).
    pub encoding: Option<String>,
}

/// A claim on an `Idempotency-Key`, saved in the transaction that records
/// the delivery, with the response a repeat of the request gets.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// The API key the Idempotency-Key belongs to (keys are per API key).
    pub api_key_id: i64,
    /// The client's Idempotency-Key.
    pub key: String,
    /// A hash of the request (route and body): a repeat must match it.
    pub request_hash: String,
    /// The status of the response to replay.
    pub response_status: u16,
    /// The body of the response to replay (never holds an OTP code).
    pub response_body: String,
    /// A claim created before this has expired: it is replaced, not replayed.
    pub expired_before: DateTime<Utc>,
}

/// The per-recipient OTP limit, checked in the inserting transaction.
#[derive(Debug, Clone, Copy)]
pub struct OtpLimit {
    /// OTPs allowed in the window.
    pub max: u32,
    /// The window's start.
    pub since: DateTime<Utc>,
}

/// Checks made inside the transaction that records a delivery.
#[derive(Debug, Clone, Default)]
pub struct InsertGuards {
    /// Claim this Idempotency-Key.
    pub idempotency: Option<IdempotencyClaim>,
    /// Refuse an OTP over this limit.
    pub otp_limit: Option<OtpLimit>,
    /// Record the delivery as a replay of another. The unique index
    /// `deliveries_one_replay` refuses a second live replay of one delivery.
    pub replay: Option<ReplayLink>,
}

/// What a guarded insert did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// Recorded, with this first job.
    Created(DeliveryJob),
    /// The Idempotency-Key is already claimed; nothing was written.
    KeyTaken,
    /// The OTP limit is reached; nothing was written. The oldest OTP in the
    /// window was created at `oldest`.
    Limited {
        /// When the window's oldest OTP was created.
        oldest: DateTime<Utc>,
    },
}

/// A delivery as stored (the OTP code is never read into this type).
#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub kind: String,
    pub channel: String,
    pub recipient: String,
    pub template: String,
    pub locale: String,
    pub vars: String,
    pub subject: Option<String>,
    pub body: String,
    pub body_html: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub job_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub cost_micros: Option<i64>,
    pub currency: Option<String>,
    pub cost_is_estimate: Option<bool>,
    pub segments: Option<i64>,
    pub encoding: Option<String>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub reconciled_at: Option<DateTime<Utc>>,
    pub reconcile_note: Option<String>,
}

/// A delivery, parsed.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Row as stored.
    pub row: DeliveryRow,
    /// Parsed `kind`.
    pub kind: DeliveryKind,
    /// Parsed `channel`.
    pub channel: Channel,
    /// Parsed `status`.
    pub status: DeliveryStatus,
    /// Parsed cost, when known.
    pub cost: Option<Money>,
}

/// A stored delivery and its OTP code, read together for sending.
#[derive(FromRow)]
struct RowToSend {
    #[sqlx(flatten)]
    row: DeliveryRow,
    otp_code: Option<String>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = StoreError;
    fn try_from(row: DeliveryRow) -> Result<Self, StoreError> {
        let corrupt =
            |what: &str, v: &str| StoreError::Corrupt(format!("delivery {}: {what} `{v}`", row.id));
        let kind = row.kind.parse().map_err(|_| corrupt("kind", &row.kind))?;
        let channel = row
            .channel
            .parse()
            .map_err(|_| corrupt("channel", &row.channel))?;
        let status = row
            .status
            .parse()
            .map_err(|_| corrupt("status", &row.status))?;
        let cost = match (row.cost_micros, &row.currency) {
            (Some(micros), Some(cur)) => {
                let currency: Currency = cur.parse().map_err(|_| corrupt("currency", cur))?;
                Some(Money::new(micros, currency))
            }
            _ => None,
        };
        Ok(Delivery {
            kind,
            channel,
            status,
            cost,
            row,
        })
    }
}

/// One provider call.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct AttemptRow {
    pub attempt: i64,
    pub provider: String,
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub provider_message_id: Option<String>,
    pub provider_status: Option<String>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub cost_micros: Option<i64>,
    pub currency: Option<String>,
    pub cost_is_estimate: Option<bool>,
    pub segments: Option<i64>,
    pub provider_segments: Option<i64>,
    pub latency_ms: Option<i64>,
}

/// How a provider call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took the message.
    Accepted,
    /// Worth retrying.
    Transient,
    /// Will fail again: do not retry.
    Permanent,
    /// The worker died during the call; it may or may not have been sent.
    Unknown,
}

impl Outcome {
    /// The name stored in `delivery_attempts.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Transient => "transient",
            Outcome::Permanent => "permanent",
            Outcome::Unknown => "unknown",
        }
    }
}

/// What an attempt recorded.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// How it ended.
    pub outcome: Outcome,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// The provider's id for the message.
    pub provider_message_id: Option<String>,
    /// The provider's status word (`queued`, `Success`, …).
    pub provider_status: Option<String>,
    /// The provider's error code.
    pub error_code: Option<String>,
    /// Error text (never a secret).
    pub error: Option<String>,
    /// Cost, and whether it is an estimate.
    pub cost: Option<(Money, bool)>,
    /// Segments by tuma's own count.
    pub segments: Option<u32>,
    /// Segments as the provider counted them, when it says.
    pub provider_segments: Option<u32>,
    /// How long the call took.
    pub latency_ms: Option<i64>,
}

impl AttemptResult {
    /// A result with only an outcome and an error.
    pub fn error(outcome: Outcome, finished_at: DateTime<Utc>, error: impl Into<String>) -> Self {
        AttemptResult {
            outcome,
            finished_at,
            provider_message_id: None,
            provider_status: None,
            error_code: None,
            error: Some(error.into()),
            cost: None,
            segments: None,
            provider_segments: None,
            latency_ms: None,
        }
    }
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone)]
pub enum NextStep {
    /// Accepted by the provider.
    Sent,
    /// Given up.
    Failed,
    /// Another attempt, as this job, at this time.
    Retry {
        /// The job that will carry it.
        job: DeliveryJob,
        /// When.
        at: DateTime<Utc>,
    },
}

/// An attempt to open: `delivery_id`, owned by `job_id`, goes to `provider`.
#[derive(Debug, Clone)]
pub struct AttemptStart {
    /// The delivery.
    pub delivery_id: String,
    /// The job that must still own it.
    pub job_id: String,
    /// The provider the attempt goes to.
    pub provider: String,
    /// Why that provider (primary, failover, …).
    pub reason: String,
    /// When the attempt starts.
    pub at: DateTime<Utc>,
}

impl AttemptStart {
    /// An attempt at `job`'s delivery through `provider`, starting `at`.
    pub fn new(job: &DeliveryJob, provider: &str, reason: &str, at: DateTime<Utc>) -> Self {
        AttemptStart {
            delivery_id: job.delivery_id.clone(),
            job_id: job.job_id.clone(),
            provider: provider.to_owned(),
            reason: reason.to_owned(),
            at,
        }
    }
}

/// An attempt to close, and where its delivery goes next.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    /// The delivery.
    pub delivery_id: String,
    /// The job that must still own it.
    pub job_id: String,
    /// What the attempt recorded.
    pub result: AttemptResult,
    /// Sent, failed or retried.
    pub next: NextStep,
    /// The lane a retry job goes to.
    pub lane: Lane,
}

/// An [`AttemptEnd`] as its columns.
struct ClosedAttempt<'a> {
    delivery_id: &'a str,
    job_id: &'a str,
    result: &'a AttemptResult,
    status: DeliveryStatus,
    retry: Option<(&'a DeliveryJob, DateTime<Utc>)>,
    lane: Lane,
    cost_micros: Option<i64>,
    currency: Option<&'a str>,
    estimate: Option<bool>,
    segments: Option<i64>,
    provider_segments: Option<i64>,
}

impl<'a> ClosedAttempt<'a> {
    fn new(end: &'a AttemptEnd) -> Result<Self, StoreError> {
        let (status, retry) = match &end.next {
            NextStep::Sent => (DeliveryStatus::Sent, None),
            NextStep::Failed => (DeliveryStatus::Failed, None),
            NextStep::Retry { job, at } => (DeliveryStatus::Pending, Some((job, *at))),
        };
        DeliveryStatus::Sending
            .check_transition(status)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let cost = end.result.cost.as_ref();
        Ok(ClosedAttempt {
            delivery_id: &end.delivery_id,
            job_id: &end.job_id,
            result: &end.result,
            status,
            retry,
            lane: end.lane,
            cost_micros: cost.map(|(m, _)| m.micros),
            currency: cost.map(|(m, _)| m.currency.as_str()),
            estimate: cost.map(|(_, est)| *est),
            segments: end.result.segments.map(i64::from),
            provider_segments: end.result.provider_segments.map(i64::from),
        })
    }
}

/// One field of every row, as a Postgres array parameter.
fn column<'a, T, V>(rows: &'a [T], field: impl Fn(&'a T) -> V) -> Vec<V> {
    rows.iter().map(field).collect()
}

/// A delivery whose job is gone or whose worker died.
#[derive(Debug, Clone, FromRow)]
pub struct Orphan {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub job_id: Option<String>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Filters for listing deliveries.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<DeliveryStatus>,
    /// Only this channel.
    pub channel: Option<Channel>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Only those whose latest attempt went to this provider.
    pub provider: Option<String>,
    /// Only those whose latest attempt ended with this provider error code.
    pub error_code: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// What links a replay to the delivery it replays.
#[derive(Debug, Clone)]
pub struct ReplayLink {
    /// The delivery replayed.
    pub replay_of: String,
    /// Who asked: the OS user for the CLI, the key name for the API.
    pub replayed_by: String,
    /// When.
    pub replayed_at: DateTime<Utc>,
}

pub(crate) const DELIVERY_COLUMNS: &str = "id, kind, channel, recipient, template, locale, vars, subject, body, \
    body_html, status, attempts, max_attempts, next_attempt_at, expires_at, job_id, created_at, \
    updated_at, sent_at, provider, provider_message_id, cost_micros, currency, cost_is_estimate, \
    segments, encoding, last_error, delivered_at, reconciled_at, reconcile_note";

const ATTEMPT_COLUMNS: &str = "attempt, provider, reason, started_at, finished_at, outcome, \
    provider_message_id, provider_status, error_code, error, cost_micros, currency, \
    cost_is_estimate, segments, provider_segments, latency_ms";

impl Db {
    /// Records a new delivery and pushes its first job, in one transaction.
    pub async fn insert_delivery(&self, d: &NewDelivery) -> Result<DeliveryJob, StoreError> {
        match self
            .insert_delivery_guarded(d, &InsertGuards::default())
            .await?
        {
            Inserted::Created(job) => Ok(job),
            other => Err(StoreError::Corrupt(format!(
                "an unguarded insert was refused: {other:?}"
            ))),
        }
    }

    /// Records a new delivery and pushes its first job, in one transaction
    /// that also applies `guards`: it claims the Idempotency-Key (saving the
    /// response to replay) and checks the per-recipient OTP limit. When a
    /// guard refuses, nothing is written.
    ///
    /// A claim racing another claim of the same key waits for the other's
    /// transaction (SQLite: `BEGIN IMMEDIATE`; Postgres: the primary key's
    /// unique check), then sees it as taken.
    pub async fn insert_delivery_guarded(
        &self,
        d: &NewDelivery,
        guards: &InsertGuards,
    ) -> Result<Inserted, StoreError> {
        self.insert_deliveries_guarded(&[(d, guards)])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("an insert of one gave no answer".into()))
    }

    /// [`Db::insert_delivery_guarded`] for many deliveries in one transaction:
    /// each gets the answer it would get alone, in the order given, as if
    /// they had been inserted one after the other (an OTP counts against the
    /// limit of those after it to the same recipient). All or none: an error
    /// writes nothing. The answers are in the order of `items`; two items
    /// should not claim the same Idempotency-Key (the second is `KeyTaken`).
    pub async fn insert_deliveries_guarded(
        &self,
        items: &[(&NewDelivery, &InsertGuards)],
    ) -> Result<Vec<Inserted>, StoreError> {
        match self {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.doing("starting a transaction")?;
                let answers = insert_guarded_pg(&mut tx, items).await?;
                tx.commit().await.doing("committing deliveries")?;
                Ok(answers)
            }
            // SQLite is local: statements cost little, commits and the write
            // lock more. `BEGIN IMMEDIATE` takes the write lock at once, so a
            // read-then-write transaction never fails on a snapshot another
            // writer moved on.
            Db::Sqlite(pool) => {
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .doing("starting a transaction")?;
                let mut answers = Vec::with_capacity(items.len());
                for (d, guards) in items {
                    answers.push(insert_guarded_sqlite(&mut tx, d, guards).await?);
                }
                tx.commit().await.doing("committing deliveries")?;
                Ok(answers)
            }
        }
    }

    /// A delivery by id.
    pub async fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1");
        let row: Option<DeliveryRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await.doing("reading a delivery")?
        });
        row.map(Delivery::try_from).transpose()
    }

    /// A delivery about to be sent, with its OTP code while it is stored
    /// (one read: the dispatcher's first statement). The code stays apart
    /// from [`Delivery`], which is shown and logged.
    pub async fn delivery_to_send(
        &self,
        id: &str,
    ) -> Result<Option<(Delivery, Option<String>)>, StoreError> {
        Ok(self
            .deliveries_to_send(&[id.to_owned()])
            .await?
            .pop()
            .flatten())
    }

    /// [`Db::delivery_to_send`] for many deliveries in one statement; the
    /// answers are in the order of `ids`.
    pub async fn deliveries_to_send(
        &self,
        ids: &[String],
    ) -> Result<Vec<Option<(Delivery, Option<String>)>>, StoreError> {
        let rows: Vec<RowToSend> = match self {
            Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT {DELIVERY_COLUMNS}, otp_code FROM deliveries WHERE id = ANY($1)"
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(ids)
                    .fetch_all(pool)
                    .await
            }
            Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {DELIVERY_COLUMNS}, otp_code FROM deliveries \
                     WHERE id IN (SELECT value FROM json_each($1))"
                );
                let ids =
                    serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(ids)
                    .fetch_all(pool)
                    .await
            }
        }
        .doing("reading deliveries to send")?;
        let mut found = HashMap::with_capacity(rows.len());
        for r in rows {
            found.insert(r.row.id.clone(), (Delivery::try_from(r.row)?, r.otp_code));
        }
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }

    /// A delivery's attempts, in order.
    pub async fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let sql = format!(
            "SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_all(pool).await.doing("reading attempts")?
        }))
    }

    /// Deliveries matching `filter`, newest first.
    pub async fn list_deliveries(&self, filter: &ListFilter) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries \
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR channel = $2) \
             AND ($3 IS NULL OR created_at >= $3) AND ($5 IS NULL OR provider = $5) \
             AND ($6 IS NULL OR EXISTS (SELECT 1 FROM delivery_attempts a \
               WHERE a.delivery_id = deliveries.id AND a.attempt = deliveries.attempts \
               AND a.error_code = $6)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        );
        let status = filter.status.map(|s| s.as_str());
        let channel = filter.channel.map(|c| c.as_str());
        let rows: Vec<DeliveryRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(status)
                .bind(channel)
                .bind(filter.since)
                .bind(filter.limit)
                .bind(filter.provider.as_deref())
                .bind(filter.error_code.as_deref())
                .fetch_all(pool)
                .await
                .doing("listing deliveries")?
        });
        rows.into_iter().map(Delivery::try_from).collect()
    }

    /// Moves a pending delivery owned by `job` to `sending` and opens an
    /// attempt row. Returns the attempt number, or `None` when the delivery is
    /// no longer this job's to send.
    pub async fn begin_attempt(
        &self,
        job: &DeliveryJob,
        provider: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let start = AttemptStart::new(job, provider, reason, now);
        Ok(self
            .begin_attempts(std::slice::from_ref(&start))
            .await?
            .pop()
            .flatten())
    }

    /// [`Db::begin_attempt`] for many deliveries at once, all or none: one
    /// statement on Postgres, one transaction on SQLite. A delivery may appear
    /// only once. The answers are in the order of `starts`.
    pub async fn begin_attempts(
        &self,
        starts: &[AttemptStart],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        match self {
            Db::Postgres(pool) => {
                let started: Vec<(String, i64)> = sqlx::query_as(
                    "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
                     $4::text[], $5::timestamptz[]) AS r (id, job_id, provider, reason, at)), \
                     d AS (UPDATE deliveries SET status = 'sending', \
                     attempts = deliveries.attempts + 1, provider = r.provider, updated_at = r.at \
                     FROM r WHERE deliveries.id = r.id AND deliveries.job_id = r.job_id \
                     AND deliveries.status = 'pending' \
                     RETURNING deliveries.id, deliveries.attempts, r.provider, r.reason, r.at) \
                     INSERT INTO delivery_attempts (delivery_id, attempt, provider, reason, started_at) \
                     SELECT id, attempts, provider, reason, at FROM d RETURNING delivery_id, attempt",
                )
                .bind(column(starts, |s| s.delivery_id.as_str()))
                .bind(column(starts, |s| s.job_id.as_str()))
                .bind(column(starts, |s| s.provider.as_str()))
                .bind(column(starts, |s| s.reason.as_str()))
                .bind(column(starts, |s| s.at))
                .fetch_all(pool)
                .await
                .doing("starting attempts")?;
                let started: HashMap<String, i64> = started.into_iter().collect();
                Ok(starts
                    .iter()
                    .map(|s| started.get(&s.delivery_id).copied())
                    .collect())
            }
            // SQLite is local: statements cost little, commits and the write lock more.
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.doing("starting a transaction")?;
                let mut out = Vec::with_capacity(starts.len());
                for s in starts {
                    let attempt: Option<i64> = sqlx::query_scalar(
                        "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, \
                         provider = $3, updated_at = $4 \
                         WHERE id = $1 AND job_id = $2 AND status = 'pending' RETURNING attempts",
                    )
                    .bind(&s.delivery_id)
                    .bind(&s.job_id)
                    .bind(&s.provider)
                    .bind(s.at)
                    .fetch_optional(&mut *tx)
                    .await
                    .doing("starting an attempt")?;
                    if let Some(attempt) = attempt {
                        sqlx::query(
                            "INSERT INTO delivery_attempts \
                             (delivery_id, attempt, provider, reason, started_at) \
                             VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(&s.delivery_id)
                        .bind(attempt)
                        .bind(&s.provider)
                        .bind(&s.reason)
                        .bind(s.at)
                        .execute(&mut *tx)
                        .await
                        .doing("recording an attempt")?;
                    }
                    out.push(attempt);
                }
                tx.commit().await.doing("committing attempts")?;
                Ok(out)
            }
        }
    }

    /// Closes the open attempt of a `sending` delivery owned by `job_id` and
    /// moves the delivery on, in one transaction (pushing the retry job when
    /// there is one). Returns false when the delivery was no longer this job's.
    pub async fn finish_attempt(
        &self,
        delivery_id: &str,
        job_id: &str,
        result: &AttemptResult,
        next: &NextStep,
        lane: Lane,
    ) -> Result<bool, StoreError> {
        let end = AttemptEnd {
            delivery_id: delivery_id.to_owned(),
            job_id: job_id.to_owned(),
            result: result.clone(),
            next: next.clone(),
            lane,
        };
        Ok(self
            .finish_attempts(std::slice::from_ref(&end))
            .await?
            .pop()
            .unwrap_or(false))
    }

    /// [`Db::finish_attempt`] for many deliveries at once, all or none. On
    /// Postgres a batch of sent and failed outcomes is one statement; one
    /// with a retry (which pushes a job) is one transaction, as on SQLite. A
    /// delivery may appear only once. The answers are in the order of `ends`.
    pub async fn finish_attempts(&self, ends: &[AttemptEnd]) -> Result<Vec<bool>, StoreError> {
        let ends: Vec<ClosedAttempt<'_>> = ends
            .iter()
            .map(ClosedAttempt::new)
            .collect::<Result<_, _>>()?;
        if let Db::Postgres(pool) = self
            && ends.iter().all(|e| e.retry.is_none())
        {
            // The common outcomes, on Postgres: one statement, one round trip, one commit.
            let closed: Vec<String> = sqlx::query_scalar(
                "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
                 $4::timestamptz[], $5::text[], $6::int8[], $7::text[], $8::bool[], $9::int8[], \
                 $10::text[], $11::int8[], $12::text[], $13::text[], $14::text[], $15::int8[]) \
                 AS r (id, job_id, status, finished_at, message_id, cost_micros, currency, \
                 estimate, segments, error, provider_segments, outcome, provider_status, \
                 error_code, latency_ms)), \
                 d AS (UPDATE deliveries SET status = r.status, job_id = NULL, \
                 next_attempt_at = NULL, updated_at = r.finished_at, otp_code = NULL, \
                 sent_at = CASE WHEN r.status = 'sent' THEN r.finished_at ELSE deliveries.sent_at END, \
                 provider_message_id = COALESCE(r.message_id, deliveries.provider_message_id), \
                 cost_micros = CASE WHEN r.status = 'sent' THEN r.cost_micros ELSE deliveries.cost_micros END, \
                 currency = CASE WHEN r.status = 'sent' THEN r.currency ELSE deliveries.currency END, \
                 cost_is_estimate = CASE WHEN r.status = 'sent' THEN r.estimate \
                   ELSE deliveries.cost_is_estimate END, \
                 segments = COALESCE(r.provider_segments, r.segments, deliveries.segments), \
                 last_error = CASE WHEN r.status = 'sent' THEN NULL ELSE r.error END \
                 FROM r WHERE deliveries.id = r.id AND deliveries.job_id = r.job_id \
                 AND deliveries.status = 'sending' RETURNING deliveries.id, deliveries.attempts) \
                 UPDATE delivery_attempts a SET finished_at = r.finished_at, outcome = r.outcome, \
                 provider_message_id = r.message_id, provider_status = r.provider_status, \
                 error_code = r.error_code, error = r.error, cost_micros = r.cost_micros, \
                 currency = r.currency, cost_is_estimate = r.estimate, segments = r.segments, \
                 latency_ms = r.latency_ms, provider_segments = r.provider_segments \
                 FROM d JOIN r ON r.id = d.id \
                 WHERE a.delivery_id = d.id AND a.attempt = d.attempts RETURNING a.delivery_id",
            )
            .bind(column(&ends, |e| e.delivery_id))
            .bind(column(&ends, |e| e.job_id))
            .bind(column(&ends, |e| e.status.as_str()))
            .bind(column(&ends, |e| e.result.finished_at))
            .bind(column(&ends, |e| e.result.provider_message_id.as_deref()))
            .bind(column(&ends, |e| e.cost_micros))
            .bind(column(&ends, |e| e.currency))
            .bind(column(&ends, |e| e.estimate))
            .bind(column(&ends, |e| e.segments))
            .bind(column(&ends, |e| e.result.error.as_deref()))
            .bind(column(&ends, |e| e.provider_segments))
            .bind(column(&ends, |e| e.result.outcome.as_str()))
            .bind(column(&ends, |e| e.result.provider_status.as_deref()))
            .bind(column(&ends, |e| e.result.error_code.as_deref()))
            .bind(column(&ends, |e| e.result.latency_ms))
            .fetch_all(pool)
            .await
            .doing("recording attempts' outcomes")?;
            let closed: HashSet<String> = closed.into_iter().collect();
            return Ok(ends
                .iter()
                .map(|e| closed.contains(e.delivery_id))
                .collect());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            let mut out = Vec::with_capacity(ends.len());
            for e in &ends {
                let attempt: Option<i64> = sqlx::query_scalar(
                    "UPDATE deliveries SET status = $3, job_id = $4, next_attempt_at = $5, \
                     updated_at = $6, \
                     otp_code = CASE WHEN $3 = 'pending' THEN otp_code ELSE NULL END, \
                     sent_at = CASE WHEN $3 = 'sent' THEN $6 ELSE sent_at END, \
                     provider_message_id = COALESCE($7, provider_message_id), \
                     cost_micros = CASE WHEN $3 = 'sent' THEN $8 ELSE cost_micros END, \
                     currency = CASE WHEN $3 = 'sent' THEN $9 ELSE currency END, \
                     cost_is_estimate = CASE WHEN $3 = 'sent' THEN $10 ELSE cost_is_estimate END, \
                     segments = COALESCE($13, $11, segments), \
                     last_error = CASE WHEN $3 = 'sent' THEN NULL ELSE $12 END \
                     WHERE id = $1 AND job_id = $2 AND status = 'sending' RETURNING attempts",
                )
                .bind(e.delivery_id)
                .bind(e.job_id)
                .bind(e.status.as_str())
                .bind(e.retry.map(|(job, _)| job.job_id.as_str()))
                .bind(e.retry.map(|(_, at)| at))
                .bind(e.result.finished_at)
                .bind(&e.result.provider_message_id)
                .bind(e.cost_micros)
                .bind(e.currency)
                .bind(e.estimate)
                .bind(e.segments)
                .bind(&e.result.error)
                .bind(e.provider_segments)
                .fetch_optional(&mut *tx)
                .await
                .doing("recording an attempt's outcome")?;
                let Some(attempt) = attempt else {
                    out.push(false);
                    continue;
                };
                sqlx::query(
                    "UPDATE delivery_attempts SET finished_at = $3, outcome = $4, \
                     provider_message_id = $5, provider_status = $6, error_code = $7, error = $8, \
                     cost_micros = $9, currency = $10, cost_is_estimate = $11, segments = $12, \
                     latency_ms = $13, provider_segments = $14 \
                     WHERE delivery_id = $1 AND attempt = $2",
                )
                .bind(e.delivery_id)
                .bind(attempt)
                .bind(e.result.finished_at)
                .bind(e.result.outcome.as_str())
                .bind(&e.result.provider_message_id)
                .bind(&e.result.provider_status)
                .bind(&e.result.error_code)
                .bind(&e.result.error)
                .bind(e.cost_micros)
                .bind(e.currency)
                .bind(e.estimate)
                .bind(e.segments)
                .bind(e.result.latency_ms)
                .bind(e.provider_segments)
                .execute(&mut *tx)
                .await
                .doing("closing an attempt")?;
                if let Some((job, at)) = e.retry {
                    tx.push_job(e.lane, job, Some(at)).await?;
                }
                out.push(true);
            }
            tx.commit().await.doing("committing attempts' outcomes")?;
            Ok(out)
        })
    }

    /// Moves a pending delivery owned by `job_id` to `to` (`expired` or
    /// `failed`) without a provider call, wiping its OTP code.
    pub async fn close_pending(
        &self,
        delivery_id: &str,
        job_id: &str,
        to: DeliveryStatus,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        DeliveryStatus::Pending
            .check_transition(to)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let done = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET status = $3, job_id = NULL, next_attempt_at = NULL, \
                 otp_code = NULL, last_error = $4, updated_at = $5 \
                 WHERE id = $1 AND job_id = $2 AND status = 'pending'",
            )
            .bind(delivery_id)
            .bind(job_id)
            .bind(to.as_str())
            .bind(error)
            .bind(now)
            .execute(pool)
            .await
            .doing("closing a delivery")?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Gives a pending delivery a new job (its old one is gone, or came too
    /// early), due at `at`. Returns false when someone else moved it first.
    pub async fn requeue(
        &self,
        delivery_id: &str,
        old_job_id: Option<&str>,
        kind: DeliveryKind,
        at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let job = DeliveryJob::new(delivery_id);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.doing("starting a transaction")?;
            let updated = sqlx::query(
                "UPDATE deliveries SET job_id = $3, updated_at = $4 \
                 WHERE id = $1 AND job_id IS NOT DISTINCT FROM $2 AND status = 'pending'",
            )
            .bind(delivery_id)
            .bind(old_job_id)
            .bind(&job.job_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .doing("re-queueing a delivery")?;
            if updated.rows_affected() == 0 {
                return Ok(false);
            }
            tx.push_job(Lane::for_kind(kind), &job, at.filter(|at| *at > now)).await?;
            tx.commit().await.doing("committing a re-queue")?;
            Ok(true)
        })
    }

    /// Deliveries that need the sweeper: pending or sending, whose job is
    /// gone, finished, or held by a worker not seen since `alive_since`; and
    /// any `sending` one untouched since `stale_before`.
    pub async fn orphans(
        &self,
        alive_since: DateTime<Utc>,
        stale_before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Orphan>, StoreError> {
        let rows = match self {
            Db::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT d.id, d.kind, d.status, d.job_id, d.attempts, d.max_attempts, \
                 d.next_attempt_at FROM deliveries d \
                 WHERE d.status IN ('pending', 'sending') AND ( \
                   (d.status = 'sending' AND d.updated_at < $2) OR NOT EXISTS ( \
                     SELECT 1 FROM Jobs j LEFT JOIN Workers w ON w.id = j.lock_by \
                     WHERE j.id = d.job_id AND (j.status = 'Pending' OR \
                       (j.status IN ('Queued', 'Running') AND w.last_seen >= $1)))) \
                 ORDER BY d.created_at LIMIT $3",
                )
                .bind(alive_since.timestamp())
                .bind(stale_before)
                .bind(limit)
                .fetch_all(pool)
                .await
            }
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT d.id, d.kind, d.status, d.job_id, d.attempts, d.max_attempts, \
                 d.next_attempt_at FROM deliveries d \
                 WHERE d.status IN ('pending', 'sending') AND ( \
                   (d.status = 'sending' AND d.updated_at < $2) OR NOT EXISTS ( \
                     SELECT 1 FROM apalis.jobs j LEFT JOIN apalis.workers w ON w.id = j.lock_by \
                     WHERE j.id = d.job_id AND (j.status = 'Pending' OR \
                       (j.status IN ('Queued', 'Running') AND w.last_seen >= $1)))) \
                 ORDER BY d.created_at LIMIT $3",
                )
                .bind(alive_since)
                .bind(stale_before)
                .bind(limit)
                .fetch_all(pool)
                .await
            }
        };
        rows.doing("looking for orphaned deliveries")
    }

    /// Deletes queue jobs of tuma's lanes that are finished: history lives in
    /// tuma's tables, and a queue full of old rows slows every fetch. With
    /// `stale`, also jobs no delivery holds the id of any more (like those a
    /// dead worker was holding): that check reads every job, so the sweeper
    /// makes it only on its full sweeps, while finished jobs, found by
    /// apalis's status index, go every second.
    pub async fn delete_finished_jobs(&self, stale: bool) -> Result<u64, StoreError> {
        let lanes = [Lane::Otp.queue_name(), Lane::Notifications.queue_name()];
        // Two statements rather than one with `OR $3`: the planner has to
        // read every row for an OR it cannot rule out when it plans.
        let (table, alias) = match self {
            Db::Sqlite(_) => ("Jobs", "Jobs"),
            Db::Postgres(_) => ("apalis.jobs j", "j"),
        };
        let sql = if stale {
            format!(
                "DELETE FROM {table} WHERE job_type IN ($1, $2) \
                 AND (status IN ('Done', 'Failed', 'Killed') \
                   OR NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = {alias}.id))"
            )
        } else {
            format!(
                "DELETE FROM {table} WHERE job_type IN ($1, $2) \
                 AND status IN ('Done', 'Failed', 'Killed')"
            )
        };
        let deleted = on_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(lanes[0])
                .bind(lanes[1])
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        });
        deleted.doing("deleting finished jobs")
    }

    /// How many deliveries are due by `now` and not yet settled: pending and
    /// due, or in the middle of a send.
    pub async fn unsettled_due(&self, now: DateTime<Utc>) -> Result<i64, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM deliveries WHERE status = 'sending' \
                 OR (status = 'pending' AND next_attempt_at <= $1)",
            )
            .bind(now)
            .fetch_one(pool)
            .await
            .doing("counting due deliveries")?
        }))
    }
}

/// The columns a new delivery is inserted with, in the order of the values
/// bound by [`insert_guarded_sqlite`] and the arrays of [`insert_guarded_pg`].
const INSERT_COLUMNS: &str = "id, kind, channel, recipient, template, locale, vars, subject, body, \
    body_html, otp_code, max_attempts, next_attempt_at, expires_at, job_id, created_at, \
    segments, encoding, replay_of, replayed_by, replayed_at";

/// When a new delivery's first job is due: `None` for now.
fn first_run_at(d: &NewDelivery) -> Option<DateTime<Utc>> {
    (d.send_at > d.created_at).then_some(d.send_at)
}

/// How many OTPs the limit allows, as a count.
fn allowed(limit: &OtpLimit) -> usize {
    usize::try_from(limit.max).unwrap_or(usize::MAX)
}

/// One guarded insert inside the caller's SQLite transaction. A claim made
/// for a delivery the limit then refuses is taken back, so a refusal writes
/// nothing, as if its own transaction had rolled back.
async fn insert_guarded_sqlite(
    tx: &mut sqlx::SqliteConnection,
    d: &NewDelivery,
    guards: &InsertGuards,
) -> Result<Inserted, StoreError> {
    if let Some(claim) = &guards.idempotency {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE api_key_id = $1 AND key = $2 AND created_at < $3",
        )
        .bind(claim.api_key_id)
        .bind(&claim.key)
        .bind(claim.expired_before)
        .execute(&mut *tx)
        .await
        .doing("expiring an idempotency key")?;
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (api_key_id, key, request_hash, delivery_id, \
             response_status, response_body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(claim.api_key_id)
        .bind(&claim.key)
        .bind(&claim.request_hash)
        .bind(&d.id)
        .bind(i64::from(claim.response_status))
        .bind(&claim.response_body)
        .bind(d.created_at)
        .execute(&mut *tx)
        .await
        .doing("claiming an idempotency key")?
        .rows_affected();
        if claimed == 0 {
            return Ok(Inserted::KeyTaken);
        }
    }
    if let Some(limit) = &guards.otp_limit {
        let recent: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT created_at FROM deliveries WHERE recipient = $1 AND kind = 'otp' \
             AND created_at > $2 ORDER BY created_at",
        )
        .bind(&d.recipient)
        .bind(limit.since)
        .fetch_all(&mut *tx)
        .await
        .doing("counting recent OTPs")?;
        if recent.len() >= allowed(limit) {
            if let Some(claim) = &guards.idempotency {
                sqlx::query("DELETE FROM idempotency_keys WHERE api_key_id = $1 AND key = $2")
                    .bind(claim.api_key_id)
                    .bind(&claim.key)
                    .execute(&mut *tx)
                    .await
                    .doing("taking back an idempotency key")?;
            }
            return Ok(Inserted::Limited {
                oldest: recent.first().copied().unwrap_or(limit.since),
            });
        }
    }
    let job = DeliveryJob::new(&d.id);
    let link = guards.replay.as_ref();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO deliveries ({INSERT_COLUMNS}, status, attempts, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
         $17, $18, $19, $20, $21, 'pending', 0, $16)"
    )))
    .bind(&d.id)
    .bind(d.kind.as_str())
    .bind(d.channel.as_str())
    .bind(&d.recipient)
    .bind(&d.template)
    .bind(&d.locale)
    .bind(d.vars.to_string())
    .bind(&d.subject)
    .bind(&d.body)
    .bind(&d.body_html)
    .bind(&d.otp_code)
    .bind(i64::from(d.max_attempts))
    .bind(d.send_at)
    .bind(d.expires_at)
    .bind(&job.job_id)
    .bind(d.created_at)
    .bind(d.segments.map(i64::from))
    .bind(&d.encoding)
    .bind(link.map(|l| l.replay_of.as_str()))
    .bind(link.map(|l| l.replayed_by.as_str()))
    .bind(link.map(|l| l.replayed_at))
    .execute(&mut *tx)
    .await
    .doing("recording the delivery")?;
    tx.push_job(Lane::for_kind(d.kind), &job, first_run_at(d))
        .await?;
    Ok(Inserted::Created(job))
}

/// Guarded inserts inside the caller's Postgres transaction, a statement per
/// step for all of them rather than per delivery:
///
/// 1. claim every Idempotency-Key (in key order, so two batches never wait
///    on each other's claims in a cycle);
/// 2. lock every recipient under the OTP limit (advisory locks in hash
///    order: one transaction at a time per recipient, so two concurrent
///    sends cannot both take the last slot) and read their recent OTPs, in
///    one call of `tuma_lock_recent_otps`;
/// 3. decide, in the order given, what each would get alone;
/// 4. take back the claims of refused ones, insert the rest with their jobs.
async fn insert_guarded_pg(
    tx: &mut sqlx::PgConnection,
    items: &[(&NewDelivery, &InsertGuards)],
) -> Result<Vec<Inserted>, StoreError> {
    let mut claims: Vec<(&NewDelivery, &IdempotencyClaim)> = items
        .iter()
        .filter_map(|(d, g)| g.idempotency.as_ref().map(|c| (*d, c)))
        .collect();
    claims.sort_by(|a, b| (a.1.api_key_id, &a.1.key).cmp(&(b.1.api_key_id, &b.1.key)));
    let mut claimed = HashSet::new();
    if !claims.is_empty() {
        sqlx::query(
            "DELETE FROM idempotency_keys AS k \
             USING unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS c (api_key_id, key, before) \
             WHERE k.api_key_id = c.api_key_id AND k.key = c.key AND k.created_at < c.before",
        )
        .bind(column(&claims, |(_, c)| c.api_key_id))
        .bind(column(&claims, |(_, c)| c.key.as_str()))
        .bind(column(&claims, |(_, c)| c.expired_before))
        .execute(&mut *tx)
        .await
        .doing("expiring idempotency keys")?;
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (api_key_id, key, request_hash, delivery_id, \
             response_status, response_body, created_at) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
             $5::bigint[], $6::text[], $7::timestamptz[]) \
             ON CONFLICT DO NOTHING RETURNING delivery_id",
        )
        .bind(column(&claims, |(_, c)| c.api_key_id))
        .bind(column(&claims, |(_, c)| c.key.as_str()))
        .bind(column(&claims, |(_, c)| c.request_hash.as_str()))
        .bind(column(&claims, |(d, _)| d.id.as_str()))
        .bind(column(&claims, |(_, c)| i64::from(c.response_status)))
        .bind(column(&claims, |(_, c)| c.response_body.as_str()))
        .bind(column(&claims, |(d, _)| d.created_at))
        .fetch_all(&mut *tx)
        .await
        .doing("claiming idempotency keys")?;
        claimed.extend(ids);
    }
    let has_claim =
        |d: &NewDelivery, g: &InsertGuards| g.idempotency.is_none() || claimed.contains(&d.id);
    let limited: Vec<(&NewDelivery, &OtpLimit)> = items
        .iter()
        .filter(|(d, g)| has_claim(d, g))
        .filter_map(|(d, g)| g.otp_limit.as_ref().map(|l| (*d, l)))
        .collect();
    // The OTPs in the window of each limited recipient, oldest first; the
    // ones accepted below join them.
    let mut recent: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    if let Some(since) = limited.iter().map(|(_, l)| l.since).min() {
        let recipients = column(&limited, |(d, _)| d.recipient.as_str());
        let rows: Vec<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT recipient, created_at FROM tuma_lock_recent_otps($1, $2)")
                .bind(&recipients)
                .bind(since)
                .fetch_all(&mut *tx)
                .await
                .doing("locking recipients and counting their recent OTPs")?;
        for (recipient, at) in rows {
            recent.entry(recipient).or_default().push(at);
        }
    }
    let mut answers = Vec::with_capacity(items.len());
    let mut taken_back: Vec<&IdempotencyClaim> = Vec::new();
    let mut created: Vec<(&NewDelivery, &InsertGuards, DeliveryJob)> = Vec::new();
    for (d, g) in items {
        if !has_claim(d, g) {
            answers.push(Inserted::KeyTaken);
            continue;
        }
        if let Some(limit) = &g.otp_limit {
            let window = recent.entry(d.recipient.clone()).or_default();
            let inside: Vec<DateTime<Utc>> = window
                .iter()
                .copied()
                .filter(|at| *at > limit.since)
                .collect();
            if inside.len() >= allowed(limit) {
                taken_back.extend(&g.idempotency);
                answers.push(Inserted::Limited {
                    oldest: inside.iter().min().copied().unwrap_or(limit.since),
                });
                continue;
            }
            window.push(d.created_at);
        }
        let job = DeliveryJob::new(&d.id);
        answers.push(Inserted::Created(job.clone()));
        created.push((d, g, job));
    }
    if !taken_back.is_empty() {
        sqlx::query(
            "DELETE FROM idempotency_keys AS k USING unnest($1::bigint[], $2::text[]) AS c (api_key_id, key) \
             WHERE k.api_key_id = c.api_key_id AND k.key = c.key",
        )
        .bind(column(&taken_back, |c| c.api_key_id))
        .bind(column(&taken_back, |c| c.key.as_str()))
        .execute(&mut *tx)
        .await
        .doing("taking back idempotency keys")?;
    }
    if created.is_empty() {
        return Ok(answers);
    }
    fn link<'a>(g: &&'a InsertGuards) -> Option<&'a ReplayLink> {
        g.replay.as_ref()
    }
    // The deliveries and their jobs in one statement: one round trip fewer.
    let jobs = PgJobs::new(
        &created
            .iter()
            .map(|(d, _, j)| (Lane::for_kind(d.kind), j, first_run_at(d)))
            .collect::<Vec<_>>(),
    )?;
    let sql = format!(
        "WITH {} INSERT INTO deliveries ({INSERT_COLUMNS}, status, attempts, updated_at) \
         SELECT *, 'pending', 0, created_at FROM unnest($1::text[], $2::text[], $3::text[], \
         $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
         $11::text[], $12::bigint[], $13::timestamptz[], $14::timestamptz[], $15::text[], \
         $16::timestamptz[], $17::bigint[], $18::text[], $19::text[], $20::text[], \
         $21::timestamptz[]) AS n ({INSERT_COLUMNS})",
        PgJobs::insert_cte(15, 22)
    );
    let query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(column(&created, |(d, _, _)| d.id.as_str()))
        .bind(column(&created, |(d, _, _)| d.kind.as_str()))
        .bind(column(&created, |(d, _, _)| d.channel.as_str()))
        .bind(column(&created, |(d, _, _)| d.recipient.as_str()))
        .bind(column(&created, |(d, _, _)| d.template.as_str()))
        .bind(column(&created, |(d, _, _)| d.locale.as_str()))
        .bind(column(&created, |(d, _, _)| d.vars.to_string()))
        .bind(column(&created, |(d, _, _)| d.subject.as_deref()))
        .bind(column(&created, |(d, _, _)| d.body.as_str()))
        .bind(column(&created, |(d, _, _)| d.body_html.as_deref()))
        .bind(column(&created, |(d, _, _)| d.otp_code.as_deref()))
        .bind(column(&created, |(d, _, _)| i64::from(d.max_attempts)))
        .bind(column(&created, |(d, _, _)| d.send_at))
        .bind(column(&created, |(d, _, _)| d.expires_at))
        .bind(column(&created, |(_, _, j)| j.job_id.as_str()))
        .bind(column(&created, |(d, _, _)| d.created_at))
        .bind(column(&created, |(d, _, _)| d.segments.map(i64::from)))
        .bind(column(&created, |(d, _, _)| d.encoding.as_deref()))
        .bind(column(&created, |(_, g, _)| {
            link(g).map(|l| l.replay_of.as_str())
        }))
        .bind(column(&created, |(_, g, _)| {
            link(g).map(|l| l.replayed_by.as_str())
        }))
        .bind(column(&created, |(_, g, _)| link(g).map(|l| l.replayed_at)));
    jobs.bind(query)
        .execute(&mut *tx)
        .await
        .doing("recording deliveries and their jobs")?;
    Ok(answers)
}
