//! The Vonage adapter against local doubles that answer as Vonage's SMS API
//! documents (200 with one `messages[]` entry per part, `status` "0" or an
//! error status with `error-text`), and its delivery receipts, signed and
//! unsigned. Everything binds 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::Utc;
use reqwest::{StatusCode, Url};
use secrecy::SecretString;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::receipt::{dlr_fields, vonage_verdict};
use super::signing::{sign, verify};
use super::{
    Alert, Class, STATUS, Signature, SignatureMethod, Vonage, VonageAuth, VonageConfig, classify,
};
use crate::domain::DeliveryKind;
use crate::domain::email::EmailAddress;
use crate::domain::money::Currency;
use crate::domain::phone::PhoneNumber;
use crate::domain::receipt::ReceiptVerdict;
use crate::domain::unknown::UnknownCause;
use crate::providers::capability::{ReceiptCapability, ReceiptRefusal, ReceiptRequest};
use crate::providers::{Content, OutgoingMessage, Provider, SendError};

const API_SECRET: &str = "vonage-api-secret-3c9e71";
const SIG_SECRET: &str = "vonage-signature-secret-8d2f4a";
const TO: &str = "+254711000001";
const TEXT: &str = "Your code is 482913";

fn eur() -> Currency {
    "EUR".parse().expect("EUR")
}

fn config(base_url: &str) -> VonageConfig {
    VonageConfig {
        api_key: "a1b2c3d4".into(),
        auth: VonageAuth::ApiSecret(SecretString::from(API_SECRET)),
        signature: None,
        from: "MTAADAO".into(),
        currency: eur(),
        base_url: Url::parse(base_url).expect("URL"),
        callback_url: Some(
            Url::parse("https://tuma.example.org/v1/callbacks/vonage").expect("URL"),
        ),
        receipt_max_age: super::config::DEFAULT_RECEIPT_MAX_AGE,
    }
}

fn signed_config(base_url: &str, method: SignatureMethod) -> VonageConfig {
    VonageConfig {
        auth: VonageAuth::Signed,
        signature: Some(Signature {
            secret: SecretString::from(SIG_SECRET),
            method,
        }),
        ..config(base_url)
    }
}

fn sms(text: &str) -> OutgoingMessage {
    OutgoingMessage {
        delivery_id: "019ac1d2-0000-7000-8000-000000000001".into(),
        kind: DeliveryKind::Otp,
        content: Content::Sms {
            to: PhoneNumber::parse_e164(TO).expect("number"),
            text: text.into(),
        },
        code: None,
        valid_for: Some(Duration::from_secs(300)),
    }
}

/// One part, as Vonage's docs show it.
fn part(id: &str, price: &str) -> String {
    format!(
        r#"{{"to":"254711000001","message-id":"{id}","status":"0","remaining-balance":"15.53590000","message-price":"{price}","network":"63902","client-ref":"019ac1d2-0000-7000-8000-000000000001"}}"#
    )
}

fn answer(parts: &[String]) -> String {
    format!(
        r#"{{"message-count":"{}","messages":[{}]}}"#,
        parts.len(),
        parts.join(",")
    )
}

fn refused(status: &str, text: &str) -> String {
    format!(r#"{{"message-count":"1","messages":[{{"status":"{status}","error-text":"{text}"}}]}}"#)
}

async fn double(status: u16, body: String) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .respond_with(ResponseTemplate::new(status).set_body_raw(body, "application/json"))
        .mount(&server)
        .await;
    server
}

fn form_of(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

fn value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------- config

fn parse(text: &str) -> Result<VonageConfig, (String, String)> {
    let table: toml::Table = toml::from_str(text).expect("TOML");
    VonageConfig::from_table_with(table, Path::new("."), |var: &str| match var {
        "VONAGE_API_SECRET" => Ok(SecretString::from(API_SECRET)),
        "VONAGE_SIGNATURE_SECRET" => Ok(SecretString::from(SIG_SECRET)),
        other => Err(format!("environment variable {other} is not set")),
    })
}

#[test]
fn the_documented_example_parses_and_bad_keys_are_refused_by_name() {
    let c = parse(
        r#"api_key = "a1b2c3d4"
api_secret_env = "VONAGE_API_SECRET"
signature_secret_env = "VONAGE_SIGNATURE_SECRET"
signature_method = "sha256"
from = "+447700900000"
currency = "eur"
callback_url = "https://tuma.example.org/v1/callbacks/vonage""#,
    )
    .expect("parses");
    assert_eq!(c.from, "447700900000", "a number is sent without +");
    assert_eq!(c.currency, eur());
    assert!(matches!(c.auth, VonageAuth::ApiSecret(_)));
    assert_eq!(
        c.signature.as_ref().map(|s| s.method),
        Some(SignatureMethod::Sha256)
    );
    assert_eq!(c.base_url.as_str(), "https://rest.nexmo.com/");
    let signed_only = parse(
        r#"api_key = "a1b2c3d4"
signature_secret_env = "VONAGE_SIGNATURE_SECRET"
from = "MTAADAO"
currency = "USD""#,
    )
    .expect("parses");
    assert!(matches!(signed_only.auth, VonageAuth::Signed));
    assert_eq!(
        signed_only.signature.map(|s| s.method),
        Some(SignatureMethod::Md5Hash),
        "md5hash is Vonage's default"
    );
    let base = "api_key = \"a1b2c3d4\"\napi_secret_env = \"VONAGE_API_SECRET\"\nfrom = \"MTAADAO\"\ncurrency = \"EUR\"\n";
    for (text, key) in [
        (
            base.replace("api_secret_env = \"VONAGE_API_SECRET\"\n", ""),
            "api_secret_env",
        ),
        (
            base.replace("VONAGE_API_SECRET", "UNSET_VAR"),
            "api_secret_env",
        ),
        (base.replace("\"EUR\"", "\"KSH\""), "currency"),
        (base.replace("\"EUR\"", "\"EURO\""), "currency"),
        (base.replace("MTAADAO", "A-SENDER-TOO-LONG"), "from"),
        (base.replace("a1b2c3d4", ""), "api_key"),
        (
            format!("{base}signature_method = \"sha256\"\n"),
            "signature_method",
        ),
        (
            format!(
                "{base}signature_secret_env = \"VONAGE_SIGNATURE_SECRET\"\nsignature_method = \"sha3\"\n"
            ),
            "signature_method",
        ),
        (format!("{base}base_url = \"ftp://x\"\n"), "base_url"),
        (
            format!("{base}callback_url = \"not a url\"\n"),
            "callback_url",
        ),
        (format!("{base}nope = 1\n"), "nope"),
    ] {
        let (k, reason) = parse(&text).expect_err(&text);
        assert_eq!(k, key, "{text}: {reason}");
    }
    let (_, reason) = parse(&base.replace("VONAGE_API_SECRET", "UNSET_VAR")).unwrap_err();
    assert_eq!(reason, "environment variable UNSET_VAR is not set");
}

// ---------------------------------------------------------------- sending

#[tokio::test]
async fn an_accepted_message_records_its_id_exact_price_and_sends_the_documented_form() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .and(header("Content-Type", "application/x-www-form-urlencoded"))
        .and(body_string_contains("api_key=a1b2c3d4"))
        .and(body_string_contains(format!("api_secret={API_SECRET}")))
        .and(body_string_contains("to=254711000001"))
        .and(body_string_contains("from=MTAADAO"))
        .and(body_string_contains(
            "client-ref=019ac1d2-0000-7000-8000-000000000001",
        ))
        .and(body_string_contains("status-report-req=true"))
        .and(body_string_contains(
            "callback=https%3A%2F%2Ftuma.example.org%2Fv1%2Fcallbacks%2Fvonage",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            answer(&[part("0C000000217B7F02", "0.03330000")]),
            "application/json",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let vonage = Vonage::new(config(&server.uri()), Duration::from_secs(5)).expect("builds");
    let accepted = vonage.send(&sms(TEXT)).await.expect("accepted");
    assert_eq!(accepted.provider_message_id, "0C000000217B7F02");
    assert_eq!(accepted.provider_status.as_deref(), Some("0"));
    let cost = accepted.cost.expect("a price");
    assert_eq!((cost.micros, cost.currency), (33_300, eur()));
    assert_eq!(accepted.segments, Some(1));
    let requests = server.received_requests().await.expect("recorded");
    let form = form_of(&requests[0]);
    assert_eq!(value(&form, "text"), Some(TEXT));
    assert_eq!(
        value(&form, "type"),
        None,
        "GSM-7 text is sent as plain text"
    );
    assert_eq!(
        value(&form, "ttl"),
        Some("300000"),
        "an OTP lives only its TTL"
    );
    assert_eq!(value(&form, "sig"), None);
    assert_eq!(
        value(&form, "status-report-req"),
        Some("true"),
        "the SMS API's boolean, as its spec writes it"
    );
}

#[tokio::test]
async fn a_long_message_records_every_part_and_the_summed_price() {
    let body = answer(&[
        part("62dfdf68-6c7c-479a-a190-5c52f798a787", "0.04120000"),
        part("72ff9536-62d6-455a-9f0b-65f3c265b423", "0.04120000"),
        part("8a0c1e22-0b1d-4c55-a0de-1f2e3d4c5b6a", "0.04125000"),
    ]);
    let accepted = classify(StatusCode::OK, &body, eur()).expect("accepted");
    assert_eq!(
        accepted.parts,
        vec![
            "62dfdf68-6c7c-479a-a190-5c52f798a787",
            "72ff9536-62d6-455a-9f0b-65f3c265b423",
            "8a0c1e22-0b1d-4c55-a0de-1f2e3d4c5b6a"
        ]
    );
    assert_eq!(
        accepted.accepted.provider_message_id,
        "62dfdf68-6c7c-479a-a190-5c52f798a787"
    );
    assert_eq!(accepted.accepted.segments, Some(3));
    assert_eq!(
        accepted.accepted.part_ids, accepted.parts,
        "what the dispatcher records has every part's id"
    );
    assert_eq!(
        accepted.accepted.provider_status.as_deref(),
        Some("0 (3 parts)")
    );
    let cost = accepted.accepted.cost.expect("summed");
    assert_eq!(cost.micros, 123_650, "0.0412 + 0.0412 + 0.04125 exactly");
    assert_eq!(accepted.network.as_deref(), Some("63902"));
    assert_eq!(accepted.remaining_balance.as_deref(), Some("15.53590000"));
    let vague = answer(&[part("a", "0.04120000"), part("b", "0.041200001")]);
    assert_eq!(
        classify(StatusCode::OK, &vague, eur())
            .expect("accepted")
            .accepted
            .cost,
        None,
        "a price that is not exact in micro-units makes the cost unknown, never rounded"
    );
}

#[tokio::test]
async fn a_partly_accepted_long_message_is_sent_as_far_as_it_went() {
    let body = format!(
        r#"{{"message-count":"2","messages":[{},{{"status":"5","error-text":"Internal Error"}}]}}"#,
        part("0C01", "0.03330000")
    );
    let accepted = classify(StatusCode::OK, &body, eur()).expect("accepted, not retried");
    assert_eq!(accepted.parts, vec!["0C01"]);
    assert!(
        accepted.accepted.part_ids.is_empty(),
        "one accepted part is one id, no list of parts"
    );
    assert_eq!(accepted.accepted.segments, Some(2));
    assert_eq!(accepted.accepted.cost.map(|c| c.micros), Some(33_300));
}

#[tokio::test]
async fn unicode_text_is_sent_as_type_unicode() {
    let server = double(200, answer(&[part("0C02", "0.03330000")])).await;
    let vonage = Vonage::new(config(&server.uri()), Duration::from_secs(5)).expect("builds");
    vonage
        .send(&sms("Msimbo wako ni 482913 ✅"))
        .await
        .expect("accepted");
    let requests = server.received_requests().await.expect("recorded");
    let form = form_of(&requests[0]);
    assert_eq!(value(&form, "type"), Some("unicode"));
    assert_eq!(value(&form, "text"), Some("Msimbo wako ni 482913 ✅"));
}

#[tokio::test]
async fn signed_requests_carry_a_timestamp_and_a_sig_instead_of_the_api_secret() {
    for method in [SignatureMethod::Md5Hash, SignatureMethod::Sha512] {
        let server = double(200, answer(&[part("0C03", "0.03330000")])).await;
        let vonage = Vonage::new(signed_config(&server.uri(), method), Duration::from_secs(5))
            .expect("builds");
        vonage.send(&sms(TEXT)).await.expect("accepted");
        let requests = server.received_requests().await.expect("recorded");
        let form = form_of(&requests[0]);
        assert_eq!(value(&form, "api_secret"), None, "{method:?}");
        assert!(value(&form, "timestamp").is_some_and(|t| t.parse::<u64>().is_ok()));
        assert!(
            verify(&form, SIG_SECRET, method),
            "{method:?}: the sig is over the form"
        );
        assert!(!verify(&form, "another secret", method));
    }
}

#[tokio::test]
async fn every_status_of_the_table_is_classified_through_the_adapter() {
    for (status, name, class, alert) in STATUS {
        let body = if class == Class::Accepted {
            answer(&[part("0C04", "0.03330000")])
        } else {
            refused(status, name)
        };
        let server = double(200, body).await;
        let vonage = Vonage::new(config(&server.uri()), Duration::from_secs(5)).expect("builds");
        let outcome = vonage.send(&sms(TEXT)).await;
        match (class, outcome) {
            (Class::Accepted, Ok(a)) => assert_eq!(a.provider_message_id, "0C04"),
            (Class::Permanent, Err(SendError::Permanent { code, message }))
            | (Class::Transient, Err(SendError::Transient { code, message })) => {
                assert_eq!(code.as_deref(), Some(status), "{name}");
                assert!(message.starts_with(name), "{status}: {message}");
            }
            (class, other) => panic!("status {status} ({name}): expected {class:?}, got {other:?}"),
        }
        let config_problem = matches!(status, "4" | "8" | "9" | "14");
        assert_eq!(
            alert == Alert::Yes,
            config_problem,
            "status {status} alerts"
        );
    }
    for (status, class) in [
        ("1", Class::Transient),
        ("5", Class::Transient),
        ("13", Class::Transient),
        ("9", Class::Transient),
    ] {
        assert!(
            STATUS.iter().any(|r| r.0 == status && r.2 == class),
            "{status}"
        );
    }
    for permanent in ["2", "3", "4", "6", "7", "8", "12", "14", "15"] {
        assert!(
            STATUS
                .iter()
                .any(|r| r.0 == permanent && r.2 == Class::Permanent),
            "{permanent}"
        );
    }
    match classify(StatusCode::OK, &refused("99", "New"), eur()) {
        Err(SendError::Transient { code, .. }) => assert_eq!(code.as_deref(), Some("99")),
        other => panic!("an unlisted status is transient: {other:?}"),
    }
}

fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let bytes = capture.0.lock().expect("not poisoned").clone();
    (out, String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn status_9_partner_quota_exceeded_is_transient_and_logged_as_an_error_to_top_up() {
    let (result, logs) = logs_of(|| {
        classify(
            StatusCode::OK,
            &refused("9", "Partner quota exceeded"),
            eur(),
        )
    });
    match result {
        Err(SendError::Transient { code, message }) => {
            assert_eq!(code.as_deref(), Some("9"));
            assert!(message.starts_with("Partner Quota Violation"), "{message}");
        }
        other => panic!("status 9 fails over and is retried: {other:?}"),
    }
    assert!(
        logs.contains("ERROR") && logs.contains("top it up"),
        "{logs}"
    );
}

#[tokio::test]
async fn http_errors_are_classified() {
    for (http, body, permanent) in [
        (401, "{\"type\":\"unauthorized\"}".to_owned(), true),
        (400, "bad".to_owned(), true),
        (429, "slow down".to_owned(), false),
        (500, "oops".to_owned(), false),
        (503, String::new(), false),
    ] {
        let server = double(http, body.clone()).await;
        let vonage = Vonage::new(config(&server.uri()), Duration::from_secs(5)).expect("builds");
        match vonage.send(&sms(TEXT)).await {
            Err(SendError::Permanent { .. }) if permanent => {}
            Err(SendError::Transient { .. }) if !permanent => {}
            other => panic!("HTTP {http} {body}: {other:?}"),
        }
    }
    let nobody = Vonage::new(config("http://127.0.0.1:9"), Duration::from_secs(2)).expect("builds");
    assert!(matches!(
        nobody.send(&sms(TEXT)).await,
        Err(SendError::Transient { .. })
    ));
}

#[tokio::test]
async fn a_200_that_neither_accepts_nor_refuses_by_the_table_is_unknown() {
    for (body, said) in [
        ("<html>", "not with JSON"),
        ("", "not with JSON"),
        (
            "{\"message-count\":\"0\",\"messages\":[]}",
            "with no messages",
        ),
        ("{\"message-count\":\"1\"}", "with no messages"),
        (
            "{\"messages\":[{\"status\":\"0\"}]}",
            "a part has no message-id",
        ),
        (
            "{\"messages\":[{\"to\":\"254711000001\",\"message-id\":\"0C01\"}]}",
            "a part has no status",
        ),
    ] {
        let server = double(200, body.to_owned()).await;
        let vonage = Vonage::new(config(&server.uri()), Duration::from_secs(5)).expect("builds");
        match vonage.send(&sms(TEXT)).await {
            Err(SendError::Unknown {
                cause: UnknownCause::UnreadableAnswer,
                message,
            }) => assert!(message.contains(said), "{body}: {message}"),
            other => panic!("HTTP 200 {body}: {other:?}"),
        }
    }
    // A 200 whose every part says no by its status stays a refusal.
    let server = double(200, refused("2", "Missing to param")).await;
    let vonage = Vonage::new(config(&server.uri()), Duration::from_secs(5)).expect("builds");
    assert!(matches!(
        vonage.send(&sms(TEXT)).await,
        Err(SendError::Permanent { code: Some(c), .. }) if c == "2"
    ));
}

#[tokio::test]
async fn email_is_refused_and_no_secret_shows_in_a_dry_run_or_an_echoing_error() {
    let vonage = Vonage::new(config("http://127.0.0.1:9"), Duration::from_secs(2)).expect("builds");
    let email = OutgoingMessage {
        content: Content::Email {
            to: EmailAddress::parse("amina@example.org").expect("email"),
            subject: "Hi".into(),
            text: "Hi".into(),
            html: None,
        },
        ..sms(TEXT)
    };
    assert!(matches!(
        vonage.send(&email).await,
        Err(SendError::Permanent { .. })
    ));
    let dry = vonage.dry_run(&sms(TEXT));
    assert!(dry.starts_with("POST http://127.0.0.1:9/sms/json"), "{dry}");
    assert!(
        dry.contains("api_secret=****") && !dry.contains(API_SECRET),
        "{dry}"
    );
    let echo = double(400, format!("bad request: api_secret={API_SECRET}")).await;
    let vonage = Vonage::new(config(&echo.uri()), Duration::from_secs(5)).expect("builds");
    let error = vonage.send(&sms(TEXT)).await.expect_err("refused");
    assert!(!error.to_string().contains(API_SECRET), "{error}");
    assert!(!format!("{vonage:?}").contains(API_SECRET));
}

// ---------------------------------------------------------------- receipts

/// A DLR as Vonage's docs show it (form fields), with `status` and `price`.
fn dlr(status: &str, price: &str) -> Vec<(String, String)> {
    [
        ("msisdn", "254711000001"),
        ("to", "MTAADAO"),
        ("network-code", "63902"),
        ("messageId", "0C000000217B7F02"),
        ("price", price),
        ("status", status),
        ("scts", "2612051024"),
        ("err-code", if status == "delivered" { "0" } else { "6" }),
        ("api-key", "a1b2c3d4"),
        ("client-ref", "019ac1d2-0000-7000-8000-000000000001"),
        ("message-timestamp", "2026-12-05 10:24:03"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn encode(fields: &[(String, String)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
        .into_bytes()
}

fn receive(
    config: &VonageConfig,
    body: &[u8],
) -> Result<crate::providers::capability::VerifiedReceipt, ReceiptRefusal> {
    receive_at(config, body, Utc::now())
}

fn receive_at(
    config: &VonageConfig,
    body: &[u8],
    received_at: chrono::DateTime<Utc>,
) -> Result<crate::providers::capability::VerifiedReceipt, ReceiptRefusal> {
    let headers = HeaderMap::new();
    config.receive(&ReceiptRequest {
        provider: "vonage",
        headers: &headers,
        url: "/v1/callbacks/vonage",
        body,
        received_at,
    })
}

/// Signs a DLR as Vonage does: `timestamp` (now) and `nonce` added, then `sig`.
fn signed(fields: Vec<(String, String)>, method: SignatureMethod) -> Vec<(String, String)> {
    signed_at(fields, method, Utc::now().timestamp())
}

/// Signs a DLR with the given `timestamp`.
fn signed_at(
    mut fields: Vec<(String, String)>,
    method: SignatureMethod,
    timestamp: i64,
) -> Vec<(String, String)> {
    fields.push(("timestamp".into(), timestamp.to_string()));
    fields.push((
        "nonce".into(),
        "7a4e3a4c-4c2b-4f0a-9d7e-2b1c0e9f8a6d".into(),
    ));
    let sig = sign(&fields, SIG_SECRET, method);
    fields.push(("sig".into(), sig));
    fields
}

#[test]
fn dlr_statuses_map_to_verdicts() {
    for (status, verdict) in [
        ("delivered", ReceiptVerdict::Delivered),
        ("expired", ReceiptVerdict::Undelivered),
        ("failed", ReceiptVerdict::Undelivered),
        ("rejected", ReceiptVerdict::Undelivered),
        ("accepted", ReceiptVerdict::InProgress),
        ("buffered", ReceiptVerdict::InProgress),
        ("unknown", ReceiptVerdict::InProgress),
    ] {
        assert_eq!(vonage_verdict(status), verdict, "{status}");
    }
}

#[test]
fn an_unsigned_dlr_is_read_with_its_price_when_no_signature_secret_is_set() {
    let r = receive(
        &config("https://rest.nexmo.com"),
        &encode(&dlr("delivered", "0.03330000")),
    )
    .expect("taken");
    assert_eq!(r.receipt.provider_message_id, "0C000000217B7F02");
    assert_eq!(r.receipt.verdict, ReceiptVerdict::Delivered);
    assert_eq!(r.receipt.error_code, None, "err-code 0 is no error");
    assert_eq!(
        r.price.map(|p| (p.micros, p.currency)),
        Some((33_300, eur()))
    );
    assert_eq!(r.receipt.fields["network-code"], "63902");
    let failed = receive(
        &config("https://rest.nexmo.com"),
        &encode(&dlr("failed", "0")),
    )
    .expect("taken");
    assert_eq!(failed.receipt.verdict, ReceiptVerdict::Undelivered);
    assert_eq!(failed.receipt.error_code.as_deref(), Some("6"));
    assert_eq!(
        failed.receipt.error.as_deref(),
        Some("Vonage reported the message failed (err-code 6)")
    );
    let mut other = dlr("delivered", "0.0333");
    other.retain(|(k, _)| k != "api-key");
    other.push(("api-key".into(), "ffff0000".into()));
    assert!(
        matches!(
            receive(&config("https://rest.nexmo.com"), &encode(&other)),
            Err(ReceiptRefusal::BadSignature { .. })
        ),
        "another account's receipt is not this provider's"
    );
    let mut no_id = dlr("delivered", "0.0333");
    no_id.retain(|(k, _)| k != "messageId");
    assert!(matches!(
        receive(&config("https://rest.nexmo.com"), &encode(&no_id)),
        Err(ReceiptRefusal::Malformed(m)) if m.0 == "messageId"
    ));
}

#[test]
fn a_signed_dlr_is_taken_in_every_method_and_a_forged_or_unsigned_one_is_refused() {
    for method in [
        SignatureMethod::Md5Hash,
        SignatureMethod::Md5,
        SignatureMethod::Sha1,
        SignatureMethod::Sha256,
        SignatureMethod::Sha512,
    ] {
        let config = signed_config("https://rest.nexmo.com", method);
        let good = signed(dlr("delivered", "0.03330000"), method);
        let r = receive(&config, &encode(&good)).expect("signed");
        assert_eq!(r.receipt.verdict, ReceiptVerdict::Delivered);
        assert!(r.receipt.fields.get("sig").is_none(), "the sig is not kept");
        let mut forged = good.clone();
        for (k, v) in &mut forged {
            if k == "status" {
                *v = "failed".into();
            }
        }
        assert!(matches!(
            receive(&config, &encode(&forged)),
            Err(ReceiptRefusal::BadSignature { .. })
        ));
        assert!(matches!(
            receive(&config, &encode(&dlr("delivered", "0.0333"))),
            Err(ReceiptRefusal::BadSignature { .. })
        ));
        // POST-JSON: the same fields as a JSON object.
        let json: serde_json::Map<String, serde_json::Value> = good
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let body = serde_json::to_vec(&json).expect("JSON");
        assert_eq!(dlr_fields(&body).len(), good.len());
        receive(&config, &body).expect("a signed JSON receipt");
    }
}

#[tokio::test]
async fn a_barred_or_deactivated_number_is_marked_for_suppression_and_other_refusals_are_not() {
    for (status, text, gone) in [
        ("7", "Number Barred", true),
        ("33", "Number De-activated", true),
        ("6", "Invalid Message", false),
        ("15", "Illegal Sender Address - rejected", false),
        ("29", "Non-Whitelisted Destination", false),
        ("3", "Invalid Parameters", false),
    ] {
        let server = double(200, refused(status, text)).await;
        let p = Vonage::new(config(&server.uri()), Duration::from_secs(5)).expect("builds");
        let Err(SendError::Permanent { code, message }) = p.send(&sms(TEXT)).await else {
            panic!("status {status}: expected a permanent error");
        };
        assert_eq!(code.as_deref(), Some(status));
        let reason = p.recipient_gone(code.as_deref(), &message);
        assert_eq!(reason.is_some(), gone, "status {status}");
        if let Some(reason) = reason {
            assert!(reason.contains(&format!("status {status}")), "{reason}");
        }
    }
    assert_eq!(super::recipient_gone(None, "Number Barred"), None);
}

#[test]
fn an_undelivered_receipt_whose_err_code_says_the_number_is_gone_marks_it() {
    let with_code = |status: &str, code: &str| {
        let mut fields = dlr(status, "0");
        fields.retain(|(k, _)| k != "err-code");
        fields.push(("err-code".into(), code.into()));
        receive(&config("https://rest.nexmo.com"), &encode(&fields)).expect("taken")
    };
    for (code, gone) in [
        ("3", true),
        ("4", true),
        ("9", true),
        ("1", false),
        ("2", false),
        ("5", false),
        ("6", false),
        ("7", false),
        ("8", false),
        ("11", false),
        ("12", false),
    ] {
        let r = with_code("failed", code);
        assert_eq!(r.recipient_gone.is_some(), gone, "err-code {code}");
    }
    assert_eq!(
        with_code("delivered", "3").recipient_gone,
        None,
        "only an undelivered receipt says so"
    );
    assert_eq!(
        with_code("rejected", "9")
            .recipient_gone
            .map(|r| r.contains("err-code 9")),
        Some(true)
    );
}

#[test]
fn a_signed_receipt_further_than_receipt_max_age_from_its_arrival_is_refused_like_a_forged_one() {
    let config = signed_config("https://rest.nexmo.com", SignatureMethod::Sha256);
    assert_eq!(
        config.receipt_max_age,
        Duration::from_secs(300),
        "5 minutes by default"
    );
    let now = Utc::now();
    let at = |offset: i64| {
        encode(&signed_at(
            dlr("delivered", "0.03330000"),
            SignatureMethod::Sha256,
            now.timestamp() + offset,
        ))
    };
    receive_at(&config, &at(-299), now).expect("within five minutes");
    receive_at(&config, &at(120), now).expect("a clock a little ahead");
    for (offset, why) in [
        (-301, "five minutes old"),
        (-86_400, "a day old"),
        (301, "from the future"),
    ] {
        match receive_at(&config, &at(offset), now) {
            Err(ReceiptRefusal::BadSignature { detail, log }) => {
                assert!(detail.contains("5m"), "{why}: {detail}");
                assert!(log.contains("receipt_max_age"), "{why}: {log}");
            }
            other => panic!("{why}: {other:?}"),
        }
    }
    // Signed without a timestamp, or with one that is not a number.
    let mut fields = dlr("delivered", "0.0333");
    fields.push(("nonce".into(), "n-1".into()));
    let sig = sign(&fields, SIG_SECRET, SignatureMethod::Sha256);
    fields.push(("sig".into(), sig));
    assert!(matches!(
        receive_at(&config, &encode(&fields), now),
        Err(ReceiptRefusal::BadSignature { .. })
    ));
    let mut fields = dlr("delivered", "0.0333");
    fields.push(("timestamp".into(), "yesterday".into()));
    let sig = sign(&fields, SIG_SECRET, SignatureMethod::Sha256);
    fields.push(("sig".into(), sig));
    assert!(matches!(
        receive_at(&config, &encode(&fields), now),
        Err(ReceiptRefusal::BadSignature { .. })
    ));
    // A longer window, as receipt_max_age sets it.
    let patient = VonageConfig {
        receipt_max_age: Duration::from_secs(600),
        ..config
    };
    receive_at(&patient, &at(-599), now).expect("within ten minutes");
    assert!(receive_at(&patient, &at(-601), now).is_err());
}

#[test]
fn receipt_max_age_is_read_bounded_and_only_with_a_signature_secret() {
    let signed = "api_key = \"a1b2c3d4\"\nsignature_secret_env = \"VONAGE_SIGNATURE_SECRET\"\nfrom = \"MTAADAO\"\ncurrency = \"EUR\"\n";
    let c = parse(&format!("{signed}receipt_max_age = \"10m\"\n")).expect("parses");
    assert_eq!(c.receipt_max_age, Duration::from_secs(600));
    for bad in ["\"1s\"", "\"2d\"", "\"soon\"", "5"] {
        let (key, reason) = parse(&format!("{signed}receipt_max_age = {bad}\n")).expect_err(bad);
        assert_eq!(key, "receipt_max_age", "{bad}: {reason}");
    }
    let unsigned = "api_key = \"a1b2c3d4\"\napi_secret_env = \"VONAGE_API_SECRET\"\nfrom = \"MTAADAO\"\ncurrency = \"EUR\"\n";
    let (key, reason) =
        parse(&format!("{unsigned}receipt_max_age = \"10m\"\n")).expect_err("unsigned");
    assert_eq!(key, "receipt_max_age");
    assert!(reason.contains("signature_secret_env"), "{reason}");
}

#[test]
fn a_callback_url_over_vonage_s_100_characters_is_refused_naming_the_key() {
    let base = "api_key = \"a1b2c3d4\"\napi_secret_env = \"VONAGE_API_SECRET\"\nfrom = \"MTAADAO\"\ncurrency = \"EUR\"\n";
    let url = |chars: usize| {
        let head = "https://tuma.example.org/v1/callbacks/";
        format!("{head}{}", "v".repeat(chars - head.len()))
    };
    let c = parse(&format!("{base}callback_url = \"{}\"\n", url(100))).expect("100 is the most");
    assert_eq!(c.callback_url.map(|u| u.as_str().len()), Some(100));
    let (key, reason) =
        parse(&format!("{base}callback_url = \"{}\"\n", url(101))).expect_err("101");
    assert_eq!(key, "callback_url");
    assert!(reason.contains("101") && reason.contains("100"), "{reason}");
}
