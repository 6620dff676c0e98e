//! tuma's benchmark: the queue alone, tuma end to end, OTP latency under a
//! bulk backlog, and peak memory, on SQLite and Postgres, in one run; and
//! the SMTP adapter against a local SMTP sink.
//!
//!     cargo bench --bench pipeline -- --help
//!     cargo bench --bench pipeline -- --deliveries 20000 --backlog 5000
//!
//! Prints a table and writes the figures as JSON (`--out`). Everything runs
//! in this process on fresh databases; provider doubles listen on 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken setup, as a test does"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use clap::Parser;
use serde::Serialize;
use serde_json::{Map, json};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tuma::app::App;
use tuma::clock::SystemClock;
use tuma::config::Config;
use tuma::intake::{NotificationRequest, OtpRequest};
use tuma::providers::africastalking::{AfricasTalking, AfricasTalkingConfig};
use tuma::providers::smtp::{Smtp, SmtpConfig, SmtpTls};
use tuma::providers::{Accepted, OutgoingMessage, Provider, Providers, SendError, unlimited};
use tuma::store::Db;

#[path = "console/phase.rs"]
mod console_phase;

#[derive(Debug, Parser)]
#[command(about = "Measure tuma against bare apalis on this machine")]
struct Args {
    /// Backends to measure: sqlite, postgres (over TCP, from
    /// --postgres-url), postgres-unix (the same server over its Unix socket,
    /// --postgres-socket).
    #[arg(long, default_value = "sqlite,postgres", value_delimiter = ',')]
    backends: Vec<String>,
    /// Postgres server (each phase creates a database of its own on it, and
    /// drops it when done).
    #[arg(
        long,
        env = "TUMA_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// The directory of the Postgres server's Unix socket (postgres-unix).
    #[arg(long, default_value = "/var/run/postgresql")]
    postgres_socket: String,
    /// Jobs for the queue floor and deliveries for the end-to-end run.
    #[arg(long, default_value_t = 20_000)]
    deliveries: usize,
    /// No-op jobs for the queue floor (default: as many as --deliveries).
    #[arg(long)]
    floor_jobs: Option<usize>,
    /// Deliveries through the HTTP provider double.
    #[arg(long, default_value_t = 5_000)]
    http_deliveries: usize,
    /// Bulk notifications queued while OTP latency is measured.
    #[arg(long, default_value_t = 10_000)]
    backlog: usize,
    /// OTPs sent one at a time while the backlog drains (from its first 500
    /// sends on: the workers' start is not the load), and again idle.
    #[arg(long, default_value_t = 200)]
    otps: usize,
    /// `POST /v1/otp` requests for the intake phase.
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Concurrent HTTP clients for the intake phase.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Worker concurrency, for apalis and for tuma's notification lane alike
    /// (tuma's default).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Phases to run: floor, e2e, http, otp, intake, mixed, smtp (default:
    /// all), console (the console's page times over `--console-rows`
    /// deliveries), budget (the spend guard's cost on the dispatcher) and
    /// procs (one worker process against two, Postgres only).
    #[arg(
        long,
        default_value = "floor,e2e,http,otp,intake,mixed,smtp",
        value_delimiter = ','
    )]
    phases: Vec<String>,
    /// Deliveries per run of the budget phase (end to end with the spend
    /// guard off, then on, `--budget-rounds` times each, alternating).
    #[arg(long, default_value_t = 10_000)]
    budget_deliveries: usize,
    /// Rounds of the budget phase.
    #[arg(long, default_value_t = 2)]
    budget_rounds: usize,
    /// Deliveries per run of the procs phase (Postgres only: drained by one
    /// `tuma worker --drain` process, then by two, through the HTTP double).
    #[arg(long, default_value_t = 20_000)]
    procs_deliveries: usize,
    /// Deliveries (over 90 days) behind the console phase's pages.
    #[arg(long, default_value_t = 1_000_000)]
    console_rows: usize,
    /// Emails for the smtp phase (once, not per backend: no database).
    #[arg(long, default_value_t = 2_000)]
    smtp_messages: usize,
    /// `max_connections` of the SMTP provider in the smtp phase.
    #[arg(long, default_value_t = 8)]
    smtp_connections: u32,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "target/bench.json")]
    out: PathBuf,
    /// Ignored: cargo passes it to bench targets.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Default, Serialize)]
struct BackendResult {
    backend: String,
    floor_jobs_per_s: f64,
    floor_peak_rss_mb: f64,
    intake_per_s: f64,
    e2e_per_s: f64,
    e2e_windows_per_s: Vec<f64>,
    e2e_vs_floor: f64,
    e2e_peak_rss_mb: f64,
    http_per_s: f64,
    http_peak_rss_mb: f64,
    otp_loaded: Latency,
    otp_backlog_left_at_end: i64,
    otp_idle: Latency,
    otp_peak_rss_mb: f64,
    http_intake_per_s: f64,
    http_intake: Latency,
    http_intake_refused: usize,
    http_intake_peak_rss_mb: f64,
    mixed_intake_per_s: f64,
    mixed_intake: Latency,
    mixed_delivered: i64,
    console: Option<console_phase::ConsoleResult>,
    budget: Option<BudgetResult>,
    /// Deliveries/s drained by one worker process, then by two.
    procs_per_s: Option<(f64, f64)>,
}

/// `n` `tuma worker --drain` processes (this build's binary) drain
/// `--procs-deliveries` through the Africa's Talking double on one
/// database; deliveries/s from the first send to the last.
async fn procs_phase(backend: &str, args: &Args, n: usize) -> anyhow::Result<f64> {
    let fresh = fresh_database(backend, args).await?;
    let a = app(&fresh.url, args.concurrency, Arc::new(Instant0::default())).await?;
    enqueue(&a, args.procs_deliveries).await?;
    let base_url = at_double().await?;
    let dir = tempfile::tempdir()?;
    let provider = format!(
        "kind = \"africastalking\"\nusername = \"bench\"\napi_key_env = \"BENCH_AT_API_KEY\"\nbase_url = \"{base_url}\""
    );
    let path = config_file(dir.path(), args.concurrency, &provider, false, "")?;
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n {
        workers.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_tuma"))
                .arg("--config")
                .arg(&path)
                .args(["worker", "--drain", "--timeout", "30m"])
                .env("DATABASE_URL", &fresh.url)
                .env("BENCH_AT_API_KEY", "bench-key")
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()?,
        );
    }
    for mut w in workers {
        let status = w.wait().await?;
        anyhow::ensure!(status.success(), "tuma worker --drain ended with {status}");
    }
    let sent = delivered(&a.db).await?;
    anyhow::ensure!(
        usize::try_from(sent)? == args.procs_deliveries,
        "{sent} of {} deliveries sent",
        args.procs_deliveries
    );
    let rate = throughput(&a.db).await?.0;
    a.db.close().await;
    fresh.remove().await;
    Ok(rate)
}

/// The spend guard's cost: end to end (in-process provider, every send
/// priced at 0.80 KES) without a budget, then with one whose limit is never
/// reached (so every send reserves and settles), alternating.
#[derive(Debug, Default, Serialize)]
struct BudgetResult {
    deliveries: usize,
    off_per_s: Vec<f64>,
    on_per_s: Vec<f64>,
}

impl BudgetResult {
    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    samples: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(mut v: Vec<Duration>) -> Latency {
        v.sort();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1000.0
        };
        if v.is_empty() {
            return Latency::default();
        }
        Latency {
            samples: v.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Accepts everything at once and notes when each delivery reached it.
#[derive(Debug, Default)]
struct Instant0 {
    seen: Mutex<HashMap<String, Instant>>,
    notify: Notify,
}

#[async_trait]
impl Provider for Instant0 {
    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        if message.kind == tuma::domain::DeliveryKind::Otp {
            self.seen
                .lock()
                .unwrap()
                .insert(message.delivery_id.clone(), Instant::now());
            self.notify.notify_waiters();
        }
        Ok(Accepted {
            provider_message_id: format!("bench-{}", message.delivery_id),
            provider_status: Some("accepted".into()),
            cost: None,
            segments: None,
            part_ids: Vec::new(),
        })
    }

    fn dry_run(&self, _: &OutgoingMessage) -> String {
        "accept at once".into()
    }
}

fn rss_reset() {
    // Linux: writing 5 resets the peak resident set size (VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn rss_peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A phase's own database: a SQLite file in a temporary folder, or a
/// Postgres database that [`Fresh::remove`] drops when the phase is done.
struct Fresh {
    url: String,
    admin: String,
    postgres: Option<String>,
    _dir: tempfile::TempDir,
}

impl Fresh {
    /// Drops the phase's Postgres database (the SQLite file goes with its
    /// folder); a failure is reported, not fatal: the figures are taken.
    async fn remove(self) {
        let Some(name) = &self.postgres else { return };
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
        };
        if let Err(e) = dropped.await {
            eprintln!("bench database {name} was not dropped: {e}");
        }
    }
}

async fn fresh_database(backend: &str, args: &Args) -> anyhow::Result<Fresh> {
    let admin = args.postgres_url.as_str();
    let dir = tempfile::tempdir()?;
    let (url, postgres) = if backend == "sqlite" {
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        (url, None)
    } else {
        let name = format!("tuma_bench_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
        let url = if backend == "postgres-unix" {
            // The same server and user, through its socket.
            format!("{base}/{name}?host={}", args.postgres_socket)
        } else {
            format!("{base}/{name}")
        };
        (url, Some(name))
    };
    Ok(Fresh {
        url,
        admin: admin.to_owned(),
        postgres,
        _dir: dir,
    })
}

fn config(dir: &Path, concurrency: usize) -> anyhow::Result<Config> {
    config_with(dir, concurrency, "")
}

/// The bench configuration with `extra` tables (prices, budgets) appended.
fn config_with(dir: &Path, concurrency: usize, extra: &str) -> anyhow::Result<Config> {
    let provider = "kind = \"outbox\"\ndir = \"outbox\"";
    let path = config_file(dir, concurrency, provider, true, extra)?;
    Ok(Config::load(&path)?)
}

/// Writes the bench configuration, its provider `fast` being `provider`
/// (the table's keys but its name and rate limit; it carries email too
/// when `email`, else an outbox named `mail` does), and returns its path.
fn config_file(
    dir: &Path,
    concurrency: usize,
    provider: &str,
    email: bool,
    extra: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let email_route = if email {
        "[[route]]\nchannel = \"email\"\nproviders = [\"fast\"]"
    } else {
        "[[provider]]\nname = \"mail\"\nkind = \"outbox\"\ndir = \"outbox\"\n\n\
         [[route]]\nchannel = \"email\"\nproviders = [\"mail\"]"
    };
    let text = format!(
        r#"
[[provider]]
name = "fast"
{provider}
rate_limit = {{ per_second = 1000000, burst = 1000000 }}

[[route]]
channel = "sms"
providers = ["fast"]

{email_route}

[retry]
jitter = false

# The tests' OTP sealing key, which cargo sets (.cargo/config.toml): Postgres
# has no key file.
[otp]
key_env = "TUMA_TEST_OTP_KEY"

[templates]
dir = "{}"
vars = {{ app_name = "tuma" }}

# Intake phases send OTPs to consecutive numbers: the pumping guard for
# bursts into one number range would refuse them.
[range_burst]
enabled = false

[worker]
otp_concurrency = 4
notification_concurrency = {concurrency}
poll_interval = "200ms"

{extra}
"#,
        templates.display()
    );
    let path = dir.join("providers.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn app(
    url: &str,
    concurrency: usize,
    provider: Arc<dyn Provider>,
) -> anyhow::Result<Arc<App>> {
    app_with(url, concurrency, provider, "").await
}

async fn app_with(
    url: &str,
    concurrency: usize,
    provider: Arc<dyn Provider>,
    extra: &str,
) -> anyhow::Result<Arc<App>> {
    let dir = tempfile::tempdir()?;
    let config = config_with(dir.path(), concurrency, extra)?;
    let db = Db::connect(url, App::pool_size(&config, url)).await?;
    db.migrate().await?;
    let mut providers = Providers::default();
    providers.insert("fast", provider, unlimited(), Duration::from_secs(10));
    let app = App::with_parts(config, db, providers, Arc::new(SystemClock))?;
    std::mem::forget(dir); // the outbox folder is never written: the provider is replaced
    Ok(Arc::new(app))
}

fn note(to: String) -> NotificationRequest {
    NotificationRequest {
        to,
        template: "welcome".into(),
        locale: None,
        vars: Map::from_iter([("name".to_owned(), json!("Amina"))]),
        send_at: None,
        expires: None,
    }
}

/// Enqueues `n` SMS notifications; returns the rate.
async fn enqueue(app: &App, n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for i in 0..n {
        app.enqueue_notification(note(format!("+2547{:08}", i % 100_000_000)))
            .await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Throughput from the records: sends per second over the whole run and per
/// window of 10k (by completion order).
async fn throughput(db: &Db) -> anyhow::Result<(f64, Vec<f64>)> {
    let times: Vec<DateTime<Utc>> = match db {
        Db::Sqlite(pool) => {
            sqlx::query_scalar(
                "SELECT sent_at FROM deliveries WHERE sent_at IS NOT NULL ORDER BY sent_at",
            )
            .fetch_all(pool)
            .await?
        }
        Db::Postgres(pool) => {
            sqlx::query_scalar(
                "SELECT sent_at FROM deliveries WHERE sent_at IS NOT NULL ORDER BY sent_at",
            )
            .fetch_all(pool)
            .await?
        }
    };
    let rate = |from: usize, to: usize| {
        let span = (times[to - 1] - times[from])
            .num_microseconds()
            .unwrap_or(1)
            .max(1) as f64
            / 1e6;
        (to - from) as f64 / span
    };
    if times.len() < 2 {
        return Ok((0.0, vec![]));
    }
    let windows = (0..times.len() / 10_000)
        .map(|w| rate(w * 10_000, (w + 1) * 10_000))
        .collect();
    Ok((rate(0, times.len()), windows))
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Noop(u64);

async fn noop(_: Noop, done: Data<Arc<(AtomicUsize, usize, Notify)>>) -> Result<(), BoxDynError> {
    let (count, total, notify) = &**done;
    if count.fetch_add(1, Ordering::SeqCst) + 1 == *total {
        notify.notify_waiters();
    }
    Ok(())
}

/// Planner statistics for apalis-sqlite's `Jobs` table, as tuma wrote them
/// while it ran on apalis: without them SQLite guesses that `status = ?`
/// and `lock_by = ?` match a handful of rows, so apalis's lock and ack walk
/// every pending (or every locked) job; bare apalis then made 183 jobs/s
/// here. The floor is apalis at its best, so it keeps them. Written, not
/// measured (they describe a busy queue); the table made and dropped makes
/// every open connection load them.
const APALIS_PLANNER_STATS: &str = "\
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
    CREATE TABLE bench_statistics_written (x INTEGER); \
    DROP TABLE bench_statistics_written; \
    ANALYZE sqlite_schema;";

/// The queue alone: `n` no-op jobs through bare apalis, same backend, pool and concurrency.
async fn floor(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = Db::connect(url, App::pool_size(&config(dir.path(), concurrency)?, url)).await?;
    // apalis's own tables, on tuma's connections (WAL, `synchronous=NORMAL`).
    match &db {
        Db::Sqlite(pool) => {
            SqliteStorage::migrations().run(pool).await?;
            sqlx::raw_sql(APALIS_PLANNER_STATS).execute(pool).await?;
        }
        Db::Postgres(pool) => PostgresStorage::migrations().run(pool).await?,
    }
    let queue = "bench-floor";
    for chunk in (0..n as u64).collect::<Vec<_>>().chunks(1000) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| TaskBuilder::new(serde_json::to_vec(&Noop(*i)).unwrap()).build())
            .collect();
        match &db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                apalis_sqlite::queries::push_tasks(&mut *tx, queue, &tasks).await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                apalis_postgres::queries::push_tasks(&mut *tx, queue, tasks).await?;
                tx.commit().await?;
            }
        }
    }
    let done = Arc::new((AtomicUsize::new(0), n, Notify::new()));
    let finished = done.clone();
    let stop = async move {
        while finished.0.load(Ordering::SeqCst) < finished.1 {
            let _ = tokio::time::timeout(Duration::from_millis(50), finished.2.notified()).await;
        }
        Ok(())
    };
    let started = Instant::now();
    let monitor = match &db {
        Db::Sqlite(pool) => {
            let pool = pool.clone();
            Monitor::new().register(move |_| {
                WorkerBuilder::new("bench-floor")
                    .backend(
                        SqliteStorage::<Noop>::new(&pool)
                            .with_config(apalis_sqlite::Config::default().queue(queue)),
                    )
                    .concurrency(concurrency)
                    .data(done.clone())
                    .build(noop)
            })
        }
        Db::Postgres(pool) => {
            let pool = pool.clone();
            Monitor::new().register(move |_| {
                WorkerBuilder::new("bench-floor")
                    .backend(
                        PostgresStorage::<Noop>::new(&pool)
                            .with_config(apalis_postgres::Config::default().queue(queue)),
                    )
                    .concurrency(concurrency)
                    .data(done.clone())
                    .build(noop)
            })
        }
    };
    monitor.run_with_signal(stop).await?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    db.close().await;
    Ok(rate)
}

/// A loopback HTTP server answering every request as Africa's Talking does.
async fn at_double() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let body = r#"{"SMSMessageData":{"Message":"Sent to 1/1 Total Cost: KES 0.8000","Recipients":[{"statusCode":101,"number":"+254711000001","status":"Success","cost":"KES 0.8000","messageId":"ATXid_bench"}]}}"#;
                let reply = format!(
                    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut buf = vec![0u8; 16 * 1024];
                let mut pending = Vec::new();
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    // One reply per complete request (headers + Content-Length body).
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if pending.len() < end + 4 + len {
                            break;
                        }
                        pending.drain(..end + 4 + len);
                        if sock.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(format!("http://{addr}"))
}

async fn wait_seen(provider: &Instant0, id: &str) -> Instant {
    loop {
        if let Some(t) = provider.seen.lock().unwrap().get(id) {
            return *t;
        }
        let _ = tokio::time::timeout(Duration::from_millis(2), provider.notify.notified()).await;
    }
}

async fn otp_latency(app: &Arc<App>, provider: &Instant0, n: usize) -> anyhow::Result<Latency> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let d = app
            .enqueue_otp(OtpRequest {
                to: format!("+2547{:08}", 50_000_000 + i),
                code: "123456".into(),
                channel: None,
                locale: None,
                ttl: None,
            })
            .await?;
        let reached =
            tokio::time::timeout(Duration::from_secs(10), wait_seen(provider, &d.row.id)).await?;
        samples.push(reached - started);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Latency::of(samples))
}

async fn pending_notifications(db: &Db) -> anyhow::Result<i64> {
    Ok(match db {
        Db::Sqlite(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE kind = 'notification' AND status IN ('pending', 'sending')").fetch_one(pool).await?,
        Db::Postgres(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE kind = 'notification' AND status IN ('pending', 'sending')").fetch_one(pool).await?,
    })
}

/// `requests` OTP sends over HTTP from `clients` concurrent clients (each to
/// its own recipient, so the per-recipient limit never refuses); returns the
/// accepted rate, the latency of each request, and how many were not 202.
async fn http_intake(
    app: &Arc<App>,
    requests: usize,
    clients: usize,
) -> anyhow::Result<(f64, Latency, usize)> {
    let key = tuma::api::auth::generate_key();
    app.db
        .create_api_key(
            "bench",
            &tuma::api::auth::hash_key(&key),
            "send",
            Utc::now(),
        )
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/otp", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tuma::api::serve(app.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, key, next) = (client.clone(), url.clone(), key.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut refused = 0;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= requests {
                    return (samples, refused);
                }
                let body = json!({ "to": format!("+2547{:08}", i), "code": "123456" });
                let t = Instant::now();
                let status = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                samples.push(t.elapsed());
                if status.ok() != Some(202) {
                    refused += 1;
                }
            }
        }));
    }
    let mut samples = Vec::with_capacity(requests);
    let mut refused = 0;
    for t in tasks {
        let (s, r) = t.await?;
        samples.extend(s);
        refused += r;
    }
    let rate = (requests - refused) as f64 / started.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    server.await??;
    Ok((rate, Latency::of(samples), refused))
}

/// Deliveries sent.
async fn delivered(db: &Db) -> anyhow::Result<i64> {
    let sql = "SELECT COUNT(*) FROM deliveries WHERE status = 'sent'";
    Ok(match db {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    })
}

async fn run_backend(backend: &str, args: &Args) -> anyhow::Result<BackendResult> {
    let mut r = BackendResult {
        backend: backend.to_owned(),
        ..Default::default()
    };

    let run = |phase: &str| args.phases.iter().any(|p| p == phase);
    if run("floor") {
        eprintln!(
            "[{backend}] 1/5 queue floor: {} no-op jobs through bare apalis",
            args.floor_jobs.unwrap_or(args.deliveries)
        );
        rss_reset();
        let fresh = fresh_database(backend, args).await?;
        r.floor_jobs_per_s = floor(
            &fresh.url,
            args.floor_jobs.unwrap_or(args.deliveries),
            args.concurrency,
        )
        .await?;
        r.floor_peak_rss_mb = rss_peak_mb();
        fresh.remove().await;
    }

    if run("e2e") {
        eprintln!(
            "[{backend}] 2/5 end to end: {} deliveries, in-process provider",
            args.deliveries
        );
        rss_reset();
        let fresh = fresh_database(backend, args).await?;
        let provider = Arc::new(Instant0::default());
        let a = app(&fresh.url, args.concurrency, provider.clone()).await?;
        r.intake_per_s = enqueue(&a, args.deliveries).await?;
        tuma::worker::drain(a.clone(), Duration::from_secs(3600)).await?;
        (r.e2e_per_s, r.e2e_windows_per_s) = throughput(&a.db).await?;
        if r.floor_jobs_per_s > 0.0 {
            r.e2e_vs_floor = r.e2e_per_s / r.floor_jobs_per_s;
        }
        r.e2e_peak_rss_mb = rss_peak_mb();
        a.db.close().await;
        fresh.remove().await;
    }

    if run("http") {
        eprintln!(
            "[{backend}] 3/5 end to end: {} deliveries through an HTTP double (Africa's Talking)",
            args.http_deliveries
        );
        rss_reset();
        let fresh = fresh_database(backend, args).await?;
        let base_url = at_double().await?;
        let at = AfricasTalking::new(
            AfricasTalkingConfig {
                username: "bench".into(),
                api_key: "bench-key".to_owned().into(),
                api_key_env: "BENCH_AT_API_KEY".into(),
                sender_id: None,
                base_url: base_url.parse()?,
                enqueue: false,
                callback_secret: None,
            },
            Duration::from_secs(10),
        )
        .map_err(anyhow::Error::msg)?;
        let a = app(&fresh.url, args.concurrency, Arc::new(at)).await?;
        enqueue(&a, args.http_deliveries).await?;
        tuma::worker::drain(a.clone(), Duration::from_secs(3600)).await?;
        r.http_per_s = throughput(&a.db).await?.0;
        r.http_peak_rss_mb = rss_peak_mb();
        a.db.close().await;
        fresh.remove().await;
    }

    if run("otp") {
        eprintln!(
            "[{backend}] 4/5 OTP latency: {} OTPs while {} notifications drain, then {} idle",
            args.otps, args.backlog, args.otps
        );
        rss_reset();
        let fresh = fresh_database(backend, args).await?;
        let provider = Arc::new(Instant0::default());
        let a = app(&fresh.url, args.concurrency, provider.clone()).await?;
        enqueue(&a, args.backlog).await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(tuma::worker::run_until(a.clone(), async move {
            let _ = stop_rx.await;
            Ok(())
        }));
        // Measure the drain, not the workers' start: wait for its first sends.
        let under_way = i64::try_from(args.backlog.min(1000) / 2)?;
        let backlog = i64::try_from(args.backlog)?;
        while backlog - pending_notifications(&a.db).await? < under_way {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r.otp_loaded = otp_latency(&a, &provider, args.otps).await?;
        r.otp_backlog_left_at_end = pending_notifications(&a.db).await?;
        while pending_notifications(&a.db).await? > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        r.otp_idle = otp_latency(&a, &provider, args.otps).await?;
        r.otp_peak_rss_mb = rss_peak_mb();
        let _ = stop_tx.send(());
        running.await??;
        a.db.close().await;
        fresh.remove().await;
    }

    if run("intake") {
        eprintln!(
            "[{backend}] 5/5 intake: {} POST /v1/otp from {} clients (workers off)",
            args.requests, args.clients
        );
        rss_reset();
        let fresh = fresh_database(backend, args).await?;
        let a = app(&fresh.url, args.concurrency, Arc::new(Instant0::default())).await?;
        (r.http_intake_per_s, r.http_intake, r.http_intake_refused) =
            http_intake(&a, args.requests, args.clients).await?;
        r.http_intake_peak_rss_mb = rss_peak_mb();
        a.db.close().await;
        fresh.remove().await;
    }

    if run("mixed") {
        eprintln!(
            "[{backend}] mixed: {} POST /v1/otp from {} clients while the workers deliver them",
            args.requests, args.clients
        );
        let fresh = fresh_database(backend, args).await?;
        let a = app(&fresh.url, args.concurrency, Arc::new(Instant0::default())).await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(tuma::worker::run_until(a.clone(), async move {
            let _ = stop_rx.await;
            Ok(())
        }));
        (r.mixed_intake_per_s, r.mixed_intake, _) =
            http_intake(&a, args.requests, args.clients).await?;
        let _ = stop_tx.send(());
        running.await??;
        r.mixed_delivered = delivered(&a.db).await?;
        a.db.close().await;
        fresh.remove().await;
    }

    if run("procs") && backend != "sqlite" {
        eprintln!(
            "[{backend}] worker processes: {} deliveries through the HTTP double, drained by one `tuma worker --drain`, then by two",
            args.procs_deliveries
        );
        r.procs_per_s = Some((
            procs_phase(backend, args, 1).await?,
            procs_phase(backend, args, 2).await?,
        ));
    }

    if run("budget") {
        eprintln!(
            "[{backend}] budget: {} deliveries end to end with the spend guard off, then on, {} rounds",
            args.budget_deliveries, args.budget_rounds
        );
        r.budget = Some(budget_phase(backend, args).await?);
    }

    if run("console") {
        eprintln!(
            "[{backend}] console: {} deliveries over 90 days, then each page's server time",
            args.console_rows
        );
        let fresh = fresh_database(backend, args).await?;
        let a = app(&fresh.url, args.concurrency, Arc::new(Instant0::default())).await?;
        r.console = Some(console_phase::run(a.clone(), args.console_rows).await?);
        a.db.close().await;
        fresh.remove().await;
    }
    Ok(r)
}

/// Every send is priced (so both runs estimate its cost); only the second
/// configuration has a budget to reserve it in.
const PRICED: &str = r#"
[[price]]
provider = "fast"
prefix = "+254"
per_segment = "0.80"
currency = "KES"
"#;

const BUDGETED: &str = r#"
[[budget]]
currency = "KES"
period = "month"
limit = "100000000.00"
alert_at = [0.8, 1.0]
kinds = ["notification"]
"#;

async fn budget_phase(backend: &str, args: &Args) -> anyhow::Result<BudgetResult> {
    let mut result = BudgetResult {
        deliveries: args.budget_deliveries,
        ..BudgetResult::default()
    };
    for _ in 0..args.budget_rounds {
        for on in [false, true] {
            let fresh = fresh_database(backend, args).await?;
            let extra = if on {
                format!("{PRICED}\n{BUDGETED}")
            } else {
                PRICED.to_owned()
            };
            let a = app_with(
                &fresh.url,
                args.concurrency,
                Arc::new(Instant0::default()),
                &extra,
            )
            .await?;
            enqueue(&a, args.budget_deliveries).await?;
            tuma::worker::drain(a.clone(), Duration::from_secs(3600)).await?;
            let per_s = throughput(&a.db).await?.0;
            if on {
                let status = tuma::spend::status(&a.db, &a.config, Utc::now()).await?;
                let spent = status.first().map_or(0, |b| b.spent.micros);
                let expected = i64::try_from(args.budget_deliveries)? * 800_000;
                anyhow::ensure!(
                    spent == expected,
                    "the budget counted {spent} micro-units, not {expected}"
                );
                result.on_per_s.push(per_s);
            } else {
                result.off_per_s.push(per_s);
            }
            a.db.close().await;
            fresh.remove().await;
        }
    }
    Ok(result)
}

fn print(results: &[BackendResult], args: &Args) {
    println!();
    println!(
        "tuma bench: {} cores, {} deliveries, {} through HTTP, backlog {}, {} OTPs, concurrency {}, {} requests from {} clients",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.deliveries,
        args.http_deliveries,
        args.backlog,
        args.otps,
        args.concurrency,
        args.requests,
        args.clients
    );
    println!(
        "{:<44} {}",
        "",
        results
            .iter()
            .map(|r| format!("{:>14}", r.backend))
            .collect::<String>()
    );
    let row = |name: &str, f: &dyn Fn(&BackendResult) -> String| {
        println!(
            "{name:<44} {}",
            results
                .iter()
                .map(|r| format!("{:>14}", f(r)))
                .collect::<String>()
        );
    };
    row("queue floor, bare apalis (jobs/s)", &|r| {
        format!("{:.0}", r.floor_jobs_per_s)
    });
    row("intake through the library (deliveries/s)", &|r| {
        format!("{:.0}", r.intake_per_s)
    });
    row("end to end, in-process provider (/s)", &|r| {
        format!("{:.0}", r.e2e_per_s)
    });
    row("  ratio to the floor", &|r| {
        format!("{:.2}", r.e2e_vs_floor)
    });
    row("  per 10k window, first (/s)", &|r| {
        r.e2e_windows_per_s
            .first()
            .map(|v| format!("{v:.0}"))
            .unwrap_or("-".into())
    });
    row("  per 10k window, last (/s)", &|r| {
        r.e2e_windows_per_s
            .last()
            .map(|v| format!("{v:.0}"))
            .unwrap_or("-".into())
    });
    row("end to end, HTTP double (/s)", &|r| {
        format!("{:.0}", r.http_per_s)
    });
    row("OTP under load p50 / p99 (ms)", &|r| {
        format!("{:.1} / {:.1}", r.otp_loaded.p50_ms, r.otp_loaded.p99_ms)
    });
    row("  backlog still queued at the end", &|r| {
        r.otp_backlog_left_at_end.to_string()
    });
    row("OTP idle p50 / p99 (ms)", &|r| {
        format!("{:.1} / {:.1}", r.otp_idle.p50_ms, r.otp_idle.p99_ms)
    });
    row("POST /v1/otp accepted (/s)", &|r| {
        format!("{:.0}", r.http_intake_per_s)
    });
    row("  latency p50 / p99 (ms)", &|r| {
        format!("{:.1} / {:.1}", r.http_intake.p50_ms, r.http_intake.p99_ms)
    });
    row("  not accepted", &|r| r.http_intake_refused.to_string());
    row("POST /v1/otp with workers running (/s)", &|r| {
        format!("{:.0}", r.mixed_intake_per_s)
    });
    row("  latency p50 / p99 (ms)", &|r| {
        format!(
            "{:.1} / {:.1}",
            r.mixed_intake.p50_ms, r.mixed_intake.p99_ms
        )
    });
    row("  delivered by the time intake ended", &|r| {
        r.mixed_delivered.to_string()
    });
    row("peak RSS: floor / e2e (MB)", &|r| {
        format!("{:.0} / {:.0}", r.floor_peak_rss_mb, r.e2e_peak_rss_mb)
    });
    row("peak RSS: HTTP double / OTP / intake (MB)", &|r| {
        format!(
            "{:.0} / {:.0} / {:.0}",
            r.http_peak_rss_mb, r.otp_peak_rss_mb, r.http_intake_peak_rss_mb
        )
    });
}

/// What the smtp phase measured.
#[derive(Debug, Default, Serialize)]
struct SmtpResult {
    messages: usize,
    max_connections: u32,
    concurrency: usize,
    per_s: f64,
    connections_opened: usize,
    failed: usize,
}

/// An SMTP sink on 127.0.0.1 that behaves as a Linux MTA does on the wire:
/// plain tokio sockets with the kernel's usual delayed ACKs (no
/// TCP_QUICKACK, no TCP_NODELAY), a line reader, every reply at once.
/// Counts the connections it accepted.
async fn smtp_sink() -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(smtp_session(sock));
        }
    });
    Ok((addr, connections))
}

async fn smtp_session(sock: tokio::net::TcpStream) -> std::io::Result<()> {
    let (read, mut write) = sock.into_split();
    let mut input = tokio::io::BufReader::new(read);
    write.write_all(b"220 sink.bench ESMTP\r\n").await?;
    let mut line = String::new();
    let mut queued = 0u64;
    loop {
        line.clear();
        if input.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                write
                    .write_all(b"250-sink.bench\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    .await?
            }
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                loop {
                    line.clear();
                    if input.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                queued += 1;
                write
                    .write_all(format!("250 2.0.0 Ok: queued as SINK{queued}\r\n").as_bytes())
                    .await?;
            }
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"250 2.0.0 Ok\r\n").await?,
        }
    }
}

/// The SMTP adapter alone: `messages` emails, `concurrency` at a time (the
/// notification lane's), through one provider with `max_connections`.
async fn smtp_phase(
    messages: usize,
    max_connections: u32,
    concurrency: usize,
) -> anyhow::Result<SmtpResult> {
    use futures::StreamExt;
    let (addr, connections) = smtp_sink().await?;
    let smtp = Smtp::new(
        SmtpConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: SmtpTls::None,
            auth: None,
            from: "MtaaDAO <no-reply@mtaadao.org>".parse()?,
            hello_name: None,
            max_connections,
            ca: None,
            allow_plaintext_login: false,
        },
        Duration::from_secs(30),
    )
    .map_err(anyhow::Error::msg)?;
    let to = tuma::domain::email::EmailAddress::parse("wanjiku@example.com")
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let failed = AtomicUsize::new(0);
    let started = Instant::now();
    futures::stream::iter(0..messages)
        .for_each_concurrent(concurrency, |i| {
            let message = OutgoingMessage {
                delivery_id: format!("01JBENCH{i:018}"),
                kind: tuma::domain::DeliveryKind::Notification,
                content: tuma::providers::Content::Email {
                    to: to.clone(),
                    subject: "Your MtaaDAO statement".into(),
                    text: "Hello Wanjiku, your statement for November is ready. ".repeat(8),
                    html: Some("<p>Hello Wanjiku, your <b>statement</b> is ready.</p>".repeat(8)),
                },
                code: None,
                valid_for: None,
            };
            let (smtp, failed) = (&smtp, &failed);
            async move {
                if smtp.send(&message).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failed.into_inner();
    Ok(SmtpResult {
        messages,
        max_connections,
        concurrency,
        per_s: (messages - failed) as f64 / elapsed,
        connections_opened: connections.load(Ordering::Relaxed),
        failed,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tuma::providers::install_crypto();
    for phase in &args.phases {
        anyhow::ensure!(
            [
                "floor", "e2e", "http", "otp", "intake", "mixed", "smtp", "console", "budget",
                "procs"
            ]
            .contains(&phase.as_str()),
            "--phases takes floor, e2e, http, otp, intake, mixed, smtp, console, budget and procs, not `{phase}`"
        );
    }
    let mut smtp = None;
    if args.phases.iter().any(|p| p == "smtp") {
        eprintln!(
            "smtp: {} emails through the SMTP adapter ({} connections) to a local SMTP sink",
            args.smtp_messages, args.smtp_connections
        );
        smtp = Some(smtp_phase(args.smtp_messages, args.smtp_connections, args.concurrency).await?);
    }
    let db_phases = [
        "floor", "e2e", "http", "otp", "intake", "mixed", "console", "budget", "procs",
    ];
    let mut results = Vec::new();
    for backend in args
        .backends
        .iter()
        .filter(|_| args.phases.iter().any(|p| db_phases.contains(&p.as_str())))
    {
        anyhow::ensure!(
            ["sqlite", "postgres", "postgres-unix"].contains(&backend.as_str()),
            "--backends takes sqlite, postgres and postgres-unix, not `{backend}`"
        );
        results.push(run_backend(backend, &args).await?);
    }
    let classic = ["floor", "e2e", "http", "otp", "intake", "mixed"];
    if !results.is_empty() && args.phases.iter().any(|p| classic.contains(&p.as_str())) {
        print(&results, &args);
    }
    for r in &results {
        if let Some((one, two)) = r.procs_per_s {
            println!(
                "\nworker processes on {} (HTTP double, deliveries/s): one {one:.0}, two {two:.0} ({:.2}×)",
                r.backend,
                two / one.max(f64::MIN_POSITIVE)
            );
        }
    }
    for r in &results {
        if let Some(b) = &r.budget {
            let (off, on) = (
                BudgetResult::median(&b.off_per_s),
                BudgetResult::median(&b.on_per_s),
            );
            println!(
                "\nspend guard on {}: {} deliveries end to end, in-process provider (/s), median of {}",
                r.backend,
                b.deliveries,
                b.off_per_s.len()
            );
            let list = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("  no budget:      {off:>8.0}   ({})", list(&b.off_per_s));
            println!("  with a budget:  {on:>8.0}   ({})", list(&b.on_per_s));
            if off > 0.0 {
                println!("  cost of the guard: {:.1} %", (1.0 - on / off) * 100.0);
            }
        }
        if let Some(c) = &r.console {
            println!(
                "\nconsole on {}: {} deliveries over 90 days (filled in {:.0} s); server time per page, ms",
                r.backend, c.rows, c.fill_secs
            );
            println!(
                "{:<52} {:>8} {:>8} {:>8} {:>8}",
                "page", "n", "p50", "p95", "max"
            );
            for p in &c.pages {
                println!(
                    "{:<52} {:>8} {:>8.1} {:>8.1} {:>8.1}",
                    p.page, p.times.samples, p.times.p50_ms, p.times.p95_ms, p.times.max_ms
                );
            }
        }
    }
    if let Some(s) = &smtp {
        println!(
            "\nSMTP adapter to a local sink: {} emails, {} at a time, max_connections {}: {:.0} emails/s, {} connections opened, {} failed",
            s.messages, s.concurrency, s.max_connections, s.per_s, s.connections_opened, s.failed
        );
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(
            &json!({ "args": format!("{args:?}"), "results": results, "smtp": smtp }),
        )?,
    )?;
    println!("\nfigures written to {}", args.out.display());
    Ok(())
}
