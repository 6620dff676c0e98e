//! The durable queue: two apalis lanes, the job they carry, and how tuma
//! pushes jobs inside its own transactions.
//!
//! A job only says "attempt delivery X now"; everything else (status,
//! attempts, schedule, the OTP code) lives in tuma's tables. Each job has an
//! id that the delivery row also holds (`deliveries.job_id`): a job whose id
//! is not the delivery's current one is stale and is ignored, which makes
//! re-queueing by the sweeper safe.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, SqliteConnection};
use tokio::sync::mpsc;

use crate::domain::DeliveryKind;
use crate::store::StoreError;

/// A queue lane: OTPs never wait behind bulk notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// One-time codes.
    Otp,
    /// Everything else.
    Notifications,
}

impl Lane {
    /// Both lanes.
    pub const ALL: [Lane; 2] = [Lane::Otp, Lane::Notifications];

    /// The apalis queue name (the `job_type` column).
    pub fn queue_name(self) -> &'static str {
        match self {
            Lane::Otp => "tuma-otp",
            Lane::Notifications => "tuma-notifications",
        }
    }

    /// The lane's place in a per-lane array (`Lane::ALL` order).
    pub(crate) fn index(self) -> usize {
        match self {
            Lane::Otp => 0,
            Lane::Notifications => 1,
        }
    }

    /// The lane a kind of delivery travels in.
    pub fn for_kind(kind: DeliveryKind) -> Lane {
        match kind {
            DeliveryKind::Otp => Lane::Otp,
            DeliveryKind::Notification => Lane::Notifications,
        }
    }
}

/// What a queue job carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// The delivery to attempt.
    pub delivery_id: String,
    /// This job's id; must equal `deliveries.job_id` for the job to act.
    pub job_id: String,
}

impl DeliveryJob {
    /// A job with a fresh id (a ULID, as apalis stores them) for `delivery_id`.
    pub fn new(delivery_id: &str) -> DeliveryJob {
        DeliveryJob {
            delivery_id: delivery_id.to_owned(),
            job_id: ulid::Ulid::generate().to_string(),
        }
    }

    fn task(
        &self,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<apalis_core::task::Task<Vec<u8>>, StoreError> {
        let bytes = serde_json::to_vec(self).map_err(|e| StoreError::Queue(e.to_string()))?;
        // apalis retries nothing for us: a job runs once; retries are new jobs.
        let id = ulid::Ulid::from_string(&self.job_id)
            .map_err(|e| StoreError::Queue(format!("job id {}: {e}", self.job_id)))?;
        let mut builder = TaskBuilder::new(bytes)
            .task_id(TaskId::from_ulid(id))
            .max_attempts(1);
        if let Some(at) = run_at {
            // apalis schedules in whole seconds; round up so a retry never runs early.
            let secs = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
            builder = builder.run_at_timestamp(u64::try_from(secs).unwrap_or(0));
        }
        Ok(builder.build())
    }
}

/// A connection a job can be pushed on, inside the caller's transaction.
pub trait PushJob {
    /// Pushes `job` onto `lane`, due at `run_at` (now when `None`).
    fn push_job(
        &mut self,
        lane: Lane,
        job: &DeliveryJob,
        run_at: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl PushJob for SqliteConnection {
    async fn push_job(
        &mut self,
        lane: Lane,
        job: &DeliveryJob,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let task = job.task(run_at)?;
        apalis_sqlite::queries::push_tasks(self, lane.queue_name(), &[task])
            .await
            .map_err(|e| StoreError::Queue(e.to_string()))
    }
}

impl PushJob for PgConnection {
    async fn push_job(
        &mut self,
        lane: Lane,
        job: &DeliveryJob,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let task = job.task(run_at)?;
        apalis_postgres::queries::push_tasks(self, lane.queue_name(), vec![task])
            .await
            .map_err(|e| StoreError::Queue(e.to_string()))
    }
}

/// New jobs as the columns of apalis's Postgres `jobs` table, for a
/// statement that inserts them with tuma's own rows in one round trip. The
/// values are those `apalis_postgres::queries::push_tasks` writes (the
/// `notify_workers` trigger still wakes listening workers); a test compares
/// the two.
pub(crate) struct PgJobs {
    job_type: Vec<&'static str>,
    job: Vec<Vec<u8>>,
    max_attempts: Vec<i32>,
    run_at: Vec<i64>,
    priority: Vec<i32>,
    metadata: Vec<sqlx::postgres::types::PgHstore>,
    idempotency_key: Vec<Option<String>>,
}

impl PgJobs {
    /// What inserts the jobs, as a common table expression: `$ids` is the
    /// parameter holding the job ids, `$first` the first of the seven that
    /// [`PgJobs::bind`] adds.
    pub fn insert_cte(ids: usize, first: usize) -> String {
        let p = |i: usize| first + i;
        format!(
            "jobs AS (INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, \
             run_at, priority, metadata, idempotency_key) \
             SELECT id, job_type, job, 'Pending', 0, max_attempts, to_timestamp(run_at), priority, \
             metadata, idempotency_key FROM unnest(${ids}::text[], ${}::text[], ${}::bytea[], \
             ${}::integer[], ${}::bigint[], ${}::integer[], ${}::hstore[], ${}::text[]) \
             AS j (id, job_type, job, max_attempts, run_at, priority, metadata, idempotency_key))",
            p(0),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6)
        )
    }

    /// The columns of `jobs`, each due at its time (now when `None`).
    pub fn new(jobs: &[(Lane, &DeliveryJob, Option<DateTime<Utc>>)]) -> Result<PgJobs, StoreError> {
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| StoreError::Queue(e.to_string()))?
                .as_secs(),
        )
        .unwrap_or(i64::MAX);
        let mut out = PgJobs {
            job_type: Vec::with_capacity(jobs.len()),
            job: Vec::with_capacity(jobs.len()),
            max_attempts: Vec::with_capacity(jobs.len()),
            run_at: Vec::with_capacity(jobs.len()),
            priority: Vec::with_capacity(jobs.len()),
            metadata: Vec::with_capacity(jobs.len()),
            idempotency_key: Vec::with_capacity(jobs.len()),
        };
        let count = |v: Option<usize>, default: i32| {
            v.map_or(default, |v| i32::try_from(v).unwrap_or(i32::MAX))
        };
        for (lane, job, run_at) in jobs {
            let task = job.task(*run_at)?;
            out.job_type.push(lane.queue_name());
            out.max_attempts.push(count(task.max_attempts(), 25));
            out.run_at.push(
                task.run_at()
                    .map_or(now, |at| i64::try_from(at).unwrap_or(i64::MAX)),
            );
            out.priority.push(count(task.priority(), 0));
            out.metadata.push(sqlx::postgres::types::PgHstore(
                task.metadata()
                    .clone()
                    .into_inner()
                    .into_iter()
                    .map(|(k, v)| (k, Some(v)))
                    .collect(),
            ));
            out.idempotency_key
                .push(task.idempotency_key().map(|k| k.to_owned()));
            out.job.push(task.args);
        }
        Ok(out)
    }

    /// Binds the seven parameters of [`PgJobs::insert_cte`], in order.
    pub fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.job_type)
            .bind(self.job)
            .bind(self.max_attempts)
            .bind(self.run_at)
            .bind(self.priority)
            .bind(self.metadata)
            .bind(self.idempotency_key)
    }
}

/// Wakes this process's idle workers of a lane after a commit.
///
/// SQLite has no LISTEN/NOTIFY; apalis's update-hook callback fires inside the
/// inserting transaction (before commit) and one shared listener wakes only
/// one lane, so tuma signals after its own commits instead. Signals coalesce:
/// a burst of pushes wakes a worker once.
#[derive(Debug)]
pub struct Wakers {
    senders: [mpsc::Sender<()>; 2],
    receivers: Mutex<[Option<mpsc::Receiver<()>>; 2]>,
}

impl Default for Wakers {
    fn default() -> Self {
        let (otp_tx, otp_rx) = mpsc::channel(1);
        let (n_tx, n_rx) = mpsc::channel(1);
        Wakers {
            senders: [otp_tx, n_tx],
            receivers: Mutex::new([Some(otp_rx), Some(n_rx)]),
        }
    }
}

impl Wakers {
    /// Signals that `lane` has new work.
    pub fn wake(&self, lane: Lane) {
        // A full channel already holds a wake-up: nothing to add.
        let _ = self.senders[lane.index()].try_send(());
    }

    /// The stream a lane's worker polls on; there is one per lane per process.
    pub fn take_stream(&self, lane: Lane) -> Option<WakeStream> {
        let mut receivers = self.receivers.lock().ok()?;
        receivers[lane.index()].take().map(|rx| WakeStream {
            rx: Mutex::new(rx),
            echo: Mutex::new(None),
        })
    }
}

/// How long after a wake-up its lane's worker is woken once more.
///
/// apalis fetches whenever its worker is woken, but a wake-up that arrives
/// while a fetch is already running is spent on that fetch, which began
/// before the commit and finds nothing; the job would then wait for the poll
/// interval (an OTP behind a busy queue: up to `poll_interval` late). By the
/// echo such a fetch (a few milliseconds) has finished; a slower one still
/// leaves the job to the poll. It costs an idle lane one empty fetch.
const WAKE_ECHO: Duration = Duration::from_millis(20);

/// A lane's wake-ups as a stream, for apalis's poll strategy: each wake-up
/// once at once and once more [`WAKE_ECHO`] later (a burst echoes once).
#[derive(Debug)]
pub struct WakeStream {
    rx: Mutex<mpsc::Receiver<()>>,
    echo: Mutex<Option<Pin<Box<tokio::time::Sleep>>>>,
}

impl Stream for WakeStream {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let this = self.get_mut();
        let (Ok(rx), Ok(echo)) = (this.rx.get_mut(), this.echo.get_mut()) else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(())) => {
                *echo = Some(Box::pin(tokio::time::sleep(WAKE_ECHO)));
                return Poll::Ready(Some(()));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        match echo.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                *echo = None;
                Poll::Ready(Some(()))
            }
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// Whether `stream` yields within `ms` milliseconds.
    async fn next(stream: &mut WakeStream, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), stream.next())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_comes_at_once_and_echoes_once() {
        let wakers = Wakers::default();
        let mut stream = wakers.take_stream(Lane::Otp).unwrap();
        assert!(wakers.take_stream(Lane::Otp).is_none(), "one stream a lane");

        wakers.wake(Lane::Otp);
        wakers.wake(Lane::Otp); // coalesces with the first
        let started = tokio::time::Instant::now();
        assert!(next(&mut stream, 1).await, "at once");
        assert!(next(&mut stream, 100).await, "the echo");
        assert_eq!(started.elapsed(), WAKE_ECHO);
        assert!(!next(&mut stream, 1000).await, "nothing more");

        // Another lane's wake-ups are not this lane's.
        wakers.wake(Lane::Notifications);
        assert!(!next(&mut stream, 1000).await);
    }
}
