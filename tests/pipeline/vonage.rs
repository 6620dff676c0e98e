//! Vonage inside the pipeline, against wiremock doubles that answer as
//! Vonage's SMS API documents: an OTP failing over from Vonage to Twilio in a
//! `tuma worker` process, and Vonage delivery receipts through the HTTP API
//! (signed, forged, unsigned), whose price
//! reconciles the cost; a long message sent in three parts, whose every part
//! id is recorded and whose later parts' receipts find their delivery. The receipts' `sig` is computed here from Vonage's
//! "Signing Messages" rules, independently of tuma's own code.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use tuma::clock::Clock;
use tuma::domain::DeliveryStatus;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::on_both_backends;
use crate::support::*;

const VONAGE_SECRET: &str = "vonage-api-secret-61c0d9";
const TWILIO_TOKEN: &str = "twilio-token-5b8e2f7c";
/// The value `.cargo/config.toml` gives `TUMA_TEST_VONAGE_SIGNATURE_SECRET`.
const SIG_SECRET: &str = "vonage-signature-secret-2e9a7c41";

fn failover_config(dir: &Path, vonage: &str, twilio: &str) -> std::path::PathBuf {
    let first = format!(
        r#"name = "vonage"
kind = "vonage"
api_key = "a1b2c3d4"
api_secret_env = "TEST_VONAGE_API_SECRET"
from = "MTAADAO"
currency = "EUR"
base_url = "{vonage}"
timeout = "2s""#
    );
    failover_to_twilio_config(dir, "vonage", &first, twilio)
}

fn command(config: &Path, url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tuma"));
    c.env("TUMA_CONFIG", config)
        .env("DATABASE_URL", url)
        .env("TEST_VONAGE_API_SECRET", VONAGE_SECRET)
        .env("TEST_TWILIO_AUTH_TOKEN", TWILIO_TOKEN);
    c
}

async fn an_otp_fails_over_from_vonage_to_twilio(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vonage = MockServer::start().await;
    let twilio = MockServer::start().await;
    // Vonage's documented answer for status 1: throttled, worth retrying elsewhere.
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .and(body_string_contains("api_key=a1b2c3d4"))
        .and(body_string_contains(format!("api_secret={VONAGE_SECRET}")))
        .and(body_string_contains("to=254711000001"))
        .and(body_string_contains("from=MTAADAO"))
        .and(body_string_contains("text=482913+is+your+tuma+verification+code"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"message-count":"1","messages":[{"status":"1","error-text":"Throughput Rate Exceeded - please wait [ 1 ] and retry"}]}"#,
            "application/json",
        ))
        .expect(1)
        .mount(&vonage)
        .await;
    Mock::given(method("POST"))
        .and(path("/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"))
        .and(body_string_contains("To=%2B254711000001"))
        .and(body_string_contains("Body=482913+is+your+tuma+verification+code"))
        .respond_with(ResponseTemplate::new(201).set_body_raw(
            r#"{"sid":"SM3f1c0000000000000000000000000000","status":"queued","num_segments":"1","price":null,"price_unit":"USD","error_code":null}"#,
            "application/json",
        ))
        .expect(1)
        .mount(&twilio)
        .await;

    let config = failover_config(db.path(), &vonage.uri(), &twilio.uri());
    let out = command(&config, &db.url)
        .args(["send", "otp", "--to", "0711000001", "--code", "482913"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let log = db.path().join("worker.log");
    let mut child = command(&config, &db.url)
        .arg("worker")
        .env("RUST_LOG", "debug,sqlx=warn,hyper=warn,reqwest=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let store = db.connect().await;
    let started = Instant::now();
    let d = loop {
        let d = store.delivery(&id).await.unwrap().unwrap();
        if !d.status.is_sendable() {
            break d;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(d.status, DeliveryStatus::Sent);
    assert_eq!(d.row.provider.as_deref(), Some("twilio"));
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
            ("vonage", Some("transient"), Some("1")),
            ("twilio", Some("accepted"), None)
        ]
    );
    assert!(
        attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("Throttled")),
        "{:?}",
        attempts[0].error
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(!logs.contains("482913"), "the code is never logged");
    assert!(!logs.contains(VONAGE_SECRET) && !logs.contains(TWILIO_TOKEN));
    let json = serde_json::to_string(&attempts).unwrap();
    assert!(!json.contains(VONAGE_SECRET));
}
on_both_backends!(an_otp_fails_over_from_vonage_to_twilio);

/// A Vonage provider that signs its requests and receipts (SHA-256 HMAC),
/// routed for +254.
fn receipts_config(signed: &str) -> String {
    receipts_config_with(signed, "")
}

/// [`receipts_config`] with more of the provider's keys.
fn receipts_config_with(signed: &str, keys: &str) -> String {
    format!(
        r#"
[[provider]]
name = "vonage-eu"
kind = "vonage"
api_key = "a1b2c3d4"
signature_secret_env = "TUMA_TEST_VONAGE_SIGNATURE_SECRET"
signature_method = "sha256"
from = "MTAADAO"
currency = "EUR"
base_url = "{signed}"
callback_url = "https://tuma.example.org/v1/callbacks/vonage"
timeout = "2s"
{keys}

[[route]]
channel = "sms"
prefix = "+254"
providers = ["vonage-eu"]
"#
    )
}

/// `sig` as Vonage's docs define it: every parameter but `sig`, sorted by
/// name, as `&name=value` (`&` and `=` in values as `_`), HMAC-SHA256 keyed
/// with the signature secret, lower-case hex.
fn vonage_sig(params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<&(&str, &str)> = params.iter().filter(|(k, _)| *k != "sig").collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut text = String::new();
    for (k, v) in sorted {
        text.push_str(&format!("&{k}={}", v.replace(['&', '='], "_")));
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SIG_SECRET.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A signed DLR's fields but `sig`, `timestamp` (Unix seconds) as given.
fn dlr<'a>(
    id: &'a str,
    status: &'a str,
    price: &'a str,
    timestamp: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("msisdn", "254711000001"),
        ("to", "MTAADAO"),
        ("network-code", "63902"),
        ("messageId", id),
        ("price", price),
        ("status", status),
        ("scts", "2612051024"),
        ("err-code", "0"),
        ("api-key", "a1b2c3d4"),
        ("message-timestamp", "2026-12-05 10:24:03"),
        ("timestamp", timestamp),
        ("nonce", "7a4e3a4c-4c2b-4f0a-9d7e-2b1c0e9f8a6d"),
    ]
}

async fn vonage_receipts_need_their_signature_and_reconcile_the_price(backend: Backend) {
    let signed = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .and(body_string_contains("status-report-req=true"))
        .and(body_string_contains("sig="))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"message-count":"1","messages":[{"to":"254711000001","message-id":"0C000000217B7F02","status":"0","remaining-balance":"15.53590000","message-price":"0.03330000","network":"63902"}]}"#,
            "application/json",
        ))
        .mount(&signed)
        .await;
    let s = spawn_app_with(backend, &receipts_config(&signed.uri())).await;
    let key = s.key("receipts", &["send", "read"]).await;
    let r = s
        .post(
            "/v1/otp",
            &key,
            &json!({ "to": "+254711000001", "code": "482913" }),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.t.drain().await;
    let show = || async {
        let r = s.get(&format!("/v1/deliveries/{id}"), &key).await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let shown = show().await;
    assert_eq!(shown["status"], "sent");
    assert_eq!(shown["provider_message_id"], "0C000000217B7F02");
    assert_eq!(shown["cost"]["amount"], "0.0333");
    assert_eq!(shown["cost"]["currency"], "EUR");
    assert_eq!(
        shown["cost"]["estimate"], false,
        "Vonage says its price at send"
    );

    let post = |params: Vec<(String, String)>, url: &'static str| {
        let client = s.client.clone();
        let url = s.url(url);
        async move {
            client
                .post(url)
                .form(&params)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let owned = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };

    // Forged: a sig over other fields, no sig at all: refused, nothing written.
    let now = s.t.clock.now().timestamp().to_string();
    let good = dlr("0C000000217B7F02", "delivered", "0.03200000", &now);
    let mut forged = owned(&dlr("0C000000217B7F02", "failed", "0.03200000", &now));
    forged.push(("sig".into(), vonage_sig(&good)));
    assert_eq!(post(forged, "/v1/callbacks/vonage").await, 403);
    assert_eq!(post(owned(&good), "/v1/callbacks/vonage").await, 403);
    let shown = show().await;
    assert_eq!(shown["status"], "sent");
    assert_eq!(shown["receipts"].as_array().unwrap().len(), 0);
    assert_eq!(
        shown["cost"]["amount"], "0.0333",
        "a refused receipt changes no price"
    );

    // Signed: to a path naming no provider nor kind, 404; to the one its kind
    // names, taken.
    let mut signed_dlr = owned(&good);
    signed_dlr.push(("sig".into(), vonage_sig(&good).to_ascii_uppercase()));
    assert_eq!(post(signed_dlr.clone(), "/v1/callbacks/nobody").await, 404);
    assert_eq!(post(signed_dlr.clone(), "/v1/callbacks/vonage").await, 200);
    let shown = show().await;
    assert_eq!(shown["status"], "delivered");
    assert_eq!(
        shown["cost"]["amount"], "0.032",
        "the receipt's price is the actual one"
    );
    assert_eq!(shown["cost"]["estimate"], false);
    let receipts = shown["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["fields"]["network-code"], "63902");
    assert!(receipts[0]["fields"].get("sig").is_none());
    // Repeated, to the path its name names: recorded, changes nothing.
    assert_eq!(post(signed_dlr, "/v1/callbacks/vonage-eu").await, 200);
    assert_eq!(show().await["receipts"].as_array().unwrap().len(), 2);

    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"bad_signature\"} 2",
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"applied\"} 1",
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"unchanged\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    s.stop().await;
}
on_both_backends!(vonage_receipts_need_their_signature_and_reconcile_the_price);

/// Parts 1 to 3 of a long message, as Vonage answers a multipart send: one
/// `messages[]` entry per part, each with its own id and price.
const PART_IDS: [&str; 3] = [
    "62dfdf68-6c7c-479a-a190-5c52f798a787",
    "72ff9536-62d6-455a-9f0b-65f3c265b423",
    "8a0c1e22-0b1d-4c55-a0de-1f2e3d4c5b6a",
];

async fn a_long_vonage_message_keeps_every_part_and_its_receipts_find_it(backend: Backend) {
    let signed = MockServer::start().await;
    let parts: Vec<String> = PART_IDS
        .iter()
        .zip(["0.04120000", "0.04120000", "0.04125000"])
        .enumerate()
        .map(|(n, (id, price))| {
            format!(
                r#"{{"to":"254711000001","message-id":"{id}","status":"0","remaining-balance":"15.5{n}000000","message-price":"{price}","network":"63902"}}"#
            )
        })
        .collect();
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            format!(
                r#"{{"message-count":"3","messages":[{}]}}"#,
                parts.join(",")
            ),
            "application/json",
        ))
        .mount(&signed)
        .await;
    let s = spawn_app_with(backend, &receipts_config(&signed.uri())).await;
    let key = s.key("parts", &["send", "read"]).await;
    let r = s
        .post(
            "/v1/otp",
            &key,
            &json!({ "to": "+254711000001", "code": "482913" }),
        )
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.t.drain().await;
    let show = || async {
        let r = s.get(&format!("/v1/deliveries/{id}"), &key).await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let shown = show().await;
    assert_eq!(shown["status"], "sent");
    assert_eq!(shown["provider_message_id"], PART_IDS[0]);
    assert_eq!(shown["segments"], 3);
    assert_eq!(
        shown["cost"]["amount"], "0.12365",
        "0.0412 + 0.0412 + 0.04125: every part's price"
    );
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["provider_message_id"], PART_IDS[0]);
    assert_eq!(attempts[0]["part_ids"], json!(PART_IDS));
    // As `tuma deliveries show` prints it.
    let out = Command::new(env!("CARGO_BIN_EXE_tuma"))
        .env("TUMA_CONFIG", s.t.db.path().join("providers.toml"))
        .env("DATABASE_URL", &s.t.db.url)
        .args(["deliveries", "show", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("parts {}", PART_IDS.join(" "))),
        "{text}"
    );

    let post = |params: Vec<(String, String)>| {
        let client = s.client.clone();
        let url = s.url("/v1/callbacks/vonage");
        async move {
            client
                .post(url)
                .form(&params)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let signed_dlr = |fields: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        p.push(("sig".into(), vonage_sig(fields)));
        p
    };

    // Forged, for part 3: refused, nothing written.
    let now = s.t.clock.now().timestamp().to_string();
    let part3 = dlr(PART_IDS[2], "failed", "0.04125000", &now);
    let mut forged = signed_dlr(&dlr(PART_IDS[2], "delivered", "0.04125000", &now));
    forged.retain(|(k, _)| k != "status");
    forged.push(("status".into(), "failed".into()));
    assert_eq!(post(forged).await, 403);
    let shown = show().await;
    assert_eq!(shown["status"], "sent");
    assert_eq!(shown["receipts"].as_array().unwrap().len(), 0);

    // Part 2's receipt finds the delivery (not an unknown message) and, the
    // first to say delivered, moves it; its one-part price does not replace
    // the summed price.
    assert_eq!(
        post(signed_dlr(&dlr(
            PART_IDS[1],
            "delivered",
            "0.04120000",
            &now
        )))
        .await,
        200
    );
    let shown = show().await;
    assert_eq!(shown["status"], "delivered");
    assert_eq!(shown["cost"]["amount"], "0.12365");
    let receipts = shown["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["provider_message_id"], PART_IDS[1]);
    assert_eq!(receipts[0]["applied"], true);

    // Part 3 says failed afterwards: recorded against the same delivery, moves nothing.
    assert_eq!(post(signed_dlr(&part3)).await, 200);
    let shown = show().await;
    assert_eq!(shown["status"], "delivered");
    let receipts = shown["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[1]["provider_message_id"], PART_IDS[2]);
    assert_eq!(receipts[1]["applied"], false);

    // An id no part has is still unknown.
    assert_eq!(
        post(signed_dlr(&dlr(
            "0C0000000000FFFF",
            "delivered",
            "0.04120000",
            &now
        )))
        .await,
        200
    );
    assert_eq!(show().await["receipts"].as_array().unwrap().len(), 2);
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"bad_signature\"} 1",
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"applied\"} 1",
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"unchanged\"} 1",
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"unknown_message\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    s.stop().await;
}
on_both_backends!(a_long_vonage_message_keeps_every_part_and_its_receipts_find_it);

async fn a_barred_number_and_a_receipt_saying_it_is_inactive_suppress_the_recipient(
    backend: Backend,
) {
    let double = MockServer::start().await;
    // Vonage's status 7: the number is barred.
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .and(body_string_contains("to=254711000041"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"message-count":"1","messages":[{"status":"7","error-text":"Number Barred"}]}"#,
            "application/json",
        ))
        .mount(&double)
        .await;
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .and(body_string_contains("to=254711000042"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"message-count":"1","messages":[{"to":"254711000042","message-id":"0C0000002A7B7F42","status":"0","remaining-balance":"15.50","message-price":"0.03330000","network":"63902"}]}"#,
            "application/json",
        ))
        .mount(&double)
        .await;
    let s = spawn_app_with(backend, &receipts_config(&double.uri())).await;
    let key = s.key("auth-service", &["send", "read"]).await;
    let otp = |to: &'static str| {
        let s = &s;
        let key = key.clone();
        async move {
            s.post("/v1/otp", &key, &json!({ "to": to, "code": "482913" }))
                .await
        }
    };

    // Refused at send with status 7: failed, and suppressed.
    let r = otp("+254711000041").await;
    assert_eq!(r.status(), 202);
    let barred = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.t.drain().await;
    assert_eq!(s.t.delivery(&barred).await.status, DeliveryStatus::Failed);
    let r = otp("+254711000041").await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "suppressed", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default().to_owned() + &body.to_string();
    assert!(
        detail.contains("barred") && detail.contains(&barred),
        "{body}"
    );

    // Accepted, then a signed receipt: failed, err-code 3 (no longer active).
    let r = otp("+254711000042").await;
    assert_eq!(r.status(), 202);
    let inactive = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.t.drain().await;
    let now = s.t.clock.now().timestamp().to_string();
    let mut report = dlr("0C0000002A7B7F42", "failed", "0.03330000", &now);
    report.retain(|(k, _)| *k != "err-code" && *k != "msisdn");
    report.push(("err-code", "3"));
    report.push(("msisdn", "254711000042"));
    let sig = vonage_sig(&report);
    let mut form: Vec<(&str, &str)> = report.clone();
    form.push(("sig", &sig));
    let posted = s
        .client
        .post(s.url("/v1/callbacks/vonage"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(
        s.t.delivery(&inactive).await.status,
        DeliveryStatus::Undelivered
    );
    let r = otp("+254711000042").await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "suppressed");
    assert!(
        body.to_string().contains("no longer active") && body.to_string().contains(&inactive),
        "{body}"
    );
    let mut listed =
        s.t.app
            .db
            .suppressions(chrono::DateTime::UNIX_EPOCH)
            .await
            .unwrap();
    listed.sort_by(|a, b| a.recipient.cmp(&b.recipient));
    let seen: Vec<(&str, &str, Option<&str>)> = listed
        .iter()
        .map(|x| {
            (
                x.recipient.as_str(),
                x.provider.as_str(),
                x.error_code.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("+254711000041", "vonage-eu", Some("7")),
            ("+254711000042", "vonage-eu", Some("3")),
        ]
    );
    s.stop().await;
}
on_both_backends!(a_barred_number_and_a_receipt_saying_it_is_inactive_suppress_the_recipient);

/// A Vonage double that accepts every message as `0C000000217B7F02`.
async fn accepting_double() -> MockServer {
    let double = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"message-count":"1","messages":[{"to":"254711000001","message-id":"0C000000217B7F02","status":"0","remaining-balance":"15.53590000","message-price":"0.03330000","network":"63902"}]}"#,
            "application/json",
        ))
        .mount(&double)
        .await;
    double
}

/// Sends an OTP through the Vonage provider; returns its id once sent.
async fn sent_otp(s: &TestServer, key: &str) -> String {
    let r = s
        .post(
            "/v1/otp",
            key,
            &json!({ "to": "+254711000001", "code": "482913" }),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.t.drain().await;
    assert_eq!(s.t.delivery(&id).await.status, DeliveryStatus::Sent);
    id
}

/// The query string of a DLR signed as Vonage signs it.
fn signed_query(fields: &[(&str, &str)]) -> String {
    let sig = vonage_sig(fields);
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .append_pair("sig", &sig)
        .finish()
}

async fn callbacks_counted(s: &TestServer) -> String {
    s.client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn a_vonage_receipt_sent_by_get_moves_its_delivery_and_a_forged_or_stale_one_does_not(
    backend: Backend,
) {
    let double = accepting_double().await;
    let s = spawn_app_with(backend, &receipts_config(&double.uri())).await;
    let key = s.key("receipts", &["send", "read"]).await;
    let id = sent_otp(&s, &key).await;
    let get = |query: String, url: &'static str| {
        let client = s.client.clone();
        let url = s.url(&format!("{url}?{query}"));
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    let now = s.t.clock.now().timestamp();
    let fresh = now.to_string();
    let stale = (now - 600).to_string();
    let good = dlr("0C000000217B7F02", "delivered", "0.03200000", &fresh);

    // A sig over other fields; a sig over a receipt ten minutes old.
    let mut forged = dlr("0C000000217B7F02", "failed", "0.03200000", &fresh);
    let sig = vonage_sig(&good);
    forged.push(("sig", &sig));
    let forged = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&forged)
        .finish();
    assert_eq!(get(forged, "/v1/callbacks/vonage").await, 403);
    let old = dlr("0C000000217B7F02", "delivered", "0.03200000", &stale);
    assert_eq!(get(signed_query(&old), "/v1/callbacks/vonage").await, 403);
    assert_eq!(s.t.delivery(&id).await.status, DeliveryStatus::Sent);

    // Signed now, by GET to the kind's path and to the provider's name.
    assert_eq!(get(signed_query(&good), "/v1/callbacks/vonage").await, 200);
    let r = s.get(&format!("/v1/deliveries/{id}"), &key).await;
    let shown: Value = r.json().await.unwrap();
    assert_eq!(shown["status"], "delivered");
    assert_eq!(shown["cost"]["amount"], "0.032", "the receipt's price");
    let receipts = shown["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["fields"]["network-code"], "63902");
    assert!(receipts[0]["fields"].get("sig").is_none());
    assert_eq!(
        get(signed_query(&good), "/v1/callbacks/vonage-eu").await,
        200
    );

    let metrics = callbacks_counted(&s).await;
    for line in [
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"bad_signature\"} 2",
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"applied\"} 1",
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"unchanged\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    s.stop().await;
}
on_both_backends!(
    a_vonage_receipt_sent_by_get_moves_its_delivery_and_a_forged_or_stale_one_does_not
);

async fn a_signed_vonage_receipt_older_than_receipt_max_age_is_refused_like_a_forged_one(
    backend: Backend,
) {
    let double = accepting_double().await;
    let s = spawn_app_with(
        backend,
        &receipts_config_with(&double.uri(), "receipt_max_age = \"2m\""),
    )
    .await;
    let key = s.key("receipts", &["send", "read"]).await;
    let id = sent_otp(&s, &key).await;
    let post = |fields: Vec<(&str, &str)>| {
        let client = s.client.clone();
        let url = s.url("/v1/callbacks/vonage");
        let mut form: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        form.push(("sig".into(), vonage_sig(&fields)));
        async move {
            client
                .post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Signed, then held back three minutes: past the provider's two.
    let signed_at = s.t.clock.now().timestamp().to_string();
    let held = dlr("0C000000217B7F02", "failed", "0.03330000", &signed_at);
    s.t.advance(Duration::from_secs(180)).await;
    assert_eq!(post(held).await, 403);
    let r = s.get(&format!("/v1/deliveries/{id}"), &key).await;
    let shown: Value = r.json().await.unwrap();
    assert_eq!(shown["status"], "sent", "a stale receipt changes nothing");
    assert_eq!(shown["receipts"].as_array().unwrap().len(), 0);
    // One signed now is taken.
    let now = s.t.clock.now().timestamp().to_string();
    assert_eq!(
        post(dlr("0C000000217B7F02", "delivered", "0.03330000", &now)).await,
        200
    );
    assert_eq!(s.t.delivery(&id).await.status, DeliveryStatus::Delivered);
    let metrics = callbacks_counted(&s).await;
    for line in [
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"bad_signature\"} 1",
        "tuma_callbacks_total{provider=\"vonage\",outcome=\"applied\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    s.stop().await;
}
on_both_backends!(a_signed_vonage_receipt_older_than_receipt_max_age_is_refused_like_a_forged_one);
