//! `POST /v1/notifications/batch`: each item is checked as a single send
//! is and answered on its own; the accepted ones are written together, a
//! refused one writes nothing; per-item idempotency keys make a retried
//! batch send nothing twice. On both backends.

use serde_json::{Value, json};
use tuma::clock::Clock;

use crate::on_both_backends;
use crate::support::*;

fn note(to: &str, name: &str) -> Value {
    json!({"to": to, "template": "welcome", "vars": {"name": name}})
}

async fn post_batch(s: &TestServer, key: &str, body: &Value) -> (u16, Value) {
    let r = s.post("/v1/notifications/batch", key, body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn each_item_is_answered_on_its_own_and_only_accepted_ones_are_written(backend: Backend) {
    let s = spawn_app_with(backend, "[api]\nsms_prefix_allowlist = [\"+254\"]\n").await;
    let key = s.key("auth-service", &["send"]).await;
    let suppressed = "+254711000099";
    s.t.app
        .db
        .suppress(&tuma::store::Suppression {
            channel: "sms".into(),
            recipient: suppressed.into(),
            reason: "the recipient replied STOP".into(),
            delivery_id: "earlier".into(),
            provider: "primary".into(),
            error_code: Some("21610".into()),
            created_at: s.t.clock.now(),
        })
        .await
        .unwrap();
    let (status, answer) = post_batch(
        &s,
        &key,
        &json!({"items": [
            note("+254711000001", "Amina"),
            note("not a number", "Juma"),
            {"to": "+254711000002", "template": "no-such-template"},
            {"to": "+254711000003", "template": "welcome", "vars": {"name": "Wanjiru"}, "colour": "red"},
            note("+255711000004", "Baraka"),
            note(suppressed, "Zawadi"),
            {"to": "Neema@Example.org", "template": "welcome", "vars": {"name": "Neema", "code": "1"}},
            note("neema@example.org", "Neema"),
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["refused"].as_u64()),
        (Some(2), Some(6))
    );
    let items = answer["items"].as_array().unwrap();
    assert_eq!(items.len(), 8);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["index"].as_u64(), Some(i as u64));
    }
    let field = |i: usize| {
        items[i]["problem"]["field"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(items[0]["status"], "pending");
    assert_eq!(field(1), "items[1].to");
    assert_eq!(field(2), "items[2].template");
    assert_eq!(field(3), "items[3].colour");
    assert_eq!(
        items[3]["problem"]["type"],
        "https://tuma.dev/problems/unknown-field"
    );
    assert_eq!(field(4), "items[4].to");
    assert_eq!(items[4]["problem"]["rule"], "api.sms_prefix_allowlist");
    assert_eq!(items[5]["problem"]["rule"], "suppressed");
    // Refused items count in /metrics by rule, as refused single sends do.
    let refusals = s.state.metrics.refusals();
    assert_eq!(refusals.get("api.sms_prefix_allowlist"), Some(&1));
    assert_eq!(refusals.get("suppressed"), Some(&1));
    assert_eq!(field(6), "items[6].vars.code");
    assert_eq!(items[7]["status"], "pending");

    // Only the two accepted were written, with the key that sent them, and
    // both are sent.
    assert_eq!(s.delivery_count().await, 2);
    s.t.drain().await;
    for i in [0, 7] {
        let id = items[i]["id"].as_str().unwrap();
        let d = s.t.app.db.delivery(id).await.unwrap().unwrap();
        assert_eq!(d.row.api_key_name.as_deref(), Some("auth-service"));
        assert_eq!(d.row.status, "sent", "item {i}");
    }
    s.stop().await;
}
on_both_backends!(each_item_is_answered_on_its_own_and_only_accepted_ones_are_written);

async fn a_retried_batch_sends_nothing_twice_by_its_items_idempotency_keys(backend: Backend) {
    let s = spawn_app_with(backend, "").await;
    let key = s.key("auth-service", &["send"]).await;
    let items: Vec<Value> = (0..5)
        .map(|i| {
            let mut item = note(&format!("+25471100001{i}"), "Amina");
            item["idempotency_key"] = json!(format!("signup-{i}"));
            item
        })
        .collect();
    let batch = json!({ "items": items });
    let (status, first) = post_batch(&s, &key, &batch).await;
    assert_eq!((status, first["accepted"].as_u64()), (200, Some(5)));
    let (status, again) = post_batch(&s, &key, &batch).await;
    assert_eq!((status, again["accepted"].as_u64()), (200, Some(5)));
    for i in 0..5 {
        assert_eq!(again["items"][i]["id"], first["items"][i]["id"]);
        assert_eq!(again["items"][i]["replayed"], true);
    }
    assert_eq!(s.delivery_count().await, 5);

    // An item's key is the single route's Idempotency-Key: the same send
    // there answers the item's delivery.
    let r = s
        .client
        .post(s.url("/v1/notifications"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "signup-0")
        .json(&note("+254711000010", "Amina"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(
        r.json::<Value>().await.unwrap()["id"],
        first["items"][0]["id"]
    );

    // The same key with another body, and a key used twice in one batch.
    let mut changed = note("+254711000010", "Juma");
    changed["idempotency_key"] = json!("signup-0");
    let mut twice = note("+254711000020", "Baraka");
    twice["idempotency_key"] = json!("welcome-20");
    let (status, answer) =
        post_batch(&s, &key, &json!({"items": [changed, twice.clone(), twice]})).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["items"][0]["problem"]["type"],
        "https://tuma.dev/problems/idempotency-key-reused"
    );
    assert_eq!(answer["items"][1]["status"], "pending");
    assert_eq!(answer["items"][2]["id"], answer["items"][1]["id"]);
    assert_eq!(answer["items"][2]["replayed"], true);
    assert_eq!(s.delivery_count().await, 6);
    s.stop().await;
}
on_both_backends!(a_retried_batch_sends_nothing_twice_by_its_items_idempotency_keys);

async fn a_thousand_items_are_taken_and_more_or_a_body_too_large_is_refused_whole(
    backend: Backend,
) {
    let s = spawn_app_with(backend, "").await;
    let key = s.key("auth-service", &["send"]).await;
    let many = |n: usize| -> Value {
        let items: Vec<Value> = (0..n)
            .map(|i| note(&format!("+2547{:08}", 11_000_000 + i), "Amina"))
            .collect();
        json!({ "items": items })
    };
    let (status, problem) = post_batch(&s, &key, &many(1001)).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("items")));
    assert!(
        problem["detail"].as_str().unwrap().contains("1001"),
        "{problem}"
    );
    let (status, problem) = post_batch(&s, &key, &json!({"items": []})).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("items")));
    let (status, problem) = post_batch(
        &s,
        &key,
        &json!({"items": [note("+254711000001", "A")], "dry_run": true}),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("dry_run")));
    let r = s
        .client
        .post(s.url("/v1/notifications/batch"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "whole")
        .json(&many(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let padded = json!({"items": [{"to": "+254711000001", "template": "welcome",
        "vars": {"name": "x".repeat(1024 * 1024)}}]});
    // Its own client: the server answers before reading such a body and
    // closes the connection, which must not be pooled for the next request.
    let r = reqwest::Client::new()
        .post(s.url("/v1/notifications/batch"))
        .bearer_auth(&key)
        .json(&padded)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(s.delivery_count().await, 0);

    let (status, answer) = post_batch(&s, &key, &many(1000)).await;
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(1000)));
    assert_eq!(s.delivery_count().await, 1000);
    s.stop().await;
}
on_both_backends!(a_thousand_items_are_taken_and_more_or_a_body_too_large_is_refused_whole);
