//! The suppression list: a permanent "no such recipient" from a provider
//! suppresses the recipient for that channel; later sends, OTPs too, are
//! refused at intake and write nothing; ops lift it; it lapses.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Map;
use tuma::app::App;
use tuma::clock::Clock;
use tuma::domain::DeliveryStatus;
use tuma::intake::{IntakeError, NotificationRequest, OtpRequest};
use tuma::providers::{Accepted, OutgoingMessage, Provider, Providers, SendError, unlimited};

use crate::on_both_backends;
use crate::support::*;

/// A scripted provider whose permanent errors are read against Twilio's
/// suppression codes, as the Twilio adapter reads its own.
#[derive(Debug)]
struct LikeTwilio(Arc<Scripted>);

#[async_trait]
impl Provider for LikeTwilio {
    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        self.0.send(message).await
    }

    fn dry_run(&self, message: &OutgoingMessage) -> String {
        self.0.dry_run(message)
    }

    fn recipient_gone(&self, code: Option<&str>, message: &str) -> Option<&'static str> {
        tuma::providers::twilio::recipient_gone(code, message)
    }
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

async fn app(
    backend: Backend,
    script: Vec<Result<Accepted, SendError>>,
) -> (TestApp, Arc<Scripted>) {
    let clock = new_clock();
    let db = TestDb::new(backend).await;
    let path = db.path().join("providers.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[suppression]\nexpire_after = \"30d\"\n",
            config_text(db.path(), 1)
        ),
    )
    .unwrap();
    let config = tuma::config::Config::load(&path).unwrap();
    let store = db.connect().await;
    let scripted = Scripted::new(clock.clone(), script);
    let mut providers = Providers::from_config(&config).unwrap();
    providers.insert(
        "primary",
        Arc::new(LikeTwilio(scripted.clone())),
        unlimited(),
        Duration::from_secs(2),
    );
    let app = Arc::new(App::with_parts(config, store, providers, clock.clone()).unwrap());
    (TestApp { app, clock, db }, scripted)
}

async fn a_number_a_provider_says_does_not_exist_is_refused_until_lifted_or_lapsed(
    backend: Backend,
) {
    let (t, provider) = app(
        backend,
        vec![Err(SendError::Permanent {
            code: Some("21211".into()),
            message: "the To number is not a valid phone number".into(),
        })],
    )
    .await;
    let dead = "+254711000001";
    let first = t.app.enqueue_notification(note(dead)).await.unwrap();
    t.drain().await;
    assert_eq!(
        t.delivery(&first.row.id).await.status,
        DeliveryStatus::Failed
    );

    let before = count(&t.app.db, "SELECT COUNT(*) FROM deliveries").await;
    let refused = t
        .app
        .enqueue_notification_from_api(note(dead), tuma::intake::ApiOrigin::default(), None)
        .await
        .unwrap_err();
    let IntakeError::Refused {
        rule,
        field,
        reason,
    } = refused
    else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!((rule, field), ("suppressed", "to"));
    assert!(
        reason.contains(&first.row.id),
        "names the delivery: {reason}"
    );
    assert!(reason.contains("not a valid phone number"), "{reason}");
    assert!(matches!(
        t.app
            .enqueue_otp_from_api(otp(dead), tuma::intake::ApiOrigin::default(), None)
            .await,
        Err(IntakeError::Refused {
            rule: "suppressed",
            ..
        })
    ));
    assert_eq!(
        count(&t.app.db, "SELECT COUNT(*) FROM deliveries").await,
        before,
        "nothing refused is written"
    );
    // Other recipients, and the same address on another channel, are sent.
    let other = t
        .app
        .enqueue_notification(note("+254711000002"))
        .await
        .unwrap();
    t.drain().await;
    assert_eq!(t.delivery(&other.row.id).await.status, DeliveryStatus::Sent);
    assert_eq!(provider.calls().len(), 2);

    // A CLI send is refused the same way, unless ops say they know better.
    assert!(matches!(
        t.app.enqueue_notification(note(dead)).await,
        Err(IntakeError::Refused {
            rule: "suppressed",
            ..
        })
    ));
    t.app
        .enqueue_notification_with(note(dead), tuma::intake::Suppressions::Ignore)
        .await
        .unwrap();
    // Ops lift it: taken again.
    assert_eq!(t.app.db.unsuppress(dead).await.unwrap(), 1);
    t.app
        .enqueue_notification_from_api(note(dead), tuma::intake::ApiOrigin::default(), None)
        .await
        .unwrap();

    // Suppressed again by a new failure; 30 days later it has lapsed, and the
    // sweeper deletes it.
    let now = t.clock.now();
    t.app
        .db
        .suppress(&tuma::store::Suppression {
            channel: "sms".into(),
            recipient: dead.into(),
            reason: "the recipient replied STOP (Twilio 21610)".into(),
            delivery_id: first.row.id.clone(),
            provider: "primary".into(),
            error_code: Some("21610".into()),
            created_at: now,
        })
        .await
        .unwrap();
    assert!(
        t.app
            .enqueue_otp_from_api(otp(dead), tuma::intake::ApiOrigin::default(), None)
            .await
            .is_err()
    );
    t.clock.advance(Duration::from_secs(29 * 24 * 3600));
    assert!(
        t.app
            .enqueue_otp_from_api(otp(dead), tuma::intake::ApiOrigin::default(), None)
            .await
            .is_err(),
        "still in force"
    );
    t.clock.advance(Duration::from_secs(24 * 3600 + 1));
    t.app
        .enqueue_otp_from_api(otp(dead), tuma::intake::ApiOrigin::default(), None)
        .await
        .unwrap();
    tuma::sweeper::sweep(&t.app).await.unwrap();
    assert_eq!(
        count(&t.app.db, "SELECT COUNT(*) FROM suppressions").await,
        0
    );
}
on_both_backends!(a_number_a_provider_says_does_not_exist_is_refused_until_lifted_or_lapsed);

async fn an_ordinary_permanent_error_suppresses_nothing(backend: Backend) {
    let (t, _) = app(
        backend,
        vec![Err(SendError::Permanent {
            code: Some("21408".into()),
            message: "sending to this region is not enabled".into(),
        })],
    )
    .await;
    let first = t
        .app
        .enqueue_notification(note("+254711000001"))
        .await
        .unwrap();
    t.drain().await;
    assert_eq!(
        t.delivery(&first.row.id).await.status,
        DeliveryStatus::Failed
    );
    assert_eq!(
        count(&t.app.db, "SELECT COUNT(*) FROM suppressions").await,
        0
    );
    t.app
        .enqueue_notification_from_api(
            note("+254711000001"),
            tuma::intake::ApiOrigin::default(),
            None,
        )
        .await
        .unwrap();
}
on_both_backends!(an_ordinary_permanent_error_suppresses_nothing);

async fn the_api_refuses_a_suppressed_recipient_with_422_and_the_rule(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("sender", &["send"]).await;
    s.t.app
        .db
        .suppress(&tuma::store::Suppression {
            channel: "sms".into(),
            recipient: "+254711000001".into(),
            reason: "the number does not exist (InvalidPhoneNumber)".into(),
            delivery_id: "0193-earlier".into(),
            provider: "primary".into(),
            error_code: Some("403".into()),
            created_at: s.t.clock.now(),
        })
        .await
        .unwrap();
    let r = s
        .post(
            "/v1/otp",
            &key,
            &serde_json::json!({"to": "+254711000001", "code": "482913"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "suppressed");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("0193-earlier") && detail.contains("InvalidPhoneNumber"),
        "{detail}"
    );
    assert!(!body.to_string().contains("482913"));
    assert_eq!(s.delivery_count().await, 0);
    s.stop().await;
}
on_both_backends!(the_api_refuses_a_suppressed_recipient_with_422_and_the_rule);

async fn cli_sends_to_a_suppressed_recipient_are_refused_unless_ops_ignore_the_list(
    backend: Backend,
) {
    let t = TestApp::new(backend, 6).await;
    let cause = t
        .app
        .enqueue_notification(note("+254711000009"))
        .await
        .unwrap();
    t.app
        .db
        .suppress(&tuma::store::Suppression {
            channel: "sms".into(),
            recipient: "+254711000001".into(),
            reason: "the recipient replied STOP (Twilio 21610)".into(),
            delivery_id: cause.row.id.clone(),
            provider: "primary".into(),
            error_code: Some("21610".into()),
            created_at: t.clock.now(),
        })
        .await
        .unwrap();
    let tuma = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tuma"))
            .args(args)
            .env("TUMA_CONFIG", t.db.path().join("providers.toml"))
            .env("DATABASE_URL", &t.db.url)
            .output()
            .unwrap()
    };
    let deliveries = || async { count(&t.app.db, "SELECT COUNT(*) FROM deliveries").await };
    for args in [
        &["send", "otp", "--to", "0711000001", "--code", "482913"][..],
        &[
            "send",
            "notification",
            "--to",
            "+254711000001",
            "--template",
            "welcome",
            "--var",
            "name=Amina",
        ][..],
    ] {
        let out = tuma(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The API's reason: the rule, why, and the delivery that caused it.
        for part in [
            "refused by rule suppressed",
            "replied STOP",
            cause.row.id.as_str(),
            "21610",
            "--ignore-suppression",
        ] {
            assert!(stderr.contains(part), "{part} in {stderr}");
        }
        assert!(!stderr.contains("482913"), "{stderr}");
    }
    assert_eq!(deliveries().await, 1, "nothing written");

    let out = tuma(&[
        "send",
        "otp",
        "--to",
        "+254711000001",
        "--code",
        "482913",
        "--ignore-suppression",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(t.delivery(&id).await.status, DeliveryStatus::Pending);

    let csv = t.db.path().join("people.csv");
    std::fs::write(
        &csv,
        "to,name\n+254711000002,Amina\n+254711000001,Baraka\n+254711000003,Chebet\n",
    )
    .unwrap();
    let csv = csv.to_str().unwrap();
    let send_csv = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "notification",
            "--csv",
            csv,
            "--template",
            "welcome",
        ];
        args.extend_from_slice(extra);
        tuma(&args)
    };
    let out = send_csv(&[]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("accepted 2, refused 1 (1 suppressed;"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3: refused: to: refused by rule suppressed")
            && stderr.contains(cause.row.id.as_str()),
        "{stderr}"
    );
    assert_eq!(deliveries().await, 4);
    let out = send_csv(&["--ignore-suppression"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("accepted 3, refused 0, already sent 0 in"),
        "{stdout}"
    );
    assert_eq!(deliveries().await, 7);
}
on_both_backends!(cli_sends_to_a_suppressed_recipient_are_refused_unless_ops_ignore_the_list);
