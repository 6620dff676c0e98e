//! The cost report against a fixture computed by hand: a mixed-currency
//! month, estimates, receipts, and deliveries either side of both UTC month
//! boundaries; and the old dashboards' views agreeing with it.

use tuma::domain::DeliveryKind;
use tuma::reports::{CostParams, CostQuery, CostReport, cost_report};
use tuma::store::{Db, Outcome};

use crate::on_both_backends;
use crate::support::*;

/// Twelve deliveries around November 2026; two fall outside it.
async fn fixture(db: &Db) {
    let at = SeedEnd::Sent;
    let seeds = [
        // Outside: the last microsecond of October, and the first of December.
        Seed::notification(
            "2026-10-31T23:59:59.999999Z",
            "+254711000001",
            "africastalking",
            at(cost("0.80", "KES", false)),
        ),
        Seed::notification(
            "2026-12-01T00:00:00Z",
            "+254711000007",
            "africastalking",
            at(cost("0.80", "KES", false)),
        ),
        // Inside.
        Seed::notification(
            "2026-11-01T00:00:00Z",
            "+254711000002",
            "africastalking",
            SeedEnd::Delivered(cost("0.80", "KES", false)),
        ),
        Seed {
            segments: 2,
            ..Seed::notification(
                "2026-11-15T08:00:00Z",
                "+254711000003",
                "africastalking",
                at(cost("1.60", "KES", false)),
            )
        },
        Seed::notification(
            "2026-11-20T10:00:00Z",
            "+256772000001",
            "twilio",
            at(cost("0.0079", "USD", true)),
        ),
        Seed {
            segments: 6,
            ..Seed::notification(
                "2026-11-20T11:00:00Z",
                "+254711000004",
                "twilio",
                at(cost("0.0474", "USD", true)),
            )
        },
        Seed::notification(
            "2026-11-21T09:00:00Z",
            "+254711000005",
            "africastalking",
            SeedEnd::Failed(Outcome::Permanent, Some("403")),
        ),
        Seed::notification(
            "2026-11-30T23:59:59.999999Z",
            "+255754000001",
            "africastalking",
            SeedEnd::Undelivered(cost("0.70", "KES", false)),
        ),
        // Sent one second later, 2026-12-01T00:00:00: still awaiting its receipt at report time.
        Seed::notification(
            "2026-11-30T23:59:59Z",
            "+254711000006",
            "africastalking",
            at(cost("0.80", "KES", false)),
        ),
        Seed {
            kind: DeliveryKind::Otp,
            template: "otp",
            ..Seed::notification(
                "2026-11-25T00:00:00Z",
                "+254711000008",
                "africastalking",
                SeedEnd::Expired,
            )
        },
        Seed::notification(
            "2026-11-10T00:00:00Z",
            "amina@example.org",
            "smtp",
            at(None),
        ),
    ];
    for s in seeds {
        seed(db, s).await;
    }
}

async fn november(db: &Db, by: &str) -> CostReport {
    let params = CostParams {
        from: Some("2026-11-01".into()),
        to: Some("2026-12-01".into()),
        by: Some(by.into()),
        ..Default::default()
    };
    let now = "2026-12-01T12:00:00Z".parse().unwrap();
    let query = CostQuery::from_params(&params, now).unwrap();
    cost_report(db, &query, now).await.unwrap()
}

async fn the_cost_report_matches_a_fixture_computed_by_hand(backend: Backend) {
    let t = TestDb::new(backend).await;
    let db = t.connect().await;
    fixture(&db).await;

    // By month: KES and USD in separate rows, deliveries without a cost in a third.
    let report = november(&db, "month").await;
    assert_eq!(
        report.to_csv().unwrap(),
        "month,messages,segments,delivered,undelivered,failed,expired,no_receipt,awaiting_receipt,currency,actual_cost,estimated_cost\n\
         2026-11,1,0,0,0,1,1,1,0,,,\n\
         2026-11,4,5,1,1,0,0,1,1,KES,3.90,0.00\n\
         2026-11,2,7,0,0,0,0,2,0,USD,0.00,0.0553\n"
    );
    let totals: Vec<(&str, i64, i64, i64, i64, &str, &str)> = report
        .totals
        .iter()
        .map(|t| {
            (
                t.currency.as_str(),
                t.messages,
                t.segments,
                t.actual_micros,
                t.estimated_micros,
                t.actual_cost.as_str(),
                t.estimated_cost.as_str(),
            )
        })
        .collect();
    assert_eq!(
        totals,
        [
            ("KES", 4, 5, 3_900_000, 0, "3.90", "0.00"),
            ("USD", 2, 7, 0, 55_300, "0.00", "0.0553"),
        ]
    );
    let c = report.counts;
    assert_eq!(
        (
            c.messages,
            c.segments,
            c.delivered,
            c.undelivered,
            c.failed,
            c.expired,
            c.no_receipt,
            c.awaiting_receipt
        ),
        (7, 12, 1, 1, 1, 1, 4, 1)
    );
    assert_eq!(report.time_zone, "UTC");
    let table = report.to_table();
    assert!(
        table.contains("2026-11-01 00:00:00 to 2026-12-01 00:00:00 (UTC; end excluded)"),
        "{table}"
    );
    assert!(
        table.contains("KES  4 messages, 5 segments, actual 3.90, estimated 0.00"),
        "{table}"
    );
    assert!(
        table.contains("USD  2 messages, 7 segments, actual 0.00, estimated 0.0553"),
        "{table}"
    );

    // By ISO week, provider and country.
    let report = november(&db, "week,provider,country").await;
    assert_eq!(
        report.to_csv().unwrap(),
        "week,provider,country,country_name,messages,segments,delivered,undelivered,failed,expired,no_receipt,awaiting_receipt,currency,actual_cost,estimated_cost\n\
         2026-W44,africastalking,KE,Kenya,1,1,1,0,0,0,0,0,KES,0.80,0.00\n\
         2026-W46,africastalking,KE,Kenya,1,2,0,0,0,0,1,0,KES,1.60,0.00\n\
         2026-W46,smtp,-,(email),1,0,0,0,0,0,1,0,,,\n\
         2026-W47,africastalking,KE,Kenya,0,0,0,0,1,0,0,0,,,\n\
         2026-W47,twilio,KE,Kenya,1,6,0,0,0,0,1,0,USD,0.00,0.0474\n\
         2026-W47,twilio,UG,Uganda,1,1,0,0,0,0,1,0,USD,0.00,0.0079\n\
         2026-W48,none,KE,Kenya,0,0,0,0,0,1,0,0,,,\n\
         2026-W49,africastalking,KE,Kenya,1,1,0,0,0,0,0,1,KES,0.80,0.00\n\
         2026-W49,africastalking,TZ,Tanzania,1,1,0,1,0,0,0,0,KES,0.70,0.00\n"
    );

    // JSON carries exact micro-units beside the formatted amounts.
    let json = serde_json::to_value(november(&db, "channel").await).unwrap();
    assert_eq!(json["time_zone"], "UTC");
    assert_eq!(json["totals"][1]["estimated_micros"], 55_300);
    assert_eq!(json["totals"][1]["estimated_cost"], "0.0553");
    assert_eq!(json["rows"][0]["group"][0], "email");
}
on_both_backends!(the_cost_report_matches_a_fixture_computed_by_hand);

/// An old dashboard's query: the cost sum of one provider's SMS in a period,
/// as exact micro-units.
async fn dashboard_cost_micros(db: &Db, provider: &str) -> (i64, i64) {
    let sql = "SELECT CAST(ROUND(SUM(cost) * 1000000) AS BIGINT), \
               CAST(SUM(CASE WHEN status = 'sent' THEN 1 ELSE 0 END) AS BIGINT) \
               FROM sms_delivery_log WHERE provider = $1 AND created_at >= $2 AND created_at < $3";
    let from: chrono::DateTime<chrono::Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
    let to: chrono::DateTime<chrono::Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
    match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(sql)
                .bind(provider)
                .bind(from)
                .bind(to)
                .fetch_one(pool)
                .await
        }
        Db::Postgres(pool) => {
            sqlx::query_as(sql)
                .bind(provider)
                .bind(from)
                .bind(to)
                .fetch_one(pool)
                .await
        }
    }
    .unwrap()
}

async fn the_old_dashboard_views_sum_to_the_report_totals_for_the_same_rows(backend: Backend) {
    let t = TestDb::new(backend).await;
    let db = t.connect().await;
    fixture(&db).await;
    let report = november(&db, "provider").await;
    let row = |provider: &str, currency: &str| {
        report
            .rows
            .iter()
            .find(|r| r.group == [provider] && r.currency.as_deref() == Some(currency))
            .unwrap()
            .clone()
    };
    // Africa's Talking bills in KES only, Twilio's estimates are in USD only,
    // so one provider's view sum is one currency's report total.
    let at = row("africastalking", "KES");
    let (micros, sent) = dashboard_cost_micros(&db, "africastalking").await;
    assert_eq!(micros, at.actual_micros + at.estimated_micros);
    assert_eq!(micros, 3_900_000);
    // The view's "sent" is sent or delivered.
    assert_eq!(
        sent,
        at.counts.delivered + at.counts.no_receipt + at.counts.awaiting_receipt
    );
    let tw = row("twilio", "USD");
    let (micros, sent) = dashboard_cost_micros(&db, "twilio").await;
    assert_eq!(micros, tw.actual_micros + tw.estimated_micros);
    assert_eq!(micros, 55_300);
    assert_eq!(sent, tw.counts.messages);
}
on_both_backends!(the_old_dashboard_views_sum_to_the_report_totals_for_the_same_rows);

async fn the_report_command_prints_csv_with_a_header_row_and_json(backend: Backend) {
    let t = TestDb::new(backend).await;
    let db = t.connect().await;
    fixture(&db).await;
    let (config, _) = write_config(t.path(), 3);
    let run = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuma"))
            .env("TUMA_CONFIG", &config)
            .env("DATABASE_URL", &t.url)
            .env("RUST_LOG", "warn")
            // A horizon far beyond the fixture: every sent message still awaits its receipt,
            // whatever day the test runs.
            .args([
                "report",
                "costs",
                "--from",
                "2026-11-01",
                "--to",
                "2026-12-01",
            ])
            .args([
                "--by",
                "month",
                "--receipt-horizon",
                "3650d",
                "--format",
                format,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    assert_eq!(
        run("csv"),
        "month,messages,segments,delivered,undelivered,failed,expired,no_receipt,awaiting_receipt,currency,actual_cost,estimated_cost\n\
         2026-11,1,0,0,0,1,1,0,1,,,\n\
         2026-11,4,5,1,1,0,0,0,2,KES,3.90,0.00\n\
         2026-11,2,7,0,0,0,0,0,2,USD,0.00,0.0553\n"
    );
    let json: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(json["time_zone"], "UTC");
    assert_eq!(json["from"], "2026-11-01T00:00:00Z");
    assert_eq!(json["totals"][0]["currency"], "KES");
    assert_eq!(json["totals"][0]["actual_micros"], 3_900_000);
    let table = run("table");
    assert!(table.contains("(UTC; end excluded)"), "{table}");
}
on_both_backends!(the_report_command_prints_csv_with_a_header_row_and_json);

async fn a_canceled_delivery_adds_no_all_zero_provider_none_row_to_the_cost_report(
    backend: Backend,
) {
    let t = TestDb::new(backend).await;
    let db = t.connect().await;
    seed(
        &db,
        Seed::notification(
            "2026-11-10T08:00:00Z",
            "+254711000001",
            "africastalking",
            SeedEnd::Sent(cost("0.80", "KES", false)),
        ),
    )
    .await;
    seed(
        &db,
        Seed::notification(
            "2026-11-11T08:00:00Z",
            "+254711000002",
            "africastalking",
            SeedEnd::Canceled,
        ),
    )
    .await;
    let expected = "provider,messages,segments,delivered,undelivered,failed,expired,no_receipt,awaiting_receipt,currency,actual_cost,estimated_cost\n\
         africastalking,1,1,0,0,0,0,1,0,KES,0.80,0.00\n";
    // The CLI's report, read delivery by delivery.
    assert_eq!(november(&db, "provider").await.to_csv().unwrap(), expected);
    // The console's, read from the rollups.
    let params = CostParams {
        from: Some("2026-11-01".into()),
        to: Some("2026-12-01".into()),
        by: Some("provider".into()),
        ..Default::default()
    };
    let now = "2026-12-01T12:00:00Z".parse().unwrap();
    let query = CostQuery::from_params(&params, now).unwrap();
    let rolled = tuma::reports::cost_report_from_rollups(&db, &query, now)
        .await
        .unwrap();
    assert_eq!(rolled.to_csv().unwrap(), expected);
}
on_both_backends!(a_canceled_delivery_adds_no_all_zero_provider_none_row_to_the_cost_report);
