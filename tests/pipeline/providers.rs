//! The real adapters inside the pipeline, against wiremock doubles that answer
//! as Africa's Talking and Twilio do: a `tuma worker` process sends, fails
//! over, and records costs, and no secret reaches its logs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tuma::clock::Clock;
use tuma::domain::DeliveryStatus;
use tuma::store::Db;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::on_both_backends;
use crate::support::*;

const AT_KEY: &str = "atsk_3f9c1e0b7a2d4c6e";
const TWILIO_TOKEN: &str = "twilio-token-5b8e2f7c";

fn config(dir: &Path, at: &str, twilio: &str) -> std::path::PathBuf {
    let first = format!(
        r#"name = "africastalking"
kind = "africastalking"
username = "mtaadao"
api_key_env = "TEST_AT_API_KEY"
sender_id = "MTAADAO"
base_url = "{at}"
timeout = "2s""#
    );
    failover_to_twilio_config(dir, "africastalking", &first, twilio)
}

fn worker(config: &Path, url: &str, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tuma"))
        .arg("worker")
        .env("TUMA_CONFIG", config)
        .env("DATABASE_URL", url)
        .env("TEST_AT_API_KEY", AT_KEY)
        .env("TEST_TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
        .env("RUST_LOG", "debug,sqlx=warn,hyper=warn,reqwest=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits (bounded) until the delivery leaves pending/sending.
async fn settled(db: &Db, id: &str) -> tuma::store::Delivery {
    let started = Instant::now();
    loop {
        let d = db.delivery(id).await.unwrap().unwrap();
        if !d.status.is_sendable() {
            return d;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "delivery {id} never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `tuma` with the doubles' secrets in its environment; returns stdout.
fn tuma(config: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tuma"))
        .args(args)
        .env("TUMA_CONFIG", config)
        .env("DATABASE_URL", url)
        .env("TEST_AT_API_KEY", AT_KEY)
        .env("TEST_TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn an_otp_fails_over_from_africas_talking_to_twilio(backend: Backend) {
    let db = TestDb::new(backend).await;
    let at = MockServer::start().await;
    let twilio = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .and(header("apiKey", AT_KEY))
        .and(header("Accept", "application/json"))
        .and(header("Content-Type", "application/x-www-form-urlencoded"))
        .and(body_string_contains("username=mtaadao"))
        .and(body_string_contains("to=%2B254711000001"))
        .and(body_string_contains("from=MTAADAO"))
        .and(body_string_contains(
            "message=482913+is+your+tuma+verification+code",
        ))
        .respond_with(ResponseTemplate::new(500).set_body_string("Internal Server Error"))
        .expect(1)
        .mount(&at)
        .await;
    let basic = format!(
        "Basic {}",
        base64_encode(&format!(
            "AC0123456789abcdef0123456789abcdef:{TWILIO_TOKEN}"
        ))
    );
    Mock::given(method("POST"))
        .and(path("/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"))
        .and(header("Authorization", basic.as_str()))
        .and(body_string_contains("To=%2B254711000001"))
        .and(body_string_contains("From=%2B15005550006"))
        .and(body_string_contains("Body=482913+is+your+tuma+verification+code"))
        .respond_with(ResponseTemplate::new(201).set_body_raw(
            r#"{"sid":"SM3f1c0000000000000000000000000000","status":"queued","to":"+254711000001","from":"+15005550006","body":"…","num_segments":"1","price":null,"price_unit":"USD","error_code":null,"error_message":null,"date_created":"Thu, 26 Nov 2026 10:00:00 +0000","account_sid":"AC0123456789abcdef0123456789abcdef","direction":"outbound-api"}"#,
            "application/json",
        ))
        .expect(1)
        .mount(&twilio)
        .await;

    let config = config(db.path(), &at.uri(), &twilio.uri());
    let id = tuma(
        &config,
        &db.url,
        &["send", "otp", "--to", "0711000001", "--code", "482913"],
    );
    let store = db.connect().await;
    let log = db.path().join("worker.log");
    let mut child = worker(&config, &db.url, &log);
    let d = settled(&store, &id).await;
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(d.status, DeliveryStatus::Sent);
    assert_eq!(d.row.provider.as_deref(), Some("twilio"));
    assert_eq!(
        d.row.provider_message_id.as_deref(),
        Some("SM3f1c0000000000000000000000000000")
    );
    let cost = d.cost.unwrap();
    assert_eq!((cost.micros, cost.currency.as_str()), (50_000, "USD"));
    assert_eq!(
        d.row.cost_is_estimate,
        Some(true),
        "Twilio gives no price at create"
    );
    let attempts = store.attempts(&d.row.id).await.unwrap();
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a.provider.as_str(),
                a.outcome.map(|o| o.as_str()),
                a.error_code.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("africastalking", Some("transient"), Some("HTTP 500")),
            ("twilio", Some("accepted"), None)
        ]
    );
    assert_eq!(attempts[1].provider_status.as_deref(), Some("queued"));
    assert_eq!(attempts[1].segments, Some(1));
    assert_eq!(
        attempts[1].provider_segments,
        Some(1),
        "Twilio's count is kept beside ours"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logs.contains("abandoned transaction"),
        "no connection came back inside a transaction:\n{logs}"
    );
    for secret in [AT_KEY, TWILIO_TOKEN, "482913"] {
        let found: Vec<_> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            found.is_empty(),
            "`{secret}` is in the worker's log:\n{found:#?}"
        );
    }
    let json = serde_json::to_string(&attempts).unwrap();
    assert!(!json.contains(AT_KEY) && !json.contains(TWILIO_TOKEN));
}
on_both_backends!(an_otp_fails_over_from_africas_talking_to_twilio);

async fn africas_talking_costs_and_refusals_are_recorded_exactly(backend: Backend) {
    let db = TestDb::new(backend).await;
    let at = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .and(body_string_contains("to=%2B254711000001"))
        .respond_with(ResponseTemplate::new(201).set_body_raw(
            r#"{"SMSMessageData":{"Message":"Sent to 1/1 Total Cost: KES 0.8000","Recipients":[{"statusCode":101,"number":"+254711000001","status":"Success","cost":"KES 0.8000","messageId":"ATXid_7c9e0000"}]}}"#,
            "application/json",
        ))
        .mount(&at)
        .await;
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .and(body_string_contains("to=%2B254711000002"))
        .respond_with(ResponseTemplate::new(201).set_body_raw(
            r#"{"SMSMessageData":{"Message":"Sent to 0/1 Total Cost: 0","Recipients":[{"statusCode":406,"number":"+254711000002","status":"UserInBlacklist","cost":"0","messageId":"None"}]}}"#,
            "application/json",
        ))
        .mount(&at)
        .await;
    let config = config(db.path(), &at.uri(), "http://127.0.0.1:9");
    let ids: Vec<String> = ["+254711000001", "+254711000002"]
        .iter()
        .map(|to| {
            tuma(
                &config,
                &db.url,
                &[
                    "send",
                    "notification",
                    "--to",
                    to,
                    "--template",
                    "welcome",
                    "--var",
                    "name=Amina",
                    "--locale",
                    "sw",
                ],
            )
        })
        .collect();
    let store = db.connect().await;
    let log = db.path().join("worker.log");
    let mut child = worker(&config, &db.url, &log);
    let sent = settled(&store, &ids[0]).await;
    let refused = settled(&store, &ids[1]).await;
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(sent.status, DeliveryStatus::Sent);
    assert_eq!(
        sent.row.provider_message_id.as_deref(),
        Some("ATXid_7c9e0000")
    );
    let cost = sent.cost.unwrap();
    assert_eq!((cost.micros, cost.currency.as_str()), (800_000, "KES"));
    assert_eq!(sent.row.cost_is_estimate, Some(false));

    assert_eq!(
        refused.status,
        DeliveryStatus::Failed,
        "a blacklisted number is not retried"
    );
    assert_eq!(refused.row.attempts, 1);
    assert!(
        refused
            .row
            .last_error
            .as_deref()
            .unwrap()
            .contains("UserInBlacklist (406)")
    );
    assert!(refused.cost.is_none());
}
on_both_backends!(africas_talking_costs_and_refusals_are_recorded_exactly);

/// An Africa's Talking double that repeats the request it got (the form as
/// sent, and the message decoded) in the answer a script gives for the
/// recipient, as a provider's error page or a broken proxy may.
struct AtEcho;

impl wiremock::Respond for AtEcho {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let raw = String::from_utf8_lossy(&request.body).into_owned();
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(request.body.as_slice())
                .into_owned()
                .collect();
        let message = form.get("message").cloned().unwrap_or_default();
        let to = form.get("to").cloned().unwrap_or_default();
        if to.ends_with("11") {
            // A 500 error page quoting the request, with a control character.
            ResponseTemplate::new(500).set_body_string(format!(
                "Internal error\u{1b}[31m while sending {raw}: {message}"
            ))
        } else if to.ends_with("12") {
            // A 403 that quotes the message.
            ResponseTemplate::new(403).set_body_string(format!("Forbidden message: {message}"))
        } else {
            // A malformed 201: not JSON, the message repeated.
            ResponseTemplate::new(201).set_body_string(format!("Sent to 1/1: {message} ({raw})"))
        }
    }
}

/// A Twilio double that repeats the `Body` it got: in a 400 `message` for
/// one number, in the 201 message resource (as Twilio does) otherwise.
struct TwilioEcho;

impl wiremock::Respond for TwilioEcho {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(request.body.as_slice())
                .into_owned()
                .collect();
        let body = form.get("Body").cloned().unwrap_or_default();
        let to = form.get("To").cloned().unwrap_or_default();
        if to.ends_with("11") {
            ResponseTemplate::new(400).set_body_json(serde_json::json!({
                "code": 21211,
                "message": format!("The message '{body}' to {to} is not valid"),
                "more_info": "https://www.twilio.com/docs/errors/21211",
                "status": 400
            }))
        } else {
            ResponseTemplate::new(201).set_body_json(serde_json::json!({
                "sid": "SMab00000000000000000000000000cdef",
                "status": "queued",
                "to": to,
                "from": "+15005550006",
                "body": body,
                "num_segments": "1",
                "price": null,
                "price_unit": "USD",
                "error_code": null,
                "error_message": null,
                "account_sid": "AC0123456789abcdef0123456789abcdef",
                "direction": "outbound-api"
            }))
        }
    }
}

async fn no_otp_code_echoed_by_a_provider_reaches_a_log_a_table_the_api_or_the_cli(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let at = MockServer::start().await;
    let twilio = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .respond_with(AtEcho)
        .mount(&at)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
        ))
        .respond_with(TwilioEcho)
        .mount(&twilio)
        .await;
    let config = config(db.path(), &at.uri(), &twilio.uri());
    let store = db.connect().await;

    // Each round: an AT 500 then a Twilio 400; an AT 403; a malformed AT 201
    // then a Twilio 201 that repeats the body. Once with human logs, once JSON.
    let rounds = [
        ("human", ["605142", "739258", "818364"]),
        ("json", ["926470", "153086", "271694"]),
    ];
    let mut ids = Vec::new();
    let mut logs = String::new();
    for (format, codes) in rounds {
        let round: Vec<String> = ["0711000011", "0711000012", "0711000013"]
            .iter()
            .zip(codes)
            .map(|(to, code)| {
                // The first round's AT 403 suppresses its number: the second
                // round sends to it again, past the list, to see the 403 again.
                tuma(
                    &config,
                    &db.url,
                    &[
                        "send",
                        "otp",
                        "--to",
                        to,
                        "--code",
                        code,
                        "--ignore-suppression",
                    ],
                )
            })
            .collect();
        let log = db.path().join(format!("worker-{format}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tuma"))
            .arg("worker")
            .env("TUMA_CONFIG", &config)
            .env("DATABASE_URL", &db.url)
            .env("TEST_AT_API_KEY", AT_KEY)
            .env("TEST_TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
            .env("TUMA_LOG_FORMAT", format)
            .env(
                "RUST_LOG",
                "trace,sqlx=warn,hyper=warn,hyper_util=warn,reqwest=warn,h2=warn,rustls=warn",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut settled_all = Vec::new();
        for id in &round {
            settled_all.push(settled(&store, id).await);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let statuses: Vec<_> = settled_all.iter().map(|d| d.status).collect();
        assert_eq!(
            statuses,
            vec![
                DeliveryStatus::Failed,
                DeliveryStatus::Failed,
                DeliveryStatus::Sent
            ],
            "{format}"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(&round[0]),
            "the {format} log speaks of the deliveries"
        );
        logs.push_str(&text);
        ids.extend(round);
    }
    let codes: Vec<&str> = rounds.iter().flat_map(|(_, c)| c.iter().copied()).collect();

    // What was recorded still says what happened, with the echo replaced.
    let first = store.attempts(&ids[0]).await.unwrap();
    assert_eq!(first[0].error_code.as_deref(), Some("HTTP 500"));
    assert_eq!(first[1].error_code.as_deref(), Some("21211"));
    let errors = format!("{:?} {:?}", first[0].error, first[1].error);
    assert!(errors.contains("[message text]"), "{errors}");
    assert!(
        !errors.contains('\u{1b}'),
        "control characters are stripped: {errors}"
    );
    let sent = store.delivery(&ids[2]).await.unwrap().unwrap();
    assert_eq!(
        sent.row.provider_message_id.as_deref(),
        Some("SMab00000000000000000000000000cdef")
    );

    let mut outputs = vec![("the workers' logs".to_owned(), logs)];
    outputs.push(("the database".to_owned(), all_database_text(&store).await));
    for id in &ids {
        for format in ["text", "json"] {
            outputs.push((
                format!("tuma deliveries show {id} --format {format}"),
                tuma(
                    &config,
                    &db.url,
                    &["deliveries", "show", id, "--format", format],
                ),
            ));
        }
    }
    outputs.push((
        "tuma deliveries list".to_owned(),
        tuma(&config, &db.url, &["deliveries", "list"]),
    ));
    store.close().await;
    let url = db.url.clone();
    let s = spawn_app_at(db, &url, "").await;
    let key = s.key("auditor", &["read"]).await;
    for id in &ids {
        let response = s.get(&format!("/v1/deliveries/{id}"), &key).await;
        assert_eq!(response.status(), 200);
        outputs.push((
            format!("GET /v1/deliveries/{id}"),
            response.text().await.unwrap(),
        ));
    }
    for (place, text) in &outputs {
        for code in &codes {
            let found: Vec<_> = text.lines().filter(|l| l.contains(code)).collect();
            assert!(
                found.is_empty(),
                "the code {code} is in {place}:\n{found:#?}"
            );
        }
    }
}
on_both_backends!(no_otp_code_echoed_by_a_provider_reaches_a_log_a_table_the_api_or_the_cli);

fn base64_encode(s: &str) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(CHARS[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn a_configured_twilio_provider_finds_a_message_its_slow_double_took_without_a_second_post(
    backend: Backend,
) {
    let account = "AC0123456789abcdef0123456789abcdef";
    let double = MockServer::start().await;
    let history = TwilioHistory::mount(&double, account, Duration::from_secs(3)).await;
    let s = spawn_app_with(
        backend,
        &format!(
            r#"
[[provider]]
name = "twilio"
kind = "twilio"
account_sid = "{account}"
auth_token_env = "TUMA_TEST_TWILIO_TOKEN"
from = "+15005550006"
base_url = "{}"
timeout = "1s"
"#,
            double.uri()
        ),
    )
    .await;
    history.follow(s.t.clock.clone());
    let message = |text: &str| tuma::providers::OutgoingMessage {
        delivery_id: "019ac1d2-0000-7000-8000-00000000aa01".into(),
        kind: tuma::domain::DeliveryKind::Otp,
        content: tuma::providers::Content::Sms {
            to: tuma::domain::phone::PhoneNumber::parse_e164("+254711000001").unwrap(),
            text: text.into(),
        },
        code: None,
        valid_for: None,
    };
    let ours = message("482913 is your tuma verification code");
    let handle = s.t.app.providers.get("twilio").unwrap();
    let since = s.t.clock.now();
    // The dispatcher stops waiting at the provider's timeout; Twilio has it.
    let cut = tokio::time::timeout(handle.timeout, handle.provider.send(&ours)).await;
    assert!(cut.is_err(), "the answer comes after the timeout");
    let lookup = s.t.app.providers.message_lookup("twilio").unwrap();
    let Ok(tuma::providers::capability::Lookup::Found(found)) =
        lookup.find_sent(&ours, since).await
    else {
        panic!("the double holds the message");
    };
    assert_eq!(found.provider_message_id, format!("SM{:032x}", 1));
    assert_eq!(found.provider_status.as_deref(), Some("queued"));
    assert_eq!(
        lookup
            .find_sent(&message("Another text"), since)
            .await
            .unwrap(),
        tuma::providers::capability::Lookup::NotFound
    );
    assert_eq!(history.posts(), 1, "asking sent nothing again");
    s.stop().await;
}
on_both_backends!(
    a_configured_twilio_provider_finds_a_message_its_slow_double_took_without_a_second_post
);
