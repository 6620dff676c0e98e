//! A delivery's life through the real queue and database: sent, retried with
//! backoff, failed over, failed, expired; and the OTP code kept secret.

use std::time::Duration;

use serde_json::Map;
use tuma::domain::DeliveryStatus;
use tuma::intake::{IntakeError, NotificationRequest, OtpRequest};

use crate::on_both_backends;
use crate::support::*;

fn otp(to: &str, code: &str) -> OtpRequest {
    OtpRequest {
        to: to.into(),
        code: code.into(),
        channel: None,
        locale: None,
        ttl: None,
    }
}

async fn an_otp_is_written_to_the_outbox_and_recorded_as_sent(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let sms = t
        .app
        .enqueue_otp(otp("0711 000 001", "482913"))
        .await
        .unwrap();
    let mut email_req = otp("Amina@Example.ORG", "482913");
    email_req.locale = Some("sw".into());
    let email = t.app.enqueue_otp(email_req).await.unwrap();
    assert_eq!(sms.status, DeliveryStatus::Pending);
    assert_eq!(sms.row.recipient, "+254711000001");

    t.drain().await;

    let sms = t.delivery(&sms.row.id).await;
    assert_eq!(sms.status, DeliveryStatus::Sent);
    assert_eq!(sms.row.provider.as_deref(), Some("primary"));
    assert_eq!(
        sms.row.provider_message_id.as_deref(),
        Some(format!("{}.json", sms.row.id).as_str())
    );
    assert_eq!(sms.row.segments, Some(1));
    assert_eq!(sms.row.encoding.as_deref(), Some("gsm7"));
    assert!(sms.row.sent_at.is_some());
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            t.db.path()
                .join("outbox")
                .join(format!("{}.json", sms.row.id)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(file["to"], "+254711000001");
    assert_eq!(
        file["text"],
        "482913 is your tuma verification code. It expires in 5 minutes. Never share it."
    );
    assert_eq!(
        sms.row.body,
        "****** is your tuma verification code. It expires in 5 minutes. Never share it."
    );
    let attempts = t.app.db.attempts(&sms.row.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.map(|o| o.as_str()), Some("accepted"));
    assert_eq!(attempts[0].provider, "primary");
    assert!(attempts[0].finished_at.is_some());

    let email = t.delivery(&email.row.id).await;
    assert_eq!(email.status, DeliveryStatus::Sent);
    assert_eq!(email.row.recipient, "amina@example.org");
    let eml = std::fs::read_to_string(
        t.db.path()
            .join("outbox")
            .join(format!("{}.eml", email.row.id)),
    )
    .unwrap();
    assert!(
        eml.contains(&format!("Message-ID: <{}@localhost>", email.row.id)),
        "{eml}"
    );
    assert!(
        eml.contains("Subject: Nambari yako ya uthibitisho ya tuma"),
        "{eml}"
    );
    assert!(
        eml.contains("text/plain") && eml.contains("text/html"),
        "{eml}"
    );
    assert!(eml.contains("482913"));

    // History lives in tuma's tables; no claim outlives its send.
    assert_eq!(leased_rows(&t.app.db).await, 0);
}
on_both_backends!(an_otp_is_written_to_the_outbox_and_recorded_as_sent);

async fn a_transient_error_is_retried_after_the_backoff_delay(backend: Backend) {
    let clock = new_clock();
    let provider = Scripted::new(clock.clone(), vec![transient("gateway busy")]);
    let scripted = [("primary", provider.clone()), ("backup", provider.clone())];
    let t = TestApp::with(backend, 6, clock, &scripted).await;

    let d = t
        .app
        .enqueue_otp(otp("+254711000001", "112233"))
        .await
        .unwrap();
    t.drain().await;

    let after_one = t.delivery(&d.row.id).await;
    assert_eq!(after_one.status, DeliveryStatus::Pending);
    assert_eq!(after_one.row.attempts, 1);
    assert_eq!(after_one.row.last_error.as_deref(), Some("gateway busy"));
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    assert_eq!(attempts[0].outcome.map(|o| o.as_str()), Some("transient"));
    assert_eq!(attempts[0].error_code.as_deref(), Some("500"));
    let failed_at = attempts[0].finished_at.unwrap();
    assert_eq!(
        after_one.row.next_attempt_at,
        Some(failed_at + chrono::Duration::seconds(2))
    );

    // Not due yet: a drain now leaves it alone.
    t.advance(Duration::from_secs(1)).await;
    t.drain().await;
    assert_eq!(provider.calls().len(), 1);

    t.advance(Duration::from_secs(1)).await;
    t.drain().await;
    let sent = t.delivery(&d.row.id).await;
    assert_eq!(sent.status, DeliveryStatus::Sent);
    assert_eq!(sent.row.attempts, 2);
    let calls = provider.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls[1].at - failed_at >= chrono::Duration::seconds(2));
    assert_eq!(calls[1].delivery_id, d.row.id);
    assert!(
        calls[1].text.starts_with("112233 is your tuma"),
        "the retry carries the code"
    );
    // The retry went to the route's next provider.
    assert_eq!(sent.row.provider.as_deref(), Some("backup"));
    assert_eq!(leased_rows(&t.app.db).await, 0);
}
on_both_backends!(a_transient_error_is_retried_after_the_backoff_delay);

async fn a_transient_error_fails_over_to_the_next_provider(backend: Backend) {
    let clock = new_clock();
    let primary = Scripted::new(clock.clone(), vec![transient("HTTP 503")]);
    let backup = Scripted::new(clock.clone(), vec![accepted("SMbackup")]);
    let t = TestApp::with(
        backend,
        6,
        clock,
        &[("primary", primary.clone()), ("backup", backup.clone())],
    )
    .await;

    let d = t
        .app
        .enqueue_otp(otp("+254711000002", "909090"))
        .await
        .unwrap();
    t.drain().await;
    t.advance(Duration::from_secs(2)).await;
    t.drain().await;

    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Sent);
    assert_eq!(d.row.provider.as_deref(), Some("backup"));
    assert_eq!(d.row.provider_message_id.as_deref(), Some("SMbackup"));
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    let who: Vec<(&str, Option<&str>)> = attempts
        .iter()
        .map(|a| (a.provider.as_str(), a.outcome.map(|o| o.as_str())))
        .collect();
    assert_eq!(
        who,
        vec![("primary", Some("transient")), ("backup", Some("accepted"))]
    );
    assert_eq!(primary.calls().len(), 1);
    assert_eq!(backup.calls().len(), 1);
}
on_both_backends!(a_transient_error_fails_over_to_the_next_provider);

async fn a_permanent_error_fails_after_one_attempt(backend: Backend) {
    let clock = new_clock();
    let primary = Scripted::new(
        clock.clone(),
        vec![permanent("The 'To' number is not a valid phone number.")],
    );
    let t = TestApp::with(backend, 6, clock, &[("primary", primary.clone())]).await;

    let d = t
        .app
        .enqueue_otp(otp("+254711000003", "445566"))
        .await
        .unwrap();
    t.drain().await;
    t.advance(Duration::from_secs(120)).await;
    t.drain().await;

    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Failed);
    assert_eq!(d.row.attempts, 1);
    assert_eq!(
        d.row.last_error.as_deref(),
        Some("The 'To' number is not a valid phone number.")
    );
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.map(|o| o.as_str()), Some("permanent"));
    assert_eq!(attempts[0].error_code.as_deref(), Some("21211"));
    assert_eq!(primary.calls().len(), 1);
}
on_both_backends!(a_permanent_error_fails_after_one_attempt);

async fn transient_errors_fail_the_delivery_once_attempts_run_out(backend: Backend) {
    let clock = new_clock();
    let always_down = Scripted::new(
        clock.clone(),
        (0..10).map(|_| transient("HTTP 500")).collect(),
    );
    let t = TestApp::with(
        backend,
        3,
        clock,
        &[
            ("primary", always_down.clone()),
            ("backup", always_down.clone()),
        ],
    )
    .await;

    let d = t
        .app
        .enqueue_notification(NotificationRequest {
            to: "+254711000004".into(),
            template: "welcome".into(),
            locale: None,
            vars: Map::from_iter([("name".to_owned(), serde_json::json!("Amina"))]),
            send_at: None,
            expires: None,
        })
        .await
        .unwrap();
    // Delays: 2 s after attempt 1, 4 s after attempt 2.
    for wait in [0, 2, 4] {
        t.advance(Duration::from_secs(wait)).await;
        t.drain().await;
    }
    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Failed);
    assert_eq!(d.row.attempts, 3);
    assert_eq!(
        d.row.last_error.as_deref(),
        Some("gave up after 3 attempts; last error: HTTP 500")
    );
    assert_eq!(always_down.calls().len(), 3);
    assert_eq!(leased_rows(&t.app.db).await, 0);
}
on_both_backends!(transient_errors_fail_the_delivery_once_attempts_run_out);

async fn an_otp_past_its_ttl_expires_without_a_provider_call(backend: Backend) {
    let clock = new_clock();
    let primary = Scripted::new(clock.clone(), vec![]);
    let t = TestApp::with(backend, 6, clock, &[("primary", primary.clone())]).await;

    let mut req = otp("+254711000005", "717171");
    req.ttl = Some(Duration::from_secs(30));
    let d = t.app.enqueue_otp(req).await.unwrap();
    t.advance(Duration::from_secs(31)).await;
    t.drain().await;

    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Expired);
    assert_eq!(d.row.attempts, 0);
    assert!(t.app.db.attempts(&d.row.id).await.unwrap().is_empty());
    assert!(primary.calls().is_empty());
    assert!(!all_database_text(&t.app.db).await.contains("717171"));
}
on_both_backends!(an_otp_past_its_ttl_expires_without_a_provider_call);

async fn the_code_is_nowhere_in_the_database_once_deliveries_are_terminal(backend: Backend) {
    let clock = new_clock();
    // One delivery is sent, one fails permanently, one expires.
    let primary = Scripted::new(
        clock.clone(),
        vec![accepted("ok"), permanent("blacklisted")],
    );
    let t = TestApp::with(backend, 6, clock, &[("primary", primary.clone())]).await;

    let code = "583920";
    let sent = t.app.enqueue_otp(otp("+254711000006", code)).await.unwrap();
    t.drain().await;
    let failed = t.app.enqueue_otp(otp("+254711000007", code)).await.unwrap();
    t.drain().await;
    let mut short = otp("+254711000008", code);
    short.ttl = Some(Duration::from_secs(30));
    let expired = t.app.enqueue_otp(short).await.unwrap();
    // While it can still be sent, the code is stored (so a restart can send
    // it), sealed: readable with the key only.
    let stored = t
        .app
        .batcher
        .delivery_to_send(tuma::queue::Lane::Otp, &expired.row.id)
        .await
        .unwrap();
    let sealed = stored.unwrap().1.expect("the code is kept while pending");
    let opened = t.app.otp_keys.open(&expired.row.id, &sealed).unwrap();
    assert_eq!(opened.expose(), code);
    assert!(!all_database_text(&t.app.db).await.contains(code));
    t.advance(Duration::from_secs(31)).await;
    t.drain().await;

    for (id, status) in [
        (&sent.row.id, DeliveryStatus::Sent),
        (&failed.row.id, DeliveryStatus::Failed),
        (&expired.row.id, DeliveryStatus::Expired),
    ] {
        assert_eq!(t.delivery(id).await.status, status);
    }
    let text = all_database_text(&t.app.db).await;
    assert!(text.contains("****** is your tuma verification code"));
    assert!(!text.contains(code), "the code is still in the database");

    if let tuma::store::Db::Sqlite(pool) = &t.app.db {
        // Not even in the file's free pages or the write-ahead log.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(pool)
            .await
            .unwrap();
        let bytes = std::fs::read(t.db.path().join("tuma.db")).unwrap();
        let found = bytes.windows(code.len()).any(|w| w == code.as_bytes());
        assert!(!found, "the code is still in the SQLite file");
    }
}
on_both_backends!(the_code_is_nowhere_in_the_database_once_deliveries_are_terminal);

async fn bad_requests_are_refused_with_the_field_and_nothing_is_written(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let cases: Vec<(OtpRequest, &str, &str)> = vec![
        (otp("0711 000", "123456"), "to", "not a valid phone number"),
        (otp("+254711000001", "12ab56"), "code", "digits"),
        (otp("+254711000001", "123"), "code", "4 to 10 digits"),
        (otp("amina@", "123456"), "to", ""),
        (
            OtpRequest {
                locale: Some("fr".into()),
                ..otp("+254711000001", "123456")
            },
            "locale",
            "no locale `fr`",
        ),
        (
            OtpRequest {
                ttl: Some(Duration::from_secs(5)),
                ..otp("+254711000001", "123456")
            },
            "ttl",
            "out of range",
        ),
        (
            OtpRequest {
                channel: Some(tuma::domain::Channel::Email),
                ..otp("+254711000001", "123456")
            },
            "channel",
            "reached by sms",
        ),
    ];
    for (req, field, reason) in cases {
        match t.app.enqueue_otp(req.clone()).await {
            Err(IntakeError::Invalid {
                field: f,
                reason: r,
            }) => {
                assert_eq!(f, field, "{req:?}: {r}");
                assert!(r.contains(reason), "{req:?}: `{r}` should say `{reason}`");
                assert!(
                    !r.contains(&req.code) || req.code.len() < 4,
                    "the error repeats the code: {r}"
                );
            }
            other => panic!("{req:?} should be refused, got {other:?}"),
        }
    }
    let note = |template: &str, vars: &[(&str, &str)]| NotificationRequest {
        to: "+254711000001".into(),
        template: template.into(),
        locale: None,
        vars: vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect(),
        send_at: None,
        expires: None,
    };
    for (req, field, reason) in [
        (
            note("invoice", &[]),
            "template",
            "unknown template `invoice`",
        ),
        (note("welcome", &[]), "template", "needs variable `name`"),
        (note("otp", &[("code", "123456")]), "template", "send otp"),
    ] {
        match t.app.enqueue_notification(req).await {
            Err(IntakeError::Invalid {
                field: f,
                reason: r,
            }) => {
                assert_eq!(f, field, "{r}");
                assert!(r.contains(reason), "`{r}` should say `{reason}`");
            }
            other => panic!("should be refused, got {other:?}"),
        }
    }
    let none = t
        .app
        .db
        .list_deliveries(&tuma::store::ListFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(leased_rows(&t.app.db).await, 0);
}
on_both_backends!(bad_requests_are_refused_with_the_field_and_nothing_is_written);

async fn costs_are_the_providers_when_given_else_estimated_from_the_price_table(backend: Backend) {
    let clock = new_clock();
    let with_cost = Ok(tuma::providers::Accepted {
        provider_message_id: "ATXid_1".into(),
        provider_status: Some("Success".into()),
        cost: Some(tuma::domain::money::Money::parse("0.8000", "KES").unwrap()),
        segments: None,
        part_ids: Vec::new(),
    });
    let primary = Scripted::new(clock.clone(), vec![with_cost, accepted("SM2")]);
    let t = TestApp::with(backend, 6, clock, &[("primary", primary.clone())]).await;

    let actual = t
        .app
        .enqueue_otp(otp("+254711000020", "123456"))
        .await
        .unwrap();
    t.drain().await;
    let long_text = "Habari Amina, ".repeat(12); // 168 GSM-7 characters: two segments
    let estimated = t
        .app
        .enqueue_notification(NotificationRequest {
            to: "+254711000021".into(),
            template: "welcome".into(),
            locale: None,
            vars: Map::from_iter([("name".to_owned(), serde_json::json!(long_text))]),
            send_at: None,
            expires: None,
        })
        .await
        .unwrap();
    assert_eq!(estimated.row.segments, Some(2));
    t.drain().await;

    let actual = t.delivery(&actual.row.id).await;
    assert_eq!(actual.cost.unwrap().micros, 800_000);
    assert_eq!(actual.row.cost_is_estimate, Some(false));
    let estimated = t.delivery(&estimated.row.id).await;
    let cost = estimated.cost.unwrap();
    assert_eq!((cost.micros, cost.currency.as_str()), (1_600_000, "KES"));
    assert_eq!(estimated.row.cost_is_estimate, Some(true));
    let attempts = t.app.db.attempts(&estimated.row.id).await.unwrap();
    assert_eq!(attempts[0].cost_micros, Some(1_600_000));
    assert_eq!(attempts[0].segments, Some(2));
}
on_both_backends!(costs_are_the_providers_when_given_else_estimated_from_the_price_table);

async fn a_provider_failing_again_and_again_is_skipped_while_its_circuit_is_open(backend: Backend) {
    let clock = new_clock();
    let primary = Scripted::new(
        clock.clone(),
        vec![transient("HTTP 503"), transient("HTTP 503")],
    );
    let backup = Scripted::new(clock.clone(), vec![]);
    let scripted = [("primary", primary.clone()), ("backup", backup.clone())];
    let t = TestApp::with(backend, 6, clock, &scripted).await;

    // Two transient failures in a row (the configured threshold) open primary's circuit.
    for to in ["+254711000030", "+254711000031"] {
        t.app.enqueue_otp(otp(to, "123456")).await.unwrap();
        t.drain().await;
    }
    assert_eq!(primary.calls().len(), 2);
    let third = t
        .app
        .enqueue_otp(otp("+254711000032", "123456"))
        .await
        .unwrap();
    t.drain().await;

    assert_eq!(primary.calls().len(), 2, "primary was skipped");
    let third = t.delivery(&third.row.id).await;
    assert_eq!(third.status, DeliveryStatus::Sent);
    assert_eq!(third.row.provider.as_deref(), Some("backup"));
    let attempts = t.app.db.attempts(&third.row.id).await.unwrap();
    assert_eq!(
        attempts[0].reason.as_deref(),
        Some("attempt 1; skipped primary (circuit open)")
    );
}
on_both_backends!(a_provider_failing_again_and_again_is_skipped_while_its_circuit_is_open);
