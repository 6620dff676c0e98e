//! `deliveries` and `delivery_attempts`: every state change of a delivery is
//! one transaction, guarded by the delivery's current token (`job_id`, renewed
//! by every claim) and status, so two workers (or a worker and the sweeper)
//! can never both move it.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::{Db, Doing, StoreError, on_pool};
use crate::domain::money::{Currency, Money};
use crate::domain::{Channel, DeliveryKind, DeliveryStatus};
use crate::queue::{DeliveryJob, Lane};

pub use crate::domain::attempt::{AttemptResult, Outcome};

/// A delivery to be recorded.
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
    /// For an OTP, who the per-recipient limit counts it as
    /// (`Recipient::quota_key`); the recipient when absent.
    pub quota_key: Option<String>,
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
    /// The OTP code sealed (`secrets::OtpKeys::seal`), kept only while the
    /// delivery can still be sent.
    pub otp_code: Option<String>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// From then on it is `expired` rather than sent: an OTP's TTL, a
    /// notification's own deadline.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When the first attempt may start.
    pub send_at: DateTime<Utc>,
    /// SMS segments by tuma's own count.
    pub segments: Option<u32>,
    /// SMS encoding (`gsm7` / `ucs2`).
    pub encoding: Option<String>,
    /// The name of the API key that sent it (its webhooks hear of it);
    /// `None` for command-line sends.
    pub api_key_name: Option<String>,
    /// The caller's word for why it was sent (`login`, `signup`, …).
    pub purpose: Option<String>,
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
    /// Refuse an OTP over its country's limit or to a range in a burst.
    pub pumping: Option<super::PumpingGuard>,
}

/// What a guarded insert did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// Recorded, with this first token (it is due at its `send_at`).
    Created(DeliveryJob),
    /// The Idempotency-Key is already claimed; nothing was written.
    KeyTaken,
    /// The OTP limit is reached; nothing was written. The oldest OTP in the
    /// window was created at `oldest`.
    Limited {
        /// When the window's oldest OTP was created.
        oldest: DateTime<Utc>,
    },
    /// An SMS-pumping guard refused it; nothing was written.
    Pumped(super::PumpingRefusal),
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
    pub api_key_name: Option<String>,
    pub purpose: Option<String>,
    /// When it was first due (acceptance, or its scheduled time); none on
    /// rows from before the column.
    pub send_at: Option<DateTime<Utc>>,
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
    pub outcome: Option<Outcome>,
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
    /// Every part's id, in order, when the provider split the message into
    /// several; empty (and not serialized) otherwise.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub part_ids: Vec<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone)]
pub enum NextStep {
    /// Accepted by the provider.
    Sent,
    /// Given up.
    Failed,
    /// No answer, and no resend allowed: left `unknown` for ops (a late
    /// answer still moves it).
    Unknown,
    /// Another attempt, due at this time (no job is pushed: the row is
    /// due again).
    Retry {
        /// The token the delivery holds until it is claimed again.
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
    /// The delivery's lane (whose batch line closes it).
    pub lane: Lane,
}

/// An [`AttemptEnd`] as its columns.
struct ClosedAttempt<'a> {
    delivery_id: &'a str,
    job_id: &'a str,
    result: &'a AttemptResult,
    status: DeliveryStatus,
    retry: Option<(&'a DeliveryJob, DateTime<Utc>)>,
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
            NextStep::Unknown => (DeliveryStatus::Unknown, None),
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

/// A time as the text sqlx binds a `DateTime<Utc>` on SQLite (RFC 3339,
/// `+00:00`, as many fraction digits as needed), for times passed inside a
/// JSON parameter: other statements compare these columns as text.
fn sqlite_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Rows as one JSON array parameter, read on SQLite with `json_each`.
fn json_rows(rows: &[serde_json::Value]) -> Result<String, StoreError> {
    serde_json::to_string(rows).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Filters for listing deliveries.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this recipient (as stored: E.164, or a lower-cased address).
    pub recipient: Option<String>,
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
    /// What ops should know of how it was made: that it was sent past the
    /// suppression list, by whom, and what the suppression said.
    pub note: Option<String>,
}

pub(crate) const DELIVERY_COLUMNS: &str = "id, kind, channel, recipient, template, locale, vars, subject, body, \
    body_html, status, attempts, max_attempts, next_attempt_at, expires_at, job_id, created_at, \
    updated_at, sent_at, provider, provider_message_id, cost_micros, currency, cost_is_estimate, \
    segments, encoding, last_error, delivered_at, reconciled_at, reconcile_note, api_key_name, purpose, \
    send_at";

const ATTEMPT_COLUMNS: &str = "attempt, provider, reason, started_at, finished_at, outcome, \
    provider_message_id, provider_status, error_code, error, cost_micros, currency, \
    cost_is_estimate, segments, provider_segments, latency_ms";

impl Db {
    /// Records a new delivery (due at its `send_at`).
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

    /// Records a new delivery (due at its `send_at`) in one transaction
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

    /// Deliveries about to be sent, each with its OTP code while it is
    /// stored (the dispatcher's first statement, run through
    /// [`Batcher::delivery_to_send`](super::Batcher::delivery_to_send)), in
    /// one statement; the answers are in the order of `ids`. The code stays
    /// apart from [`Delivery`], which is shown and logged.
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
        let (mut attempts, parts): (Vec<AttemptRow>, Vec<(i64, String)>) = on_pool!(self, pool => {
            let attempts = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_all(pool)
                .await
                .doing("reading attempts")?;
            let parts = sqlx::query_as(
                "SELECT attempt, message_id FROM provider_message_parts \
                 WHERE delivery_id = $1 ORDER BY attempt, part",
            )
            .bind(id)
            .fetch_all(pool)
            .await
            .doing("reading a message's parts")?;
            (attempts, parts)
        });
        for (attempt, message_id) in parts {
            if let Some(a) = attempts.iter_mut().find(|a| a.attempt == attempt) {
                a.part_ids.push(message_id);
            }
        }
        Ok(attempts)
    }

    /// Whether any attempt ever went to a provider of this name (one no
    /// longer configured is still a valid filter).
    pub async fn provider_in_history(&self, name: &str) -> Result<bool, StoreError> {
        let found: Option<(String,)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT provider FROM delivery_attempts WHERE provider = $1 LIMIT 1")
                .bind(name)
                .fetch_optional(pool)
                .await
                .doing("looking for a provider in the history")?
        });
        Ok(found.is_some())
    }

    /// The provider error code of each delivery's latest attempt, for those
    /// of `ids` whose latest attempt has one (list output).
    pub async fn latest_error_codes(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        const SELECT: &str = "SELECT a.delivery_id, a.error_code FROM delivery_attempts a \
             JOIN deliveries d ON d.id = a.delivery_id AND a.attempt = d.attempts \
             WHERE a.error_code IS NOT NULL AND ";
        let rows: Vec<(String, String)> = match self {
            Db::Postgres(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT}d.id = ANY($1)")))
                    .bind(ids)
                    .fetch_all(pool)
                    .await
            }
            Db::Sqlite(pool) => {
                let ids =
                    serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{SELECT}d.id IN (SELECT value FROM json_each($1))"
                )))
                .bind(ids)
                .fetch_all(pool)
                .await
            }
        }
        .doing("reading the latest error codes")?;
        Ok(rows.into_iter().collect())
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
             AND ($7 IS NULL OR recipient = $7) \
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
                .bind(filter.recipient.as_deref())
                .fetch_all(pool)
                .await
                .doing("listing deliveries")?
        });
        rows.into_iter().map(Delivery::try_from).collect()
    }

    /// Moves each pending delivery owned by its job to `sending` and opens an
    /// attempt row (the dispatcher's second statement, run through
    /// [`Batcher::begin_attempt`](super::Batcher::begin_attempt)); each answer
    /// is the attempt number, or `None` when the delivery is no longer that
    /// job's to send. All or none, and as many statements whatever the number
    /// of deliveries: one on Postgres; on SQLite one transaction of two (the
    /// deliveries' `UPDATE … FROM json_each`, then the attempts' `INSERT`). A
    /// delivery may appear only once. The answers are in the order of
    /// `starts`.
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
            // SQLite: one transaction of two statements, whatever the batch
            // size (each statement is a round trip through sqlx's worker
            // thread). The rows are one JSON array; the attempts are opened
            // for the deliveries the `UPDATE` moved, with the numbers it
            // returned. `+status` keeps the planner on the primary key, one
            // lookup per row, rather than walking every pending delivery
            // through the status index.
            Db::Sqlite(pool) => {
                let rows: Vec<serde_json::Value> = starts
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "id": s.delivery_id,
                            "job_id": s.job_id,
                            "provider": s.provider,
                            "at": sqlite_time(s.at),
                        })
                    })
                    .collect();
                let mut tx = pool.begin().await.doing("starting a transaction")?;
                let started: Vec<(String, i64)> = sqlx::query_as(
                    "UPDATE deliveries SET status = 'sending', attempts = deliveries.attempts + 1, \
                     provider = r.provider, updated_at = r.at \
                     FROM (SELECT json_extract(value, '$.id') AS id, \
                     json_extract(value, '$.job_id') AS job_id, \
                     json_extract(value, '$.provider') AS provider, \
                     json_extract(value, '$.at') AS at FROM json_each($1)) AS r \
                     WHERE deliveries.id = r.id AND deliveries.job_id = r.job_id \
                     AND +deliveries.status = 'pending' \
                     RETURNING deliveries.id, deliveries.attempts",
                )
                .bind(json_rows(&rows)?)
                .fetch_all(&mut *tx)
                .await
                .doing("starting attempts")?;
                let started: HashMap<String, i64> = started.into_iter().collect();
                let opened: Vec<serde_json::Value> = starts
                    .iter()
                    .filter_map(|s| {
                        let attempt = started.get(&s.delivery_id)?;
                        Some(serde_json::json!({
                            "id": s.delivery_id,
                            "attempt": attempt,
                            "provider": s.provider,
                            "reason": s.reason,
                            "at": sqlite_time(s.at),
                        }))
                    })
                    .collect();
                if !opened.is_empty() {
                    sqlx::query(
                        "INSERT INTO delivery_attempts \
                         (delivery_id, attempt, provider, reason, started_at) \
                         SELECT json_extract(value, '$.id'), json_extract(value, '$.attempt'), \
                         json_extract(value, '$.provider'), json_extract(value, '$.reason'), \
                         json_extract(value, '$.at') FROM json_each($1)",
                    )
                    .bind(json_rows(&opened)?)
                    .execute(&mut *tx)
                    .await
                    .doing("recording attempts")?;
                }
                tx.commit().await.doing("committing attempts")?;
                Ok(starts
                    .iter()
                    .map(|s| started.get(&s.delivery_id).copied())
                    .collect())
            }
        }
    }

    /// Closes the open attempt of each `sending` delivery owned by its job and
    /// moves the delivery on, due again at its retry time when there is one (the
    /// dispatcher's third statement, run through
    /// [`Batcher::finish_attempt`](super::Batcher::finish_attempt)); an answer
    /// is false when the delivery was no longer that job's. All or none, and
    /// as many statements whatever the number of deliveries: one on Postgres;
    /// on SQLite one transaction of at most three (the deliveries, their
    /// attempts, the parts of messages sent in several); the lease ends. A
    /// delivery may appear only once. The answers are in the order of `ends`.
    /// A result with several `part_ids` writes them to
    /// `provider_message_parts` in the same statement or transaction; one
    /// with a single id writes nothing more.
    pub async fn finish_attempts(&self, ends: &[AttemptEnd]) -> Result<Vec<bool>, StoreError> {
        let ends: Vec<ClosedAttempt<'_>> = ends
            .iter()
            .map(ClosedAttempt::new)
            .collect::<Result<_, _>>()?;
        // Only a message sent in several parts has rows in provider_message_parts.
        let parts: Vec<(&str, &str, i64)> = ends
            .iter()
            .filter(|e| e.result.part_ids.len() > 1)
            .flat_map(|e| {
                e.result
                    .part_ids
                    .iter()
                    .zip(1_i64..)
                    .map(|(id, n)| (e.delivery_id, id.as_str(), n))
            })
            .collect();
        if let Db::Postgres(pool) = self {
            // On Postgres: one statement, one round trip, one commit.
            let closed: Vec<String> = sqlx::query_scalar(
                "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
                 $4::timestamptz[], $5::text[], $6::int8[], $7::text[], $8::bool[], $9::int8[], \
                 $10::text[], $11::int8[], $12::text[], $13::text[], $14::text[], $15::int8[], \
                 $19::text[], $20::timestamptz[]) \
                 AS r (id, job_id, status, finished_at, message_id, cost_micros, currency, \
                 estimate, segments, error, provider_segments, outcome, provider_status, \
                 error_code, latency_ms, next_job_id, retry_at)), \
                 d AS (UPDATE deliveries SET status = r.status, job_id = r.next_job_id, \
                 next_attempt_at = r.retry_at, updated_at = r.finished_at, \
                 lease_until = NULL, leased_by = NULL, \
                 otp_code = CASE WHEN r.status = 'pending' THEN deliveries.otp_code ELSE NULL END, \
                 sent_at = CASE WHEN r.status = 'sent' THEN r.finished_at ELSE deliveries.sent_at END, \
                 provider_message_id = COALESCE(r.message_id, deliveries.provider_message_id), \
                 cost_micros = CASE WHEN r.status = 'sent' THEN r.cost_micros ELSE deliveries.cost_micros END, \
                 currency = CASE WHEN r.status = 'sent' THEN r.currency ELSE deliveries.currency END, \
                 cost_is_estimate = CASE WHEN r.status = 'sent' THEN r.estimate \
                   ELSE deliveries.cost_is_estimate END, \
                 segments = COALESCE(r.provider_segments, r.segments, deliveries.segments), \
                 last_error = CASE WHEN r.status = 'sent' THEN NULL ELSE r.error END \
                 FROM r WHERE deliveries.id = r.id AND deliveries.job_id = r.job_id \
                 AND deliveries.status = 'sending' \
                 RETURNING deliveries.id, deliveries.attempts, deliveries.provider), \
                 p AS (INSERT INTO provider_message_parts \
                 (provider, message_id, delivery_id, attempt, part) \
                 SELECT d.provider, x.message_id, d.id, d.attempts, x.part \
                 FROM unnest($16::text[], $17::text[], $18::int8[]) AS x (id, message_id, part) \
                 JOIN d ON d.id = x.id ON CONFLICT DO NOTHING) \
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
            .bind(parts.iter().map(|p| p.0).collect::<Vec<_>>())
            .bind(parts.iter().map(|p| p.1).collect::<Vec<_>>())
            .bind(parts.iter().map(|p| p.2).collect::<Vec<_>>())
            .bind(column(&ends, |e| e.retry.map(|(job, _)| job.job_id.as_str())))
            .bind(column(&ends, |e| e.retry.map(|(_, at)| at)))
            .fetch_all(pool)
            .await
            .doing("recording attempts' outcomes")?;
            let closed: HashSet<String> = closed.into_iter().collect();
            return Ok(ends
                .iter()
                .map(|e| closed.contains(e.delivery_id))
                .collect());
        }
        let Db::Sqlite(pool) = self else {
            unreachable!("Postgres returned above");
        };
        // SQLite: one transaction of at most three statements, whatever the
        // batch size (each statement is a round trip through sqlx's worker
        // thread). The rows are one JSON array; the attempts closed are
        // those of the deliveries the `UPDATE` moved, by the numbers it
        // returned. Flags are stored as sqlx binds a bool (0 or 1). `+status`
        // keeps the planner on the primary key (see `begin_attempts`).
        let rows: Vec<serde_json::Value> = ends
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.delivery_id,
                    "job_id": e.job_id,
                    "status": e.status.as_str(),
                    "next_job_id": e.retry.map(|(job, _)| job.job_id.as_str()),
                    "retry_at": e.retry.map(|(_, at)| sqlite_time(at)),
                    "finished_at": sqlite_time(e.result.finished_at),
                    "message_id": e.result.provider_message_id,
                    "cost_micros": e.cost_micros,
                    "currency": e.currency,
                    "estimate": e.estimate.map(i64::from),
                    "segments": e.segments,
                    "error": e.result.error,
                    "provider_segments": e.provider_segments,
                })
            })
            .collect();
        let mut tx = pool.begin().await.doing("starting a transaction")?;
        let closed: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE deliveries SET status = r.status, job_id = r.next_job_id, \
             next_attempt_at = r.retry_at, updated_at = r.finished_at, \
             lease_until = NULL, leased_by = NULL, \
             otp_code = CASE WHEN r.status = 'pending' THEN deliveries.otp_code ELSE NULL END, \
             sent_at = CASE WHEN r.status = 'sent' THEN r.finished_at ELSE deliveries.sent_at END, \
             provider_message_id = COALESCE(r.message_id, deliveries.provider_message_id), \
             cost_micros = CASE WHEN r.status = 'sent' THEN r.cost_micros \
               ELSE deliveries.cost_micros END, \
             currency = CASE WHEN r.status = 'sent' THEN r.currency ELSE deliveries.currency END, \
             cost_is_estimate = CASE WHEN r.status = 'sent' THEN r.estimate \
               ELSE deliveries.cost_is_estimate END, \
             segments = COALESCE(r.provider_segments, r.segments, deliveries.segments), \
             last_error = CASE WHEN r.status = 'sent' THEN NULL ELSE r.error END \
             FROM (SELECT json_extract(value, '$.id') AS id, \
             json_extract(value, '$.job_id') AS job_id, json_extract(value, '$.status') AS status, \
             json_extract(value, '$.next_job_id') AS next_job_id, \
             json_extract(value, '$.retry_at') AS retry_at, \
             json_extract(value, '$.finished_at') AS finished_at, \
             json_extract(value, '$.message_id') AS message_id, \
             json_extract(value, '$.cost_micros') AS cost_micros, \
             json_extract(value, '$.currency') AS currency, \
             json_extract(value, '$.estimate') AS estimate, \
             json_extract(value, '$.segments') AS segments, \
             json_extract(value, '$.error') AS error, \
             json_extract(value, '$.provider_segments') AS provider_segments \
             FROM json_each($1)) AS r \
             WHERE deliveries.id = r.id AND deliveries.job_id = r.job_id \
             AND +deliveries.status = 'sending' \
             RETURNING deliveries.id, deliveries.attempts",
        )
        .bind(json_rows(&rows)?)
        .fetch_all(&mut *tx)
        .await
        .doing("recording attempts' outcomes")?;
        let closed: HashMap<String, i64> = closed.into_iter().collect();
        let attempts: Vec<serde_json::Value> = ends
            .iter()
            .filter_map(|e| {
                let attempt = closed.get(e.delivery_id)?;
                Some(serde_json::json!({
                    "id": e.delivery_id,
                    "attempt": attempt,
                    "finished_at": sqlite_time(e.result.finished_at),
                    "outcome": e.result.outcome.as_str(),
                    "message_id": e.result.provider_message_id,
                    "provider_status": e.result.provider_status,
                    "error_code": e.result.error_code,
                    "error": e.result.error,
                    "cost_micros": e.cost_micros,
                    "currency": e.currency,
                    "estimate": e.estimate.map(i64::from),
                    "segments": e.segments,
                    "latency_ms": e.result.latency_ms,
                    "provider_segments": e.provider_segments,
                }))
            })
            .collect();
        if !attempts.is_empty() {
            sqlx::query(
                "UPDATE delivery_attempts SET finished_at = r.finished_at, outcome = r.outcome, \
                 provider_message_id = r.message_id, provider_status = r.provider_status, \
                 error_code = r.error_code, error = r.error, cost_micros = r.cost_micros, \
                 currency = r.currency, cost_is_estimate = r.estimate, segments = r.segments, \
                 latency_ms = r.latency_ms, provider_segments = r.provider_segments \
                 FROM (SELECT json_extract(value, '$.id') AS id, \
                 json_extract(value, '$.attempt') AS attempt, \
                 json_extract(value, '$.finished_at') AS finished_at, \
                 json_extract(value, '$.outcome') AS outcome, \
                 json_extract(value, '$.message_id') AS message_id, \
                 json_extract(value, '$.provider_status') AS provider_status, \
                 json_extract(value, '$.error_code') AS error_code, \
                 json_extract(value, '$.error') AS error, \
                 json_extract(value, '$.cost_micros') AS cost_micros, \
                 json_extract(value, '$.currency') AS currency, \
                 json_extract(value, '$.estimate') AS estimate, \
                 json_extract(value, '$.segments') AS segments, \
                 json_extract(value, '$.latency_ms') AS latency_ms, \
                 json_extract(value, '$.provider_segments') AS provider_segments \
                 FROM json_each($1)) AS r \
                 WHERE delivery_attempts.delivery_id = r.id AND delivery_attempts.attempt = r.attempt",
            )
            .bind(json_rows(&attempts)?)
            .execute(&mut *tx)
            .await
            .doing("closing attempts")?;
        }
        let parts: Vec<serde_json::Value> = parts
            .iter()
            .filter_map(|(delivery_id, message_id, part)| {
                let attempt = closed.get(*delivery_id)?;
                Some(serde_json::json!({
                    "id": delivery_id,
                    "attempt": attempt,
                    "message_id": message_id,
                    "part": part,
                }))
            })
            .collect();
        if !parts.is_empty() {
            // `WHERE true`: an upsert after a join needs it to parse.
            sqlx::query(
                "INSERT INTO provider_message_parts \
                 (provider, message_id, delivery_id, attempt, part) \
                 SELECT a.provider, json_extract(x.value, '$.message_id'), a.delivery_id, \
                 a.attempt, json_extract(x.value, '$.part') FROM json_each($1) AS x \
                 JOIN delivery_attempts a ON a.delivery_id = json_extract(x.value, '$.id') \
                 AND a.attempt = json_extract(x.value, '$.attempt') \
                 WHERE true ON CONFLICT DO NOTHING",
            )
            .bind(json_rows(&parts)?)
            .execute(&mut *tx)
            .await
            .doing("recording messages' parts")?;
        }
        tx.commit().await.doing("committing attempts' outcomes")?;
        Ok(ends
            .iter()
            .map(|e| closed.contains_key(e.delivery_id))
            .collect())
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
                 lease_until = NULL, leased_by = NULL, \
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

    /// Puts a pending delivery owned by `old_job_id` back in the queue,
    /// due at `at` (now when `None`: it came too early, or its provider had
    /// no rate-limit slot), with a new token and no lease. Returns false when
    /// someone else moved it first.
    pub async fn requeue(
        &self,
        delivery_id: &str,
        old_job_id: Option<&str>,
        at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let job = DeliveryJob::new(delivery_id);
        let updated = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET job_id = $3, updated_at = $4, next_attempt_at = $5, \
                 lease_until = NULL, leased_by = NULL \
                 WHERE id = $1 AND job_id IS NOT DISTINCT FROM $2 AND status = 'pending'",
            )
            .bind(delivery_id)
            .bind(old_job_id)
            .bind(&job.job_id)
            .bind(now)
            .bind(at.unwrap_or(now))
            .execute(pool)
            .await
            .doing("re-queueing a delivery")?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// Puts a pending delivery back for `at` without spending an attempt
    /// (every provider of its route is cooling down), saying why in its
    /// `last_error`. Returns false when someone else moved it first.
    pub async fn postpone(
        &self,
        delivery_id: &str,
        old_job_id: &str,
        at: DateTime<Utc>,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let job = DeliveryJob::new(delivery_id);
        let updated = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET job_id = $3, updated_at = $4, next_attempt_at = $5, \
                 last_error = $6, lease_until = NULL, leased_by = NULL \
                 WHERE id = $1 AND job_id = $2 AND status = 'pending'",
            )
            .bind(delivery_id)
            .bind(old_job_id)
            .bind(&job.job_id)
            .bind(now)
            .bind(at)
            .bind(why)
            .execute(pool)
            .await
            .doing("postponing a delivery")?
            .rows_affected()
        });
        Ok(updated == 1)
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

/// The `quota_key` column: an OTP's key as intake gave it, else its
/// recipient; a notification has none.
fn quota_key(d: &NewDelivery) -> Option<&str> {
    (d.kind == DeliveryKind::Otp).then(|| d.quota_key.as_deref().unwrap_or(&d.recipient))
}

/// The columns a new delivery is inserted with, in the order of the values
/// bound by [`insert_guarded_sqlite`] and the arrays of [`insert_guarded_pg`].
const INSERT_COLUMNS: &str = "id, kind, channel, recipient, template, locale, vars, subject, body, \
    body_html, otp_code, max_attempts, next_attempt_at, expires_at, job_id, created_at, \
    segments, encoding, replay_of, replayed_by, replayed_at, api_key_name, purpose, country, \
    replay_note, quota_key";

/// What `deliveries.country` keeps: an SMS recipient's region code (empty
/// when it has none), so the cost rollups group by country without parsing
/// numbers in SQL; nothing for email.
fn country_column(d: &NewDelivery) -> Option<&'static str> {
    (d.channel == Channel::Sms).then(|| crate::domain::phone::region_code_of(&d.recipient))
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
            "SELECT created_at FROM deliveries WHERE quota_key = $1 AND kind = 'otp' \
             AND created_at > $2 ORDER BY created_at",
        )
        .bind(quota_key(d))
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
    if let Some(guard) = &guards.pumping
        && let Some(refusal) = super::pumping::check_sqlite(&mut *tx, d, guard).await?
    {
        if let Some(claim) = &guards.idempotency {
            sqlx::query("DELETE FROM idempotency_keys WHERE api_key_id = $1 AND key = $2")
                .bind(claim.api_key_id)
                .bind(&claim.key)
                .execute(&mut *tx)
                .await
                .doing("taking back an idempotency key")?;
        }
        return Ok(Inserted::Pumped(refusal));
    }
    let job = DeliveryJob::new(&d.id);
    let link = guards.replay.as_ref();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO deliveries ({INSERT_COLUMNS}, status, attempts, updated_at, send_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
         $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, 'pending', 0, $16, $13)"
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
    .bind(&d.api_key_name)
    .bind(&d.purpose)
    .bind(country_column(d))
    .bind(link.and_then(|l| l.note.as_deref()))
    .bind(quota_key(d))
    .execute(&mut *tx)
    .await
    .doing("recording the delivery")?;
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
        let recipients = column(&limited, |(d, _)| quota_key(d).unwrap_or_default());
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
    let pumping_keys: Vec<String> = items
        .iter()
        .filter(|(d, g)| has_claim(d, g))
        .filter_map(|(d, g)| g.pumping.as_ref().map(|p| p.lock_keys(&d.recipient)))
        .flatten()
        .collect();
    super::pumping::lock_pg(&mut *tx, &pumping_keys).await?;
    // OTPs accepted earlier in this batch, which the pumping checks count.
    let mut accepted_otps: Vec<(String, DateTime<Utc>)> = Vec::new();
    let mut answers = Vec::with_capacity(items.len());
    let mut taken_back: Vec<&IdempotencyClaim> = Vec::new();
    let mut created: Vec<(&NewDelivery, &InsertGuards, DeliveryJob)> = Vec::new();
    for (d, g) in items {
        if !has_claim(d, g) {
            answers.push(Inserted::KeyTaken);
            continue;
        }
        if let Some(limit) = &g.otp_limit {
            let window = recent
                .entry(quota_key(d).unwrap_or_default().to_owned())
                .or_default();
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
        }
        if let Some(guard) = &g.pumping
            && let Some(refusal) =
                super::pumping::check_pg(&mut *tx, d, guard, &accepted_otps).await?
        {
            taken_back.extend(&g.idempotency);
            answers.push(Inserted::Pumped(refusal));
            continue;
        }
        if let Some(window) = g
            .otp_limit
            .as_ref()
            .and(recent.get_mut(quota_key(d).unwrap_or_default()))
        {
            window.push(d.created_at);
        }
        if d.kind == DeliveryKind::Otp {
            accepted_otps.push((d.recipient.clone(), d.created_at));
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
    let sql = format!(
        "INSERT INTO deliveries ({INSERT_COLUMNS}, status, attempts, updated_at, send_at) \
         SELECT *, 'pending', 0, created_at, next_attempt_at FROM unnest($1::text[], $2::text[], $3::text[], \
         $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
         $11::text[], $12::bigint[], $13::timestamptz[], $14::timestamptz[], $15::text[], \
         $16::timestamptz[], $17::bigint[], $18::text[], $19::text[], $20::text[], \
         $21::timestamptz[], $22::text[], $23::text[], $24::text[], $25::text[], $26::text[]) AS n ({INSERT_COLUMNS})"
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
        .bind(column(&created, |(_, g, _)| link(g).map(|l| l.replayed_at)))
        .bind(column(&created, |(d, _, _)| d.api_key_name.as_deref()))
        .bind(column(&created, |(d, _, _)| d.purpose.as_deref()))
        .bind(column(&created, |(d, _, _)| country_column(d)))
        .bind(column(&created, |(_, g, _)| {
            link(g).and_then(|l| l.note.as_deref())
        }))
        .bind(column(&created, |(d, _, _)| quota_key(d)));
    // The `deliveries_wake_inserted` trigger notifies the lanes at commit.
    query
        .execute(&mut *tx)
        .await
        .doing("recording deliveries")?;
    Ok(answers)
}
