//! Crash safety: a delivery whose worker died after claiming it, or during
//! the provider call, is taken on once its lease runs out and finished.

use std::time::Duration;

use tuma::clock::Clock;
use tuma::domain::DeliveryStatus;
use tuma::intake::OtpRequest;
use tuma::queue::{DeliveryJob, Lane};
use tuma::store::Db;

use crate::on_both_backends;
use crate::support::*;

fn otp(to: &str) -> OtpRequest {
    OtpRequest {
        to: to.into(),
        code: "246810".into(),
        channel: None,
        locale: None,
        ttl: None,
    }
}

async fn a_claim_whose_worker_died_before_sending_is_claimed_again_once_its_lease_runs_out(
    backend: Backend,
) {
    let t = TestApp::new(backend, 6).await;
    let d = t.app.enqueue_otp(otp("+254711000010")).await.unwrap();
    // A worker claims it and dies before opening the attempt.
    let now = t.clock.now();
    let lease = chrono::Duration::from_std(tuma::queue_backend::lease(&t.app.config)).unwrap();
    let dead = t
        .app
        .db
        .claim_due(Lane::Otp, "dead-worker", now, now + lease, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery_id, d.row.id);
    // While its lease runs, no one else claims it.
    let again = t
        .app
        .db
        .claim_due(Lane::Otp, "other", now, now + lease, 10)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");

    // Its lease runs out: the next worker takes it.
    t.advance(tuma::queue_backend::lease(&t.app.config)).await;
    t.drain().await;
    let sent = t.delivery(&d.row.id).await;
    assert_eq!(sent.status, DeliveryStatus::Sent);
    assert_eq!(sent.row.attempts, 1);
    // The dead worker's claim, should it wake, is stale and does nothing.
    tuma::dispatch::handle_job(&t.app, Lane::Otp, &dead[0])
        .await
        .unwrap();
    assert_eq!(t.app.db.attempts(&d.row.id).await.unwrap().len(), 1);
    assert_eq!(leased_rows(&t.app.db).await, 0);
}
on_both_backends!(
    a_claim_whose_worker_died_before_sending_is_claimed_again_once_its_lease_runs_out
);

async fn a_send_interrupted_by_a_dead_worker_is_settled_as_unknown_and_retried(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let d = t.app.enqueue_otp(otp("+254711000011")).await.unwrap();
    // A worker marked the delivery sending and died mid-call, holding no
    // lease (or one that ran out).
    let job = DeliveryJob {
        delivery_id: d.row.id.clone(),
        job_id: d.row.job_id.clone().unwrap(),
    };
    let attempt = t
        .app
        .batcher
        .begin_attempt(Lane::Otp, &job, "primary", "primary", t.clock.now())
        .await
        .unwrap();
    assert_eq!(attempt, Some(1));

    let report = tuma::sweeper::sweep(&t.app).await.unwrap();
    assert_eq!(report.resolved, 1);
    let pending = t.delivery(&d.row.id).await;
    assert_eq!(pending.status, DeliveryStatus::Pending);
    assert_eq!(
        pending.row.next_attempt_at,
        Some(t.clock.now()),
        "retried at once"
    );

    t.drain().await;
    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Sent);
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| a.outcome.map(|o| o.as_str()))
        .collect();
    assert_eq!(outcomes, vec![Some("unknown"), Some("accepted")]);
    assert!(
        attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("may or may not have been sent")
    );
    // The second attempt went to the next provider, like any transient failure.
    assert_eq!(attempts[1].provider, "backup");
}
on_both_backends!(a_send_interrupted_by_a_dead_worker_is_settled_as_unknown_and_retried);

async fn a_stale_job_is_ignored(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let d = t.app.enqueue_otp(otp("+254711000012")).await.unwrap();
    let stale = DeliveryJob::new(&d.row.id);
    tuma::dispatch::handle_job(&t.app, tuma::queue::Lane::Otp, &stale)
        .await
        .unwrap();
    let d2 = t.delivery(&d.row.id).await;
    assert_eq!(d2.status, DeliveryStatus::Pending);
    assert_eq!(d2.row.attempts, 0);
    t.drain().await;
    assert_eq!(t.delivery(&d.row.id).await.status, DeliveryStatus::Sent);
}
on_both_backends!(a_stale_job_is_ignored);

#[tokio::test]
async fn sqlite_connections_are_durable_and_wait_for_the_write_lock() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.connect().await;
    let tuma::store::Db::Sqlite(pool) = &store else {
        unreachable!("a SQLite test database")
    };
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(synchronous, 1, "synchronous = NORMAL");
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let secure_delete: i64 = sqlx::query_scalar("PRAGMA secure_delete")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(secure_delete, 1);
    // A writer that finds the write lock taken waits for it (tuma's busy
    // handler, which replaces `busy_timeout`) instead of failing at once.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE lock_probe (x INTEGER)")
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            sqlx::query("CREATE TABLE lock_waiter (x INTEGER)")
                .execute(&pool)
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the second writer waits for the lock"
    );
    sqlx::query("COMMIT").execute(&mut *holder).await.unwrap();
    waiter
        .await
        .unwrap()
        .expect("the waiting write succeeds once the lock is free");
}

/// A transaction start abandoned half-way (a request whose client went away,
/// a timeout, a stopping worker) must not leave the pooled connection inside
/// that transaction: the next borrower's writes would never commit, and the
/// locks they take would be held until the connection died.
async fn an_abandoned_transaction_start_leaves_no_transaction_behind(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    // One connection, so every borrower gets the one an abandoned start used;
    // the witness reads through a pool of its own.
    let db = Db::connect(&test_db.url, 1).await.unwrap();
    let witness = Db::connect(&test_db.url, 1).await.unwrap();
    run_sql(&witness, "CREATE TABLE writes (n BIGINT NOT NULL)").await;
    for i in 0..400_u64 {
        // Give up on `begin` at varying points of its round trips.
        let patience = Duration::from_micros(i % 80 * 10);
        match &db {
            Db::Sqlite(pool) => drop(tokio::time::timeout(patience, pool.begin()).await),
            Db::Postgres(pool) => drop(tokio::time::timeout(patience, pool.begin()).await),
        }
        run_sql(&db, &format!("INSERT INTO writes (n) VALUES ({i})")).await;
        // Another connection sees the write: it was committed.
        let seen = count(&witness, "SELECT COUNT(*) FROM writes").await;
        assert_eq!(
            seen,
            i64::try_from(i).unwrap() + 1,
            "the write after abandoned start {i} was not committed"
        );
    }
}
on_both_backends!(an_abandoned_transaction_start_leaves_no_transaction_behind);

async fn run_sql(db: &Db, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Db::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        Db::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
    }
    .unwrap();
}

/// Runs one statement and says whether the database took it.
async fn statement_is_taken(db: &Db, sql: &'static str) -> bool {
    match db {
        Db::Sqlite(pool) => sqlx::query(sql).execute(pool).await.is_ok(),
        Db::Postgres(pool) => sqlx::query(sql).execute(pool).await.is_ok(),
    }
}

async fn the_schema_takes_held_and_canceled_and_still_refuses_an_unknown_status(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    t.app.enqueue_otp(otp("+254711000011")).await.unwrap();
    for status in ["held", "canceled"] {
        let sql: &'static str = if status == "held" {
            "UPDATE deliveries SET status = 'held'"
        } else {
            "UPDATE deliveries SET status = 'canceled'"
        };
        assert!(statement_is_taken(&t.app.db, sql).await, "{status}");
    }
    assert!(!statement_is_taken(&t.app.db, "UPDATE deliveries SET status = 'bogus'").await);
    // The old app's views still read the table.
    assert_eq!(
        count(&t.app.db, "SELECT COUNT(*) FROM sms_delivery_log").await,
        1
    );
}
on_both_backends!(the_schema_takes_held_and_canceled_and_still_refuses_an_unknown_status);
