//! The console phase: fills `rows` deliveries spread over 90 days (one
//! attempt each; statuses, providers, two currencies and recipients mixed),
//! then times the console's pages inside the server (the router, from the
//! request to the whole body, session check included) with a signed-in
//! session.

use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{Datelike, NaiveDate, Utc};
use serde::Serialize;
use tower::ServiceExt;
use tuma::api::ApiState;
use tuma::app::App;
use tuma::store::Db;

use super::Latency;

/// One page's server times.
#[derive(Debug, Default, Serialize)]
pub struct PageTimes {
    pub page: String,
    pub times: Latency,
}

/// What the phase measured.
#[derive(Debug, Default, Serialize)]
pub struct ConsoleResult {
    pub rows: usize,
    pub fill_secs: f64,
    pub pages: Vec<PageTimes>,
}

/// SQL fragments that differ between the backends, over a row number `n`.
struct Dialect {
    series: String,
    id: &'static str,
    recipient: &'static str,
    at: String,
}

fn dialect(db: &Db, rows: usize, start: chrono::DateTime<Utc>, step_us: i64) -> Dialect {
    match db {
        Db::Sqlite(_) => Dialect {
            series: format!(
                "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < {}) ",
                rows - 1
            ),
            id: "printf('00000000-0000-7000-8000-%012x', n)",
            recipient: "CASE WHEN n % 10 = 7 THEN printf('+1415555%04d', n % 10000) \
                        ELSE printf('+2547%08d', n % 200000) END",
            at: format!(
                "strftime('%Y-%m-%dT%H:%M:%f+00:00', {} + n * {}, 'unixepoch')",
                start.timestamp(),
                step_us as f64 / 1e6
            ),
        },
        Db::Postgres(_) => Dialect {
            series: String::new(),
            id: "'00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0')",
            recipient: "CASE WHEN n % 10 = 7 THEN '+1415555' || lpad((n % 10000)::text, 4, '0') \
                        ELSE '+2547' || lpad((n % 200000)::text, 8, '0') END",
            at: format!(
                "(TIMESTAMPTZ '{}' + n * INTERVAL '{step_us} microseconds')",
                start.to_rfc3339()
            ),
        },
    }
}

async fn execute(db: &Db, sql: String) -> anyhow::Result<()> {
    match db {
        Db::Sqlite(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
        }
        Db::Postgres(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
        }
    }
    Ok(())
}

/// Fills `rows` deliveries over the 90 days before now, and their attempts.
async fn fill(db: &Db, rows: usize) -> anyhow::Result<()> {
    let now = Utc::now();
    let start = now - chrono::Duration::days(90);
    let step_us = (90 * 86_400 * 1_000_000i64) / i64::try_from(rows.max(1))?;
    let d = dialect(db, rows, start, step_us);
    let last = rows.saturating_sub(100);
    let (series, from) = match db {
        Db::Sqlite(_) => (d.series.clone(), "FROM s".to_owned()),
        Db::Postgres(_) => (
            String::new(),
            format!("FROM generate_series(0, {}) AS n", rows - 1),
        ),
    };
    let status = format!(
        "CASE WHEN n >= {last} THEN 'pending' WHEN n % 100 < 5 THEN 'failed' \
         WHEN n % 100 < 7 THEN 'undelivered' WHEN n % 100 < 70 THEN 'delivered' ELSE 'sent' END"
    );
    let provider = "CASE WHEN n % 3 = 0 THEN 'backup' ELSE 'primary' END";
    let (id, recipient, at) = (d.id, d.recipient, &d.at);
    let truth = match db {
        Db::Sqlite(_) => ("1", "0"),
        Db::Postgres(_) => ("TRUE", "FALSE"),
    };
    execute(
        db,
        format!(
            "{series}INSERT INTO deliveries (id, kind, channel, recipient, template, locale, vars, body, \
             status, attempts, max_attempts, next_attempt_at, created_at, updated_at, sent_at, provider, \
             cost_micros, currency, cost_is_estimate, segments, encoding, last_error, country) \
             SELECT {id}, CASE WHEN n % 10 = 0 THEN 'otp' ELSE 'notification' END, 'sms', {recipient}, \
             'welcome', 'en', '{{}}', 'Karibu Amina, welcome to tuma.', {status}, \
             CASE WHEN n >= {last} THEN 0 ELSE 1 END, 3, CASE WHEN n >= {last} THEN {at} END, {at}, {at}, \
             CASE WHEN n < {last} AND n % 100 >= 5 THEN {at} END, CASE WHEN n < {last} THEN {provider} END, \
             CASE WHEN n >= {last} OR n % 100 < 5 THEN NULL WHEN n % 10 = 7 THEN 7900 ELSE 800000 END, \
             CASE WHEN n >= {last} OR n % 100 < 5 THEN NULL WHEN n % 10 = 7 THEN 'USD' ELSE 'KES' END, \
             CASE WHEN n >= {last} OR n % 100 < 5 THEN NULL WHEN n % 4 = 0 THEN {t} ELSE {f} END, \
             1, 'gsm7', CASE WHEN n < {last} AND n % 100 < 5 THEN 'provider error' END, \
             CASE WHEN n % 10 = 7 THEN '{us}' ELSE '{ke}' END {from}",
            t = truth.0,
            f = truth.1,
            // The country intake records, from one number of each family.
            us = tuma::domain::phone::region_code_of("+14155550007"),
            ke = tuma::domain::phone::region_code_of("+254700000001"),
        ),
    )
    .await?;
    execute(
        db,
        format!(
            "{series}INSERT INTO delivery_attempts (delivery_id, attempt, provider, reason, started_at, \
             finished_at, outcome, error_code, error, latency_ms) \
             SELECT {id}, 1, {provider}, 'primary', {at}, {at}, \
             CASE WHEN n % 100 < 5 THEN (CASE WHEN n % 2 = 0 THEN 'permanent' ELSE 'transient' END) ELSE 'accepted' END, \
             CASE WHEN n % 100 < 5 THEN (CASE WHEN n % 2 = 0 THEN '403' ELSE '500' END) END, \
             CASE WHEN n % 100 < 5 THEN 'provider error' END, 40 + n % 400 {from} WHERE n < {last}"
        ),
    )
    .await?;
    execute(db, "ANALYZE deliveries".into()).await?;
    execute(db, "ANALYZE delivery_attempts".into()).await?;
    Ok(())
}

/// A cheap deterministic sequence for picking rows.
struct Pick(u64);

impl Pick {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % below.max(1) as u64) as usize
    }
}

/// Fills the database behind `app` and times each page.
pub async fn run(app: std::sync::Arc<App>, rows: usize) -> anyhow::Result<ConsoleResult> {
    let started = Instant::now();
    fill(&app.db, rows).await?;
    let fill_secs = started.elapsed().as_secs_f64();
    let now = Utc::now();
    let key = tuma::api::auth::generate_key();
    app.db
        .create_api_key(
            "bench",
            &tuma::api::auth::hash_key(&key),
            "read,ops,reports",
            now,
        )
        .await?;
    let key_id = app
        .db
        .api_keys()
        .await?
        .into_iter()
        .find(|k| k.name == "bench")
        .map(|k| k.id)
        .ok_or_else(|| anyhow::anyhow!("the bench key was not stored"))?;
    let session = "bench-session-0123456789abcdefghijklmnopqrstuv";
    app.db
        .create_console_session(
            &tuma::api::auth::hash_key(session),
            key_id,
            now,
            now + chrono::Duration::hours(8),
        )
        .await?;
    let router = tuma::api::router(ApiState::new(app.clone()));
    let cookie = format!("{}={session}", tuma::console::COOKIE_NAME);
    let today = now.date_naive();
    let this_month = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let last_month = (this_month - chrono::Duration::days(1))
        .with_day(1)
        .unwrap_or(this_month);
    let mut pick = Pick(42);
    let live = rows.saturating_sub(100).max(1);
    let mut pages = Vec::new();
    type PathFn<'a> = Box<dyn FnMut(&mut Pick) -> String + 'a>;
    let plan: Vec<(&str, usize, PathFn)> = vec![
        (
            "delivery search: a national number",
            100,
            Box::new(|p: &mut Pick| {
                let n = p.next(live);
                let n = if n % 10 == 7 { n + 1 } else { n };
                format!("/console/deliveries?q=07{:08}", n % 200_000)
            }),
        ),
        (
            "delivery search: status failed, provider primary",
            50,
            Box::new(|_| "/console/deliveries?status=failed&provider=primary".to_owned()),
        ),
        (
            "delivery search: one day",
            50,
            Box::new(|p: &mut Pick| {
                let day = today - chrono::Duration::days(1 + p.next(85) as i64);
                format!("/console/deliveries?from={day}&to={day}")
            }),
        ),
        (
            "a delivery",
            100,
            Box::new(|p: &mut Pick| {
                format!(
                    "/console/deliveries/00000000-0000-7000-8000-{:012x}",
                    p.next(live)
                )
            }),
        ),
        ("overview", 20, Box::new(|_| "/console".to_owned())),
        (
            "failures, last 7 days",
            20,
            Box::new(|_| "/console/failures?since=7d".to_owned()),
        ),
        (
            "costs: last month per day by provider",
            10,
            Box::new(move |_| {
                format!(
                    "/console/costs?from={last_month}&to={this_month}&period=day&split=provider"
                )
            }),
        ),
    ];
    for (name, n, mut path) in plan {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let request = Request::get(path(&mut pick))
                .header(header::COOKIE, &cookie)
                .body(Body::empty())?;
            let t = Instant::now();
            let response = router.clone().oneshot(request).await?;
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
            samples.push(t.elapsed());
            anyhow::ensure!(
                status == StatusCode::OK,
                "{name}: {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        pages.push(PageTimes {
            page: name.to_owned(),
            times: Latency::of(samples),
        });
    }
    Ok(ConsoleResult {
        rows,
        fill_secs,
        pages,
    })
}
