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
use tuma::domain::otp::OtpCode;
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

/// The pool size of the tests' own connections: tuma's default on SQLite
/// (one writer at a time: more would only wait), ten on Postgres.
pub fn test_pool(url: &str) -> u32 {
    if url.starts_with("sqlite") {
        tuma::config::SQLITE_CONNECTIONS
    } else {
        10
    }
}

/// A fresh, empty database, and a folder for files.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
}

/// A Postgres test database is dropped with its test, unless the test failed:
/// then it stays for a look (`.ci/run` drops what is left before it starts).
impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.url.starts_with("postgres") || std::thread::panicking() {
            return;
        }
        let Some((_, name)) = self.url.rsplit_once('/') else {
            return;
        };
        let (Some(admin), name) = (postgres_admin_url(), name.to_owned()) else {
            return;
        };
        // Its own thread and runtime (this may run inside a test's runtime),
        // not waited for: a drop takes Postgres a while. One still running
        // when the test binary exits is left to `.ci/run`.
        let url = self.url.clone();
        std::thread::spawn(move || {
            let dropped = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(async {
                        let mut conn = sqlx::PgConnection::connect(&admin).await?;
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await
                    })
                    .map_err(|e| e.to_string())
                });
            if let Err(e) = dropped {
                eprintln!("test database {url} was not dropped: {e}");
            }
        });
    }
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
        let db = Db::connect(&self.url, test_pool(&self.url))
            .await
            .expect("connect");
        db.migrate().await.expect("migrate");
        db
    }
}

/// A `providers.toml` in `dir` whose SMS route tries `first` (the
/// `[[provider]]` table of the provider named `first_name`) and fails over
/// to a Twilio double at `twilio` (token from `TEST_TWILIO_AUTH_TOKEN`,
/// priced 0.05 USD a segment to +254), with email to an outbox.
pub fn failover_to_twilio_config(
    dir: &Path,
    first_name: &str,
    first: &str,
    twilio: &str,
) -> PathBuf {
    let text = format!(
        r#"
[[provider]]
{first}

[[provider]]
name = "twilio"
kind = "twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token_env = "TEST_TWILIO_AUTH_TOKEN"
from = "+15005550006"
base_url = "{twilio}"
timeout = "2s"

[[provider]]
name = "mail"
kind = "outbox"
dir = "outbox"

[[route]]
channel = "sms"
providers = ["{first_name}", "twilio"]

[[route]]
channel = "email"
providers = ["mail"]

[[price]]
provider = "twilio"
prefix = "+254"
per_segment = "0.0500"
currency = "USD"

[retry]
initial_delay = "1s"
jitter = false

[otp]
key_env = "TUMA_TEST_OTP_KEY"

[templates]
dir = "{templates}"
vars = {{ app_name = "tuma" }}

[worker]
poll_interval = "100ms"
"#,
        templates = templates_dir().display()
    );
    let file = dir.join("providers.toml");
    std::fs::write(&file, text).unwrap();
    file
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
key_env = "TUMA_TEST_OTP_KEY"

[templates]
dir = "{templates}"
vars = {{ app_name = "tuma" }}

[worker]
poll_interval = "100ms"
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
        part_ids: Vec::new(),
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

/// The keys of the test configuration (`[otp] key_env = "TUMA_TEST_OTP_KEY"`,
/// which `.cargo/config.toml` sets), for rows written without an app.
pub fn test_otp_keys() -> tuma::secrets::OtpKeys {
    use base64::Engine;
    let text = std::env::var("TUMA_TEST_OTP_KEY").expect("TUMA_TEST_OTP_KEY is set");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    tuma::secrets::OtpKeys::from_bytes(&bytes.try_into().expect("32 bytes"), None)
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

    /// Moves time forward for tuma's clock, which is the queue's schedule
    /// too (`next_attempt_at`, leases), and wakes the workers to look.
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        for lane in tuma::queue::Lane::ALL {
            self.app.wakers.wake(lane);
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

/// Every text in every table of the database, for
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
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
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

/// Deliveries holding a claim's lease (none once everything is settled:
/// the queue keeps nothing of finished deliveries).
pub async fn leased_rows(db: &Db) -> i64 {
    count(
        db,
        "SELECT COUNT(*) FROM deliveries WHERE lease_until IS NOT NULL",
    )
    .await
}

/// The one number a `SELECT COUNT(*) …` answers.
pub async fn count(db: &Db, sql: &'static str) -> i64 {
    match db {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

/// Ends every claim's lease now: what a worker that died (or outlived its
/// time limit) leaves behind once its leases run out.
pub async fn expire_leases(db: &Db) {
    let sql = "UPDATE deliveries SET lease_until = updated_at WHERE lease_until IS NOT NULL";
    match db {
        Db::Sqlite(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
        Db::Postgres(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
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
    /// Canceled by ops before any send.
    Canceled,
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
    use tuma::store::{AttemptEnd, AttemptResult, AttemptStart, NewDelivery, NextStep, Outcome};
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
        quota_key: None,
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
        otp_code: otp.then(|| test_otp_keys().seal(&id, &OtpCode::parse("123456").unwrap())),
        max_attempts: 1,
        expires_at: otp.then(|| s.created_at + chrono::Duration::minutes(5)),
        created_at: s.created_at,
        send_at: s.created_at,
        segments: (channel == Channel::Sms).then_some(s.segments),
        encoding: (channel == Channel::Sms).then(|| "gsm7".to_owned()),
        api_key_name: None,
        purpose: None,
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
    if let SeedEnd::Canceled = s.end {
        let canceled = db.cancel_delivery(&id, "ops", finished_at).await.unwrap();
        assert!(
            matches!(canceled, tuma::store::Canceled::Done),
            "{canceled:?}"
        );
        return id;
    }
    let start = AttemptStart::new(&job, s.provider, "primary", s.created_at);
    db.begin_attempts(&[start])
        .await
        .unwrap()
        .pop()
        .flatten()
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
                part_ids: Vec::new(),
            };
            (result, NextStep::Sent, receipt)
        }
        SeedEnd::Failed(outcome, code) => {
            let mut r = AttemptResult::error(outcome, finished_at, "refused by the provider");
            r.error_code = code.map(Into::into);
            (r, NextStep::Failed, None)
        }
        SeedEnd::Expired | SeedEnd::Canceled => unreachable!("handled above"),
    };
    let lane = tuma::queue::Lane::for_kind(s.kind);
    let end = AttemptEnd {
        delivery_id: id.clone(),
        job_id: job.job_id.clone(),
        result,
        next,
        lane,
    };
    let recorded = db.finish_attempts(&[end]).await.unwrap() == [true];
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

/// The HTTP API on port 0 over a fresh database (outbox providers, manual
/// clock), with a client. Workers do not run: `t.drain()` delivers.
pub struct TestServer {
    pub t: TestApp,
    pub base: String,
    pub client: reqwest::Client,
    pub state: tuma::api::ApiState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Spawns the API with the test configuration.
pub async fn spawn_app(backend: Backend) -> TestServer {
    spawn_app_with(backend, "").await
}

/// Spawns the API with `extra` appended to the test configuration (an
/// `[api]` table, say).
pub async fn spawn_app_with(backend: Backend, extra: &str) -> TestServer {
    let db = TestDb::new(backend).await;
    let url = db.url.clone();
    spawn_app_at(db, &url, extra).await
}

/// Spawns the API over `db`, reached at `url` (through a proxy, say).
pub async fn spawn_app_at(db: TestDb, url: &str, extra: &str) -> TestServer {
    let text = format!("{}\n{extra}", config_text(db.path(), 6));
    spawn_app_with_text(db, url, &text).await
}

/// Spawns the API over `db` with this whole configuration text.
pub async fn spawn_app_with_text(db: TestDb, url: &str, text: &str) -> TestServer {
    // Every API server in this test binary logs into the capture from its
    // first request on, so a request span is never created before the
    // subscriber exists (which would log its lines without the request id).
    let _ = captured_logs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    db.connect().await.close().await;
    let path = db.path().join("providers.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).expect("valid test config");
    let clock = new_clock();
    let store = Db::connect(url, test_pool(url)).await.expect("connect");
    let providers = Providers::from_config(&config).expect("providers");
    let app = Arc::new(App::with_parts(config, store, providers, clock.clone()).expect("app"));
    let state = tuma::api::ApiState::new(app.clone());
    // tuma serve's own listener: its backlog takes a burst of connections.
    let listener = tuma::api::server::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = state.clone();
    let server = tokio::spawn(async move {
        tuma::api::server::serve_state(served, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestServer {
        t: TestApp { app, clock, db },
        base,
        client: reqwest::Client::new(),
        state,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestServer {
    /// Creates an API key with these scopes, as `tuma keys create` does.
    pub async fn key(&self, name: &str, scopes: &[&str]) -> String {
        let key = tuma::api::auth::generate_key();
        assert!(
            self.t
                .app
                .db
                .create_api_key(
                    name,
                    &tuma::api::auth::hash_key(&key),
                    &scopes.join(","),
                    self.t.clock.now()
                )
                .await
                .unwrap()
        );
        key
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON with a key.
    pub async fn post(&self, path: &str, key: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// GETs with a key.
    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// How many deliveries exist.
    pub async fn delivery_count(&self) -> usize {
        self.t
            .app
            .db
            .delivery_page(&tuma::store::PageFilter {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len()
    }

    /// Stops the server, finishing in-flight requests.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

/// Everything every test in this binary logs from now on (all levels down
/// to debug), in memory: for searching for secrets.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A TCP proxy to a database that can be cut and restored: a database that
/// goes away and comes back, as the API sees it.
pub struct DbProxy {
    pub addr: std::net::SocketAddr,
    target: String,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DbProxy {
    pub async fn start(target: &str) -> DbProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = DbProxy {
            addr: listener.local_addr().unwrap(),
            target: target.to_owned(),
            task: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Drops every connection and refuses new ones.
    pub async fn cut(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts connections again, on the same address.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

/// `tuma` as a child process on `config` and `database_url` (killed if the
/// test drops it), logging tuma's own info lines.
pub fn tuma_command(config: &Path, database_url: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tuma"));
    cmd.env("TUMA_CONFIG", config)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn,tuma=info")
        .env_remove("TUMA_LISTEN")
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd`, fails the test unless it succeeded, and returns its stdout.
pub async fn tuma_ok(cmd: &mut tokio::process::Command) -> String {
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "tuma failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A Twilio double with a memory, answering as Twilio's Messages resource
/// does: each `POST …/Messages.json` is a message taken (201, a new `SM…`
/// sid, `queued`, `date_sent` null), answered only after `delay` so a send
/// can outlive its provider's timeout; `GET …/Messages.json?To=…` lists the
/// messages taken for that number, newest first, on one page (`messages`,
/// `next_page_uri` null, `page_size` …), for the provider's message lookup.
/// Its dates come from the manual clock it follows, else the real one.
pub struct TwilioHistory {
    delay: Duration,
    taken: Mutex<Vec<serde_json::Value>>,
    clock: Mutex<Option<Arc<ManualClock>>>,
}

impl TwilioHistory {
    /// Mounts the double for account `account` on both methods.
    pub async fn mount(
        server: &wiremock::MockServer,
        account: &str,
        delay: Duration,
    ) -> Arc<TwilioHistory> {
        let history = Arc::new(TwilioHistory {
            delay,
            taken: Mutex::new(Vec::new()),
            clock: Mutex::new(None),
        });
        let list = format!("/2010-04-01/Accounts/{account}/Messages.json");
        for verb in ["POST", "GET"] {
            wiremock::Mock::given(wiremock::matchers::method(verb))
                .and(wiremock::matchers::path(list.clone()))
                .respond_with(Answering(history.clone(), account.to_owned()))
                .mount(server)
                .await;
        }
        history
    }

    /// Dates what it takes by tuma's clock (the app's, once it exists).
    pub fn follow(&self, clock: Arc<ManualClock>) {
        *self.clock.lock().unwrap() = Some(clock);
    }

    /// How many messages it took (every POST).
    pub fn posts(&self) -> usize {
        self.taken.lock().unwrap().len()
    }

    fn now(&self) -> DateTime<Utc> {
        match &*self.clock.lock().unwrap() {
            Some(clock) => clock.now(),
            None => Utc::now(),
        }
    }
}

struct Answering(Arc<TwilioHistory>, String);

impl wiremock::Respond for Answering {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        let (history, account) = (&self.0, &self.1);
        let list = format!("/2010-04-01/Accounts/{account}/Messages.json");
        if request.method.as_str() == "GET" {
            let to = request
                .url
                .query_pairs()
                .find(|(k, _)| k == "To")
                .map(|(_, v)| v.into_owned());
            let messages: Vec<serde_json::Value> = history
                .taken
                .lock()
                .unwrap()
                .iter()
                .rev()
                .filter(|m| to.is_none() || m["to"].as_str() == to.as_deref())
                .cloned()
                .collect();
            let uri = format!("{list}?{}", request.url.query().unwrap_or_default());
            return wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "end": messages.len().saturating_sub(1),
                "first_page_uri": uri,
                "next_page_uri": null,
                "page": 0,
                "page_size": 50,
                "previous_page_uri": null,
                "messages": messages,
                "start": 0,
                "uri": uri,
            }));
        }
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(&request.body).into_owned().collect();
        let mut taken = history.taken.lock().unwrap();
        let sid = format!("SM{:032x}", taken.len() + 1);
        let created = history.now().to_rfc2822();
        let message = serde_json::json!({
            "account_sid": account,
            "api_version": "2010-04-01",
            "body": form.get("Body"),
            "date_created": created,
            "date_sent": null,
            "date_updated": created,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": null,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "to": form.get("To"),
            "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
        });
        taken.push(message.clone());
        wiremock::ResponseTemplate::new(201)
            .set_body_json(message)
            .set_delay(history.delay)
    }
}

/// Starts `cmd` (a `tuma serve --listen 127.0.0.1:0`, logging tuma's info
/// lines, as [`tuma_command`] sets) and waits until it listens: the child
/// (killed if dropped; its log keeps being read) and its base URL. Panics
/// when it exits first, with what it said.
pub async fn spawn_serve(cmd: &mut tokio::process::Command) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tuma serve");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        let mut said = String::new();
        while let Some(line) = lines.next_line().await.expect("read the log") {
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on ".len()..];
                return rest
                    .split(|c: char| c.is_whitespace() || c == '"')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            said.push_str(&line);
            said.push('\n');
        }
        panic!("tuma serve exited before listening:\n{said}");
    })
    .await
    .expect("tuma serve listens within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

/// Stops a `tuma serve` or `tuma worker` child with SIGTERM and waits for it
/// to exit, which it must do cleanly.
pub async fn stop_child(mut child: tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("stops within 60 s after SIGTERM")
        .expect("wait");
    assert!(status.success(), "stopped with {status}");
}
