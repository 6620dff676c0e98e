//! The spend guard: budgets reserve each send's estimate before the provider
//! call, hold deliveries at the limit (never failing or dropping them), and
//! release them at the period's end or when ops say so.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Map;
use tuma::app::App;
use tuma::clock::{Clock, ManualClock};
use tuma::config::Config;
use tuma::domain::DeliveryStatus;
use tuma::domain::money::Currency;
use tuma::intake::{NotificationRequest, OtpRequest};
use tuma::providers::{Providers, unlimited};

use crate::on_both_backends;
use crate::support::*;

/// The test configuration plus `extra` (budgets), with a scripted `primary`
/// (priced at 0.8 KES a segment for +254) on a clock stopped at `at`.
async fn app_with(backend: Backend, extra: &str, at: DateTime<Utc>) -> (TestApp, Arc<Scripted>) {
    let clock = Arc::new(ManualClock::new(at));
    let db = TestDb::new(backend).await;
    let path = db.path().join("providers.toml");
    std::fs::write(&path, format!("{}\n{extra}", config_text(db.path(), 6))).unwrap();
    let config = Config::load(&path).expect("valid test config");
    let scripted = Scripted::new(clock.clone(), vec![]);
    let app = build(&db, config, clock.clone(), &scripted).await;
    (TestApp { app, clock, db }, scripted)
}

async fn build(
    db: &TestDb,
    config: Config,
    clock: Arc<ManualClock>,
    scripted: &Arc<Scripted>,
) -> Arc<App> {
    let store = db.connect().await;
    let mut providers = Providers::from_config(&config).expect("providers");
    providers.insert(
        "primary",
        scripted.clone(),
        unlimited(),
        Duration::from_secs(2),
    );
    Arc::new(App::with_parts(config, store, providers, clock).expect("app"))
}

fn budget(limit: &str, kinds: &str) -> String {
    format!(
        "[[budget]]\ncurrency = \"KES\"\nperiod = \"month\"\nlimit = \"{limit}\"\n\
         alert_at = [0.5, 1.0]\nkinds = {kinds}\n"
    )
}

fn note(to: &str) -> NotificationRequest {
    NotificationRequest {
        to: to.into(),
        template: "welcome".into(),
        locale: None,
        vars: Map::from_iter([("name".to_owned(), serde_json::json!("Amina"))]),
        send_at: None,
        expires: None,
    }
}

fn otp(to: &str) -> OtpRequest {
    OtpRequest {
        to: to.into(),
        code: "482913".into(),
        channel: None,
        locale: None,
        ttl: None,
    }
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn statuses(t: &TestApp, ids: &[String]) -> Vec<DeliveryStatus> {
    let mut out = Vec::new();
    for id in ids {
        out.push(t.delivery(id).await.status);
    }
    out
}

async fn enqueue_notes(t: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let d = t
            .app
            .enqueue_notification(note(&format!("+2547110{i:05}")))
            .await
            .unwrap();
        ids.push(d.row.id);
    }
    ids
}

async fn a_reached_budget_holds_the_next_notification_and_a_release_sends_it(backend: Backend) {
    // One message costs 0.8 KES: a 2.00 limit admits sends at 0, 0.8 and
    // 1.6 used (the last one passes the limit by less than its estimate).
    let (t, provider) = app_with(
        backend,
        &budget("2.00", "[\"notification\"]"),
        at("2026-12-10T12:00:00Z"),
    )
    .await;
    let ids = enqueue_notes(&t, 3).await;
    t.drain().await;
    assert_eq!(provider.calls().len(), 3);
    let held = enqueue_notes(&t, 1).await;
    t.drain().await;
    assert_eq!(
        provider.calls().len(),
        3,
        "the held one never reached the provider"
    );
    let d = t.delivery(&held[0]).await;
    assert_eq!(d.status, DeliveryStatus::Held);
    assert_eq!(d.row.attempts, 0, "holding spends no attempt");
    // The old app's view shows it still to be sent, never failed.
    assert_eq!(
        count(
            &t.app.db,
            "SELECT COUNT(*) FROM sms_delivery_log WHERE status = 'pending'"
        )
        .await,
        1
    );
    assert!(
        d.row.last_error.as_deref().unwrap().contains("KES/month"),
        "{:?}",
        d.row.last_error
    );
    // An OTP is not held by a notifications budget: a login code goes out.
    let code = t.app.enqueue_otp(otp("+254711999999")).await.unwrap();
    t.drain().await;
    assert_eq!(t.delivery(&code.row.id).await.status, DeliveryStatus::Sent);

    let status = tuma::spend::status(&t.app.db, &t.app.config, t.clock.now())
        .await
        .unwrap();
    assert_eq!(status[0].spent.micros, 2_400_000, "three notifications");
    // Both thresholds (0.5 and 1.0) were crossed and logged, once each.
    assert_eq!(
        count(&t.app.db, "SELECT MAX(alerts_logged) FROM budget_usage").await,
        2
    );
    assert_eq!(status[0].reserved.micros, 0);
    assert_eq!(status[0].held, 1);
    assert!(status[0].used_ratio > 1.0);
    let mut sent_cost = 0;
    for d in statuses(&t, &ids).await {
        assert_eq!(d, DeliveryStatus::Sent);
    }
    for id in &ids {
        sent_cost += t.delivery(id).await.row.cost_micros.unwrap();
    }
    assert_eq!(
        sent_cost, status[0].spent.micros,
        "spend is what the sends cost"
    );

    // Another currency's release leaves it held; a release of KES sends it.
    let usd = "USD".parse::<Currency>().unwrap();
    assert_eq!(
        tuma::spend::release(&t.app, Some(usd), t.clock.now())
            .await
            .unwrap(),
        0
    );
    let kes = "KES".parse::<Currency>().unwrap();
    assert_eq!(
        tuma::spend::release(&t.app, Some(kes), t.clock.now())
            .await
            .unwrap(),
        1
    );
    t.drain().await;
    assert_eq!(t.delivery(&held[0]).await.status, DeliveryStatus::Sent);
    assert_eq!(provider.calls().len(), 5);
    let status = tuma::spend::status(&t.app.db, &t.app.config, t.clock.now())
        .await
        .unwrap();
    assert_eq!(
        status[0].spent.micros, 3_200_000,
        "a released send still counts"
    );
    assert_eq!(status[0].held, 0);
}
on_both_backends!(a_reached_budget_holds_the_next_notification_and_a_release_sends_it);

async fn a_new_month_releases_held_deliveries(backend: Backend) {
    let (t, provider) = app_with(
        backend,
        &budget("0.80", "[\"notification\"]"),
        at("2026-12-31T23:00:00Z"),
    )
    .await;
    let ids = enqueue_notes(&t, 3).await;
    t.drain().await;
    let before = statuses(&t, &ids).await;
    let held_count =
        |all: &[DeliveryStatus]| all.iter().filter(|s| **s == DeliveryStatus::Held).count();
    assert_eq!(held_count(&before), 2, "{before:?}");
    // Still December: the sweeper keeps them held.
    t.advance(Duration::from_secs(30 * 60)).await;
    tuma::sweeper::sweep(&t.app).await.unwrap();
    t.drain().await;
    assert_eq!(provider.calls().len(), 1);
    // January: released, and the new month's budget admits one more, which
    // holds the third again until February.
    t.advance(Duration::from_secs(31 * 60)).await;
    tuma::sweeper::sweep(&t.app).await.unwrap();
    t.drain().await;
    let after = statuses(&t, &ids).await;
    assert_eq!(provider.calls().len(), 2);
    assert_eq!(
        after.iter().filter(|s| **s == DeliveryStatus::Sent).count(),
        2
    );
    let still = &ids[after
        .iter()
        .position(|s| *s == DeliveryStatus::Held)
        .unwrap()];
    let held = t.delivery(still).await;
    assert_eq!(held.row.next_attempt_at, Some(at("2027-02-01T00:00:00Z")));
    let status = tuma::spend::status(&t.app.db, &t.app.config, t.clock.now())
        .await
        .unwrap();
    assert_eq!(status[0].period_start, at("2027-01-01T00:00:00Z"));
    assert_eq!(status[0].spent.micros, 800_000);
}
on_both_backends!(a_new_month_releases_held_deliveries);

/// Drains `t` and a second process on the same database (its own 64 slots,
/// the same provider) at once; returns the second, to close.
async fn drain_beside_a_second_process(t: &TestApp, provider: &Arc<Scripted>) -> Arc<App> {
    let config = Config::load(&t.db.path().join("providers.toml")).unwrap();
    let second = build(&t.db, config, t.clock.clone(), provider).await;
    let (a, b) = tokio::join!(
        tuma::worker::drain(t.app.clone(), Duration::from_secs(60)),
        tuma::worker::drain(second.clone(), Duration::from_secs(60)),
    );
    a.unwrap();
    b.unwrap();
    second
}

/// How many of `ids` are sent and how many held.
async fn sent_and_held(t: &TestApp, ids: &[String]) -> (usize, usize) {
    let all = statuses(t, ids).await;
    let count = |status| all.iter().filter(|s| **s == status).count();
    (count(DeliveryStatus::Sent), count(DeliveryStatus::Held))
}

async fn concurrent_sends_overshoot_by_at_most_one_estimate(backend: Backend) {
    // 10.00 KES at 0.8 a message: 13 sends are admitted (the 13th at 9.6
    // used), whatever the number of slots or processes racing for them.
    let (t, provider) = app_with(
        backend,
        &budget("10.00", "[\"notification\"]"),
        at("2026-12-10T12:00:00Z"),
    )
    .await;
    let ids = enqueue_notes(&t, 40).await;
    let second = drain_beside_a_second_process(&t, &provider).await;
    assert_eq!(sent_and_held(&t, &ids).await, (13, 27));
    assert_eq!(provider.calls().len(), 13);
    let status = tuma::spend::status(&t.app.db, &t.app.config, t.clock.now())
        .await
        .unwrap();
    assert_eq!(status[0].spent.micros, 10_400_000);
    assert!(status[0].spent.micros - status[0].limit.micros < 800_000);
    assert_eq!(status[0].reserved.micros, 0);
    assert_eq!(status[0].held, 27);
    second.db.close().await;
}
on_both_backends!(concurrent_sends_overshoot_by_at_most_one_estimate);

async fn a_day_and_a_month_budget_are_kept_together_by_batches_of_two_processes(backend: Backend) {
    // A day budget of 80.00 KES and a month budget of 200.00, both counting
    // notifications at 0.8 a message: the day admits 100 (the 100th at
    // 79.20 used), many batches of reservations taken by two processes of
    // 64 slots each, every one locking both counters. Neither counter may
    // drift from the other, and no batch may wait on another in a circle.
    let day = "[[budget]]\ncurrency = \"KES\"\nperiod = \"day\"\nlimit = \"80.00\"\n\
               alert_at = [0.5, 1.0]\nkinds = [\"notification\"]\n";
    let (t, provider) = app_with(
        backend,
        &format!("{day}{}", budget("200.00", "[\"notification\"]")),
        at("2026-12-10T12:00:00Z"),
    )
    .await;
    let ids = enqueue_notes(&t, 160).await;
    let second = drain_beside_a_second_process(&t, &provider).await;
    assert_eq!(sent_and_held(&t, &ids).await, (100, 60));
    assert_eq!(provider.calls().len(), 100);
    let status = tuma::spend::status(&t.app.db, &t.app.config, t.clock.now())
        .await
        .unwrap();
    let by_name = |name: &str| status.iter().find(|b| b.budget == name).unwrap();
    let (day, month) = (by_name("KES/day"), by_name("KES/month"));
    assert_eq!((day.spent.micros, day.reserved.micros), (80_000_000, 0));
    assert_eq!((month.spent.micros, month.reserved.micros), (80_000_000, 0));
    assert_eq!((day.held, month.held), (60, 0));
    // Every send is charged once in each budget.
    assert_eq!(
        count(&t.app.db, "SELECT COUNT(*) FROM budget_charges").await,
        200
    );
    assert_eq!(
        count(&t.app.db, "SELECT COUNT(*) FROM budget_reservations").await,
        0
    );
    second.db.close().await;
}
on_both_backends!(a_day_and_a_month_budget_are_kept_together_by_batches_of_two_processes);

async fn otps_are_held_only_when_the_budget_says_so_and_still_expire(backend: Backend) {
    let (t, provider) = app_with(
        backend,
        &budget("0.80", "[\"notification\", \"otp\"]"),
        at("2026-12-10T12:00:00Z"),
    )
    .await;
    let first = t.app.enqueue_otp(otp("+254711000001")).await.unwrap();
    let second = t.app.enqueue_otp(otp("+254711000002")).await.unwrap();
    t.drain().await;
    // The two race for the one message the budget admits.
    let ids = [first.row.id, second.row.id];
    let mut after = statuses(&t, &ids).await;
    after.sort_by_key(|s| s.as_str());
    assert_eq!(after, [DeliveryStatus::Held, DeliveryStatus::Sent]);
    assert_eq!(provider.calls().len(), 1);
    let held = if t.delivery(&ids[0]).await.status == DeliveryStatus::Held {
        &ids[0]
    } else {
        &ids[1]
    };
    // Its TTL (5 minutes) passes while held: expired, code wiped, never sent.
    t.advance(Duration::from_secs(6 * 60)).await;
    tuma::sweeper::sweep(&t.app).await.unwrap();
    let d = t.delivery(held).await;
    assert_eq!(d.status, DeliveryStatus::Expired);
    assert_eq!(
        count(
            &t.app.db,
            "SELECT COUNT(*) FROM deliveries WHERE otp_code IS NOT NULL"
        )
        .await,
        0
    );
    assert_eq!(
        tuma::spend::release(&t.app, None, t.clock.now())
            .await
            .unwrap(),
        0
    );
    t.drain().await;
    assert_eq!(provider.calls().len(), 1);
}
on_both_backends!(otps_are_held_only_when_the_budget_says_so_and_still_expire);

async fn a_failed_send_gives_its_reservation_back(backend: Backend) {
    let clock = Arc::new(ManualClock::new(at("2026-12-10T12:00:00Z")));
    let (t, _) = app_with(
        backend,
        &budget("0.80", "[\"notification\"]"),
        at("2026-12-10T12:00:00Z"),
    )
    .await;
    // Rebuilt with a provider that refuses the first send for good.
    let path = t.db.path().join("providers.toml");
    let config = Config::load(&path).unwrap();
    let refusing = Scripted::new(clock.clone(), vec![permanent("unknown number")]);
    let app = build(&t.db, config, clock, &refusing).await;
    let failed = app
        .enqueue_notification(note("+254711000001"))
        .await
        .unwrap();
    tuma::worker::drain(app.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let next = app
        .enqueue_notification(note("+254711000002"))
        .await
        .unwrap();
    tuma::worker::drain(app.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let failed = app.db.delivery(&failed.row.id).await.unwrap().unwrap();
    let next = app.db.delivery(&next.row.id).await.unwrap().unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(
        next.status,
        DeliveryStatus::Sent,
        "the failed send cost nothing"
    );
    let status = tuma::spend::status(&app.db, &app.config, app.clock.now())
        .await
        .unwrap();
    assert_eq!(status[0].spent.micros, 800_000);
    assert_eq!(status[0].reserved.micros, 0);
    app.db.close().await;
}
on_both_backends!(a_failed_send_gives_its_reservation_back);

async fn ops_see_and_release_budgets_over_http_and_metrics(backend: Backend) {
    let s = spawn_app_with(backend, &budget("0.80", "[\"notification\"]")).await;
    let ops = s.key("ops", &["ops"]).await;
    let sender = s.key("sender", &["send"]).await;
    for to in ["+254711000001", "+254711000002"] {
        s.t.app.enqueue_notification(note(to)).await.unwrap();
    }
    s.t.drain().await;
    let reader = s.key("reader", &["read"]).await;
    let listed: serde_json::Value = s
        .get("/v1/deliveries?status=held", &reader)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let r = s.get("/v1/budget", &sender).await;
    assert_eq!(r.status(), 403, "ops only");
    let r = s.get("/v1/budget", &ops).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["budgets"][0]["budget"], "KES/month");
    assert_eq!(body["budgets"][0]["held"], 1);
    assert_eq!(body["budgets"][0]["spent"], "0.80");
    assert_eq!(body["budgets"][0]["limit"], "0.80");
    let reports = s.key("finance", &["reports"]).await;
    let report: serde_json::Value = s
        .get("/v1/reports/costs", &reports)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["budgets"][0]["budget"], "KES/month", "{report}");
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tuma_budget_used_ratio{currency=\"KES\",period=\"month\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"held\"} 1"), "{metrics}");
    if let Some(complaints) = crate::server::promtool_complaints(&metrics) {
        assert_eq!(complaints, "", "promtool: {metrics}");
    }
    let r = s
        .post(
            "/v1/budget/release",
            &ops,
            &serde_json::json!({"currency": "KSH"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let r = s
        .post("/v1/budget/release", &sender, &serde_json::json!({}))
        .await;
    assert_eq!(r.status(), 403);
    let r = s
        .post(
            "/v1/budget/release",
            &ops,
            &serde_json::json!({"currency": "KES"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["released"], 1);
    s.t.drain().await;
    let held = count(
        &s.t.app.db,
        "SELECT COUNT(*) FROM deliveries WHERE status = 'held'",
    )
    .await;
    assert_eq!(held, 0);
    s.stop().await;
}
on_both_backends!(ops_see_and_release_budgets_over_http_and_metrics);

fn cli(t: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tuma"))
        .args(args)
        .env("TUMA_CONFIG", t.db.path().join("providers.toml"))
        .env("DATABASE_URL", &t.db.url)
        .output()
        .unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn ops_and_finance_use_the_budget_suppressions_and_report_commands(backend: Backend) {
    // The commands read the system clock: so does this app.
    let (t, _) = app_with(
        backend,
        &budget("0.80", "[\"notification\"]"),
        chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
    )
    .await;
    let ids = enqueue_notes(&t, 2).await;
    t.drain().await;

    let json: serde_json::Value =
        serde_json::from_str(&stdout(&cli(&t, &["budget", "--format", "json"]))).unwrap();
    assert_eq!(json["budgets"][0]["budget"], "KES/month");
    assert_eq!(json["budgets"][0]["spent"], "0.80");
    assert_eq!(json["budgets"][0]["held"], 1);
    let table = stdout(&cli(&t, &["budget"]));
    assert!(
        table.contains("KES/month") && table.contains("0.80"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&stdout(&cli(&t, &["report", "costs", "--format", "json"]))).unwrap();
    assert_eq!(report["budgets"][0]["held"], 1, "{report}");
    let report = stdout(&cli(&t, &["report", "costs"]));
    assert!(report.contains("budgets (this period)"), "{report}");

    let bad = cli(&t, &["budget", "release", "--currency", "KSH"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--currency"));
    let released = stdout(&cli(&t, &["budget", "release", "--currency", "KES"]));
    assert_eq!(released.trim(), "released 1 held deliveries");
    t.drain().await;
    assert_eq!(
        statuses(&t, &ids).await,
        [DeliveryStatus::Sent, DeliveryStatus::Sent]
    );

    t.app
        .db
        .suppress(&tuma::store::Suppression {
            channel: "sms".into(),
            recipient: "+254711000001".into(),
            reason: "the recipient replied STOP".into(),
            delivery_id: ids[0].clone(),
            provider: "primary".into(),
            error_code: Some("21610".into()),
            created_at: t.clock.now(),
        })
        .await
        .unwrap();
    let list = stdout(&cli(&t, &["suppressions", "list"]));
    assert!(
        list.contains("+254711000001") && list.contains("STOP"),
        "{list}"
    );
    let lifted = stdout(&cli(&t, &["suppressions", "remove", "+254711000001"]));
    assert!(lifted.contains("lifted 1"), "{lifted}");
    let again = cli(&t, &["suppressions", "remove", "+254711000001"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not suppressed"));
}
on_both_backends!(ops_and_finance_use_the_budget_suppressions_and_report_commands);
