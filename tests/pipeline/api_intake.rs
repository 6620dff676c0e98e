//! What intake must refuse, through the HTTP API (and the library calls the
//! CLI makes), on SQLite and Postgres: recipients counted whatever their
//! letter case, non-mobile numbers for OTPs, request variables that would
//! replace configured ones or are not plain values, and control characters in
//! any text a request carries.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::on_both_backends;
use crate::support::*;
use tuma::intake::{IntakeError, NotificationRequest, OtpRequest};

/// A problem response's status and body.
async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn an_email_otp_limit_counts_the_address_in_any_letter_case(backend: Backend) {
    let s = spawn_app_with(
        backend,
        "[api]\notp_per_recipient = { max = 2, per = \"15m\" }\n",
    )
    .await;
    let key = s.key("auth-service", &["send"]).await;
    let otp = |to: &str| json!({"to": to, "code": "1234"});
    let first = s.post("/v1/otp", &key, &otp("Victim@Example.org")).await;
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.post("/v1/otp", &key, &otp("victim@example.org"))
            .await
            .status(),
        202
    );
    for to in [
        "VICTIM@EXAMPLE.ORG",
        "vIcTiM@example.ORG",
        "victim@example.org",
    ] {
        assert_eq!(
            s.post("/v1/otp", &key, &otp(to)).await.status(),
            429,
            "{to} is the same mailbox"
        );
    }
    assert_eq!(s.delivery_count().await, 2);
    // What is stored and handed to the provider is one spelling of it.
    assert_eq!(s.t.delivery(&id).await.row.recipient, "victim@example.org");

    // Requests that differ only by case, fired together, share one limit.
    s.t.clock.advance(Duration::from_secs(16 * 60));
    let spellings = [
        "Amina@example.org",
        "AMINA@example.org",
        "amina@EXAMPLE.org",
        "aMINA@example.org",
        "AmInA@Example.Org",
        "amina@example.org",
    ];
    let bodies: Vec<Value> = spellings.iter().map(|to| otp(to)).collect();
    let answers =
        futures::future::join_all(bodies.iter().map(|body| s.post("/v1/otp", &key, body))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 202, 429, 429, 429, 429]);
    assert_eq!(s.delivery_count().await, 4);
    s.stop().await;
}
on_both_backends!(an_email_otp_limit_counts_the_address_in_any_letter_case);

async fn otps_to_premium_rate_and_other_non_mobile_numbers_are_refused_naming_the_rule(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let key = s.key("auth-service", &["send"]).await;
    let otp = |to: &str| json!({"to": to, "code": "1234"});
    for (to, kind) in [
        ("+254900000000", "premium-rate"),
        ("+254900223456", "premium-rate"),
        ("+254800223456", "toll-free"),
        ("+254202012345", "fixed-line"),
        ("+80012345678", "toll-free"),
    ] {
        let (status, body) = problem(s.post("/v1/otp", &key, &otp(to)).await).await;
        assert_eq!(status, 422, "{to}: {body}");
        assert_eq!(body["type"], "https://tuma.dev/problems/refused", "{to}");
        assert_eq!(body["field"], "to", "{to}");
        assert_eq!(body["rule"], "otp.number_type", "{to}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(kind), "{to}: {detail}");
    }
    assert_eq!(s.delivery_count().await, 0);
    // Mobile numbers, and numbers that may be mobile (North America), pass.
    for to in [
        "+254711000001",
        "0722 000 000",
        "+14155552671",
        "+447400123456",
    ] {
        assert_eq!(
            s.post("/v1/otp", &key, &otp(to)).await.status(),
            202,
            "{to}"
        );
    }
    // The operator's CLI send is held to the same rule.
    let cli =
        s.t.app
            .enqueue_otp(OtpRequest {
                to: "+254900000000".into(),
                code: "1234".into(),
                channel: None,
                locale: None,
                ttl: None,
            })
            .await;
    assert!(
        matches!(
            &cli,
            Err(IntakeError::Refused {
                rule: "otp.number_type",
                field: "to",
                ..
            })
        ),
        "{cli:?}"
    );
    assert_eq!(s.delivery_count().await, 4);
    assert_eq!(s.state.metrics.refusals().get("otp.number_type"), Some(&5));
    s.stop().await;
}
on_both_backends!(otps_to_premium_rate_and_other_non_mobile_numbers_are_refused_naming_the_rule);

async fn fixed_lines_get_otps_only_when_the_configuration_allows_them(backend: Backend) {
    let db = TestDb::new(backend).await;
    let url = db.url.clone();
    // The test configuration's `[otp]` table, with the switch on.
    let text = config_text(db.path(), 6).replace(
        "default_region = \"KE\"",
        "default_region = \"KE\"\nallow_fixed_line = true",
    );
    assert!(text.contains("allow_fixed_line"));
    let s = spawn_app_with_text(db, &url, &text).await;
    let key = s.key("auth-service", &["send"]).await;
    let otp = |to: &str| json!({"to": to, "code": "1234"});
    assert_eq!(
        s.post("/v1/otp", &key, &otp("+254202012345"))
            .await
            .status(),
        202
    );
    let (status, body) = problem(s.post("/v1/otp", &key, &otp("+254900000000")).await).await;
    assert_eq!(
        (status, body["rule"].as_str()),
        (422, Some("otp.number_type"))
    );
    assert_eq!(s.delivery_count().await, 1);
    s.stop().await;
}
on_both_backends!(fixed_lines_get_otps_only_when_the_configuration_allows_them);

async fn request_variables_never_replace_configured_ones_and_must_be_plain_values(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let key = s.key("app", &["send"]).await;
    let welcome =
        |vars: Value| json!({"to": "amina@example.org", "template": "welcome", "vars": vars});
    for (vars, field) in [
        (
            json!({"name": "A", "app_name": "EVIL BANK"}),
            "vars.app_name",
        ),
        (json!({"name": null}), "vars.name"),
        (json!({"name": {"first": "A"}}), "vars.name"),
        (json!({"name": ["A"]}), "vars.name"),
        (json!({"name": "A", "code": "1234"}), "vars.code"),
    ] {
        let (status, body) = problem(
            s.post("/v1/notifications", &key, &welcome(vars.clone()))
                .await,
        )
        .await;
        assert_eq!(status, 422, "{vars}: {body}");
        assert_eq!(body["field"], field, "{vars}: {body}");
    }
    assert_eq!(s.delivery_count().await, 0);
    // Strings, numbers and booleans are plain values.
    for name in [json!("Amina"), json!(7), json!(true)] {
        let sent = s
            .post("/v1/notifications", &key, &welcome(json!({ "name": name })))
            .await;
        assert_eq!(sent.status(), 202, "{name}");
    }
    s.t.drain().await;
    let page =
        s.t.app
            .db
            .delivery_page(&tuma::store::PageFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
    for d in &page {
        assert!(d.row.body.contains("tuma"), "{}", d.row.body);
        assert!(!d.row.body.contains("None"), "{}", d.row.body);
    }
    // The CLI's `--var` goes through the same intake.
    let mut vars = Map::new();
    vars.insert("name".into(), json!("A"));
    vars.insert("app_name".into(), json!("EVIL BANK"));
    let cli =
        s.t.app
            .enqueue_notification(NotificationRequest {
                to: "amina@example.org".into(),
                template: "welcome".into(),
                locale: None,
                vars,
                send_at: None,
                expires: None,
            })
            .await;
    assert!(
        matches!(&cli, Err(IntakeError::Invalid { field, .. }) if &**field == "vars.app_name"),
        "{cli:?}"
    );
    assert_eq!(s.delivery_count().await, 3);
    s.stop().await;
}
on_both_backends!(request_variables_never_replace_configured_ones_and_must_be_plain_values);

async fn control_characters_are_refused_in_every_field_and_parameter_naming_it(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("app", &["send", "read", "ops", "reports"]).await;
    let welcome = json!({"to": "amina@example.org", "template": "welcome", "vars": {"name": "A"}});
    let with = |mut body: Value, path: &[&str], value: Value| {
        let mut at = &mut body;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = value;
        body
    };
    let otp = json!({"to": "+254711000001", "code": "1234"});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/notifications",
            with(welcome.clone(), &["vars", "name"], json!("\u{0}")),
            "vars.name",
        ),
        (
            "/v1/notifications",
            with(welcome.clone(), &["vars", "name"], json!("A\u{7}")),
            "vars.name",
        ),
        (
            "/v1/notifications",
            with(welcome.clone(), &["vars", "name"], json!("A\u{1b}[2J")),
            "vars.name",
        ),
        (
            "/v1/notifications",
            with(welcome.clone(), &["vars", "name"], json!("A\u{85}")),
            "vars.name",
        ),
        (
            "/v1/notifications",
            with(welcome.clone(), &["to"], json!("amina@example.org\n")),
            "to",
        ),
        (
            "/v1/notifications",
            with(welcome.clone(), &["template"], json!("welcome\u{0}")),
            "template",
        ),
        (
            "/v1/notifications",
            with(welcome.clone(), &["locale"], json!("en\u{0}")),
            "locale",
        ),
        (
            "/v1/notifications",
            with(
                welcome.clone(),
                &["send_at"],
                json!("2026-12-01T00:00:00Z\u{0}"),
            ),
            "send_at",
        ),
        (
            "/v1/otp",
            with(otp.clone(), &["to"], json!("+254711000001\u{0}")),
            "to",
        ),
        (
            "/v1/otp",
            with(otp.clone(), &["code"], json!("1234\u{0}")),
            "code",
        ),
        (
            "/v1/otp",
            with(otp.clone(), &["locale"], json!("en\t")),
            "locale",
        ),
        (
            "/v1/otp",
            with(otp.clone(), &["channel"], json!("sms\u{0}")),
            "channel",
        ),
        (
            "/v1/otp",
            with(otp.clone(), &["purpose"], json!("login\u{0}")),
            "purpose",
        ),
        (
            "/v1/replays",
            json!({"filter": {"provider": "primary\u{0}"}, "dry_run": true}),
            "filter.provider",
        ),
    ];
    for (path, body, field) in cases {
        let (status, problem) = problem(s.post(path, &key, &body).await).await;
        assert_eq!(status, 422, "{path} {body}: {problem}");
        assert_eq!(problem["field"], field, "{path} {body}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("control character"), "{detail}");
        assert!(!problem.to_string().contains("\\u0000"), "{problem}");
    }
    // A variable name with one is refused without repeating it.
    let (status, problem_body) = problem(
        s.post(
            "/v1/notifications",
            &key,
            &json!({"to": "amina@example.org", "template": "welcome", "vars": {"name": "A", "x\u{0}": "y"}}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, problem_body["field"].as_str()),
        (422, Some("vars"))
    );
    assert!(
        !problem_body.to_string().contains("\\u0000"),
        "{problem_body}"
    );
    assert_eq!(s.delivery_count().await, 0);

    // Line breaks and tabs are kept where a multi-line value makes sense.
    let multi = with(
        welcome.clone(),
        &["vars", "name"],
        json!("Amina\nWanjiru\tK\r\n"),
    );
    assert_eq!(
        s.post("/v1/notifications", &key, &multi).await.status(),
        202
    );

    // Every query parameter, name or value.
    for query in [
        "provider=%00",
        "provider=primary%0A",
        "status=%00",
        "channel=sms%00",
        "since=%00",
        "cursor=%00",
        "limit=1%00",
        "%00=1",
    ] {
        let (status, problem) =
            problem(s.get(&format!("/v1/deliveries?{query}"), &key).await).await;
        assert_eq!(status, 422, "{query}: {problem}");
        assert!(!problem.to_string().contains("\\u0000"), "{problem}");
    }
    let (status, body) = problem(s.get("/v1/deliveries?provider=%00", &key).await).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("provider")));
    let (status, body) = problem(s.get("/v1/reports/costs?by=%00", &key).await).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("by")));
    let (status, body) = problem(s.get("/v1/reports/costs?since=1d%00", &key).await).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("since")));

    // A path id with one is no delivery: 404, not 500.
    for path in [
        "/v1/deliveries/%00",
        "/v1/deliveries/a%0Ab",
        "/v1/deliveries/%00/replay",
    ] {
        let response = if path.ends_with("/replay") {
            s.client
                .post(s.url(path))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
        } else {
            s.get(path, &key).await
        };
        let (status, problem) = problem(response).await;
        assert_eq!(status, 404, "{path}: {problem}");
        assert!(!problem.to_string().contains("\\u0000"), "{problem}");
    }

    // The Idempotency-Key header: a tab inside it is refused too.
    let response = s
        .client
        .post(s.url("/v1/notifications"))
        .bearer_auth(&key)
        .header("idempotency-key", "abc\tdef")
        .json(&welcome)
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("Idempotency-Key"))
    );

    // The CLI's sends go through the same intake.
    let mut vars = Map::new();
    vars.insert("name".into(), json!("A\u{0}"));
    let cli =
        s.t.app
            .enqueue_notification(NotificationRequest {
                to: "amina@example.org".into(),
                template: "welcome".into(),
                locale: None,
                vars,
                send_at: None,
                expires: None,
            })
            .await;
    assert!(
        matches!(&cli, Err(IntakeError::Invalid { field, .. }) if &**field == "vars.name"),
        "{cli:?}"
    );
    for (template, locale, field) in [
        ("welcome\u{0}", None, "template"),
        ("welcome", Some("en\u{0}"), "locale"),
    ] {
        let mut vars = Map::new();
        vars.insert("name".into(), json!("A"));
        let cli =
            s.t.app
                .enqueue_notification(NotificationRequest {
                    to: "amina@example.org".into(),
                    template: template.into(),
                    locale: locale.map(str::to_owned),
                    vars,
                    send_at: None,
                    expires: None,
                })
                .await;
        match &cli {
            Err(IntakeError::Invalid { field: f, reason }) => {
                assert_eq!(&**f, field);
                assert!(!reason.contains('\u{0}'), "{reason:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.delivery_count().await, 1);
    s.stop().await;
}
on_both_backends!(control_characters_are_refused_in_every_field_and_parameter_naming_it);

async fn an_unknown_field_with_an_empty_name_is_named_readably(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("app", &["send", "read"]).await;
    let (status, body) = problem(
        s.post(
            "/v1/otp",
            &key,
            &json!({"to": "+254711000001", "code": "1234", "": 1}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "\"\"", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("\"\""), "{body}");
    let (status, body) = problem(s.get("/v1/deliveries?=1", &key).await).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("\"\"")));
    assert_eq!(s.delivery_count().await, 0);
    s.stop().await;
}
on_both_backends!(an_unknown_field_with_an_empty_name_is_named_readably);

/// A welcome notification to `to`, with its own deadline.
fn note_until(to: &str, expires: tuma::intake::Deadline) -> NotificationRequest {
    NotificationRequest {
        to: to.into(),
        template: "welcome".into(),
        locale: None,
        vars: Map::from_iter([("name".to_owned(), json!("Amina"))]),
        send_at: None,
        expires: Some(expires),
    }
}

/// Runs `statement` with `id` bound as `$1`, as a hand-edit would.
async fn sql(db: &tuma::store::Db, statement: &'static str, id: &str) {
    match db {
        tuma::store::Db::Sqlite(pool) => {
            sqlx::query(statement).bind(id).execute(pool).await.unwrap();
        }
        tuma::store::Db::Postgres(pool) => {
            sqlx::query(statement).bind(id).execute(pool).await.unwrap();
        }
    }
}

/// Moves the clock by `step` and drains, until `until` has passed.
async fn run_until(t: &TestApp, until: chrono::DateTime<chrono::Utc>, step: Duration) {
    use tuma::clock::Clock;
    while t.clock.now() <= until {
        t.advance(step).await;
        t.drain().await;
    }
}

async fn a_notification_past_its_own_deadline_is_expired_and_never_sent_one_in_time_is_sent(
    backend: Backend,
) {
    use tuma::clock::Clock;
    use tuma::domain::DeliveryStatus;
    use tuma::intake::Deadline;
    let minute = Duration::from_secs(60);

    // Both providers of the route down: tried, retried, never accepted; at
    // its deadline it is expired, not failed, and no call comes after it.
    let clock = new_clock();
    let down = |clock| Scripted::new(clock, (0..100).map(|_| transient("down")).collect());
    let (primary, backup) = (down(clock.clone()), down(clock.clone()));
    let t = TestApp::with(
        backend,
        100,
        clock.clone(),
        &[("primary", primary.clone()), ("backup", backup.clone())],
    )
    .await;
    let d = t
        .app
        .enqueue_notification(note_until("+254711000701", Deadline::Ttl(minute)))
        .await
        .unwrap();
    let deadline = clock.now() + chrono::Duration::seconds(60);
    assert_eq!(d.row.expires_at, Some(deadline));
    t.drain().await;
    run_until(
        &t,
        deadline + chrono::Duration::seconds(30),
        Duration::from_secs(5),
    )
    .await;
    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Expired, "{:?}", d.row.last_error);
    let calls: Vec<Call> = primary.calls().into_iter().chain(backup.calls()).collect();
    assert!(calls.len() >= 3, "it was tried and retried: {calls:?}");
    assert!(
        calls.iter().all(|c| c.at < deadline),
        "a call at or after the deadline: {calls:?}"
    );

    // The providers up: one in time is sent; one held back (the workers
    // reach it only after its deadline) is expired with no call at all.
    let clock = new_clock();
    let up = Scripted::new(clock.clone(), vec![]);
    let t = TestApp::with(backend, 6, clock.clone(), &[("primary", up.clone())]).await;
    let in_time = t
        .app
        .enqueue_notification(note_until("+254711000702", Deadline::Ttl(minute)))
        .await
        .unwrap();
    let at = clock.now() + chrono::Duration::minutes(10);
    let in_time_at = t
        .app
        .enqueue_notification(note_until("+254711000703", Deadline::At(at)))
        .await
        .unwrap();
    assert_eq!(in_time_at.row.expires_at, Some(at));
    t.drain().await;
    for id in [&in_time.row.id, &in_time_at.row.id] {
        assert_eq!(t.delivery(id).await.status, DeliveryStatus::Sent);
    }
    let late = t
        .app
        .enqueue_notification(note_until("+254711000704", Deadline::Ttl(minute)))
        .await
        .unwrap();
    t.advance(2 * minute).await;
    t.drain().await;
    let late = t.delivery(&late.row.id).await;
    assert_eq!(late.status, DeliveryStatus::Expired);
    assert_eq!(up.calls().len(), 2, "only the two in time were sent");
    assert!(up.calls().iter().all(|c| c.delivery_id != late.row.id));

    // A replay would send the expired one late: refused. One that failed
    // within its deadline is replayed under the same deadline.
    let report = t
        .app
        .replay_delivery(&late.row.id, "ops", tuma::replay::ReplayRules::FORCE, false)
        .await
        .unwrap();
    assert!(report.replayed.is_empty());
    assert_eq!(
        report.refused[0].reason,
        tuma::replay::RefusalReason::DeadlinePassed,
        "{:?}",
        report.refused
    );
    let failed = t
        .app
        .enqueue_notification(note_until("+254711000706", Deadline::Ttl(30 * minute)))
        .await
        .unwrap();
    sql(
        &t.app.db,
        "UPDATE deliveries SET status = 'failed' WHERE id = $1",
        &failed.row.id,
    )
    .await;
    let report = t
        .app
        .replay_delivery(
            &failed.row.id,
            "ops",
            tuma::replay::ReplayRules::FORCE,
            false,
        )
        .await
        .unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let replay = t.delivery(&report.replayed[0].replay).await;
    assert_eq!(replay.row.expires_at, failed.row.expires_at);
    t.drain().await;
    assert_eq!(
        t.delivery(&replay.row.id).await.status,
        DeliveryStatus::Sent
    );
    assert_eq!(up.calls().len(), 3);

    // Held by its budget past its deadline: the spend sweep expires it, and
    // says so without speaking of a code.
    let held = t
        .app
        .enqueue_notification(note_until("+254711000705", Deadline::Ttl(minute)))
        .await
        .unwrap();
    sql(
        &t.app.db,
        "UPDATE deliveries SET status = 'held', held_budget = 'KES/month' WHERE id = $1",
        &held.row.id,
    )
    .await;
    t.advance(2 * minute).await;
    let swept = tuma::spend::sweep(&t.app, clock.now()).await.unwrap();
    assert_eq!(swept.expired, 1);
    let held = t.delivery(&held.row.id).await;
    assert_eq!(held.status, DeliveryStatus::Expired);
    assert_eq!(
        held.row.last_error.as_deref(),
        Some("its deadline passed while its budget held it")
    );
    assert_eq!(up.calls().len(), 3);
}
on_both_backends!(
    a_notification_past_its_own_deadline_is_expired_and_never_sent_one_in_time_is_sent
);

async fn a_notification_takes_its_deadline_as_ttl_or_expires_at_and_bad_ones_are_refused_naming_the_field(
    backend: Backend,
) {
    use tuma::clock::Clock;
    let s = spawn_app(backend).await;
    let key = s.key("app", &["send", "read"]).await;
    let now = s.t.clock.now();
    let note = |extra: Value| {
        let mut body =
            json!({"to": "+254711000710", "template": "welcome", "vars": {"name": "Amina"}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let rfc = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339();
    let expiry = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap()).unwrap()
    };

    let by_ttl = s
        .post("/v1/notifications", &key, &note(json!({"ttl": "1m"})))
        .await;
    assert_eq!(by_ttl.status(), 202);
    let by_ttl: Value = by_ttl.json().await.unwrap();
    assert_eq!(expiry(&by_ttl), now + chrono::Duration::seconds(60));
    let at = now + chrono::Duration::hours(2);
    let by_time = s
        .post(
            "/v1/notifications",
            &key,
            &note(json!({"expires_at": rfc(at)})),
        )
        .await;
    assert_eq!(by_time.status(), 202);
    let by_time: Value = by_time.json().await.unwrap();
    assert_eq!(expiry(&by_time), at);
    // The delivery carries it.
    let shown: Value = s
        .get(
            &format!("/v1/deliveries/{}", by_ttl["id"].as_str().unwrap()),
            &key,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(expiry(&shown), now + chrono::Duration::seconds(60));
    let without: Value = s
        .post("/v1/notifications", &key, &note(json!({})))
        .await
        .json()
        .await
        .unwrap();
    assert!(without.get("expires_at").is_none(), "{without}");

    let before = s.delivery_count().await;
    for (extra, field, reason) in [
        (json!({"ttl": "soon"}), "ttl", "soon"),
        (json!({"ttl": "10s"}), "ttl", "10s is out of range"),
        (json!({"ttl": "31d"}), "ttl", "is out of range"),
        (json!({"ttl": 60}), "ttl", "string"),
        (
            json!({"expires_at": "tomorrow"}),
            "expires_at",
            "not an RFC 3339 time",
        ),
        (
            json!({"expires_at": rfc(now - chrono::Duration::minutes(1))}),
            "expires_at",
            "is not in the future",
        ),
        (
            json!({"expires_at": rfc(now + chrono::Duration::seconds(10))}),
            "expires_at",
            "is out of range",
        ),
        (
            json!({"expires_at": rfc(now + chrono::Duration::days(40))}),
            "expires_at",
            "is out of range",
        ),
        (
            json!({"ttl": "1h", "expires_at": rfc(at)}),
            "expires_at",
            "give ttl or expires_at, not both",
        ),
        (
            json!({"ttl": "1h", "send_at": rfc(now + chrono::Duration::hours(3))}),
            "ttl",
            "not after send_at",
        ),
    ] {
        let (status, body) = problem(
            s.post("/v1/notifications", &key, &note(extra.clone()))
                .await,
        )
        .await;
        assert_eq!(status, 422, "{extra}: {body}");
        assert_eq!(
            body["type"], "https://tuma.dev/problems/invalid-field",
            "{extra}"
        );
        assert_eq!(body["field"], field, "{extra}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(reason),
            "{extra}: {body}"
        );
    }
    assert_eq!(
        s.delivery_count().await,
        before,
        "a refused send writes nothing"
    );

    // Each item of a batch likewise, named within the batch.
    let batch = s
        .post(
            "/v1/notifications/batch",
            &key,
            &json!({"items": [
                note(json!({"ttl": "1m"})),
                note(json!({"ttl": "10s"})),
                note(json!({"expires_at": rfc(at)})),
            ]}),
        )
        .await;
    assert_eq!(batch.status(), 200);
    let batch: Value = batch.json().await.unwrap();
    assert_eq!(batch["accepted"], 2, "{batch}");
    assert_eq!(
        expiry(&batch["items"][0]),
        now + chrono::Duration::seconds(60)
    );
    assert_eq!(
        batch["items"][1]["problem"]["field"], "items[1].ttl",
        "{batch}"
    );
    assert_eq!(expiry(&batch["items"][2]), at);

    // Two minutes on, the one-minute ones are expired; the rest are sent.
    s.t.advance(Duration::from_secs(120)).await;
    s.t.drain().await;
    let status = |id: &Value| {
        let id = id.as_str().unwrap().to_owned();
        let s = &s;
        async move { s.t.delivery(&id).await.status.as_str().to_owned() }
    };
    assert_eq!(status(&by_ttl["id"]).await, "expired");
    assert_eq!(status(&batch["items"][0]["id"]).await, "expired");
    assert_eq!(status(&by_time["id"]).await, "sent");
    assert_eq!(status(&batch["items"][2]["id"]).await, "sent");
    assert_eq!(status(&without["id"]).await, "sent");
    s.stop().await;
}
on_both_backends!(
    a_notification_takes_its_deadline_as_ttl_or_expires_at_and_bad_ones_are_refused_naming_the_field
);

async fn otps_to_satellite_and_international_network_numbers_are_refused_unless_allowed(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let key = s.key("auth-service", &["send"]).await;
    let otp = |to: &str| json!({"to": to, "code": "1234"});
    for (to, network) in [
        ("+881631234567", "Iridium satellite"),
        ("+881712345678", "Iridium satellite"),
        ("+881212345678", "satellite"),
        ("+870773111632", "Inmarsat satellite"),
        ("+883510012345", "international network"),
    ] {
        let (status, body) = problem(s.post("/v1/otp", &key, &otp(to)).await).await;
        assert_eq!(status, 422, "{to}: {body}");
        assert_eq!(body["field"], "to", "{to}");
        assert_eq!(body["rule"], "otp.number_type", "{to}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(network), "{to}: {detail}");
        assert!(detail.contains("allow_satellite"), "{to}: {detail}");
    }
    assert_eq!(s.delivery_count().await, 0);
    s.stop().await;

    // Allowed by config, the satellite numbers the plan calls mobile pass.
    let db = TestDb::new(backend).await;
    let url = db.url.clone();
    let text = config_text(db.path(), 6).replacen("[otp]\n", "[otp]\nallow_satellite = true\n", 1);
    let s = spawn_app_with_text(db, &url, &text).await;
    let key = s.key("auth-service", &["send"]).await;
    for to in ["+881631234567", "+870773111632"] {
        let r = s.post("/v1/otp", &key, &otp(to)).await;
        assert_eq!(r.status(), 202, "{to}");
    }
    s.stop().await;
}
on_both_backends!(otps_to_satellite_and_international_network_numbers_are_refused_unless_allowed);

async fn notifications_to_premium_rate_and_shared_cost_numbers_are_refused_unless_allowed(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let key = s.key("shop", &["send"]).await;
    let note = |to: &str| json!({"to": to, "template": "welcome", "vars": {"name": "Amina"}});
    for (to, kind) in [
        ("+254900223456", "premium-rate"),
        ("+449012345678", "premium-rate"),
        ("+33890123456", "premium-rate"),
        ("+33810123456", "shared-cost"),
        ("+611300123456", "shared-cost"),
    ] {
        let (status, body) = problem(s.post("/v1/notifications", &key, &note(to)).await).await;
        assert_eq!(status, 422, "{to}: {body}");
        assert_eq!(body["type"], "https://tuma.dev/problems/refused", "{to}");
        assert_eq!(body["field"], "to", "{to}");
        assert_eq!(body["rule"], "notification.number_type", "{to}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(kind), "{to}: {detail}");
    }
    assert_eq!(s.delivery_count().await, 0);
    // Mobile, fixed and toll-free numbers still get notifications.
    for to in ["+254711000001", "+254202012345", "+254800223456"] {
        assert_eq!(
            s.post("/v1/notifications", &key, &note(to)).await.status(),
            202,
            "{to}"
        );
    }
    // The CLI's send is held to it too.
    let cli =
        s.t.app
            .enqueue_notification(NotificationRequest {
                to: "+254900223456".into(),
                template: "welcome".into(),
                locale: None,
                vars: Map::from_iter([("name".to_owned(), json!("Amina"))]),
                send_at: None,
                expires: None,
            })
            .await;
    assert!(
        matches!(
            &cli,
            Err(IntakeError::Refused {
                rule: "notification.number_type",
                field: "to",
                ..
            })
        ),
        "{cli:?}"
    );
    s.stop().await;

    let s = spawn_app_with(backend, "[api]\nallow_premium_rate = true\n").await;
    let key = s.key("shop", &["send"]).await;
    let r = s
        .post("/v1/notifications", &key, &note("+254900223456"))
        .await;
    assert_eq!(r.status(), 202);
    s.stop().await;
}
on_both_backends!(notifications_to_premium_rate_and_shared_cost_numbers_are_refused_unless_allowed);

async fn an_email_otp_limit_counts_tagged_and_dotted_gmail_variants_of_one_mailbox_as_one(
    backend: Backend,
) {
    let s = spawn_app_with(
        backend,
        "[api]\notp_per_recipient = { max = 2, per = \"15m\" }\n",
    )
    .await;
    let key = s.key("auth-service", &["send"]).await;
    let otp = |to: &str| json!({"to": to, "code": "1234"});
    let status = |r: reqwest::Response| r.status().as_u16();

    let first = s.post("/v1/otp", &key, &otp("amina+1@example.com")).await;
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        status(s.post("/v1/otp", &key, &otp("amina+2@example.com")).await),
        202
    );
    for to in ["amina@example.com", "Amina+3@example.com"] {
        assert_eq!(
            status(s.post("/v1/otp", &key, &otp(to)).await),
            429,
            "{to} is the same mailbox"
        );
    }
    // The code still goes to the address as given.
    assert_eq!(s.t.delivery(&id).await.row.recipient, "amina+1@example.com");
    // Another mailbox has its own quota: dots count outside Gmail.
    assert_eq!(
        status(s.post("/v1/otp", &key, &otp("a.mina@example.com")).await),
        202
    );

    // Gmail ignores dots, and googlemail.com is gmail.com.
    for to in ["a.mina@gmail.com", "amina+x@googlemail.com"] {
        assert_eq!(status(s.post("/v1/otp", &key, &otp(to)).await), 202, "{to}");
    }
    for to in [
        "amina@gmail.com",
        "am.ina+y@gmail.com",
        "A.M.I.N.A@googlemail.com",
    ] {
        assert_eq!(
            status(s.post("/v1/otp", &key, &otp(to)).await),
            429,
            "{to} is the same Gmail mailbox"
        );
    }
    assert_eq!(s.delivery_count().await, 5);
    s.stop().await;
}
on_both_backends!(an_email_otp_limit_counts_tagged_and_dotted_gmail_variants_of_one_mailbox_as_one);

async fn otps_written_before_the_upgrade_are_keyed_by_mailbox_as_new_ones_are(backend: Backend) {
    let t = TestDb::new(backend).await;
    let db = t.connect().await;
    let addresses = [
        "amina+1@example.com",
        "a.mina+2@example.com",
        "a.mina@gmail.com",
        "a.m.ina+x@googlemail.com",
        "amina@example.com",
        "+254711000001",
    ];
    for to in addresses {
        let mut s = Seed::notification("2026-11-10T08:00:00Z", to, "primary", SeedEnd::Expired);
        s.kind = tuma::domain::DeliveryKind::Otp;
        s.template = "otp";
        seed(&db, s).await;
    }
    // As the rows were before the migration: no key.
    let (dir, file) = match backend {
        Backend::Sqlite => ("sqlite", "20261208002001_otp_quota_key.sql"),
        Backend::Postgres => ("postgres", "20261208002001_otp_quota_key.sql"),
    };
    let migration = std::fs::read_to_string(format!(
        "{}/migrations/{dir}/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut statements = vec!["UPDATE deliveries SET quota_key = NULL".to_owned()];
    statements.extend(
        migration
            .split(';')
            .map(|s| {
                s.lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .filter(|s| s.trim_start().starts_with("UPDATE")),
    );
    for sql in &statements {
        match &db {
            tuma::store::Db::Sqlite(pool) => {
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .execute(pool)
                    .await
                    .unwrap();
            }
            tuma::store::Db::Postgres(pool) => {
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    }
    let read = "SELECT recipient, quota_key FROM deliveries ORDER BY recipient";
    let rows: Vec<(String, Option<String>)> = match &db {
        tuma::store::Db::Sqlite(pool) => sqlx::query_as(read).fetch_all(pool).await.unwrap(),
        tuma::store::Db::Postgres(pool) => sqlx::query_as(read).fetch_all(pool).await.unwrap(),
    };
    assert_eq!(rows.len(), addresses.len());
    for (recipient, key) in rows {
        let expected = tuma::domain::Recipient::parse(&recipient, "KE".parse().unwrap())
            .unwrap()
            .quota_key();
        assert_eq!(key.as_deref(), Some(expected.as_str()), "{recipient}");
    }
}
on_both_backends!(otps_written_before_the_upgrade_are_keyed_by_mailbox_as_new_ones_are);
