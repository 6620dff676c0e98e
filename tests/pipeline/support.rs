//! Test support: a fresh database per test (a SQLite file, or a new Postgres
//! database), a configuration written to a temporary folder, providers that
//! answer from a script, and time that moves when told.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Connection;
use tuma::app::App;
use tuma::clock::{Clock, ManualClock};
use tuma::config::Config;
use tuma::providers::{
    Accepted, Content, OutgoingMessage, Provider, Providers, SendError, unlimited,
};
use tuma::store::{Db, Delivery};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend, as two tests named after it.
/// Postgres tests run against `TUMA_TEST_POSTGRES_URL`; when it is unset they
/// fail under CI (`CI` set) and are skipped with a note elsewhere.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::support::postgres_admin_url().is_some() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            }
        }
    };
}

/// The Postgres server for tests, if there is one. Under CI its absence is a failure.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("TUMA_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "TUMA_TEST_POSTGRES_URL must be set under CI: the Postgres tests may not be skipped"
            );
            eprintln!("TUMA_TEST_POSTGRES_URL is not set: Postgres test skipped");
            None
        }
    }
}

/// A fresh, empty database, and a folder for files.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("tuma.db").display()),
            Backend::Postgres => {
                let admin = postgres_admin_url().expect("Postgres URL");
                let name = format!("tuma_test_{}", uuid::Uuid::now_v7().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to Postgres");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                format!("{base}/{name}")
            }
        };
        TestDb { url, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Opens and migrates the database.
    pub async fn connect(&self) -> Db {
        let db = Db::connect(&self.url, 10).await.expect("connect");
        db.migrate().await.expect("migrate");
        db
    }
}

/// The repository's templates folder.
pub fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
}

/// A configuration with two outbox providers, `primary` and `backup`, routed
/// in that order for both channels; retries without jitter so delays are exact.
pub fn config_text(dir: &Path, max_attempts: u32) -> String {
    format!(
        r#"
[[provider]]
name = "primary"
kind = "outbox"
dir = "outbox"
timeout = "2s"

[[provider]]
name = "backup"
kind = "outbox"
dir = "outbox-backup"
timeout = "2s"

[[route]]
channel = "sms"
providers = ["primary", "backup"]

[[route]]
channel = "email"
providers = ["primary", "backup"]

[retry]
max_attempts = {max_attempts}
initial_delay = "2s"
max_delay = "1m"
jitter = false

[[price]]
provider = "primary"
prefix = "+254"
per_segment = "0.8"
currency = "KES"

[circuit_breaker]
failures = 2
cooldown = "1m"

[otp]
ttl = "5m"
default_region = "KE"

[templates]
dir = "{templates}"
vars = {{ app_name = "tuma" }}

[worker]
poll_interval = "100ms"
heartbeat = "1s"
sweep_interval = "1s"
rate_limit_wait = "1s"
"#,
        templates = templates_dir().display().to_string().replace('\\', "/"),
    )
    .replace(
        "dir = \"outbox",
        &format!("dir = \"{}/outbox", dir.display()),
    )
}

/// Writes the test configuration into the test's folder and loads it.
pub fn write_config(dir: &Path, max_attempts: u32) -> (PathBuf, Config) {
    let path = dir.join("providers.toml");
    std::fs::write(&path, config_text(dir, max_attempts)).expect("write config");
    let config = Config::load(&path).expect("valid test config");
    (path, config)
}

/// One provider call as a scripted provider saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: DateTime<Utc>,
    pub delivery_id: String,
    pub text: String,
}

/// A provider that answers from a script (then accepts), recording each call.
#[derive(Debug)]
pub struct Scripted {
    clock: Arc<ManualClock>,
    script: Mutex<VecDeque<Result<Accepted, SendError>>>,
    calls: Mutex<Vec<Call>>,
}

impl Scripted {
    pub fn new(clock: Arc<ManualClock>, script: Vec<Result<Accepted, SendError>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            clock,
            script: Mutex::new(script.into()),
            calls: Mutex::new(Vec::new()),
        })
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

pub fn accepted(id: &str) -> Result<Accepted, SendError> {
    Ok(Accepted {
        provider_message_id: id.into(),
        provider_status: Some("queued".into()),
        cost: None,
        segments: None,
    })
}

pub fn transient(message: &str) -> Result<Accepted, SendError> {
    Err(SendError::Transient {
        code: Some("500".into()),
        message: message.into(),
    })
}

pub fn permanent(message: &str) -> Result<Accepted, SendError> {
    Err(SendError::Permanent {
        code: Some("21211".into()),
        message: message.into(),
    })
}

#[async_trait]
impl Provider for Scripted {
    fn dry_run(&self, message: &OutgoingMessage) -> String {
        format!("scripted answer for {}", message.delivery_id)
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        let text = match &message.content {
            Content::Sms { text, .. } => text.clone(),
            Content::Email { text, .. } => text.clone(),
        };
        self.calls.lock().unwrap().push(Call {
            at: self.clock.now(),
            delivery_id: message.delivery_id.clone(),
            text,
        });
        let next = self.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| accepted(&format!("msg-{}", message.delivery_id)))
    }
}

/// A manual clock at the current time.
pub fn new_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Utc::now()))
}

/// An app on a fresh database with a manual clock.
pub struct TestApp {
    pub app: Arc<App>,
    pub clock: Arc<ManualClock>,
    pub db: TestDb,
}

impl TestApp {
    /// With the configured outbox providers.
    pub async fn new(backend: Backend, max_attempts: u32) -> TestApp {
        TestApp::with(backend, max_attempts, new_clock(), &[]).await
    }

    /// With scripted providers standing in for the named ones.
    pub async fn with(
        backend: Backend,
        max_attempts: u32,
        clock: Arc<ManualClock>,
        scripted: &[(&str, Arc<Scripted>)],
    ) -> TestApp {
        let db = TestDb::new(backend).await;
        let (_, config) = write_config(db.path(), max_attempts);
        let store = db.connect().await;
        let mut providers = Providers::from_config(&config).expect("providers");
        for (name, p) in scripted {
            providers.insert(name, p.clone(), unlimited(), Duration::from_secs(2));
        }
        let app = App::with_parts(config, store, providers, clock.clone()).expect("app");
        TestApp {
            app: Arc::new(app),
            clock,
            db,
        }
    }

    /// Runs the workers until nothing is due, as `tuma worker --drain` does.
    pub async fn drain(&self) {
        tuma::worker::drain(self.app.clone(), Duration::from_secs(60))
            .await
            .expect("drain");
    }

    /// Moves time forward for tuma's clock and for the queue's schedule alike.
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        let secs = i64::try_from(by.as_secs()).unwrap() + 1;
        match &self.app.db {
            Db::Sqlite(pool) => {
                sqlx::query("UPDATE Jobs SET run_at = run_at - $1")
                    .bind(secs)
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Db::Postgres(pool) => {
                sqlx::query("UPDATE apalis.jobs SET run_at = run_at - make_interval(secs => $1)")
                    .bind(secs as f64)
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    }

    pub async fn delivery(&self, id: &str) -> Delivery {
        self.app
            .db
            .delivery(id)
            .await
            .unwrap()
            .expect("delivery exists")
    }
}

/// Every text in every table of the database (tuma's and the queue's), for
/// searching for secrets.
pub async fn all_database_text(db: &Db) -> String {
    let mut all = String::new();
    match db {
        Db::Sqlite(pool) => {
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            for t in tables {
                let columns: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{t}')"
                )))
                .fetch_all(pool)
                .await
                .unwrap();
                for c in columns {
                    let values: Vec<Option<Vec<u8>>> = sqlx::query_scalar(sqlx::AssertSqlSafe(
                        format!("SELECT CAST(\"{c}\" AS BLOB) FROM \"{t}\""),
                    ))
                    .fetch_all(pool)
                    .await
                    .unwrap();
                    for v in values.into_iter().flatten() {
                        all.push_str(&String::from_utf8_lossy(&v));
                        all.push('\n');
                    }
                }
            }
        }
        Db::Postgres(pool) => {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) \
                 FROM information_schema.tables \
                 WHERE table_schema IN ('public', 'apalis') AND table_type = 'BASE TABLE'",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            for t in tables {
                let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT row_to_json(t)::text FROM {t} t"
                )))
                .fetch_all(pool)
                .await
                .unwrap();
                for r in rows {
                    all.push_str(&r);
                    all.push('\n');
                }
            }
        }
    }
    all
}

/// The queue's job rows (for checking that history is not kept there).
pub async fn job_rows(db: &Db) -> i64 {
    match db {
        Db::Sqlite(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM Jobs")
            .fetch_one(pool)
            .await
            .unwrap(),
        Db::Postgres(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM apalis.jobs")
            .fetch_one(pool)
            .await
            .unwrap(),
    }
}

/// Deletes every queue job: what a lost job looks like.
pub async fn delete_all_jobs(db: &Db) {
    match db {
        Db::Sqlite(pool) => {
            sqlx::query("DELETE FROM Jobs").execute(pool).await.unwrap();
        }
        Db::Postgres(pool) => {
            sqlx::query("DELETE FROM apalis.jobs")
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

/// How a seeded delivery ended.
#[derive(Debug, Clone)]
pub enum SeedEnd {
    /// Accepted, with this cost (and whether it is an estimate).
    Sent(Option<(tuma::domain::money::Money, bool)>),
    /// Accepted, then a delivered receipt.
    Delivered(Option<(tuma::domain::money::Money, bool)>),
    /// Accepted, then an undelivered receipt.
    Undelivered(Option<(tuma::domain::money::Money, bool)>),
    /// One attempt that failed with this outcome and provider error code.
    Failed(tuma::store::Outcome, Option<&'static str>),
    /// An OTP whose TTL passed before a send.
    Expired,
}

/// A delivery written through the store with exactly controlled times,
/// provider, segments, cost and status (for reports and replays).
#[derive(Debug, Clone)]
pub struct Seed {
    pub created_at: DateTime<Utc>,
    pub kind: tuma::domain::DeliveryKind,
    pub to: String,
    pub template: &'static str,
    pub provider: &'static str,
    pub segments: u32,
    pub end: SeedEnd,
}

impl Seed {
    /// A `welcome` notification to `to` via `provider`, created at `at`.
    pub fn notification(at: &str, to: &str, provider: &'static str, end: SeedEnd) -> Seed {
        Seed {
            created_at: at.parse().expect("an RFC 3339 time"),
            kind: tuma::domain::DeliveryKind::Notification,
            to: to.into(),
            template: "welcome",
            provider,
            segments: 1,
            end,
        }
    }
}

/// Money in a currency, for seeds: `kes("0.80")`.
pub fn cost(
    amount: &str,
    currency: &str,
    estimate: bool,
) -> Option<(tuma::domain::money::Money, bool)> {
    Some((
        tuma::domain::money::Money::parse(amount, currency).unwrap(),
        estimate,
    ))
}

/// Writes `seed` through the store: insert with its job, one attempt opened
/// and closed one second after creation, then any receipt status. Returns its id.
pub async fn seed(db: &Db, s: Seed) -> String {
    use tuma::domain::{Channel, DeliveryKind, DeliveryStatus};
    use tuma::store::{AttemptResult, NewDelivery, NextStep, Outcome};
    let id = uuid::Uuid::now_v7().to_string();
    let channel = if s.to.contains('@') {
        Channel::Email
    } else {
        Channel::Sms
    };
    let otp = s.kind == DeliveryKind::Otp;
    let new = NewDelivery {
        id: id.clone(),
        kind: s.kind,
        channel,
        recipient: s.to.clone(),
        template: s.template.into(),
        locale: "en".into(),
        vars: if otp {
            serde_json::json!({ "ttl_minutes": 5 })
        } else {
            serde_json::json!({ "name": "Amina" })
        },
        subject: (channel == Channel::Email).then(|| "Welcome".to_owned()),
        body: "Karibu Amina".into(),
        body_html: None,
        otp_code: otp.then(|| "123456".to_owned()),
        max_attempts: 1,
        expires_at: otp.then(|| s.created_at + chrono::Duration::minutes(5)),
        created_at: s.created_at,
        send_at: s.created_at,
        segments: (channel == Channel::Sms).then_some(s.segments),
        encoding: (channel == Channel::Sms).then(|| "gsm7".to_owned()),
    };
    let job = db.insert_delivery(&new).await.expect("insert");
    let finished_at = s.created_at + chrono::Duration::seconds(1);
    if let SeedEnd::Expired = s.end {
        let expired = DeliveryStatus::Expired;
        let closed = db
            .close_pending(&id, &job.job_id, expired, "expired", finished_at)
            .await
            .unwrap();
        assert!(closed);
        return id;
    }
    db.begin_attempt(&job, s.provider, "primary", s.created_at)
        .await
        .unwrap()
        .expect("attempt opened");
    let segments = (channel == Channel::Sms).then_some(s.segments);
    let (result, next, receipt) = match s.end {
        SeedEnd::Sent(c) | SeedEnd::Delivered(c) | SeedEnd::Undelivered(c) => {
            let receipt = match s.end {
                SeedEnd::Delivered(_) => Some("delivered"),
                SeedEnd::Undelivered(_) => Some("undelivered"),
                _ => None,
            };
            let result = AttemptResult {
                outcome: Outcome::Accepted,
                finished_at,
                provider_message_id: Some(format!("msg-{id}")),
                provider_status: Some("queued".into()),
                error_code: None,
                error: None,
                cost: c,
                segments,
                provider_segments: None,
                latency_ms: Some(5),
            };
            (result, NextStep::Sent, receipt)
        }
        SeedEnd::Failed(outcome, code) => {
            let mut r = AttemptResult::error(outcome, finished_at, "refused by the provider");
            r.error_code = code.map(Into::into);
            (r, NextStep::Failed, None)
        }
        SeedEnd::Expired => unreachable!("handled above"),
    };
    let lane = tuma::queue::Lane::for_kind(s.kind);
    let recorded = db
        .finish_attempt(&id, &job.job_id, &result, &next, lane)
        .await
        .unwrap();
    assert!(recorded);
    if let Some(status) = receipt {
        let sql = "UPDATE deliveries SET status = $1 WHERE id = $2 AND status = 'sent'";
        let updated = match db {
            Db::Sqlite(pool) => sqlx::query(sql)
                .bind(status)
                .bind(&id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Db::Postgres(pool) => sqlx::query(sql)
                .bind(status)
                .bind(&id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        };
        assert_eq!(updated.unwrap(), 1);
    }
    id
}
