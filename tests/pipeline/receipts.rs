//! Delivery receipts through the HTTP API: Twilio status callbacks (signed,
//! forged, out of order, repeated, for unknown messages) and Africa's Talking
//! delivery reports (right and wrong URL secret), against real adapters that
//! sent through wiremock doubles. The Twilio signature is computed here from
//! the spec, independently of tuma's own code.

use std::time::Duration;

use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::on_both_backends;
use crate::support::*;

/// The values `.cargo/config.toml` puts in the test environment.
const TWILIO_TOKEN: &str = "twilio-callback-token-8c1d4e";
const AT_SECRET: &str = "at-report-secret-4f7b2c9d1e6a8b3c";
const CALLBACK_URL: &str = "https://tuma.example.org/v1/callbacks/twilio";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

/// Twilio takes +254 numbers, Africa's Talking +255 ones; the rest go to the outbox.
fn extra(twilio: &str, at: &str) -> String {
    format!(
        r#"
[[provider]]
name = "twilio"
kind = "twilio"
account_sid = "{ACCOUNT}"
auth_token_env = "TUMA_TEST_TWILIO_TOKEN"
from = "+15005550006"
base_url = "{twilio}"
status_callback_url = "{CALLBACK_URL}"
timeout = "2s"

[[provider]]
name = "africastalking"
kind = "africastalking"
username = "mtaadao"
api_key_env = "TUMA_TEST_AT_API_KEY"
callback_secret_env = "TUMA_TEST_AT_CALLBACK_SECRET"
base_url = "{at}"
timeout = "2s"

[[route]]
channel = "sms"
prefix = "+254"
providers = ["twilio"]

[[route]]
channel = "sms"
prefix = "+255"
providers = ["africastalking"]

[receipts]
no_receipt_after = "24h"
"#
    )
}

/// base64(HMAC-SHA1(token, url + each parameter sorted by name as name+value)),
/// written from docs/providers.md.
fn twilio_signature(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut data = String::from(url);
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[test]
fn the_test_signature_reproduces_twilios_worked_example() {
    let params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ];
    assert_eq!(
        twilio_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params
        ),
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    );
}

async fn mount_twilio(server: &MockServer, sids: &[&str]) {
    for sid in sids {
        Mock::given(method("POST"))
            .and(path(format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")))
            .and(body_string_contains(
                "StatusCallback=https%3A%2F%2Ftuma.example.org%2Fv1%2Fcallbacks%2Ftwilio",
            ))
            .respond_with(ResponseTemplate::new(201).set_body_raw(
                format!(
                    r#"{{"sid":"{sid}","status":"queued","num_segments":"1","price":null,"price_unit":"USD","error_code":null}}"#
                ),
                "application/json",
            ))
            .up_to_n_times(1)
            .mount(server)
            .await;
    }
}

async fn mount_at(server: &MockServer, id: &str) {
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .respond_with(ResponseTemplate::new(201).set_body_raw(
            format!(
                r#"{{"SMSMessageData":{{"Message":"Sent to 1/1 Total Cost: TZS 20.0000","Recipients":[{{"statusCode":101,"number":"+255711000001","status":"Success","cost":"TZS 20.0000","messageId":"{id}"}}]}}}}"#
            ),
            "application/json",
        ))
        .mount(server)
        .await;
}

struct Rig {
    s: TestServer,
    key: String,
    twilio: MockServer,
    _at: MockServer,
}

async fn rig(backend: Backend, sids: &[&str], at_id: &str) -> Rig {
    rig_with(backend, MockServer::start().await, sids, at_id).await
}

/// A rig over the given Twilio double (for tests that mount more on it).
async fn rig_with(backend: Backend, twilio: MockServer, sids: &[&str], at_id: &str) -> Rig {
    let at = MockServer::start().await;
    mount_twilio(&twilio, sids).await;
    mount_at(&at, at_id).await;
    let s = spawn_app_with(backend, &extra(&twilio.uri(), &at.uri())).await;
    let key = s.key("receipts", &["send", "read"]).await;
    Rig {
        s,
        key,
        twilio,
        _at: at,
    }
}

impl Rig {
    /// Sends an OTP to `to` and delivers it through the doubles; returns its id.
    async fn sent(&self, to: &str) -> String {
        let r = self
            .s
            .post("/v1/otp", &self.key, &json!({ "to": to, "code": "482913" }))
            .await;
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        self.s.t.drain().await;
        assert_eq!(self.status(&id).await, "sent");
        id
    }

    async fn show(&self, id: &str) -> Value {
        let r = self.s.get(&format!("/v1/deliveries/{id}"), &self.key).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn status(&self, id: &str) -> String {
        self.show(id).await["status"].as_str().unwrap().to_owned()
    }

    /// Posts a Twilio callback with the given signature header (or none).
    async fn twilio(&self, params: &[(&str, &str)], signature: Option<&str>) -> u16 {
        let mut req = self
            .s
            .client
            .post(self.s.url("/v1/callbacks/twilio"))
            .form(params);
        if let Some(sig) = signature {
            req = req.header("X-Twilio-Signature", sig);
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// Posts a Twilio callback signed as Twilio would, over `url`.
    async fn signed(&self, url: &str, params: &[(&str, &str)]) -> u16 {
        let sig = twilio_signature(TWILIO_TOKEN, url, params);
        self.twilio(params, Some(&sig)).await
    }

    async fn at_report(&self, secret: &str, params: &[(&str, &str)]) -> u16 {
        self.s
            .client
            .post(
                self.s
                    .url(&format!("/v1/callbacks/africastalking/{secret}")),
            )
            .form(params)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn metrics(&self) -> String {
        self.s
            .client
            .get(self.s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn callback<'a>(sid: &'a str, status: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", ACCOUNT),
        ("From", "+15005550006"),
        ("MessageSid", sid),
        ("MessageStatus", status),
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("To", "+254711000001"),
    ]
}

async fn twilio_callbacks_move_a_delivery_forward_only_and_forged_ones_change_nothing(
    backend: Backend,
) {
    let sid = "SM11110000000000000000000000000001";
    let rig = rig(backend, &[sid], "ATXid_unused").await;
    let id = rig.sent("+254711000001").await;
    let shown = rig.show(&id).await;
    assert_eq!(shown["provider"], "twilio");
    assert_eq!(shown["provider_message_id"], sid);

    // `sent` is recorded and keeps the delivery sent.
    assert_eq!(rig.signed(CALLBACK_URL, &callback(sid, "sent")).await, 200);
    assert_eq!(rig.status(&id).await, "sent");

    // Forged: a wrong signature, a signature with another token, none at all.
    let delivered = callback(sid, "delivered");
    assert_eq!(
        rig.twilio(&delivered, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
            .await,
        403
    );
    let other_token = twilio_signature("not-the-token", CALLBACK_URL, &delivered);
    assert_eq!(rig.twilio(&delivered, Some(&other_token)).await, 403);
    assert_eq!(rig.twilio(&delivered, None).await, 403);
    // Signed over other parameters than those sent.
    let sig = twilio_signature(TWILIO_TOKEN, CALLBACK_URL, &callback(sid, "sent"));
    assert_eq!(rig.twilio(&delivered, Some(&sig)).await, 403);
    let shown = rig.show(&id).await;
    assert_eq!(shown["status"], "sent");
    assert_eq!(shown["receipts"].as_array().unwrap().len(), 1);

    // Signed over the URL with its explicit port: delivered.
    let with_port = "https://tuma.example.org:443/v1/callbacks/twilio";
    assert_eq!(rig.signed(with_port, &delivered).await, 200);
    let shown = rig.show(&id).await;
    assert_eq!(shown["status"], "delivered");
    assert_eq!(shown["display_status"], "delivered");
    assert!(shown["delivered_at"].is_string());

    // Repeated, then late and contradicting callbacks change nothing.
    assert_eq!(rig.signed(CALLBACK_URL, &delivered).await, 200);
    assert_eq!(rig.signed(CALLBACK_URL, &callback(sid, "sent")).await, 200);
    let mut failed = callback(sid, "undelivered");
    failed.push(("ErrorCode", "30003"));
    assert_eq!(rig.signed(CALLBACK_URL, &failed).await, 200);
    let shown = rig.show(&id).await;
    assert_eq!(shown["status"], "delivered");
    assert_eq!(shown["last_error"], Value::Null);
    let receipts = shown["receipts"].as_array().unwrap();
    let summary: Vec<(&str, bool)> = receipts
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap(),
                r["applied"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("sent", false),
            ("delivered", true),
            ("delivered", false),
            ("sent", false),
            ("undelivered", false),
        ]
    );
    assert_eq!(receipts[1]["fields"]["MessageSid"], sid);
    assert_eq!(receipts[1]["attempt"], 1);

    // A message tuma never sent: 200 so Twilio stops, counted.
    let unknown = callback("SM99990000000000000000000000000009", "delivered");
    assert_eq!(rig.signed(CALLBACK_URL, &unknown).await, 200);

    let metrics = rig.metrics().await;
    for line in [
        "tuma_callbacks_total{provider=\"twilio\",outcome=\"bad_signature\"} 4",
        "tuma_callbacks_total{provider=\"twilio\",outcome=\"applied\"} 1",
        "tuma_callbacks_total{provider=\"twilio\",outcome=\"unchanged\"} 4",
        "tuma_callbacks_total{provider=\"twilio\",outcome=\"unknown_message\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    rig.s.stop().await;
}
on_both_backends!(twilio_callbacks_move_a_delivery_forward_only_and_forged_ones_change_nothing);

async fn an_undelivered_twilio_callback_records_the_async_error_and_stays_final(backend: Backend) {
    let sid = "SM22220000000000000000000000000002";
    let rig = rig(backend, &[sid], "ATXid_unused").await;
    let id = rig.sent("+254711000002").await;
    let mut failed = callback(sid, "undelivered");
    failed.push(("ErrorCode", "30007"));
    assert_eq!(rig.signed(CALLBACK_URL, &failed).await, 200);
    let shown = rig.show(&id).await;
    assert_eq!(shown["status"], "undelivered");
    assert_eq!(shown["last_error"], "30007 filtered as spam (permanent)");
    assert_eq!(shown["delivered_at"], Value::Null);
    // A `delivered` arriving after the final `undelivered` changes nothing.
    assert_eq!(
        rig.signed(CALLBACK_URL, &callback(sid, "delivered")).await,
        200
    );
    assert_eq!(rig.status(&id).await, "undelivered");
    // A signed callback without a MessageSid is refused as malformed.
    assert_eq!(
        rig.signed(CALLBACK_URL, &[("MessageStatus", "delivered")])
            .await,
        422
    );
    rig.s.stop().await;
}
on_both_backends!(an_undelivered_twilio_callback_records_the_async_error_and_stays_final);

async fn africas_talking_reports_need_the_url_secret(backend: Backend) {
    let at_id = "ATXid_7c9e0000000000000000000000000001";
    let rig = rig(backend, &[], at_id).await;
    let id = rig.sent("+255711000001").await;
    assert_eq!(rig.show(&id).await["provider"], "africastalking");

    // A wrong secret: 404, nothing recorded.
    let success = [
        ("id", at_id),
        ("status", "Success"),
        ("phoneNumber", "+255711000001"),
        ("networkCode", "64002"),
        ("retryCount", "0"),
    ];
    assert_eq!(rig.at_report("not-the-secret", &success).await, 404);
    let shown = rig.show(&id).await;
    assert_eq!(shown["status"], "sent");
    assert_eq!(shown["receipts"].as_array().unwrap().len(), 0);

    // Buffered keeps it sent; Success delivers it; a late Failed changes nothing.
    let buffered = [("id", at_id), ("status", "Buffered")];
    assert_eq!(rig.at_report(AT_SECRET, &buffered).await, 200);
    assert_eq!(rig.status(&id).await, "sent");
    assert_eq!(rig.at_report(AT_SECRET, &success).await, 200);
    let failed = [
        ("id", at_id),
        ("status", "Failed"),
        ("failureReason", "DeliveryFailure"),
    ];
    assert_eq!(rig.at_report(AT_SECRET, &failed).await, 200);
    let shown = rig.show(&id).await;
    assert_eq!(shown["status"], "delivered");
    let applied: Vec<bool> = shown["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["applied"].as_bool().unwrap())
        .collect();
    assert_eq!(applied, [false, true, false]);
    assert_eq!(shown["receipts"][1]["fields"]["networkCode"], "64002");

    let metrics = rig.metrics().await;
    assert!(
        metrics.contains(
            "tuma_callbacks_total{provider=\"africastalking\",outcome=\"wrong_secret\"} 1"
        ),
        "{metrics}"
    );
    rig.s.stop().await;
    // The secret in the path never reaches a log line.
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(!logs.contains(AT_SECRET));
}
on_both_backends!(africas_talking_reports_need_the_url_secret);

async fn a_failed_africas_talking_report_makes_the_delivery_undelivered(backend: Backend) {
    let at_id = "ATXid_7c9e0000000000000000000000000002";
    let rig = rig(backend, &[], at_id).await;
    let id = rig.sent("+255711000002").await;
    let rejected = [
        ("id", at_id),
        ("status", "Rejected"),
        ("failureReason", "UserInBlackList"),
    ];
    assert_eq!(rig.at_report(AT_SECRET, &rejected).await, 200);
    let shown = rig.show(&id).await;
    assert_eq!(shown["status"], "undelivered");
    assert_eq!(shown["last_error"], "Rejected: UserInBlackList");
    // An unknown message id with the right secret: 200, nothing recorded.
    assert_eq!(
        rig.at_report(AT_SECRET, &[("id", "ATXid_nobody"), ("status", "Success")])
            .await,
        200
    );
    rig.s.stop().await;
}
on_both_backends!(a_failed_africas_talking_report_makes_the_delivery_undelivered);

async fn a_sent_delivery_without_a_receipt_past_the_horizon_shows_no_receipt(backend: Backend) {
    let sid = "SM33330000000000000000000000000003";
    let rig = rig(backend, &[sid], "ATXid_unused").await;
    let id = rig.sent("+254711000003").await;
    assert_eq!(rig.show(&id).await["display_status"], "sent");
    rig.s.t.clock.advance(Duration::from_secs(25 * 3600));
    let shown = rig.show(&id).await;
    assert_eq!(shown["status"], "sent", "never invented as delivered");
    assert_eq!(shown["display_status"], "no receipt");
    let list: Value = rig
        .s
        .get("/v1/deliveries", &rig.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["display_status"], "no receipt");
    // A receipt that comes after all still settles it.
    assert_eq!(
        rig.signed(CALLBACK_URL, &callback(sid, "delivered")).await,
        200
    );
    assert_eq!(rig.show(&id).await["display_status"], "delivered");
    rig.s.stop().await;
}
on_both_backends!(a_sent_delivery_without_a_receipt_past_the_horizon_shows_no_receipt);

async fn mount_fetch(server: &MockServer, sid: &str, status: u16, body: &str, times: Option<u64>) {
    let mock = Mock::given(method("GET"))
        .and(path(format!(
            "/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json"
        )))
        .respond_with(
            ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json"),
        );
    match times {
        Some(n) => mock.up_to_n_times(n).mount(server).await,
        None => mock.mount(server).await,
    }
}

async fn reconciliation_fetches_prices_settles_silent_deliveries_and_gives_up(backend: Backend) {
    let (s1, s2, s3, s4) = (
        "SM44440000000000000000000000000001",
        "SM44440000000000000000000000000002",
        "SM44440000000000000000000000000003",
        "SM44440000000000000000000000000004",
    );
    let rig = rig_with(
        backend,
        MockServer::start().await,
        &[s1, s2, s3, s4],
        "ATXid_unused",
    )
    .await;
    let twilio = &rig.twilio;
    let d1 = rig.sent("+254711000011").await;
    let d2 = rig.sent("+254711000012").await;
    let d3 = rig.sent("+254711000013").await;
    let d4 = rig.sent("+254711000014").await;

    // Delivered and priced; unknown to Twilio; no price yet; rate-limited once.
    mount_fetch(
        twilio,
        s1,
        200,
        &format!(r#"{{"sid":"{s1}","status":"delivered","price":"-0.00750","price_unit":"USD","num_segments":"2","error_code":null}}"#),
        None,
    )
    .await;
    mount_fetch(
        twilio,
        s2,
        404,
        r#"{"code":20404,"message":"The requested resource was not found","more_info":"https://www.twilio.com/docs/errors/20404","status":404}"#,
        None,
    )
    .await;
    mount_fetch(
        twilio,
        s3,
        200,
        &format!(r#"{{"sid":"{s3}","status":"sent","price":null,"price_unit":"USD","num_segments":"1","error_code":null}}"#),
        None,
    )
    .await;
    mount_fetch(
        twilio,
        s4,
        429,
        r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
        Some(1),
    )
    .await;
    mount_fetch(
        twilio,
        s4,
        200,
        &format!(r#"{{"sid":"{s4}","status":"undelivered","price":"-0.0075","price_unit":"USD","num_segments":"1","error_code":30003}}"#),
        None,
    )
    .await;

    let app = rig.s.t.app.clone();
    // Too early: nothing is fetched before receipts.reconcile_after (10m).
    let early = tuma::reconcile::reconcile(&app).await.unwrap();
    assert_eq!(early, tuma::reconcile::ReconcileReport::default());

    rig.s.t.clock.advance(Duration::from_secs(11 * 60));
    let first = tuma::reconcile::reconcile(&app).await.unwrap();
    assert_eq!(
        (first.priced, first.settled, first.given_up, first.deferred),
        (1, 1, 1, 1)
    );
    let shown = rig.show(&d1).await;
    assert_eq!(shown["status"], "delivered", "settled by the fetch");
    assert_eq!(shown["cost"]["currency"], "USD");
    assert_eq!(shown["cost"]["estimate"], false);
    assert_eq!(shown["attempts"][0]["cost"]["amount"], "0.0075");
    assert_eq!(shown["segments"], 2);
    assert_eq!(shown["price_note"], "actual price");
    assert_eq!(shown["receipts"][0]["fields"]["source"], "fetch");
    let shown = rig.show(&d2).await;
    assert!(
        shown["price_note"].as_str().unwrap().starts_with("gave up"),
        "{shown}"
    );
    assert_eq!(shown["status"], "sent");
    assert_eq!(rig.show(&d3).await["price_reconciled_at"], Value::Null);
    assert_eq!(rig.show(&d4).await["status"], "sent", "429: try later");

    let second = tuma::reconcile::reconcile(&app).await.unwrap();
    assert_eq!(
        (
            second.priced,
            second.settled,
            second.given_up,
            second.deferred
        ),
        (1, 1, 0, 0)
    );
    let shown = rig.show(&d4).await;
    assert_eq!(shown["status"], "undelivered");
    assert_eq!(shown["last_error"], "30003 unreachable handset (transient)");
    assert_eq!(shown["cost"]["estimate"], false);
    assert_eq!(shown["attempts"][0]["cost"]["amount"], "0.0075");

    // Past receipts.give_up_after (48h) the price is no longer asked for.
    rig.s.t.clock.advance(Duration::from_secs(49 * 3600));
    let last = tuma::reconcile::reconcile(&app).await.unwrap();
    assert_eq!((last.given_up, last.priced), (1, 0));
    let shown = rig.show(&d3).await;
    assert!(
        shown["price_note"]
            .as_str()
            .unwrap()
            .contains("give_up_after")
    );
    assert_eq!(shown["display_status"], "no receipt");

    // The whole life, as `tuma deliveries show` prints it.
    let show = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuma"))
            .env("TUMA_CONFIG", rig.s.t.db.path().join("providers.toml"))
            .env("DATABASE_URL", &rig.s.t.db.url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = show(&["deliveries", "show", &d1]);
    for expected in [
        "status     delivered",
        "delivered  ",
        "cost       ",
        "price      actual price",
        "receipt #1 twilio",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }
    let json: Value =
        serde_json::from_str(&show(&["deliveries", "show", &d1, "--format", "json"])).unwrap();
    assert_eq!(json["status"], "delivered");
    assert!(json["delivered_at"].is_string());
    assert_eq!(json["cost"]["estimate"], false);
    assert_eq!(json["receipts"][0]["status"], "delivered");
    rig.s.stop().await;
}
on_both_backends!(reconciliation_fetches_prices_settles_silent_deliveries_and_gives_up);

/// A USD budget over OTPs, with Twilio's +254 sends estimated at 0.05 USD.
const OTP_BUDGET: &str = r#"
[[price]]
provider = "twilio"
prefix = "+254"
per_segment = "0.0500"
currency = "USD"

[[budget]]
currency = "USD"
period = "month"
limit = "1.00"
alert_at = [0.8, 1.0]
kinds = ["otp"]
"#;

async fn a_reconciled_price_replaces_the_estimate_in_the_spend_of_the_month_it_was_sent_in(
    backend: Backend,
) {
    use tuma::clock::Clock;
    let (s1, s2, s3) = (
        "SM55550000000000000000000000000001",
        "SM55550000000000000000000000000002",
        "SM55550000000000000000000000000003",
    );
    let twilio = MockServer::start().await;
    let at_double = MockServer::start().await;
    mount_twilio(&twilio, &[s1, s2, s3]).await;
    let s = spawn_app_with(
        backend,
        &format!("{}\n{OTP_BUDGET}", extra(&twilio.uri(), &at_double.uri())),
    )
    .await;
    let rig = Rig {
        key: s.key("receipts", &["send", "read"]).await,
        s,
        twilio,
        _at: at_double,
    };
    // Sent in the last minutes of December, priced in January.
    let december: chrono::DateTime<chrono::Utc> = "2026-12-31T23:50:00Z".parse().unwrap();
    let now = rig.s.t.clock.now();
    assert!(now < december, "the test's month is still ahead");
    rig.s.t.clock.advance((december - now).to_std().unwrap());
    let lower = rig.sent("+254711000021").await;
    let higher = rig.sent("+254711000022").await;
    let unpriced = rig.sent("+254711000023").await;
    let app = rig.s.t.app.clone();
    let budget = |at| {
        let app = app.clone();
        async move {
            let status = tuma::spend::status(&app.db, &app.config, at).await.unwrap();
            assert_eq!(status[0].budget, "USD/month");
            (status[0].spent.micros, status[0].reserved.micros)
        }
    };
    assert_eq!(budget(december).await, (150_000, 0), "three estimates");

    mount_fetch(
        &rig.twilio,
        s1,
        200,
        &format!(r#"{{"sid":"{s1}","status":"delivered","price":"-0.00750","price_unit":"USD","num_segments":"1","error_code":null}}"#),
        None,
    )
    .await;
    mount_fetch(
        &rig.twilio,
        s2,
        200,
        &format!(r#"{{"sid":"{s2}","status":"delivered","price":"-0.09000","price_unit":"USD","num_segments":"1","error_code":null}}"#),
        None,
    )
    .await;
    mount_fetch(
        &rig.twilio,
        s3,
        200,
        &format!(r#"{{"sid":"{s3}","status":"sent","price":null,"price_unit":"USD","num_segments":"1","error_code":null}}"#),
        None,
    )
    .await;
    rig.s.t.clock.advance(Duration::from_secs(11 * 60));
    let january = rig.s.t.clock.now();
    assert_eq!(january.format("%Y-%m").to_string(), "2027-01");
    let round = tuma::reconcile::reconcile(&app).await.unwrap();
    assert_eq!(round.priced, 2);
    assert_eq!(rig.show(&lower).await["cost"]["amount"], "0.0075");
    assert_eq!(rig.show(&higher).await["cost"]["amount"], "0.09");
    assert_eq!(rig.show(&unpriced).await["cost"]["estimate"], true);

    // December's spend is now actual-else-estimate of December's sends:
    // 0.0075 + 0.09 + 0.05 (still an estimate).
    let sent_in_december: i64 = {
        let mut total = 0;
        for id in [&lower, &higher, &unpriced] {
            total += rig.s.t.delivery(id).await.row.cost_micros.unwrap();
        }
        total
    };
    assert_eq!(sent_in_december, 147_500);
    assert_eq!(budget(december).await, (sent_in_december, 0));
    assert_eq!(budget(january).await, (0, 0), "January spent nothing");
    // A price already recorded is not applied twice.
    let again = tuma::reconcile::reconcile(&app).await.unwrap();
    assert_eq!(again.priced, 0);
    assert_eq!(budget(december).await.0, 147_500);

    rig.s.stop().await;
}
on_both_backends!(
    a_reconciled_price_replaces_the_estimate_in_the_spend_of_the_month_it_was_sent_in
);
