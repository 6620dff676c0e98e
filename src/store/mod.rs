//! Storage: one sqlx pool, shared by apalis's queue and tuma's own tables.
//!
//! SQLite (the embedded default) and PostgreSQL run the same SQL where they
//! can (`$1` placeholders work on both); [`on_pool!`] expands one body for each
//! backend so the queries are written once.

mod api;
mod batch;
mod deliveries;
mod receipts;
mod replays;
mod reports;

use std::str::FromStr;
use std::time::Duration;

use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub use api::*;
pub use batch::{Batcher, OtpInFlight};
pub use deliveries::*;
pub use receipts::*;
pub use replays::*;
pub use reports::*;

/// The connections of a SQLite pool (see `Db::connect`).
const SQLITE_CONNECTIONS: u32 = 4;

/// Expands `$body` once per backend with `$pool` bound to that backend's pool.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// The database behind tuma.
#[derive(Debug, Clone)]
pub enum Db {
    /// An embedded SQLite file: the default, nothing else to install.
    Sqlite(SqlitePool),
    /// PostgreSQL: production, and many worker processes sharing one queue.
    Postgres(PgPool),
}

/// A storage failure, with what tuma was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither SQLite nor Postgres, or does not parse.
    #[error("DATABASE_URL `{url}` is not usable: {reason}")]
    BadUrl {
        /// The URL, with any password masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("database error while {doing}: {source}")]
    Query {
        /// What tuma was doing.
        doing: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The queue refused a job.
    #[error("queueing a job failed: {0}")]
    Queue(String),
    /// The task running a batch of statements stopped before it answered
    /// (its runtime shut down): the statement may or may not have run.
    #[error("the database batch stopped before it answered")]
    BatchLost,
    /// A row holds a value tuma does not know: the database was changed by hand.
    #[error("the database holds an unexpected value: {0}")]
    Corrupt(String),
}

/// Adds "while …" context to sqlx results.
pub(crate) trait Doing<T> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError>;
}

impl<T> Doing<T> for Result<T, sqlx::Error> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { doing, source })
    }
}

/// Checks a Postgres connection coming back to the pool, and rolls back a
/// transaction left open on it.
///
/// sqlx 0.9 counts a transaction only once the server has answered its
/// `BEGIN`; a future dropped while waiting for that answer (a timeout, an
/// aborted task, a request whose client went away, a worker stopping inside
/// apalis) leaves the server in a transaction that sqlx does not know of
/// (sqlx issue #4393), and the pool hands the connection on. Every later
/// statement on it would then run inside that transaction: never committed,
/// its row locks held until the connection dies. Inside a transaction block the
/// transaction began before the statement that asks, so the two timestamps
/// differ; outside one, the statement is its own transaction and they agree.
/// A connection whose check fails is closed, which ends whatever it held.
async fn end_abandoned_transaction(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    // The simple query protocol on purpose: with it, a statement outside a
    // transaction block starts its transaction at the statement's own start
    // time; the extended protocol restarts the statement clock at Bind.
    let open = sqlx::raw_sql("SELECT transaction_timestamp() <> statement_timestamp()")
        .fetch_one(&mut *conn)
        .await
        .and_then(|row| sqlx::Row::try_get::<bool, _>(&row, 0));
    match open {
        Ok(false) => Ok(true),
        Ok(true) => {
            tracing::warn!(
                "a Postgres connection came back inside an abandoned transaction; rolling it back"
            );
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
            Ok(true)
        }
        // An aborted transaction refuses the check: close the connection.
        Err(_) => Ok(false),
    }
}

/// How long a SQLite writer waits for the write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The pauses of [`sqlite_busy`]: 50 µs, doubling to 1 ms.
fn sqlite_busy_pause(tries: u32) -> Duration {
    Duration::from_micros((50u64 << tries.min(5)).min(1000))
}

/// SQLite's busy handler: called while another connection holds the write lock.
///
/// SQLite's own (`busy_timeout`) sleeps 1, 2, 5, 10 … up to 100 ms between
/// tries. tuma's transactions hold the lock for a millisecond or so, so under
/// load a writer that had lost once slept far longer than the lock was held
/// (OTPs waited behind bulk work for hundreds of milliseconds at the 99th
/// percentile). This
/// one tries again after 50 µs, doubling to 1 ms, for `SQLITE_BUSY_TIMEOUT` in
/// all. It runs on the connection's own thread, where SQLite's would sleep too.
extern "C" fn sqlite_busy(_: *mut std::ffi::c_void, tries: std::ffi::c_int) -> std::ffi::c_int {
    let tries = u32::try_from(tries).unwrap_or(0);
    let waited: Duration = (0..tries.min(5)).map(sqlite_busy_pause).sum::<Duration>()
        + Duration::from_millis(1) * tries.saturating_sub(5);
    if waited >= SQLITE_BUSY_TIMEOUT {
        return 0; // give up: the statement fails with SQLITE_BUSY
    }
    std::thread::sleep(sqlite_busy_pause(tries));
    1
}

/// Installs [`sqlite_busy`] on a new connection (replacing the handler that
/// sqlx's `busy_timeout` set).
async fn install_busy_handler(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is the live connection handle, held locked for this call;
    // the callback is a plain function with no state (a null argument), valid
    // for the life of the program.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_busy_handler(
            db,
            Some(sqlite_busy as unsafe extern "C" fn(_, _) -> _),
            std::ptr::null_mut(),
        )
    };
    if rc == libsqlite3_sys::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!("could not set SQLite's busy handler (error {rc})").into(),
        ))
    }
}

/// Planner statistics for apalis's SQLite `Jobs` table, so that its
/// statements find jobs by id instead of reading every pending one.
///
/// With no statistics SQLite guesses that any `status = ?` or `lock_by = ?`
/// matches a handful of rows. apalis-sqlite's lock statement (`id IN (…) AND
/// (status = 'Queued' OR status = 'Pending' OR …)`) then walks the status
/// index through every pending job, and its ack (`Jobs.id = j.task_id AND
/// lock_by = ?`) walks every job the worker has locked, finished ones too,
/// reading the whole batch's JSON for each: milliseconds to tens of
/// milliseconds a batch behind a 50k backlog, holding the write lock that
/// OTPs wait for. These figures describe a busy queue (modelled on what
/// `ANALYZE` measured on one holding a 50k backlog): status, job type and
/// worker are poor filters, the id a perfect one. They are written, not
/// measured (SQLite's documented way to steer its planner), so the plans do
/// not depend on the queue's size when `ANALYZE` last ran; and written at
/// every start ([`Db::migrate`]), since a plain `ANALYZE` while the queue is
/// empty deletes them. A connection reads statistics when it loads the
/// schema, so the table made and dropped changes the schema: every other
/// connection already open loads it again before its next statement; the
/// last `ANALYZE sqlite_schema` loads them on the connection that wrote them.
const QUEUE_PLANNER_STATS: &str = "\
    ANALYZE sqlite_schema; \
    DELETE FROM sqlite_stat1 WHERE tbl = 'Jobs'; \
    INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES \
        ('Jobs', 'sqlite_autoindex_Jobs_1', '100000 1'), \
        ('Jobs', 'idx_jobs_status_run_at', '100000 25000 100'), \
        ('Jobs', 'idx_jobs_job_type_status_run_at', '100000 50000 20000 100'), \
        ('Jobs', 'LIdx', '100000 20000'), \
        ('Jobs', 'idx_jobs_pending', '50000 25000 25000 100 1'), \
        ('Jobs', 'idx_jobs_failed', '1000 500 500 10 1'), \
        ('Jobs', 'idx_jobs_claimable', '50000 25000 25000'), \
        ('Jobs', 'idx_jobs_completed_done_at', '5000 2000 100 10'), \
        ('Jobs', 'idx_jobs_running', '100 10'), \
        ('Jobs', 'idx_jobs_idempotency_key', '100000 50000 50000'); \
    CREATE TABLE tuma_statistics_written (x INTEGER); \
    DROP TABLE tuma_statistics_written; \
    ANALYZE sqlite_schema;";

impl Db {
    /// Opens a pool (SQLite keeps it small, see below). SQLite files are
    /// created if missing and every connection gets WAL, `synchronous=NORMAL`,
    /// tuma's busy handler ([`sqlite_busy`]), foreign keys and `secure_delete`
    /// (so a wiped OTP code does not linger in free pages).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: mask_password(url),
            reason,
        };
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| bad(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
                .pragma("secure_delete", "ON")
                .pragma("temp_store", "MEMORY");
            // Few connections: SQLite runs one writer at a time anyway, so
            // many only add waiting for the write lock; too few leave the
            // batch tasks and apalis waiting for a connection (four measured
            // best; see ARCHITECTURE.md). Never one: apalis can leave a fetch
            // parked on a connection while a worker shuts down, and a lone
            // connection would then starve the in-flight sends it waits for.
            let pool = SqlitePoolOptions::new()
                .max_connections(SQLITE_CONNECTIONS)
                .after_connect(|conn, _| Box::pin(install_busy_handler(conn)))
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(|e| bad(e.to_string()))?;
            Ok(Db::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url).map_err(|e| bad(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .after_release(|conn, _| Box::pin(end_abandoned_transaction(conn)))
                // Every connection already makes a round trip as it comes back
                // (the check above, then sqlx's own ping); a third before each
                // use would find nothing those two missed. A connection that
                // breaks while idle fails its next statement, and sqlx drops it.
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .map_err(|e| bad(e.to_string()))?;
            Ok(Db::Postgres(pool))
        } else {
            Err(bad(
                "it must start with sqlite:// (for example sqlite://tuma.db) or postgres://".into(),
            ))
        }
    }

    /// Applies apalis's migrations and tuma's own (kept in separate history
    /// tables so neither refuses the other's); on SQLite, then writes
    /// [`QUEUE_PLANNER_STATS`].
    ///
    /// apalis's `SqliteStorage::setup` is not called on purpose: it turns
    /// `synchronous` OFF, which can lose committed jobs on power loss.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(pool) => {
                SqliteStorage::migrations().run(pool).await?;
                let mut ours = sqlx::migrate!("migrations/sqlite");
                ours.dangerous_set_table_name("tuma_migrations");
                ours.run(pool).await?;
                let doing = "writing the queue's planner statistics";
                let mut tx = pool.begin().await.doing(doing)?;
                sqlx::raw_sql(QUEUE_PLANNER_STATS)
                    .execute(&mut *tx)
                    .await
                    .doing(doing)?;
                tx.commit().await.doing(doing)?;
            }
            Db::Postgres(pool) => {
                PostgresStorage::migrations().run(pool).await?;
                let mut ours = sqlx::migrate!("migrations/postgres");
                ours.dangerous_set_table_name("tuma_migrations");
                ours.run(pool).await?;
            }
        }
        Ok(())
    }

    /// Which backend, for messages: `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// Hides the password in a database URL.
pub fn mask_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:****{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_busy_handler_tries_again_soon_and_gives_up_after_the_timeout() {
        let pauses: Vec<u128> = (0..7).map(|t| sqlite_busy_pause(t).as_micros()).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        // 1.55 ms for the first five tries, then 1 ms a try: 10 s is near try 10,004.
        assert_eq!(sqlite_busy(std::ptr::null_mut(), 10_003), 1);
        assert_eq!(sqlite_busy(std::ptr::null_mut(), 10_004), 0);
        assert_eq!(sqlite_busy(std::ptr::null_mut(), i32::MAX), 0);
        assert_eq!(sqlite_busy(std::ptr::null_mut(), -1), 1);
    }

    #[test]
    fn passwords_in_database_urls_are_masked() {
        assert_eq!(
            mask_password("postgres://tuma:s3cret@db:5432/tuma"),
            "postgres://tuma:****@db:5432/tuma"
        );
        assert_eq!(mask_password("sqlite://tuma.db"), "sqlite://tuma.db");
        assert_eq!(
            mask_password("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
    }
}
