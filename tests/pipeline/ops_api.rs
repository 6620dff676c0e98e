//! Finance's and ops' HTTP routes: the cost report and replays, with scopes.

use serde_json::{Value, json};
use tuma::store::Outcome;

use crate::on_both_backends;
use crate::support::*;

async fn the_cost_report_is_served_as_json_and_csv_to_the_reports_scope(backend: Backend) {
    let s = spawn_app(backend).await;
    for (at, to, end) in [
        (
            "2026-11-02T08:00:00Z",
            "+254711000001",
            SeedEnd::Sent(cost("0.80", "KES", false)),
        ),
        (
            "2026-11-03T08:00:00Z",
            "+254711000002",
            SeedEnd::Sent(cost("0.80", "KES", false)),
        ),
        (
            "2026-11-04T08:00:00Z",
            "+14155552671",
            SeedEnd::Sent(cost("0.0079", "USD", true)),
        ),
    ] {
        seed(&s.t.app.db, Seed::notification(at, to, "primary", end)).await;
    }
    let finance = s.key("finance", &["reports"]).await;
    let sender = s.key("auth-service", &["send", "read"]).await;
    let path = "/v1/reports/costs?from=2026-11-01&to=2026-12-01&by=month,country";

    assert_eq!(s.get(path, &sender).await.status(), 403);
    let json: Value = s.get(path, &finance).await.json().await.unwrap();
    let text = json.to_string();
    assert!(
        text.contains("\"KES\"") && text.contains("\"USD\""),
        "{text}"
    );
    assert!(text.contains("1.60"), "KES total is exact: {text}");
    assert!(text.contains("0.0079"), "USD estimate is exact: {text}");

    let csv = s.get(&format!("{path}&format=csv"), &finance).await;
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv"),
        "{:?}",
        csv.headers()
    );
    let body = csv.text().await.unwrap();
    let mut lines = body.lines();
    assert!(
        lines.next().unwrap().contains("currency"),
        "a header row: {body}"
    );
    assert!(body.contains("KE") && body.contains("US"), "{body}");

    let bad = s.get("/v1/reports/costs?by=planet", &finance).await;
    assert_eq!(bad.status(), 422);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["field"], "by");
    let unknown = s.get("/v1/reports/costs?colour=red", &finance).await;
    assert_eq!(unknown.status(), 422);
    s.stop().await;
}
on_both_backends!(the_cost_report_is_served_as_json_and_csv_to_the_reports_scope);

async fn ops_replay_failures_over_http_and_refusals_say_why(backend: Backend) {
    let s = spawn_app(backend).await;
    let now = chrono::Utc::now().to_rfc3339();
    let failed = seed(
        &s.t.app.db,
        Seed::notification(
            &now,
            "+254711000010",
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    let blacklisted = seed(
        &s.t.app.db,
        Seed::notification(
            &now,
            "+254711000011",
            "primary",
            SeedEnd::Failed(Outcome::Permanent, Some("406")),
        ),
    )
    .await;
    let sent = seed(
        &s.t.app.db,
        Seed::notification(&now, "+254711000012", "primary", SeedEnd::Sent(None)),
    )
    .await;
    let ops = s.key("ops-team", &["ops", "read"]).await;
    let reader = s.key("dashboard", &["read"]).await;

    let path = format!("/v1/deliveries/{failed}/replay");
    assert_eq!(s.post(&path, &reader, &json!({})).await.status(), 403);
    let refused: Value = s
        .post(&format!("/v1/deliveries/{sent}/replay"), &ops, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(refused["replayed"].as_array().unwrap().len(), 0);
    assert!(
        refused["refused"][0]["message"].as_str().unwrap().len() > 10,
        "{refused}"
    );

    let dry: Value = s
        .post(
            "/v1/replays",
            &ops,
            &json!({"filter": {"status": "failed"}, "dry_run": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["replayed"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(
        dry["refused"].as_array().unwrap().len(),
        1,
        "the permanent failure: {dry}"
    );
    assert_eq!(dry["refused"][0]["id"], blacklisted.as_str());

    let done: Value = s.post(&path, &ops, &json!({})).await.json().await.unwrap();
    let replay_id = done["replayed"][0]["replay"].as_str().unwrap().to_owned();
    let again: Value = s.post(&path, &ops, &json!({})).await.json().await.unwrap();
    assert_eq!(
        again["replayed"].as_array().unwrap().len(),
        0,
        "replayed once: {again}"
    );

    let replay = s.t.delivery(&replay_id).await;
    assert_eq!(replay.row.status, "pending");
    s.t.drain().await;
    assert_eq!(s.t.delivery(&replay_id).await.row.status, "sent");
    let origin = s.t.app.db.replay_origin(&replay_id).await.unwrap().unwrap();
    assert_eq!(origin.replay_of, failed);
    assert_eq!(
        origin.replayed_by.as_deref(),
        Some("ops-team"),
        "the key's name is recorded"
    );

    let missing = s.post("/v1/deliveries/nope/replay", &ops, &json!({})).await;
    assert_eq!(missing.status(), 404);
    let unknown = s
        .post("/v1/replays", &ops, &json!({"filter": {"colour": "red"}}))
        .await;
    assert_eq!(unknown.status(), 422);
    s.stop().await;
}
on_both_backends!(ops_replay_failures_over_http_and_refusals_say_why);

async fn an_http_replay_to_a_suppressed_recipient_is_refused_unless_the_body_says_ignore_suppression(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let now = chrono::Utc::now();
    let to = "+254711000030";
    let failed = seed(
        &s.t.app.db,
        Seed::notification(
            &now.to_rfc3339(),
            to,
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    s.t.app
        .db
        .suppress(&tuma::store::Suppression {
            channel: "sms".into(),
            recipient: to.into(),
            reason: "number not in service".into(),
            delivery_id: "another-clients-delivery-0002".into(),
            provider: "primary".into(),
            error_code: Some("21614".into()),
            created_at: s.t.app.clock.now() - chrono::Duration::hours(1),
        })
        .await
        .unwrap();
    let ops = s.key("ops-team", &["ops", "read"]).await;
    let path = format!("/v1/deliveries/{failed}/replay");

    let forced: Value = s
        .post(&path, &ops, &json!({"force": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(forced["replayed"].as_array().unwrap().len(), 0, "{forced}");
    assert_eq!(forced["refused"][0]["reason"], "suppressed", "{forced}");
    let message = forced["refused"][0]["message"].as_str().unwrap();
    assert!(message.contains("suppressed since"), "{message}");
    assert!(!message.contains("another-clients"), "{message}");
    let many: Value = s
        .post(
            "/v1/replays",
            &ops,
            &json!({"filter": {"status": "failed", "force": true}, "dry_run": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(many["refused"][0]["reason"], "suppressed", "{many}");

    let done: Value = s
        .post(&path, &ops, &json!({"ignore_suppression": true}))
        .await
        .json()
        .await
        .unwrap();
    let replay = done["replayed"][0]["replay"].as_str().unwrap().to_owned();
    let view: Value = s
        .get(&format!("/v1/deliveries/{replay}"), &ops)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["replay_of"]["replayed_by"], "ops-team", "{view}");
    let note = view["replay_of"]["note"].as_str().unwrap();
    assert!(
        note.starts_with("suppression ignored by ops-team:"),
        "{note}"
    );
    s.stop().await;
}
on_both_backends!(
    an_http_replay_to_a_suppressed_recipient_is_refused_unless_the_body_says_ignore_suppression
);
