//! Storage: one sqlx pool for tuma's tables, the queue's included.
//!
//! SQLite (the embedded default) and PostgreSQL run the same SQL where they
//! can (`$1` placeholders work on both); [`on_pool!`] expands one body for each
//! backend so the queries are written once.

mod api;
mod batch;
mod cancel;
mod console;
mod deliveries;
mod late;
mod nodelay;
mod pumping;
mod queue;
mod receipts;
mod replays;
mod reports;
mod shared;
mod spend;
mod suppression;
mod views;
mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub use api::*;
pub use batch::{Batcher, OtpInFlight};
pub use cancel::Canceled;
pub use console::*;
pub use deliveries::*;
pub use late::{AttemptSummary, LateRecord};
pub use pumping::{PumpingGuard, PumpingRefusal};
pub use queue::ClaimedDelivery;
pub use receipts::*;
pub use replays::*;
pub use reports::*;
pub use shared::*;
pub use spend::*;
pub use suppression::*;
pub use views::*;
pub use webhooks::*;

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

/// Where a database lives (see [`Db::file`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbFile {
    /// A SQLite database in this file.
    Sqlite(std::path::PathBuf),
    /// A SQLite database in memory.
    InMemory,
    /// A Postgres server.
    Postgres,
}

impl DbFile {
    /// Where the database `url` names lives, read from the URL alone: what
    /// must sit beside it is found before the database is opened (and, for
    /// a SQLite file, created).
    pub fn of_url(url: &str) -> Result<DbFile, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
                url: mask_password(url),
                reason: e.to_string(),
            })?;
            Ok(DbFile::of_sqlite(&options))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(DbFile::Postgres)
        } else {
            Err(bad_scheme(url))
        }
    }

    fn of_sqlite(options: &SqliteConnectOptions) -> DbFile {
        let in_memory = sqlx::ConnectOptions::to_url_lossy(options)
            .query_pairs()
            .any(|(k, v)| k == "mode" && v == "memory");
        if in_memory {
            DbFile::InMemory
        } else {
            DbFile::Sqlite(options.get_filename().to_owned())
        }
    }
}

/// The error for a URL that is neither SQLite nor Postgres.
fn bad_scheme(url: &str) -> StoreError {
    StoreError::BadUrl {
        url: mask_password(url),
        reason: "it must start with sqlite:// (for example sqlite://tuma.db) or postgres://".into(),
    }
}

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
/// aborted task, a request whose client went away, a stopping worker's
/// claim) leaves the server in a transaction that sqlx does not know of
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

impl Db {
    /// Opens a pool of at most `max_connections` connections, on either
    /// backend (`[database] max_connections`, or each backend's default:
    /// `config::DatabaseConfig::pool_size`); no other connection to the
    /// database is ever opened (the Postgres LISTEN holds one of the pool's).
    /// SQLite files are created if missing and every connection gets WAL,
    /// `synchronous=NORMAL`, tuma's busy handler ([`sqlite_busy`]), foreign
    /// keys and `secure_delete` (so a wiped OTP code does not linger in free
    /// pages).
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
            // Few connections by default (`config::SQLITE_CONNECTIONS`):
            // SQLite runs one writer at a time anyway. Never one in a
            // process that works (the configuration's minimum is three): a
            // claim parked on a connection while a worker shuts down would
            // starve the in-flight sends it waits for.
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
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
                .after_connect(|conn, _| Box::pin(nodelay::set_nodelay(conn)))
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
            Err(bad_scheme(url))
        }
    }

    /// Applies tuma's migrations (history in `tuma_migrations`), then
    /// retires the apalis queue an earlier tuma kept
    /// ([`Db::retire_apalis_queue`]).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(pool) => {
                let mut ours = sqlx::migrate!("migrations/sqlite");
                ours.dangerous_set_table_name("tuma_migrations");
                ours.run(pool).await?;
            }
            Db::Postgres(pool) => {
                let mut ours = sqlx::migrate!("migrations/postgres");
                ours.dangerous_set_table_name("tuma_migrations");
                ours.run(pool).await?;
            }
        }
        self.derive_countries().await?;
        // A database an earlier tuma queued in apalis's tables: their jobs of
        // finished deliveries go now, the tables once empty.
        self.retire_apalis_queue().await?;
        Ok(())
    }

    /// Where the database lives, for what must sit beside it (the OTP key file).
    pub fn file(&self) -> DbFile {
        match self {
            Db::Sqlite(pool) => DbFile::of_sqlite(&pool.connect_options()),
            Db::Postgres(_) => DbFile::Postgres,
        }
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
