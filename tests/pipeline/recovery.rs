//! Crash safety: a delivery whose job was lost, or whose worker died during
//! the provider call, is found by the sweeper and finished.

use std::time::Duration;

use tuma::clock::Clock;
use tuma::domain::DeliveryStatus;
use tuma::intake::OtpRequest;
use tuma::queue::DeliveryJob;
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

async fn a_delivery_whose_job_was_lost_is_requeued_and_sent(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let d = t.app.enqueue_otp(otp("+254711000010")).await.unwrap();
    // As if the process died between recording the delivery and its job.
    delete_all_jobs(&t.app.db).await;

    let report = tuma::sweeper::sweep(&t.app).await.unwrap();
    assert_eq!(report.requeued, 1);
    t.drain().await;

    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Sent);
    assert_eq!(d.row.attempts, 1);
}
on_both_backends!(a_delivery_whose_job_was_lost_is_requeued_and_sent);

async fn a_send_interrupted_by_a_dead_worker_is_settled_as_unknown_and_retried(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let d = t.app.enqueue_otp(otp("+254711000011")).await.unwrap();
    // A worker took the job, marked the delivery sending, and died mid-call.
    let job = DeliveryJob {
        delivery_id: d.row.id.clone(),
        job_id: d.row.job_id.clone().unwrap(),
    };
    let attempt = t
        .app
        .db
        .begin_attempt(&job, "primary", "primary", t.clock.now())
        .await
        .unwrap();
    assert_eq!(attempt, Some(1));
    delete_all_jobs(&t.app.db).await;

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
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome.as_deref()).collect();
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
async fn sqlite_connections_are_durable_whatever_apalis_sets() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.connect().await;
    let tuma::store::Db::Sqlite(pool) = &store else {
        unreachable!("a SQLite test database")
    };
    // apalis's own setup would turn synchronous OFF; tuma never runs it.
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

/// apalis-sqlite 1.0's lock and ack statements (its `queries/task/lock.sql`
/// and `ack.sql`), as it runs them on every batch.
const APALIS_SQLITE_LOCK: &str = "UPDATE Jobs SET status = 'Running', \
    lock_at = strftime('%s', 'now'), lock_by = ?2 \
    WHERE id IN (SELECT value FROM json_each(?1)) \
    AND (status = 'Queued' OR status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))";
const APALIS_SQLITE_ACK: &str = "WITH j AS (SELECT value ->> 'task_id' AS task_id, \
    value ->> 'attempt' AS attempt, value ->> 'result' AS result, value ->> 'status' AS status \
    FROM json_each(?1)) \
    UPDATE Jobs SET status = j.status, attempts = j.attempt, last_result = j.result, \
    done_at = strftime('%s', 'now') FROM j WHERE Jobs.id = j.task_id AND Jobs.lock_by = ?2";
/// The pending half of apalis-sqlite 1.0's fetch (`queries/backend/fetch_next.sql`).
const APALIS_SQLITE_FETCH_PENDING: &str = "SELECT ROWID, priority, run_at, id FROM Jobs \
    WHERE job_type = ?2 AND status = 'Pending' AND lock_by IS NULL \
    AND (run_at IS NULL OR run_at <= ?4) ORDER BY priority DESC, run_at ASC, id ASC LIMIT ?3";

#[tokio::test]
async fn sqlite_queue_statements_find_jobs_by_id_not_by_status() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.connect().await;
    let Db::Sqlite(pool) = &store else {
        unreachable!("a SQLite test database")
    };
    assert_queue_plans(pool).await;

    // A plain ANALYZE of the empty queue replaces the statistics; the next
    // start writes them again, and every connection open then reads them.
    sqlx::query("ANALYZE").execute(pool).await.unwrap();
    let ours: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_stat1 WHERE idx = 'sqlite_autoindex_Jobs_1'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(ours, 0, "ANALYZE of the empty queue replaced them");
    store.close().await;
    let restarted = db.connect().await;
    let Db::Sqlite(pool) = &restarted else {
        unreachable!("a SQLite test database")
    };
    assert_queue_plans(pool).await;
}

/// apalis's lock and ack find jobs by id, and its fetch reads its index, on
/// every connection of `pool`.
async fn assert_queue_plans(pool: &sqlx::SqlitePool) {
    // Several connections at once, opened before the statistics were written
    // and after: each loads them when it sees the schema changed, which a
    // statement that reads a table checks (EXPLAIN alone does not).
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(pool.acquire().await.unwrap());
    }
    for conn in &mut conns {
        sqlx::query("SELECT COUNT(*) FROM Jobs")
            .execute(&mut **conn)
            .await
            .unwrap();
        for (name, sql) in [("lock", APALIS_SQLITE_LOCK), ("ack", APALIS_SQLITE_ACK)] {
            let plan = explain(conn, sql).await.join(" | ");
            // Walking the status or worker index reads every pending job, or
            // every job the worker ever held, while holding the write lock.
            assert!(
                plan.contains("sqlite_autoindex_Jobs_1 (id=?)"),
                "apalis's {name} finds jobs by id: {plan}"
            );
            assert!(
                !plan.contains("idx_jobs_status_run_at") && !plan.contains("LIdx"),
                "apalis's {name} does not walk an index of status or worker: {plan}"
            );
        }
        // The statistics leave the fetch on apalis's index of claimable jobs,
        // which is already in the order it takes them.
        let plan = explain(conn, APALIS_SQLITE_FETCH_PENDING).await.join(" | ");
        assert!(
            plan.contains("USING INDEX idx_jobs_pending") && !plan.contains("TEMP B-TREE"),
            "apalis's fetch reads its pending jobs in order from their index: {plan}"
        );
    }
}

/// `EXPLAIN QUERY PLAN`'s details, top to bottom.
async fn explain(conn: &mut sqlx::SqliteConnection, sql: &str) -> Vec<String> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
        .fetch_all(conn)
        .await
        .unwrap();
    rows.iter()
        .map(|row| sqlx::Row::get::<String, _>(row, 3))
        .collect()
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
