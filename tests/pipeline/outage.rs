//! Outages: every provider down for minutes or hours (retries wait for the
//! circuits and a time budget instead of spending a few attempts), and a
//! database that fails just as a provider answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Map;
use sqlx::Connection;
use tuma::app::App;
use tuma::clock::{Clock, ManualClock};
use tuma::config::Config;
use tuma::domain::DeliveryStatus;
use tuma::intake::{NotificationRequest, OtpRequest};
use tuma::providers::{
    Accepted, Content, OutgoingMessage, Provider, Providers, SendError, unlimited,
};
use tuma::queue::{DeliveryJob, Lane};
use tuma::store::ListFilter;

use crate::on_both_backends;
use crate::support::*;

/// A provider that is down (HTTP 503, transient) until told otherwise, and
/// records every call.
#[derive(Debug)]
struct Flaky {
    clock: Arc<ManualClock>,
    down: AtomicBool,
    calls: Mutex<Vec<(String, DateTime<Utc>, bool)>>,
}

impl Flaky {
    fn down(clock: Arc<ManualClock>) -> Arc<Flaky> {
        Arc::new(Flaky {
            clock,
            down: AtomicBool::new(true),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<(String, DateTime<Utc>, bool)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Provider for Flaky {
    fn dry_run(&self, message: &OutgoingMessage) -> String {
        format!("flaky provider for {}", message.delivery_id)
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        let down = self.down.load(Ordering::SeqCst);
        self.calls
            .lock()
            .unwrap()
            .push((message.delivery_id.clone(), self.clock.now(), !down));
        if down {
            return Err(SendError::Transient {
                code: Some("503".into()),
                message: "HTTP 503 Service Unavailable".into(),
            });
        }
        Ok(Accepted {
            provider_message_id: format!("msg-{}", message.delivery_id),
            provider_status: Some("queued".into()),
            cost: None,
            segments: None,
            part_ids: Vec::new(),
        })
    }
}

/// The test configuration with tuma's default `[retry]` and
/// `[circuit_breaker]` (plus `retry` keys, when given).
fn default_retry_config(dir: &std::path::Path, retry: &str) -> Config {
    let text = config_text(dir, 6);
    let start = text.find("[retry]").unwrap();
    let end = start + text[start..].find("[[price]]").unwrap();
    let mut text = format!("{}[retry]\n{retry}\n\n{}", &text[..start], &text[end..]);
    let start = text.find("[circuit_breaker]").unwrap();
    let end = start + text[start..].find("[otp]").unwrap();
    text.replace_range(start..end, "");
    let path = dir.join("providers.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).expect("valid test config")
}

/// An app with the default retry policy whose two providers are stand-ins.
async fn app_with(
    backend: Backend,
    clock: Arc<ManualClock>,
    retry: &str,
    providers: &[(&str, Arc<dyn Provider>)],
) -> TestApp {
    app_on(TestDb::new(backend).await, clock, retry, providers).await
}

async fn app_on(
    db: TestDb,
    clock: Arc<ManualClock>,
    retry: &str,
    providers: &[(&str, Arc<dyn Provider>)],
) -> TestApp {
    let config = default_retry_config(db.path(), retry);
    let store = db.connect().await;
    let mut all = Providers::from_config(&config).expect("providers");
    for (name, p) in providers {
        all.insert(name, p.clone(), unlimited(), Duration::from_secs(2));
    }
    let app = App::with_parts(config, store, all, clock.clone()).expect("app");
    TestApp {
        app: Arc::new(app),
        clock,
        db,
    }
}

fn welcome(to: &str) -> NotificationRequest {
    NotificationRequest {
        to: to.into(),
        template: "welcome".into(),
        locale: None,
        vars: Map::from_iter([("name".to_owned(), serde_json::json!("Amina"))]),
        send_at: None,
        expires: None,
    }
}

fn otp(to: &str, ttl: Duration) -> OtpRequest {
    OtpRequest {
        to: to.into(),
        code: "482913".into(),
        channel: None,
        locale: None,
        ttl: Some(ttl),
    }
}

/// Moves tuma's clock, which is the queue's schedule too, by `by`.
async fn move_time(t: &TestApp, by: Duration) {
    t.advance(by).await;
}

async fn drain(t: &TestApp) {
    if let Err(e) = tuma::worker::drain(t.app.clone(), Duration::from_secs(20)).await {
        let now = t.clock.now();
        for d in all_deliveries(t).await.iter().take(5) {
            eprintln!(
                "now {now} {:?} attempts {} next {:?} err {:?}",
                d.status, d.row.attempts, d.row.next_attempt_at, d.row.last_error
            );
        }
        panic!("drain: {e}");
    }
}

async fn all_deliveries(t: &TestApp) -> Vec<tuma::store::Delivery> {
    t.app
        .db
        .list_deliveries(&ListFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Every provider is down for `outage`; then they return. With the default
/// retry policy nothing fails: each notification, and each OTP whose TTL
/// outlasts the outage, is sent exactly once; an OTP whose TTL ends first
/// expires, and is never handed to a provider at or after its expiry.
async fn an_outage_of_every_provider_ends_with_every_delivery_sent_once(
    backend: Backend,
    outage: Duration,
) {
    let clock = new_clock();
    let primary = Flaky::down(clock.clone());
    let backup = Flaky::down(clock.clone());
    let t = app_with(
        backend,
        clock,
        "",
        &[("primary", primary.clone()), ("backup", backup.clone())],
    )
    .await;
    let mut notifications = Vec::new();
    for i in 0..60 {
        let d = t
            .app
            .enqueue_notification(welcome(&format!("+2547110{i:05}")))
            .await
            .unwrap();
        notifications.push(d.row.id);
    }
    let lasting = t
        .app
        .enqueue_otp(otp("+254711100001", outage + Duration::from_secs(3600)))
        .await
        .unwrap();
    let short = t
        .app
        .enqueue_otp(otp("+254711100002", Duration::from_secs(300)))
        .await
        .unwrap();

    drain(&t).await;
    let step = Duration::from_secs(300);
    let mut elapsed = Duration::ZERO;
    let mut waited = false;
    while elapsed < outage {
        let by = step.min(outage - elapsed);
        move_time(&t, by).await;
        elapsed += by;
        drain(&t).await;
        waited |= all_deliveries(&t).await.iter().any(|d| {
            d.status == DeliveryStatus::Pending
                && d.row
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("waiting, no attempt spent: every provider"))
        });
    }
    assert!(
        waited,
        "deliveries waited for the open circuits, saying why"
    );
    let during: usize = primary.calls().len() + backup.calls().len();
    let failed_during = all_deliveries(&t)
        .await
        .iter()
        .filter(|d| d.status == DeliveryStatus::Failed)
        .count();
    assert_eq!(failed_during, 0, "nothing failed during the outage");

    primary.down.store(false, Ordering::SeqCst);
    backup.down.store(false, Ordering::SeqCst);
    for _ in 0..10 {
        move_time(&t, Duration::from_secs(60)).await;
        drain(&t).await;
        let all = all_deliveries(&t).await;
        if all.iter().all(|d| d.status != DeliveryStatus::Pending) {
            break;
        }
    }

    let all = all_deliveries(&t).await;
    let by_status = |s: DeliveryStatus| all.iter().filter(|d| d.status == s).count();
    assert_eq!(by_status(DeliveryStatus::Failed), 0, "no permanent failure");
    assert_eq!(
        by_status(DeliveryStatus::Sent),
        61,
        "every notification and the lasting OTP"
    );
    assert_eq!(by_status(DeliveryStatus::Expired), 1);
    assert_eq!(
        t.delivery(&short.row.id).await.status,
        DeliveryStatus::Expired
    );
    assert_eq!(
        t.delivery(&lasting.row.id).await.status,
        DeliveryStatus::Sent
    );

    let calls: Vec<_> = primary.calls().into_iter().chain(backup.calls()).collect();
    let mut accepted: HashMap<&str, usize> = HashMap::new();
    for (id, _, ok) in &calls {
        if *ok {
            *accepted.entry(id.as_str()).or_default() += 1;
        }
    }
    for id in notifications.iter().chain([&lasting.row.id]) {
        assert_eq!(
            accepted.get(id.as_str()),
            Some(&1),
            "{id} sent exactly once"
        );
    }
    let expires_at = t.delivery(&short.row.id).await.row.expires_at.unwrap();
    assert!(
        calls
            .iter()
            .filter(|(id, _, _)| *id == short.row.id)
            .all(|(_, at, _)| *at < expires_at),
        "an OTP is never handed over at or after its expiry"
    );
    // Waiting spent no attempts: a few calls per delivery at most, however
    // long the outage (each cooldown lets one probe per provider through).
    let per_delivery = during as f64 / 62.0;
    let steps = (outage.as_secs() / 300) as f64;
    assert!(
        per_delivery <= 2.0 + 2.0 * steps / 62.0 + 0.5,
        "{during} calls during the outage for 62 deliveries"
    );
}

async fn a_ten_minute_outage_of_every_provider_fails_nothing_and_sends_everything_once(
    backend: Backend,
) {
    an_outage_of_every_provider_ends_with_every_delivery_sent_once(
        backend,
        Duration::from_secs(600),
    )
    .await;
}
on_both_backends!(a_ten_minute_outage_of_every_provider_fails_nothing_and_sends_everything_once);

async fn a_two_hour_outage_of_every_provider_fails_nothing_and_sends_everything_once(
    backend: Backend,
) {
    an_outage_of_every_provider_ends_with_every_delivery_sent_once(
        backend,
        Duration::from_secs(7200),
    )
    .await;
}
on_both_backends!(a_two_hour_outage_of_every_provider_fails_nothing_and_sends_everything_once);

async fn a_notification_gives_up_once_its_retry_budget_is_spent(backend: Backend) {
    let clock = new_clock();
    let down = Flaky::down(clock.clone());
    let t = app_with(
        backend,
        clock,
        "give_up_after = \"1m\"",
        &[("primary", down.clone()), ("backup", down.clone())],
    )
    .await;
    let d = t
        .app
        .enqueue_notification(welcome("+254711200001"))
        .await
        .unwrap();
    for _ in 0..8 {
        drain(&t).await;
        move_time(&t, Duration::from_secs(30)).await;
    }
    drain(&t).await;
    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Failed);
    let error = d.row.last_error.unwrap();
    assert!(
        error.contains("over 1m (retry.give_up_after); last error: HTTP 503 Service Unavailable"),
        "{error}"
    );
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    let first = attempts[0].started_at;
    let last = attempts.last().unwrap().started_at;
    assert!(
        last - first <= chrono::Duration::seconds(60),
        "no try after the budget's end"
    );
}
on_both_backends!(a_notification_gives_up_once_its_retry_budget_is_spent);

async fn a_notification_queued_through_an_outage_is_never_sent_past_its_retry_time(
    backend: Backend,
) {
    let clock = new_clock();
    let primary = Flaky::down(clock.clone());
    let backup = Flaky::down(clock.clone());
    let t = app_with(
        backend,
        clock,
        "give_up_after = \"1h\"",
        &[("primary", primary.clone()), ("backup", backup.clone())],
    )
    .await;
    let accepted_at = t.clock.now();
    // Every provider is down for two hours: the first sends open both
    // circuits, and the rest wait without an attempt.
    let mut ids = Vec::new();
    for i in 0..20 {
        let d = t
            .app
            .enqueue_notification(welcome(&format!("+2547112{i:05}")))
            .await
            .unwrap();
        ids.push(d.row.id);
    }
    // One scheduled for the outage's end has its whole hour after that.
    let mut later = welcome("+254711299999");
    later.send_at = Some(accepted_at + chrono::Duration::seconds(7200));
    let scheduled = t.app.enqueue_notification(later).await.unwrap();
    let mut elapsed = Duration::ZERO;
    while elapsed < Duration::from_secs(7200) {
        drain(&t).await;
        move_time(&t, Duration::from_secs(300)).await;
        elapsed += Duration::from_secs(300);
    }
    primary.down.store(false, Ordering::SeqCst);
    backup.down.store(false, Ordering::SeqCst);
    for _ in 0..5 {
        drain(&t).await;
        move_time(&t, Duration::from_secs(60)).await;
    }
    drain(&t).await;
    let calls: Vec<_> = primary.calls().into_iter().chain(backup.calls()).collect();
    let budget_end = accepted_at + chrono::Duration::seconds(3600);
    for (delivery, at, _) in &calls {
        if *delivery != scheduled.row.id {
            assert!(
                *at <= budget_end,
                "a call {} after acceptance",
                *at - accepted_at
            );
        }
    }
    for id in &ids {
        let d = t.delivery(id).await;
        assert_eq!(d.status, DeliveryStatus::Failed, "{:?}", d.row.last_error);
        let error = d.row.last_error.unwrap();
        assert!(
            error.contains("1h") && error.contains("retry.give_up_after"),
            "{error}"
        );
    }
    assert_eq!(
        t.delivery(&scheduled.row.id).await.status,
        DeliveryStatus::Sent,
        "its hour runs from the time it was scheduled for"
    );
}
on_both_backends!(a_notification_queued_through_an_outage_is_never_sent_past_its_retry_time);

/// A provider that accepts, but breaks the database just before answering:
/// what a database outage during a send looks like to the dispatcher.
struct BreaksDb {
    url: String,
    calls: Mutex<usize>,
    /// SQLite: a connection holding the write lock until the test lets go.
    lock: tokio::sync::Mutex<Option<sqlx::SqliteConnection>>,
}

impl std::fmt::Debug for BreaksDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BreaksDb")
    }
}

impl BreaksDb {
    fn pg_admin(&self) -> (String, String) {
        let (_, name) = self.url.rsplit_once('/').unwrap();
        (postgres_admin_url().unwrap(), name.to_owned())
    }

    async fn break_db(&self) {
        if self.url.starts_with("sqlite") {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut conn)
                .await
                .unwrap();
            *self.lock.lock().await = Some(conn);
        } else {
            let (admin, name) = self.pg_admin();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            for sql in [
                format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"),
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                ),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }

    async fn restore(&self) {
        if let Some(mut conn) = self.lock.lock().await.take() {
            sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
        if !self.url.starts_with("sqlite") {
            let (admin, name) = self.pg_admin();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
}

#[async_trait]
impl Provider for BreaksDb {
    fn dry_run(&self, message: &OutgoingMessage) -> String {
        format!("breaks the database for {}", message.delivery_id)
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        assert!(matches!(message.content, Content::Sms { .. }));
        *self.calls.lock().unwrap() += 1;
        self.break_db().await;
        Ok(Accepted {
            provider_message_id: format!("SM-{}", message.delivery_id),
            provider_status: Some("queued".into()),
            cost: None,
            segments: None,
            part_ids: Vec::new(),
        })
    }
}

async fn an_answer_the_database_failed_to_record_is_recorded_when_it_returns_not_sent_again(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let breaker = Arc::new(BreaksDb {
        url: db.url.clone(),
        calls: Mutex::new(0),
        lock: tokio::sync::Mutex::new(None),
    });
    let t = app_on(
        db,
        new_clock(),
        "",
        &[("primary", breaker.clone()), ("backup", breaker.clone())],
    )
    .await;

    let d = t
        .app
        .enqueue_notification(welcome("+254711300001"))
        .await
        .unwrap();
    let job = DeliveryJob {
        delivery_id: d.row.id.clone(),
        job_id: d.row.job_id.clone().unwrap(),
    };
    let outcome = tuma::dispatch::handle_job(&t.app, Lane::Notifications, &job).await;
    assert!(outcome.is_err(), "recording the answer failed: {outcome:?}");
    assert_eq!(*breaker.calls.lock().unwrap(), 1);
    breaker.restore().await;
    // Postgres: the pool hands out each connection the outage killed once
    // more (it skips sqlx's ping), failing that use; the sweeper just tries
    // again at its next round.
    let mut resolved = 0;
    let mut status = None;
    for _ in 0..30 {
        if status.is_none() {
            status = t
                .app
                .db
                .delivery(&d.row.id)
                .await
                .ok()
                .flatten()
                .map(|d| d.status);
            if status.is_none() {
                continue;
            }
            assert_eq!(status, Some(DeliveryStatus::Sending));
            // The sweeper finds the attempt open past every time limit.
            t.advance(Duration::from_secs(60)).await;
        }
        if let Ok(report) = tuma::sweeper::sweep(&t.app).await {
            resolved += report.resolved;
            break;
        }
    }
    assert_eq!(resolved, 1);
    t.drain().await;

    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Sent, "what really happened");
    assert_eq!(
        d.row.provider_message_id.as_deref(),
        Some(format!("SM-{}", d.row.id).as_str())
    );
    assert_eq!(*breaker.calls.lock().unwrap(), 1, "not sent again");
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.map(|o| o.as_str()), Some("accepted"));
    let note = attempts[0].error.as_deref().unwrap();
    assert!(
        note.starts_with("recorded late: the database failed when the answer came ("),
        "{note}"
    );
}
on_both_backends!(
    an_answer_the_database_failed_to_record_is_recorded_when_it_returns_not_sent_again
);

async fn each_unknown_outcome_says_what_cut_the_call_short(backend: Backend) {
    let t = app_with(backend, new_clock(), "", &[]).await;
    let mut labels = Vec::new();
    for (i, how) in ["worker died", "stuck", "job limit"]
        .into_iter()
        .enumerate()
    {
        let d = t
            .app
            .enqueue_notification(welcome(&format!("+25471140000{i}")))
            .await
            .unwrap();
        let job = DeliveryJob {
            delivery_id: d.row.id.clone(),
            job_id: d.row.job_id.clone().unwrap(),
        };
        t.app
            .batcher
            .begin_attempt(
                Lane::Notifications,
                &job,
                "primary",
                "primary",
                t.clock.now(),
            )
            .await
            .unwrap()
            .unwrap();
        match how {
            // Its lease ran out with its worker.
            "worker died" => expire_leases(&t.app.db).await,
            // The attempt outlasts every limit, its lease long run out.
            "stuck" => t.advance(Duration::from_secs(60)).await,
            _ => {
                t.app
                    .unsettled
                    .job_limit_hit(&job.job_id, Duration::from_secs(21));
                expire_leases(&t.app.db).await;
            }
        }
        let report = tuma::sweeper::sweep(&t.app).await.unwrap();
        assert_eq!(report.resolved, 1, "{how}");
        let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
        assert_eq!(attempts[0].outcome.map(|o| o.as_str()), Some("unknown"));
        labels.push((
            attempts[0].error_code.clone().unwrap(),
            attempts[0].error.clone().unwrap(),
        ));
    }
    assert_eq!(labels[0].0, "tuma.worker_stopped");
    assert!(
        labels[0]
            .1
            .starts_with("the worker stopped during the provider call")
    );
    assert_eq!(labels[1].0, "tuma.stuck");
    assert!(
        labels[1].1.contains("while its worker was alive"),
        "{}",
        labels[1].1
    );
    assert_eq!(labels[2].0, "tuma.job_limit");
    assert!(
        labels[2].1.contains("hard time limit (21s)"),
        "{}",
        labels[2].1
    );
}
on_both_backends!(each_unknown_outcome_says_what_cut_the_call_short);

#[test]
fn retry_budget_and_cap_out_of_range_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (retry, key, reason) in [
        (
            "give_up_after = \"30s\"",
            "retry.give_up_after",
            "below the minimum 1m",
        ),
        (
            "give_up_after = \"90days\"",
            "retry.give_up_after",
            "above the maximum 30days",
        ),
        (
            "give_up_after = \"soon\"",
            "retry.give_up_after",
            "is not a duration",
        ),
        (
            "max_attempts = 0",
            "retry.max_attempts",
            "below the minimum 1",
        ),
        (
            "max_attempts = 10001",
            "retry.max_attempts",
            "above the maximum 10000",
        ),
    ] {
        let text = config_text(dir.path(), 6);
        let start = text.find("[retry]").unwrap();
        let end = start + text[start..].find("[[price]]").unwrap();
        let text = format!("{}[retry]\n{retry}\n\n{}", &text[..start], &text[end..]);
        let path = dir.path().join("providers.toml");
        std::fs::write(&path, text).unwrap();
        let err = Config::load(&path).expect_err(retry).to_string();
        assert!(err.contains(key) && err.contains(reason), "{retry}: {err}");
    }
}
