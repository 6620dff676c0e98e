//! The real adapters inside the pipeline, against wiremock doubles that answer
//! as Africa's Talking and Twilio do: a `tuma worker` process sends, fails
//! over, and records costs, and no secret reaches its logs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tuma::domain::DeliveryStatus;
use tuma::store::Db;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::on_both_backends;
use crate::support::*;

const AT_KEY: &str = "atsk_3f9c1e0b7a2d4c6e";
const TWILIO_TOKEN: &str = "twilio-token-5b8e2f7c";

fn config(dir: &Path, at: &str, twilio: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[[provider]]
name = "africastalking"
kind = "africastalking"
username = "mtaadao"
api_key_env = "TEST_AT_API_KEY"
sender_id = "MTAADAO"
base_url = "{at}"
timeout = "2s"

[[provider]]
name = "twilio"
kind = "twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token_env = "TEST_TWILIO_AUTH_TOKEN"
from = "+15005550006"
base_url = "{twilio}"
timeout = "2s"

[[provider]]
name = "mail"
kind = "outbox"
dir = "outbox"

[[route]]
channel = "sms"
providers = ["africastalking", "twilio"]

[[route]]
channel = "email"
providers = ["mail"]

[[price]]
provider = "twilio"
prefix = "+254"
per_segment = "0.0500"
currency = "USD"

[retry]
initial_delay = "1s"
jitter = false

[templates]
dir = "{templates}"
vars = {{ app_name = "tuma" }}

[worker]
poll_interval = "100ms"
heartbeat = "1s"
"#,
        templates = templates_dir().display()
    );
    let file = dir.join("providers.toml");
    std::fs::write(&file, text).unwrap();
    file
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
                a.outcome.as_deref(),
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
