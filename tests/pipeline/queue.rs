//! The deliveries table is the queue: claims take due deliveries of their
//! lane once each, leases, wake-ups, `--lanes`, and a database queued by an
//! earlier tuma in apalis's tables taken over with nothing lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use chrono::Utc;
use tuma::app::App;
use tuma::clock::Clock;
use tuma::domain::DeliveryStatus;
use tuma::intake::{NotificationRequest, OtpRequest};
use tuma::providers::Providers;
use tuma::queue::{DeliveryJob, Lane};
use tuma::store::{AttemptStart, Db, ListFilter};

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

fn welcome(to: &str, send_at: Option<chrono::DateTime<Utc>>) -> NotificationRequest {
    NotificationRequest {
        to: to.into(),
        template: "welcome".into(),
        locale: None,
        vars: serde_json::Map::from_iter([("name".to_owned(), serde_json::json!("Amina"))]),
        send_at,
        expires: None,
    }
}

fn lease(t: &TestApp) -> chrono::Duration {
    chrono::Duration::from_std(tuma::queue_backend::lease(&t.app.config)).unwrap()
}

async fn a_claim_takes_due_deliveries_of_its_lane_only_and_each_once(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let code = t.app.enqueue_otp(otp("+254711000700")).await.unwrap();
    let now_due = t
        .app
        .enqueue_notification(welcome("+254711000701", None))
        .await
        .unwrap();
    let later = t.clock.now() + chrono::Duration::seconds(90);
    let scheduled = t
        .app
        .enqueue_notification(welcome("+254711000702", Some(later)))
        .await
        .unwrap();
    let now = t.clock.now();
    // Leases that outlast the 90 s this test moves on.
    let until = now + chrono::Duration::hours(1);

    let otps = t
        .app
        .db
        .claim_due(Lane::Otp, "a", now, until, 10)
        .await
        .unwrap();
    assert_eq!(otps.len(), 1);
    assert_eq!(otps[0].delivery_id, code.row.id);
    // The claim renewed the token: the one intake wrote is stale now.
    assert_ne!(Some(otps[0].job_id.as_str()), code.row.job_id.as_deref());
    let claimed = t.delivery(&code.row.id).await;
    assert_eq!(
        claimed.status,
        DeliveryStatus::Pending,
        "claimed, not opened"
    );
    assert_eq!(claimed.row.job_id.as_deref(), Some(otps[0].job_id.as_str()));
    assert!(
        t.app
            .db
            .claim_due(Lane::Otp, "b", now, until, 10)
            .await
            .unwrap()
            .is_empty(),
        "held by its lease"
    );

    let bulk = t
        .app
        .db
        .claim_due(Lane::Notifications, "a", now, until, 10)
        .await
        .unwrap();
    assert_eq!(
        bulk.iter()
            .map(|j| j.delivery_id.as_str())
            .collect::<Vec<_>>(),
        [now_due.row.id.as_str()],
        "the scheduled one is not due yet"
    );
    // The lane's timer waits for the scheduled one.
    assert_eq!(
        t.app.db.next_due(Lane::Notifications, now).await.unwrap(),
        Some(later)
    );
    assert_eq!(t.app.db.next_due(Lane::Otp, now).await.unwrap(), None);

    // Its time comes: it is due for whoever claims first.
    t.advance(Duration::from_secs(90)).await;
    let now = t.clock.now();
    let due = t
        .app
        .db
        .claim_due(Lane::Notifications, "b", now, now + lease(&t), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].delivery_id, scheduled.row.id);

    // A stopping worker gives back what it never started: due again at once.
    assert_eq!(t.app.db.release_claims(&otps).await.unwrap(), 1);
    let again = t
        .app
        .db
        .claim_due(Lane::Otp, "c", now, now + lease(&t), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    // The old claim cannot open an attempt any more.
    let start = AttemptStart::new(&otps[0], "primary", "primary", now);
    assert_eq!(t.app.db.begin_attempts(&[start]).await.unwrap(), vec![None]);
}
on_both_backends!(a_claim_takes_due_deliveries_of_its_lane_only_and_each_once);

async fn concurrent_claimers_never_take_one_delivery_twice(backend: Backend) {
    // Two pools on one database: what two tuma processes are.
    let t = TestApp::new(backend, 6).await;
    const N: usize = 300;
    let mut wanted = HashSet::new();
    for i in 0..N {
        let d = t
            .app
            .enqueue_notification(welcome(&format!("+2547117{i:05}"), None))
            .await
            .unwrap();
        wanted.insert(d.row.id);
    }
    let now = t.clock.now();
    let until = now + lease(&t);
    let claimers = (0..4).map(|i| {
        let db = t.db.connect();
        async move {
            let db = db.await;
            let mut mine = Vec::new();
            loop {
                let got = db
                    .claim_due(Lane::Notifications, &format!("w{i}"), now, until, 7)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|j| j.delivery_id));
            }
        }
    });
    let all: Vec<String> = futures::future::join_all(claimers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let distinct: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(all.len(), N, "each claimed exactly once");
    assert_eq!(distinct, wanted);
}
on_both_backends!(concurrent_claimers_never_take_one_delivery_twice);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_commit_notifies_its_lane_on_postgres() {
    let Some(_) = postgres_admin_url() else {
        return;
    };
    let t = TestApp::new(Backend::Postgres, 6).await;
    let Db::Postgres(pool) = &t.app.db else {
        unreachable!()
    };
    let mut listener = sqlx::postgres::PgListener::connect_with(pool)
        .await
        .unwrap();
    listener
        .listen_all([Lane::Otp.channel(), Lane::Notifications.channel()])
        .await
        .unwrap();
    t.app.enqueue_otp(otp("+254711000710")).await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap();
    assert_eq!(note.channel(), "tuma_otp");
    t.app
        .enqueue_notification(welcome("+254711000711", None))
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap();
    assert_eq!(note.channel(), "tuma_notification");
}

async fn a_worker_of_one_lane_leaves_the_other_lane_alone(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let code = t.app.enqueue_otp(otp("+254711000720")).await.unwrap();
    let bulk = t
        .app
        .enqueue_notification(welcome("+254711000721", None))
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(tuma::worker::run_lanes_until(
        t.app.clone(),
        &[Lane::Otp],
        async move {
            let _ = stop_rx.await;
            Ok(())
        },
    ));
    tokio::time::timeout(Duration::from_secs(30), async {
        while t.delivery(&code.row.id).await.status != DeliveryStatus::Sent {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the OTP lane's worker sends the OTP");
    // A few of the lane's polls later, the notification is still untouched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let untouched = t.delivery(&bulk.row.id).await;
    assert_eq!(untouched.status, DeliveryStatus::Pending);
    assert_eq!(untouched.row.attempts, 0);
    stop_tx.send(()).unwrap();
    worker.await.unwrap().unwrap();
}
on_both_backends!(a_worker_of_one_lane_leaves_the_other_lane_alone);

/// apalis's job for `job` as an earlier tuma pushed it, on `lane`.
fn apalis_task(job: &DeliveryJob) -> apalis_core::task::Task<Vec<u8>> {
    let id = ulid::Ulid::from_string(&job.job_id).unwrap();
    TaskBuilder::new(serde_json::to_vec(job).unwrap())
        .task_id(TaskId::from_ulid(id))
        .max_attempts(1)
        .build()
}

/// The apalis queue name an earlier tuma gave a lane.
fn old_queue(lane: Lane) -> &'static str {
    match lane {
        Lane::Otp => "tuma-otp",
        Lane::Notifications => "tuma-notifications",
    }
}

/// Builds a database as the tuma before this queue left it: apalis's
/// migrations, tuma's up to the queue's, and each delivery's apalis job.
async fn old_database(db: &TestDb) -> Db {
    let store = Db::connect(&db.url, 4).await.unwrap();
    let before = |m: &mut sqlx::migrate::Migrator| {
        let old: Vec<_> = m
            .migrations
            .iter()
            // Every migration but the queue's: apalis's queue as before,
            // with the columns today's intake (which writes the rows) fills.
            .filter(|m| m.version != 20261205200001)
            .cloned()
            .collect();
        m.migrations = old.into();
        m.dangerous_set_table_name("tuma_migrations");
    };
    match &store {
        Db::Sqlite(pool) => {
            apalis_sqlite::SqliteStorage::migrations()
                .run(pool)
                .await
                .unwrap();
            let mut ours = sqlx::migrate!("migrations/sqlite");
            before(&mut ours);
            ours.run(pool).await.unwrap();
        }
        Db::Postgres(pool) => {
            apalis_postgres::PostgresStorage::migrations()
                .run(pool)
                .await
                .unwrap();
            let mut ours = sqlx::migrate!("migrations/postgres");
            before(&mut ours);
            ours.run(pool).await.unwrap();
        }
    }
    store
}

async fn push_old_job(store: &Db, lane: Lane, job: &DeliveryJob, status: &str) {
    match store {
        Db::Sqlite(pool) => {
            let mut conn = pool.acquire().await.unwrap();
            apalis_sqlite::queries::push_tasks(&mut *conn, old_queue(lane), &[apalis_task(job)])
                .await
                .unwrap();
            sqlx::query("UPDATE Jobs SET status = $1 WHERE id = $2")
                .bind(status)
                .bind(&job.job_id)
                .execute(pool)
                .await
                .unwrap();
        }
        Db::Postgres(pool) => {
            let mut conn = pool.acquire().await.unwrap();
            apalis_postgres::queries::push_tasks(
                &mut *conn,
                old_queue(lane),
                vec![apalis_task(job)],
            )
            .await
            .unwrap();
            sqlx::query("UPDATE apalis.jobs SET status = $1 WHERE id = $2")
                .bind(status)
                .bind(&job.job_id)
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

async fn run_sql(store: &Db, sql: &'static str, id: &str, at: chrono::DateTime<Utc>) {
    match store {
        Db::Sqlite(pool) => sqlx::query(sql)
            .bind(id)
            .bind(at)
            .execute(pool)
            .await
            .map(drop),
        Db::Postgres(pool) => sqlx::query(sql)
            .bind(id)
            .bind(at)
            .execute(pool)
            .await
            .map(drop),
    }
    .unwrap();
}

async fn old_queue_left(store: &Db) -> Option<i64> {
    match store {
        Db::Sqlite(pool) => {
            let table: Option<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'Jobs'",
            )
            .fetch_optional(pool)
            .await
            .unwrap();
            table?;
            Some(count(store, "SELECT COUNT(*) FROM Jobs").await)
        }
        Db::Postgres(pool) => {
            let schema: Option<String> = sqlx::query_scalar(
                "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name = 'apalis'",
            )
            .fetch_optional(pool)
            .await
            .unwrap();
            schema?;
            Some(count(store, "SELECT COUNT(*) FROM apalis.jobs").await)
        }
    }
}

async fn a_database_queued_by_apalis_is_taken_over_and_every_delivery_ends_sent_once(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let (_, config) = write_config(db.path(), 6);
    let clock = new_clock();
    let old = old_database(&db).await;
    let writer = App::with_parts(
        config.clone(),
        old.clone(),
        Providers::from_config(&config).unwrap(),
        clock.clone(),
    )
    .unwrap();
    let now = clock.now();
    // Pending, due now, its job waiting.
    let pending = writer.enqueue_otp(otp("+254711000730")).await.unwrap();
    // Sending when its worker died: its job was running.
    let sending = writer
        .enqueue_notification(welcome("+254711000731", None))
        .await
        .unwrap();
    // A retry scheduled in 30 s, its job waiting for then.
    let retry = writer
        .enqueue_notification(welcome("+254711000732", None))
        .await
        .unwrap();
    // Sent: its job done.
    let sent = writer
        .enqueue_notification(welcome("+254711000733", None))
        .await
        .unwrap();
    // Released from a budget hold by the old code, which left it no due time.
    let released = writer
        .enqueue_notification(welcome("+254711000734", None))
        .await
        .unwrap();
    let job = |d: &tuma::store::Delivery| DeliveryJob {
        delivery_id: d.row.id.clone(),
        job_id: d.row.job_id.clone().unwrap(),
    };
    for (d, status) in [
        (&pending, "Pending"),
        (&sending, "Running"),
        (&retry, "Pending"),
        (&sent, "Done"),
        (&released, "Pending"),
    ] {
        push_old_job(&old, Lane::for_kind(d.kind), &job(d), status).await;
    }
    let starts: Vec<AttemptStart> = [&sending, &retry, &sent]
        .into_iter()
        .map(|d| AttemptStart::new(&job(d), "primary", "primary", now))
        .collect();
    assert_eq!(
        old.begin_attempts(&starts).await.unwrap(),
        vec![Some(1), Some(1), Some(1)]
    );
    run_sql(
        &old,
        "UPDATE deliveries SET status = 'pending', next_attempt_at = $2, \
         last_error = 'no answer' WHERE id = $1",
        &retry.row.id,
        now + chrono::Duration::seconds(30),
    )
    .await;
    run_sql(
        &old,
        "UPDATE delivery_attempts SET outcome = 'transient', finished_at = $2, \
         error = 'no answer' WHERE delivery_id = $1",
        &retry.row.id,
        now,
    )
    .await;
    run_sql(
        &old,
        "UPDATE deliveries SET status = 'sent', sent_at = $2, job_id = NULL, \
         provider_message_id = 'old-1' WHERE id = $1",
        &sent.row.id,
        now,
    )
    .await;
    run_sql(
        &old,
        "UPDATE delivery_attempts SET outcome = 'accepted', finished_at = $2, \
         provider_message_id = 'old-1' WHERE delivery_id = $1",
        &sent.row.id,
        now,
    )
    .await;
    run_sql(
        &old,
        "UPDATE deliveries SET next_attempt_at = NULL, updated_at = $2 WHERE id = $1",
        &released.row.id,
        now,
    )
    .await;
    writer.stop().await;
    old.close().await;

    // The new tuma opens it: the done job goes, the others wait for their deliveries.
    let store = db.connect().await;
    assert_eq!(old_queue_left(&store).await, Some(4));
    let t = TestApp {
        app: Arc::new(
            App::with_parts(
                config.clone(),
                store,
                Providers::from_config(&config).unwrap(),
                clock.clone(),
            )
            .unwrap(),
        ),
        clock,
        db,
    };
    t.drain().await;
    t.advance(Duration::from_secs(31)).await;
    t.drain().await;

    let all = t
        .app
        .db
        .list_deliveries(&ListFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    for d in &all {
        assert_eq!(
            d.status,
            DeliveryStatus::Sent,
            "{}: {:?}",
            d.row.id,
            d.row.last_error
        );
        let accepted = t
            .app
            .db
            .attempts(&d.row.id)
            .await
            .unwrap()
            .iter()
            .filter(|a| a.outcome.map(|o| o.as_str()) == Some("accepted"))
            .count();
        assert_eq!(accepted, 1, "{} sent once", d.row.id);
    }
    // The interrupted send was settled as unknown and retried, like any.
    let outcomes: Vec<_> = t
        .app
        .db
        .attempts(&sending.row.id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.outcome.map(|o| o.as_str()))
        .collect();
    assert_eq!(outcomes, [Some("unknown"), Some("accepted")]);
    // Every delivery finished: the old queue's tables are gone.
    tuma::sweeper::sweep(&t.app).await.unwrap();
    assert_eq!(old_queue_left(&t.app.db).await, None);
    assert_eq!(leased_rows(&t.app.db).await, 0);
}
on_both_backends!(a_database_queued_by_apalis_is_taken_over_and_every_delivery_ends_sent_once);
