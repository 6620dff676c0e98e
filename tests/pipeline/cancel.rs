//! Canceling: a delivery no provider has had becomes `canceled` and is never
//! sent; one a provider has (or had) stays as it is. On both backends, with
//! the real queue and dispatcher.

use serde_json::Map;
use tuma::clock::Clock;
use tuma::domain::DeliveryStatus;
use tuma::intake::{NotificationRequest, OtpRequest};
use tuma::queue::DeliveryJob;
use tuma::store::{AttemptStart, Canceled};

use crate::on_both_backends;
use crate::support::*;

fn otp(to: &str) -> OtpRequest {
    OtpRequest {
        to: to.into(),
        code: "482913".into(),
        channel: None,
        locale: None,
        ttl: None,
    }
}

async fn stored_code(t: &TestApp, id: &str) -> Option<String> {
    match &t.app.db {
        tuma::store::Db::Sqlite(pool) => {
            sqlx::query_scalar("SELECT otp_code FROM deliveries WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap()
        }
        tuma::store::Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT otp_code FROM deliveries WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap()
        }
    }
}

async fn a_delivery_canceled_between_enqueue_and_drain_is_never_sent(backend: Backend) {
    let clock = new_clock();
    let provider = Scripted::new(clock.clone(), vec![]);
    let t = TestApp::with(backend, 6, clock, &[("primary", provider.clone())]).await;
    let d = t.app.enqueue_otp(otp("+254711000001")).await.unwrap();
    let kept = t.app.enqueue_otp(otp("+254711000002")).await.unwrap();
    assert!(stored_code(&t, &d.row.id).await.is_some());

    let now = t.clock.now();
    assert_eq!(
        t.app
            .db
            .cancel_delivery(&d.row.id, "user ops", now)
            .await
            .unwrap(),
        Canceled::Done
    );
    assert_eq!(stored_code(&t, &d.row.id).await, None, "the code is wiped");
    t.drain().await;

    let calls = provider.calls();
    assert_eq!(calls.len(), 1, "only the other delivery was sent");
    assert_eq!(calls[0].delivery_id, kept.row.id);
    let canceled = t.delivery(&d.row.id).await;
    assert_eq!(canceled.status, DeliveryStatus::Canceled);
    assert_eq!(canceled.row.attempts, 0);
    assert_eq!(
        canceled.row.last_error.as_deref(),
        Some("canceled by user ops")
    );
    // Final: a second cancel is too late, and says why.
    assert_eq!(
        t.app
            .db
            .cancel_delivery(&d.row.id, "user ops", now)
            .await
            .unwrap(),
        Canceled::TooLate(DeliveryStatus::Canceled)
    );
    assert_eq!(
        t.app
            .db
            .cancel_delivery("no-such-id", "user ops", now)
            .await
            .unwrap(),
        Canceled::NotFound
    );
}
on_both_backends!(a_delivery_canceled_between_enqueue_and_drain_is_never_sent);

async fn a_delivery_a_provider_has_or_had_is_not_canceled(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let now = t.clock.now();
    // Sending: its attempt is open, as a worker leaves it during the call.
    let sending = t.app.enqueue_otp(otp("+254711000001")).await.unwrap();
    let job = DeliveryJob {
        delivery_id: sending.row.id.clone(),
        job_id: sending.row.job_id.clone().unwrap(),
    };
    assert_eq!(
        t.app
            .db
            .begin_attempts(&[AttemptStart::new(&job, "primary", "primary", now)])
            .await
            .unwrap(),
        vec![Some(1)]
    );
    assert_eq!(
        t.app
            .db
            .cancel_delivery(&sending.row.id, "user ops", now)
            .await
            .unwrap(),
        Canceled::TooLate(DeliveryStatus::Sending)
    );
    assert_eq!(
        t.delivery(&sending.row.id).await.status,
        DeliveryStatus::Sending
    );

    let sent = t
        .app
        .enqueue_notification(NotificationRequest {
            to: "amina@example.org".into(),
            template: "welcome".into(),
            locale: None,
            vars: Map::from_iter([("name".into(), "Amina".into())]),
            send_at: None,
            expires: None,
        })
        .await
        .unwrap();
    t.drain().await;
    assert_eq!(
        t.app
            .db
            .cancel_delivery(&sent.row.id, "user ops", now)
            .await
            .unwrap(),
        Canceled::TooLate(DeliveryStatus::Sent)
    );
    assert_eq!(t.delivery(&sent.row.id).await.status, DeliveryStatus::Sent);
}
on_both_backends!(a_delivery_a_provider_has_or_had_is_not_canceled);

async fn a_cancel_racing_the_dispatcher_either_wins_or_is_told_it_lost(backend: Backend) {
    let clock = new_clock();
    let provider = Scripted::new(clock.clone(), vec![]);
    let t = TestApp::with(backend, 6, clock, &[("primary", provider.clone())]).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let d = t
            .app
            .enqueue_otp(otp(&format!("+2547110000{n:02}")))
            .await
            .unwrap();
        ids.push(d.row.id);
    }
    let now = t.clock.now();
    let cancels = async {
        let mut answers = Vec::new();
        for id in &ids {
            answers.push(t.app.db.cancel_delivery(id, "user ops", now).await.unwrap());
            tokio::task::yield_now().await;
        }
        answers
    };
    let (answers, ()) = tokio::join!(cancels, t.drain());
    t.drain().await;
    let sent: Vec<String> = provider
        .calls()
        .into_iter()
        .map(|c| c.delivery_id)
        .collect();
    for (id, answer) in ids.iter().zip(answers) {
        let status = t.delivery(id).await.status;
        match answer {
            Canceled::Done => {
                assert_eq!(status, DeliveryStatus::Canceled);
                assert!(!sent.contains(id), "a canceled delivery was sent");
            }
            Canceled::TooLate(seen) => {
                assert!(
                    matches!(seen, DeliveryStatus::Sending | DeliveryStatus::Sent),
                    "{seen}"
                );
                assert_eq!(status, DeliveryStatus::Sent);
                assert_eq!(sent.iter().filter(|s| *s == id).count(), 1);
            }
            Canceled::NotFound => panic!("{id} vanished"),
        }
    }
}
on_both_backends!(a_cancel_racing_the_dispatcher_either_wins_or_is_told_it_lost);

async fn a_send_key_cancels_its_own_deliveries_and_only_ops_cancels_any(backend: Backend) {
    let s = spawn_app_with(backend, "").await;
    let mine = s.key("auth-service", &["send"]).await;
    let other = s.key("billing", &["send"]).await;
    let other_reader = s.key("billing-reader", &["send", "read"]).await;
    let reader = s.key("support", &["read"]).await;
    let ops = s.key("ops", &["ops"]).await;
    let later = (s.t.clock.now() + chrono::Duration::hours(3)).to_rfc3339();
    let schedule = |key: String| {
        let s = &s;
        let later = later.clone();
        async move {
            let r = s
                .post(
                    "/v1/notifications",
                    &key,
                    &serde_json::json!({"to": "+254711000001", "template": "welcome",
                        "vars": {"name": "Amina"}, "send_at": later}),
                )
                .await;
            assert_eq!(r.status(), 202);
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let cancel = |id: String, key: String| {
        let s = &s;
        async move {
            let r = s
                .client
                .post(s.url(&format!("/v1/deliveries/{id}/cancel")))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let first = schedule(mine.clone()).await;
    let second = schedule(mine.clone()).await;

    // Another send key: as for an id that does not exist.
    let (status, problem) = cancel(first.clone(), other.clone()).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (404, Some("https://tuma.dev/problems/not-found"))
    );
    // Another key that may read it: told it is not its own.
    let (status, problem) = cancel(first.clone(), other_reader).await;
    assert_eq!(status, 403);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("another API key"),
        "{problem}"
    );
    // A read-only key lacks the scope.
    let (status, problem) = cancel(first.clone(), reader).await;
    assert_eq!(status, 403);
    assert!(
        problem["detail"].as_str().unwrap().contains("`send`"),
        "{problem}"
    );
    let shown = s.t.app.db.delivery(&first).await.unwrap().unwrap();
    assert_eq!(shown.row.status, "pending");

    // The key that created it, and ops for any key's delivery.
    let (status, view) = cancel(first.clone(), mine.clone()).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("canceled")));
    let (status, view) = cancel(second.clone(), ops).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("canceled")));
    let (status, problem) = cancel(first, mine.clone()).await;
    assert_eq!(
        (status, problem["delivery_status"].as_str()),
        (409, Some("canceled"))
    );

    // A command-line send has no creating key: only ops may cancel it.
    let cli = s.t.app.enqueue_otp(otp("+254711000002")).await.unwrap();
    let (status, _) = cancel(cli.row.id.clone(), mine).await;
    assert_eq!(status, 404);
    s.stop().await;
}
on_both_backends!(a_send_key_cancels_its_own_deliveries_and_only_ops_cancels_any);

/// A pending notification to `to`, held for its budget as the spend guard holds it.
async fn held(s: &TestServer, key: &str, to: &str) -> String {
    let r = s
        .post(
            "/v1/notifications",
            key,
            &serde_json::json!({"to": to, "template": "welcome", "vars": {"name": "Amina"}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = s.t.delivery(&id).await.row.job_id.unwrap();
    let now = s.t.clock.now();
    assert!(
        s.t.app
            .db
            .hold_delivery(
                &id,
                &job,
                "KES/month",
                now + chrono::Duration::days(20),
                "held: budget KES/month reached",
                now,
            )
            .await
            .unwrap()
    );
    assert_eq!(s.t.delivery(&id).await.status, DeliveryStatus::Held);
    id
}

async fn a_held_delivery_is_canceled_over_http_and_from_the_command_line_and_never_sent(
    backend: Backend,
) {
    let s = spawn_app_with(backend, "").await;
    let key = s.key("shop", &["send"]).await;
    let over_http = held(&s, &key, "+254711000001").await;
    let r = s
        .client
        .post(s.url(&format!("/v1/deliveries/{over_http}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "canceled", "{body}");

    let from_cli = held(&s, &key, "+254711000002").await;
    let (config, _) = write_config(s.t.db.path(), 6);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuma"))
        .env("TUMA_CONFIG", &config)
        .env("DATABASE_URL", &s.t.db.url)
        .env("RUST_LOG", "warn")
        .env("USER", "amina-ops")
        .args(["deliveries", "cancel", &from_cli])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for id in [&over_http, &from_cli] {
        let d = s.t.delivery(id).await;
        assert_eq!(d.status, DeliveryStatus::Canceled, "{id}");
        assert_eq!(d.row.attempts, 0);
    }
    // Released or rolled over, the budget finds nothing held to send.
    let released =
        s.t.app
            .db
            .release_held(&Default::default(), true, 100, s.t.clock.now())
            .await
            .unwrap();
    assert!(released.is_empty(), "{released:?}");
    assert!(s.t.app.db.held_counts().await.unwrap().is_empty());
    s.stop().await;
}
on_both_backends!(a_held_delivery_is_canceled_over_http_and_from_the_command_line_and_never_sent);
