//! Replay: each rule, a replay's life through the real queue, the concurrent
//! double replay, 1,000 failures in one command, and finding failures.

use std::process::Command;

use serde_json::{Map, Value};
use tuma::clock::Clock;
use tuma::domain::{Channel, DeliveryKind, DeliveryStatus};
use tuma::intake::{NotificationRequest, OtpRequest};
use tuma::replay::{RefusalReason, ReplayFilter, ReplayRules};
use tuma::store::{ListFilter, NewDelivery, Outcome, ReplayLink};

use crate::on_both_backends;
use crate::support::*;

fn welcome(to: &str) -> NotificationRequest {
    let mut vars = Map::new();
    vars.insert("name".into(), Value::from("Amina"));
    NotificationRequest {
        to: to.into(),
        template: "welcome".into(),
        locale: None,
        vars,
        send_at: None,
        expires: None,
    }
}

/// An app whose providers fail once with `first`, then accept; one attempt each.
async fn app_failing_once(
    backend: Backend,
    first: Result<tuma::providers::Accepted, tuma::providers::SendError>,
) -> (TestApp, std::sync::Arc<Scripted>) {
    let clock = new_clock();
    let provider = Scripted::new(clock.clone(), vec![first]);
    let scripted = [("primary", provider.clone()), ("backup", provider.clone())];
    (TestApp::with(backend, 1, clock, &scripted).await, provider)
}

fn reasons(report: &tuma::replay::ReplayReport) -> Vec<RefusalReason> {
    report.refused.iter().map(|r| r.reason).collect()
}

async fn a_failed_notification_is_replayed_as_a_new_delivery_linked_to_the_original(
    backend: Backend,
) {
    let (t, provider) = app_failing_once(backend, transient("gateway busy")).await;
    let original = t
        .app
        .enqueue_notification(welcome("+254711000001"))
        .await
        .unwrap();
    t.drain().await;
    assert_eq!(
        t.delivery(&original.row.id).await.status,
        DeliveryStatus::Failed
    );

    let report = t
        .app
        .replay_delivery(&original.row.id, "amina-ops", ReplayRules::default(), false)
        .await
        .unwrap();
    assert!(report.refused.is_empty(), "{report:?}");
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(report.replayed[0].original, original.row.id);
    let replay_id = report.replayed[0].replay.clone();
    assert_ne!(replay_id, original.row.id);

    let replay = t.delivery(&replay_id).await;
    assert_eq!(replay.status, DeliveryStatus::Pending);
    assert_eq!(replay.row.attempts, 0);
    assert_eq!(
        replay.row.body, original.row.body,
        "rendered again from the same template and vars"
    );
    assert_eq!(replay.row.recipient, "+254711000001");
    let origin = t.app.db.replay_origin(&replay_id).await.unwrap().unwrap();
    assert_eq!(origin.replay_of, original.row.id);
    assert_eq!(origin.replayed_by.as_deref(), Some("amina-ops"));
    assert_eq!(origin.replayed_at, Some(t.clock.now()));

    t.drain().await;
    let replay = t.delivery(&replay_id).await;
    assert_eq!(replay.status, DeliveryStatus::Sent);
    assert_eq!(t.app.db.attempts(&replay_id).await.unwrap().len(), 1);
    assert_eq!(provider.calls().len(), 2);
    assert_eq!(provider.calls()[1].delivery_id, replay_id);

    // The original keeps its history and shows its replay.
    let after = t.delivery(&original.row.id).await;
    assert_eq!(after.status, DeliveryStatus::Failed);
    assert_eq!(after.row.attempts, 1);
    let attempts = t.app.db.attempts(&original.row.id).await.unwrap();
    assert_eq!(attempts[0].outcome.map(|o| o.as_str()), Some("transient"));
    let replays = t.app.db.replays_of(&original.row.id).await.unwrap();
    assert_eq!(replays.len(), 1);
    assert_eq!(
        (replays[0].id.as_str(), replays[0].status.as_str()),
        (replay_id.as_str(), "sent")
    );

    // Replayed once it went through, never again; nor is the sent replay.
    let again = t
        .app
        .replay_delivery(&original.row.id, "amina-ops", ReplayRules::default(), false)
        .await
        .unwrap();
    assert_eq!(reasons(&again), [RefusalReason::AlreadyReplayed]);
    assert_eq!(
        again.refused[0].message,
        format!("already replayed as {replay_id} (status sent)")
    );
    let of_replay = t
        .app
        .replay_delivery(&replay_id, "amina-ops", ReplayRules::default(), false)
        .await
        .unwrap();
    assert_eq!(reasons(&of_replay), [RefusalReason::NotReplayableStatus]);
}
on_both_backends!(a_failed_notification_is_replayed_as_a_new_delivery_linked_to_the_original);

async fn sent_delivered_and_unfinished_deliveries_are_refused(backend: Backend) {
    let t = TestApp::new(backend, 3).await;
    let sent = seed(
        &t.app.db,
        Seed::notification(
            "2026-11-01T00:00:00Z",
            "+254711000001",
            "primary",
            SeedEnd::Sent(None),
        ),
    )
    .await;
    let delivered = seed(
        &t.app.db,
        Seed::notification(
            "2026-11-01T00:00:00Z",
            "+254711000002",
            "primary",
            SeedEnd::Delivered(None),
        ),
    )
    .await;
    let pending = t
        .app
        .enqueue_notification(welcome("+254711000003"))
        .await
        .unwrap()
        .row
        .id;
    let undelivered = seed(
        &t.app.db,
        Seed::notification(
            "2026-11-01T00:00:00Z",
            "+254711000004",
            "primary",
            SeedEnd::Undelivered(None),
        ),
    )
    .await;
    let ids = [
        sent.clone(),
        delivered.clone(),
        pending.clone(),
        "no-such-id".to_owned(),
        undelivered.clone(),
    ];
    let plan = t.app.plan_replay(&ids, ReplayRules::FORCE).await.unwrap();
    let refused: Vec<(&str, RefusalReason, &str)> = plan
        .refused
        .iter()
        .map(|r| (r.id.as_str(), r.reason, r.message.as_str()))
        .collect();
    let twice = "a provider already accepted it; replaying would send it twice; only failed, undelivered or expired deliveries are replayed";
    assert_eq!(
        refused,
        [
            (
                sent.as_str(),
                RefusalReason::NotReplayableStatus,
                format!("status sent: {twice}").as_str()
            ),
            (
                delivered.as_str(),
                RefusalReason::NotReplayableStatus,
                format!("status delivered: {twice}").as_str()
            ),
            (
                pending.as_str(),
                RefusalReason::NotReplayableStatus,
                "status pending: it is still being delivered; only failed, undelivered or expired deliveries are replayed"
            ),
            (
                "no-such-id",
                RefusalReason::NotFound,
                "no delivery has this id"
            ),
        ]
    );
    // An undelivered one (a receipt said it did not arrive) is replayable.
    assert_eq!(plan.replayable.len(), 1);
    assert_eq!(plan.replayable[0].id, undelivered);
}
on_both_backends!(sent_delivered_and_unfinished_deliveries_are_refused);

async fn an_otp_is_refused_because_the_auth_service_must_issue_a_new_code(backend: Backend) {
    let (t, _) = app_failing_once(backend, permanent("invalid number")).await;
    // Failed within its TTL: the code was wiped when it failed.
    let failed = t
        .app
        .enqueue_otp(OtpRequest {
            to: "+254711000001".into(),
            code: "482913".into(),
            channel: None,
            locale: None,
            ttl: None,
        })
        .await
        .unwrap();
    t.drain().await;
    assert_eq!(
        t.delivery(&failed.row.id).await.status,
        DeliveryStatus::Failed
    );
    // Expired: its TTL passed before a send.
    let created = (t.clock.now() - chrono::Duration::hours(1)).to_rfc3339();
    let expired = seed(
        &t.app.db,
        Seed {
            kind: DeliveryKind::Otp,
            template: "otp",
            ..Seed::notification(&created, "+254711000002", "primary", SeedEnd::Expired)
        },
    )
    .await;

    let report = t
        .app
        .replay_delivery(&failed.row.id, "ops", ReplayRules::FORCE, false)
        .await
        .unwrap();
    assert!(report.replayed.is_empty());
    assert_eq!(reasons(&report), [RefusalReason::OtpCodeGone]);
    assert_eq!(
        report.refused[0].message,
        "the code is no longer stored; the auth service must issue a new one"
    );

    let report = t
        .app
        .replay_delivery(&expired, "ops", ReplayRules::FORCE, false)
        .await
        .unwrap();
    assert_eq!(reasons(&report), [RefusalReason::OtpExpired]);
    assert!(
        report.refused[0]
            .message
            .ends_with("a stale code is useless: the auth service must issue a new one"),
        "{}",
        report.refused[0].message
    );
    assert!(t.app.db.replays_of(&expired).await.unwrap().is_empty());
}
on_both_backends!(an_otp_is_refused_because_the_auth_service_must_issue_a_new_code);

async fn a_permanent_failure_is_refused_unless_forced(backend: Backend) {
    let (t, _) = app_failing_once(backend, permanent("invalid number")).await;
    let d = t
        .app
        .enqueue_notification(welcome("+254711000001"))
        .await
        .unwrap();
    t.drain().await;

    let refused = t
        .app
        .replay_delivery(&d.row.id, "ops", ReplayRules::default(), false)
        .await
        .unwrap();
    assert_eq!(reasons(&refused), [RefusalReason::PermanentError]);
    assert_eq!(
        refused.refused[0].message,
        "the last attempt failed permanently (21211: invalid number) and would fail again; force to replay anyway"
    );
    assert!(t.app.db.replays_of(&d.row.id).await.unwrap().is_empty());

    let forced = t
        .app
        .replay_delivery(&d.row.id, "ops", ReplayRules::FORCE, false)
        .await
        .unwrap();
    assert_eq!(forced.replayed.len(), 1);
    assert!(forced.refused.is_empty());
}
on_both_backends!(a_permanent_failure_is_refused_unless_forced);

async fn a_dry_run_shows_the_plan_and_writes_nothing(backend: Backend) {
    let t = TestApp::new(backend, 3).await;
    let failed = seed(
        &t.app.db,
        Seed::notification(
            "2026-11-01T00:00:00Z",
            "+254711000001",
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    let report = t
        .app
        .replay_matching(&ReplayFilter::default(), "ops", true)
        .await
        .unwrap();
    assert!(report.dry_run);
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(
        (
            report.replayed[0].original.as_str(),
            report.replayed[0].replay.as_str()
        ),
        (failed.as_str(), "")
    );
    assert!(t.app.db.replays_of(&failed).await.unwrap().is_empty());
}
on_both_backends!(a_dry_run_shows_the_plan_and_writes_nothing);

async fn replaying_the_same_delivery_twice_at_once_replays_it_once(backend: Backend) {
    let t = TestApp::new(backend, 3).await;
    for i in 0..5 {
        let to = format!("+25471100000{i}");
        let id = seed(
            &t.app.db,
            Seed::notification(
                "2026-11-01T00:00:00Z",
                &to,
                "primary",
                SeedEnd::Failed(Outcome::Transient, Some("500")),
            ),
        )
        .await;
        let (a, b) = tokio::join!(
            t.app
                .replay_delivery(&id, "amina", ReplayRules::default(), false),
            t.app
                .replay_delivery(&id, "baraka", ReplayRules::default(), false)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.replayed.len() + b.replayed.len(), 1, "{a:?} {b:?}");
        let mut refused = reasons(&a);
        refused.extend(reasons(&b));
        assert_eq!(refused, [RefusalReason::AlreadyReplayed]);
        assert_eq!(t.app.db.replays_of(&id).await.unwrap().len(), 1);
    }

    // The database itself refuses a second live replay, whatever the caller checked.
    let id = seed(
        &t.app.db,
        Seed::notification(
            "2026-11-01T00:00:00Z",
            "+254711000009",
            "primary",
            SeedEnd::Failed(Outcome::Transient, None),
        ),
    )
    .await;
    let replay = |n: &str| NewDelivery {
        id: uuid::Uuid::now_v7().to_string(),
        kind: DeliveryKind::Notification,
        channel: Channel::Sms,
        recipient: "+254711000009".into(),
        quota_key: None,
        template: "welcome".into(),
        locale: "en".into(),
        vars: serde_json::json!({ "name": n }),
        subject: None,
        body: "Karibu".into(),
        body_html: None,
        otp_code: None,
        max_attempts: 1,
        expires_at: None,
        created_at: t.clock.now(),
        send_at: t.clock.now(),
        segments: Some(1),
        encoding: Some("gsm7".into()),
        api_key_name: None,
        purpose: None,
    };
    let link = ReplayLink {
        replay_of: id.clone(),
        replayed_by: "ops".into(),
        replayed_at: t.clock.now(),
        note: None,
    };
    assert!(
        t.app
            .db
            .insert_replay(&replay("a"), &link)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        t.app
            .db
            .insert_replay(&replay("b"), &link)
            .await
            .unwrap()
            .is_none()
    );
}
on_both_backends!(replaying_the_same_delivery_twice_at_once_replays_it_once);

async fn a_thousand_failures_are_replayed_in_one_command(backend: Backend) {
    let t = TestApp::new(backend, 3).await;
    let (config, _) = write_config(t.db.path(), 3);
    let created = (t.clock.now() - chrono::Duration::minutes(30)).to_rfc3339();
    let seeds: Vec<Seed> = (0..1000)
        .map(|i| {
            Seed::notification(
                &created,
                &format!("+254711{i:06}"),
                "primary",
                SeedEnd::Failed(Outcome::Transient, Some("500")),
            )
        })
        .collect();
    // A few at a time: the pool has ten connections, and a thousand waiting
    // at once time out on a loaded machine before their turn comes.
    let db = &t.app.db;
    let seeded: Vec<String> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::StreamExt::map(futures::stream::iter(seeds), |s| seed(db, s)),
        4,
    ))
    .await;
    assert_eq!(seeded.len(), 1000);
    seed(
        &t.app.db,
        Seed::notification(&created, "+254722000000", "primary", SeedEnd::Sent(None)),
    )
    .await;

    let out = Command::new(env!("CARGO_BIN_EXE_tuma"))
        .env("TUMA_CONFIG", &config)
        .env("DATABASE_URL", &t.db.url)
        .env("RUST_LOG", "warn")
        .env("USER", "amina-ops")
        .args([
            "replay",
            "--status",
            "failed",
            "--since",
            "2h",
            "--channel",
            "sms",
            "--yes",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("to replay: 1000\n"), "{stdout}");
    assert!(stdout.contains("refused: 0\n"), "{stdout}");
    assert!(
        stdout.contains("replayed 1000 as amina-ops, refused 0\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains("replayed 100/1000") && stderr.contains("replayed 1000/1000"),
        "{stderr}"
    );

    let all = t
        .app
        .db
        .list_deliveries(&ListFilter {
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
    let replays: Vec<_> = all
        .iter()
        .filter(|d| d.status == DeliveryStatus::Pending)
        .collect();
    assert_eq!(replays.len(), 1000);
    assert!(
        replays
            .iter()
            .all(|d| d.row.attempts == 0 && d.row.job_id.is_some())
    );
    assert_eq!(
        all.iter()
            .filter(|d| d.status == DeliveryStatus::Failed)
            .count(),
        1000
    );

    // Asked again: each is refused, naming its replay.
    let out = Command::new(env!("CARGO_BIN_EXE_tuma"))
        .env("TUMA_CONFIG", &config)
        .env("DATABASE_URL", &t.db.url)
        .env("RUST_LOG", "warn")
        .args(["replay", "--status", "failed", "--dry-run"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("to replay: 0\nrefused: 1000\n"),
        "{stdout}"
    );
    assert!(stdout.contains("dry run: nothing replayed"), "{stdout}");
}
on_both_backends!(a_thousand_failures_are_replayed_in_one_command);

async fn ops_find_failures_by_status_provider_error_code_channel_and_time(backend: Backend) {
    let t = TestApp::new(backend, 3).await;
    let db = &t.app.db;
    let fail = |code| SeedEnd::Failed(Outcome::Permanent, Some(code));
    let twilio_21211 = seed(
        db,
        Seed::notification(
            "2026-11-20T10:00:00Z",
            "+254711000001",
            "twilio",
            fail("21211"),
        ),
    )
    .await;
    let twilio_21610 = seed(
        db,
        Seed::notification(
            "2026-11-20T11:00:00Z",
            "+254711000002",
            "twilio",
            fail("21610"),
        ),
    )
    .await;
    let at_21211 = seed(
        db,
        Seed::notification(
            "2026-11-20T12:00:00Z",
            "+254711000003",
            "africastalking",
            fail("21211"),
        ),
    )
    .await;
    let old = seed(
        db,
        Seed::notification(
            "2026-11-01T12:00:00Z",
            "+254711000004",
            "twilio",
            fail("21211"),
        ),
    )
    .await;
    let email = seed(
        db,
        Seed::notification(
            "2026-11-20T13:00:00Z",
            "amina@example.org",
            "twilio",
            fail("21211"),
        ),
    )
    .await;
    seed(
        db,
        Seed::notification(
            "2026-11-20T14:00:00Z",
            "+254711000005",
            "twilio",
            SeedEnd::Sent(None),
        ),
    )
    .await;

    let list = |f: ListFilter| async move {
        let rows = db
            .list_deliveries(&ListFilter { limit: 100, ..f })
            .await
            .unwrap();
        rows.into_iter().map(|d| d.row.id).collect::<Vec<_>>()
    };
    let failed = Some(DeliveryStatus::Failed);
    let since = Some("2026-11-15T00:00:00Z".parse().unwrap());
    assert_eq!(
        list(ListFilter {
            status: failed,
            provider: Some("twilio".into()),
            error_code: Some("21211".into()),
            ..Default::default()
        })
        .await,
        [email.clone(), twilio_21211.clone(), old.clone()]
    );
    assert_eq!(
        list(ListFilter {
            status: failed,
            provider: Some("twilio".into()),
            error_code: Some("21211".into()),
            channel: Some(Channel::Sms),
            since,
            limit: 0,
            recipient: None,
        })
        .await,
        vec![twilio_21211.clone()]
    );
    assert_eq!(
        list(ListFilter {
            error_code: Some("21211".into()),
            since,
            ..Default::default()
        })
        .await,
        [email, at_21211, twilio_21211]
    );
    assert_eq!(
        list(ListFilter {
            error_code: Some("21610".into()),
            ..Default::default()
        })
        .await,
        [twilio_21610]
    );
}
on_both_backends!(ops_find_failures_by_status_provider_error_code_channel_and_time);

async fn deliveries_list_filters_by_provider_and_error_code_from_the_command_line(
    backend: Backend,
) {
    let t = TestApp::new(backend, 3).await;
    let (config, _) = write_config(t.db.path(), 3);
    let fail = |code| SeedEnd::Failed(Outcome::Permanent, Some(code));
    let wanted = seed(
        &t.app.db,
        Seed::notification(
            "2026-11-20T10:00:00Z",
            "+254711000001",
            "twilio",
            fail("21211"),
        ),
    )
    .await;
    seed(
        &t.app.db,
        Seed::notification(
            "2026-11-20T11:00:00Z",
            "+254711000002",
            "twilio",
            fail("21610"),
        ),
    )
    .await;
    seed(
        &t.app.db,
        Seed::notification(
            "2026-11-20T12:00:00Z",
            "+254711000003",
            "primary",
            fail("21211"),
        ),
    )
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_tuma"))
        .env("TUMA_CONFIG", &config)
        .env("DATABASE_URL", &t.db.url)
        .env("RUST_LOG", "warn")
        .args([
            "deliveries",
            "list",
            "--status",
            "failed",
            "--provider",
            "twilio",
        ])
        .args(["--error-code", "21211", "--format", "csv"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let ids: Vec<&str> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids, [wanted.as_str()]);
}
on_both_backends!(deliveries_list_filters_by_provider_and_error_code_from_the_command_line);

/// Suppresses `to` on SMS as if another client's delivery had found it gone.
async fn suppress_as_another_clients(t: &TestApp, to: &str) -> chrono::DateTime<chrono::Utc> {
    let at = t.clock.now() - chrono::Duration::hours(3);
    t.app
        .db
        .suppress(&tuma::store::Suppression {
            channel: "sms".into(),
            recipient: to.into(),
            reason: "number not in service".into(),
            delivery_id: "another-clients-delivery-0001".into(),
            provider: "primary".into(),
            error_code: Some("21614".into()),
            created_at: at,
        })
        .await
        .unwrap();
    at
}

async fn a_replay_to_a_suppressed_recipient_is_refused_forced_or_not_saying_why_and_since_when(
    backend: Backend,
) {
    let (t, provider) = app_failing_once(backend, transient("gateway busy")).await;
    let to = "+254711000020";
    let original = t.app.enqueue_notification(welcome(to)).await.unwrap();
    t.drain().await;
    assert_eq!(
        t.delivery(&original.row.id).await.status,
        DeliveryStatus::Failed
    );
    let since = suppress_as_another_clients(&t, to).await;
    let calls = provider.calls().len();
    let before = count(&t.app.db, "SELECT COUNT(*) FROM deliveries").await;

    for rules in [ReplayRules::default(), ReplayRules::FORCE] {
        let report = t
            .app
            .replay_delivery(&original.row.id, "amina-ops", rules, false)
            .await
            .unwrap();
        assert!(report.replayed.is_empty(), "{rules:?}: {report:?}");
        assert_eq!(
            reasons(&report),
            vec![RefusalReason::Suppressed],
            "{rules:?}"
        );
        let message = &report.refused[0].message;
        let stamp = since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(message.contains("number not in service"), "{message}");
        assert!(message.contains(&format!("since {stamp}")), "{message}");
        assert!(message.contains("--ignore-suppression"), "{message}");
        assert!(
            !message.contains("another-clients-delivery"),
            "names no other client's delivery: {message}"
        );
    }
    // A filtered replay refuses it too, and nothing was written.
    let filtered = t
        .app
        .replay_matching(
            &ReplayFilter {
                force: true,
                ..ReplayFilter::default()
            },
            "amina-ops",
            false,
        )
        .await
        .unwrap();
    assert_eq!(reasons(&filtered), vec![RefusalReason::Suppressed]);
    assert_eq!(
        count(&t.app.db, "SELECT COUNT(*) FROM deliveries").await,
        before
    );
    t.drain().await;
    assert_eq!(
        provider.calls().len(),
        calls,
        "nothing sent to the suppressed number"
    );
}
on_both_backends!(
    a_replay_to_a_suppressed_recipient_is_refused_forced_or_not_saying_why_and_since_when
);

async fn a_replay_past_the_suppression_list_is_sent_and_records_who_ignored_it(backend: Backend) {
    let (t, provider) = app_failing_once(backend, transient("gateway busy")).await;
    let to = "+254711000021";
    let original = t.app.enqueue_notification(welcome(to)).await.unwrap();
    t.drain().await;
    suppress_as_another_clients(&t, to).await;
    let calls = provider.calls().len();

    let report = t
        .app
        .replay_delivery(
            &original.row.id,
            "amina-ops",
            ReplayRules {
                force: false,
                ignore_suppression: true,
            },
            false,
        )
        .await
        .unwrap();
    assert!(report.refused.is_empty(), "{report:?}");
    let replay = report.replayed[0].replay.clone();
    t.drain().await;
    assert_eq!(t.delivery(&replay).await.status, DeliveryStatus::Sent);
    assert_eq!(
        provider.calls().len(),
        calls + 1,
        "sent to the number as asked"
    );

    let origin = t.app.db.replay_origin(&replay).await.unwrap().unwrap();
    assert_eq!(origin.replayed_by.as_deref(), Some("amina-ops"));
    let note = origin.replay_note.unwrap();
    assert!(
        note.starts_with("suppression ignored by amina-ops:"),
        "{note}"
    );
    assert!(note.contains("number not in service"), "{note}");
    // A replay to a recipient not suppressed carries no note.
    let plain = t.app.db.replay_origin(&original.row.id).await.unwrap();
    assert!(plain.is_none());
}
on_both_backends!(a_replay_past_the_suppression_list_is_sent_and_records_who_ignored_it);

async fn tuma_replay_refuses_a_suppressed_recipient_even_with_force_and_sends_with_ignore_suppression(
    backend: Backend,
) {
    let t = TestApp::new(backend, 3).await;
    let (config, _) = write_config(t.db.path(), 3);
    let to = "+254711000022";
    let created = (t.clock.now() - chrono::Duration::minutes(30)).to_rfc3339();
    let id = seed(
        &t.app.db,
        Seed::notification(
            &created,
            to,
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    suppress_as_another_clients(&t, to).await;
    let tuma = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tuma"))
            .env("TUMA_CONFIG", &config)
            .env("DATABASE_URL", &t.db.url)
            .env("RUST_LOG", "warn")
            .env("USER", "amina-ops")
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };

    let forced = tuma(&["replay", &id, "--force", "--yes"]);
    assert!(forced.contains("refused: 1\n"), "{forced}");
    assert!(
        forced.contains("the recipient is suppressed since"),
        "{forced}"
    );
    assert!(forced.contains("nothing replayed"), "{forced}");

    let ignored = tuma(&["replay", &id, "--ignore-suppression", "--yes"]);
    assert!(
        ignored.contains("replayed 1 as amina-ops, refused 0"),
        "{ignored}"
    );
    let replay = t.app.db.replays_of(&id).await.unwrap()[0].id.clone();
    let shown = tuma(&["deliveries", "show", &replay]);
    assert!(
        shown.contains("note       suppression ignored by amina-ops:"),
        "{shown}"
    );
}
on_both_backends!(
    tuma_replay_refuses_a_suppressed_recipient_even_with_force_and_sends_with_ignore_suppression
);
