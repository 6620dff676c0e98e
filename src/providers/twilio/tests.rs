//! Twilio adapter tests. The HTTP doubles bind 127.0.0.1 and answer as Twilio
//! does (status codes, content types, field types), and assert the exact request.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use wiremock::matchers::{header, method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::domain::DeliveryKind;
use crate::domain::email::EmailAddress;
use crate::domain::phone::PhoneNumber;
use crate::domain::unknown::UnknownCause;
use crate::providers::{Content, OutgoingMessage, Provider, SendError};

const ACCOUNT_SID: &str = "ACa1b2c3d4e5f60718293a4b5c6d7e8f90";
const AUTH_TOKEN: &str = "f3a9c1e0d2b4a6c8e0f1a2b3c4d5e6f7";
/// `Basic base64(ACCOUNT_SID:AUTH_TOKEN)`.
const AUTH_HEADER: &str = "Basic QUNhMWIyYzNkNGU1ZjYwNzE4MjkzYTRiNWM2ZDdlOGY5MDpmM2E5YzFlMGQyYjRhNmM4ZTBmMWEyYjNjNGQ1ZTZmNw==";
const API_KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
const API_KEY_SECRET: &str = "k3y-s3cret-9f8e7d6c5b4a";
/// `Basic base64(API_KEY_SID:API_KEY_SECRET)`.
const API_KEY_HEADER: &str =
    "Basic U0swMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjprM3ktczNjcmV0LTlmOGU3ZDZjNWI0YQ==";
const SERVICE_SID: &str = "MG9f8e7d6c5b4a39281706f5e4d3c2b1a0";
const MESSAGE_SID: &str = "SM3f1c2b7a9e8d4c6b5a4f3e2d1c0b9a87";
const FROM: &str = "+15005550006";
const TO: &str = "+254711000001";
const TEXT: &str = "Your MtaaDAO code is 493817. It expires in 5 minutes.";

/// Every secret a test could leak, and their encodings on the wire.
const SECRETS: [&str; 4] = [AUTH_TOKEN, API_KEY_SECRET, AUTH_HEADER, API_KEY_HEADER];

fn messages_path() -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
}

fn fake_env(var: &str) -> Result<SecretString, String> {
    match var {
        "TWILIO_AUTH_TOKEN" => Ok(SecretString::from(AUTH_TOKEN)),
        "TWILIO_API_KEY_SECRET" => Ok(SecretString::from(API_KEY_SECRET)),
        _ => Err(format!("environment variable {var} is not set")),
    }
}

/// The keys of the first `[[provider]]` of a providers.toml snippet, less
/// those the owner's loader handles.
fn provider_table(toml_text: &str) -> toml::Table {
    let mut doc: toml::Table = toml_text.parse().expect("valid TOML");
    let providers = doc.remove("provider").expect("a [[provider]]");
    let mut table = providers
        .as_array()
        .and_then(|a| a.first())
        .and_then(|p| p.as_table())
        .cloned()
        .expect("a provider table");
    for key in ["name", "kind", "rate_limit", "timeout"] {
        table.remove(key);
    }
    table
}

fn load(toml_text: &str) -> Result<TwilioConfig, (String, String)> {
    TwilioConfig::from_table_with_env(provider_table(toml_text), Path::new("."), fake_env)
}

fn snippet(keys: &str) -> String {
    format!("[[provider]]\nname = \"twilio\"\nkind = \"twilio\"\ntimeout = \"10s\"\n{keys}\n")
}

fn load_keys(keys: &str) -> Result<TwilioConfig, (String, String)> {
    load(&snippet(keys))
}

fn load_err(keys: &str) -> (String, String) {
    load_keys(keys).expect_err("the config is refused")
}

fn config(base_url: &str) -> TwilioConfig {
    TwilioConfig {
        account_sid: ACCOUNT_SID.into(),
        auth: TwilioAuth::AuthToken(SecretString::from(AUTH_TOKEN)),
        sender: TwilioSender::From(FROM.into()),
        base_url: base_url.parse().expect("URL"),
        status_callback_url: None,
        validity_period: None,
    }
}

fn provider(server: &MockServer) -> Twilio {
    Twilio::new(config(&server.uri()), Duration::from_secs(5)).expect("client")
}

fn sms(text: &str) -> OutgoingMessage {
    OutgoingMessage {
        delivery_id: "01JDELIVERY0000000000000001".into(),
        kind: DeliveryKind::Otp,
        content: Content::Sms {
            to: PhoneNumber::parse_e164(TO).expect("number"),
            text: text.into(),
        },
        code: None,
        valid_for: None,
    }
}

fn email() -> OutgoingMessage {
    OutgoingMessage {
        delivery_id: "01JDELIVERY0000000000000002".into(),
        kind: DeliveryKind::Notification,
        content: Content::Email {
            to: EmailAddress::parse("wanjiku@example.org").expect("address"),
            subject: "Welcome".into(),
            text: "Hello".into(),
            html: None,
        },
        code: None,
        valid_for: None,
    }
}

/// Matches a form-encoded body holding exactly these fields, in any order.
struct FormIs(Vec<(String, String)>);

impl FormIs {
    fn new(fields: &[(&str, &str)]) -> FormIs {
        let mut fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        fields.sort();
        FormIs(fields)
    }
}

impl Match for FormIs {
    fn matches(&self, request: &Request) -> bool {
        let Ok(body) = std::str::from_utf8(&request.body) else {
            return false;
        };
        let mut fields: Vec<(String, String)> = body
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(k), form_decode(v))
            })
            .collect();
        fields.sort();
        fields == self.0
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What Twilio answers to a create: 201, `num_segments` a string, `price` null.
fn created_body() -> String {
    serde_json::json!({
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": TEXT,
        "date_created": "Thu, 26 Nov 2026 10:00:00 +0000",
        "date_sent": null,
        "date_updated": "Thu, 26 Nov 2026 10:00:00 +0000",
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": FROM,
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": MESSAGE_SID,
        "status": "queued",
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{MESSAGE_SID}/Media.json")
        },
        "to": TO,
        "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{MESSAGE_SID}.json")
    })
    .to_string()
}

/// Twilio's error body.
fn error_body(code: i64, message: &str, status: u16) -> String {
    serde_json::json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status
    })
    .to_string()
}

fn json_answer(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json")
}

/// Mounts a double that expects exactly the default send of [`TEXT`] once.
async fn expect_default_send(server: &MockServer, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(header("authorization", AUTH_HEADER))
        .and(header("accept", "application/json"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(FormIs::new(&[("To", TO), ("From", FROM), ("Body", TEXT)]))
        .respond_with(answer)
        .expect(1)
        .mount(server)
        .await;
}

/// Sends [`TEXT`] to a double answering `answer`, asserting the request.
async fn send_answered(answer: ResponseTemplate) -> Result<crate::providers::Accepted, SendError> {
    let server = MockServer::start().await;
    expect_default_send(&server, answer).await;
    provider(&server).send(&sms(TEXT)).await
}

fn assert_no_secret(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{text:?} holds a secret");
    }
}

fn assert_permanent(result: &Result<crate::providers::Accepted, SendError>, code: Option<&str>) {
    match result {
        Err(SendError::Permanent { code: got, .. }) => assert_eq!(got.as_deref(), code),
        other => panic!("expected a permanent error with code {code:?}, got {other:?}"),
    }
}

fn assert_transient(result: &Result<crate::providers::Accepted, SendError>, code: Option<&str>) {
    match result {
        Err(SendError::Transient { code: got, .. }) => assert_eq!(got.as_deref(), code),
        other => panic!("expected a transient error with code {code:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_unreadable(result: &Result<crate::providers::Accepted, SendError>) {
    match result {
        Err(SendError::Unknown {
            cause: UnknownCause::UnreadableAnswer,
            ..
        }) => {}
        other => panic!("expected an unknown outcome (unreadable answer), got {other:?}"),
    }
}

fn message_of<T: std::fmt::Debug>(result: &Result<T, SendError>) -> String {
    match result {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

// ---------------------------------------------------------------- config

#[test]
fn config_with_an_auth_token_and_a_from_number_parses_from_toml() {
    let config = load_keys(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"+1 500 555 0006\""
    ))
    .expect("valid config");
    assert_eq!(config.account_sid, ACCOUNT_SID);
    assert!(matches!(config.auth, TwilioAuth::AuthToken(_)));
    assert_eq!(config.auth.user(ACCOUNT_SID), ACCOUNT_SID);
    assert_eq!(config.sender, TwilioSender::From(FROM.into()));
    assert_eq!(config.base_url.as_str(), "https://api.twilio.com/");
    assert_eq!(config.status_callback_url, None);
    assert_eq!(config.validity_period, None);
}

#[test]
fn config_with_an_api_key_a_messaging_service_and_every_option_parses_from_toml() {
    let config = load_keys(&format!(
        r#"account_sid = "{ACCOUNT_SID}"
api_key_sid = "{API_KEY_SID}"
api_key_secret_env = "TWILIO_API_KEY_SECRET"
messaging_service_sid = "{SERVICE_SID}"
base_url = "http://127.0.0.1:9000/twilio"
status_callback_url = "https://tuma.example.org/receipts/twilio?key=abc"
validity_period = "10m""#
    ))
    .expect("valid config");
    match &config.auth {
        TwilioAuth::ApiKey { sid, .. } => assert_eq!(sid, API_KEY_SID),
        other => panic!("expected an API key, got {other:?}"),
    }
    assert_eq!(config.auth.user(ACCOUNT_SID), API_KEY_SID);
    assert_eq!(
        config.sender,
        TwilioSender::MessagingService(SERVICE_SID.into())
    );
    assert_eq!(config.base_url.as_str(), "http://127.0.0.1:9000/twilio");
    assert_eq!(
        config.status_callback_url.map(|u| u.to_string()).as_deref(),
        Some("https://tuma.example.org/receipts/twilio?key=abc")
    );
    assert_eq!(config.validity_period, Some(Duration::from_secs(600)));
}

#[test]
fn config_accepts_short_codes_and_alphanumeric_sender_ids() {
    for from in ["MtaaDAO", "Mtaa DAO 24", "22345"] {
        let config = load_keys(&format!(
            "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{from}\""
        ))
        .expect("valid sender");
        assert_eq!(config.sender, TwilioSender::From(from.into()));
    }
}

#[test]
fn an_unset_auth_token_variable_is_an_error_naming_the_key_and_the_variable() {
    let table = provider_table(&snippet(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TUMA_TEST_TWILIO_TOKEN_NEVER_SET_7F3A\"\nfrom = \"{FROM}\""
    )));
    let err = TwilioConfig::from_table(table, Path::new(".")).expect_err("unset variable");
    assert_eq!(
        err,
        (
            "auth_token_env".to_owned(),
            "environment variable TUMA_TEST_TWILIO_TOKEN_NEVER_SET_7F3A is not set".to_owned()
        )
    );
}

#[test]
fn an_unset_api_key_secret_variable_is_an_error_naming_the_key_and_the_variable() {
    let err = load_err(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\napi_key_sid = \"{API_KEY_SID}\"\napi_key_secret_env = \"NO_SUCH_SECRET\"\nfrom = \"{FROM}\""
    ));
    assert_eq!(
        err,
        (
            "api_key_secret_env".to_owned(),
            "environment variable NO_SUCH_SECRET is not set".to_owned()
        )
    );
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let (key, reason) = load_err(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\"\nauth_token = \"oops\""
    ));
    assert_eq!(key, "auth_token");
    assert!(reason.contains("unknown field"), "{reason}");
}

#[test]
fn a_missing_account_sid_is_refused_by_name() {
    let (key, _) = load_err(&format!(
        "auth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\""
    ));
    assert_eq!(key, "account_sid");
}

#[test]
fn a_key_of_the_wrong_type_is_refused() {
    let (key, reason) = load_err(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\"\nvalidity_period = 600"
    ));
    assert_eq!(key, "validity_period");
    assert_eq!(reason, "invalid type: integer `600`, expected a string");
}

#[test]
fn sids_must_carry_their_twilio_prefix() {
    let cases = [
        (
            format!(
                "account_sid = \"SKabc\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\""
            ),
            "account_sid",
        ),
        (
            format!(
                "account_sid = \"AC/../x\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\""
            ),
            "account_sid",
        ),
        (
            format!(
                "account_sid = \"{ACCOUNT_SID}\"\napi_key_sid = \"AC123\"\napi_key_secret_env = \"TWILIO_API_KEY_SECRET\"\nfrom = \"{FROM}\""
            ),
            "api_key_sid",
        ),
        (
            format!(
                "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nmessaging_service_sid = \"PN123\""
            ),
            "messaging_service_sid",
        ),
    ];
    for (keys, expected) in cases {
        let (key, reason) = load_err(&keys);
        assert_eq!(key, expected, "{keys}");
        assert!(reason.contains("is not a Twilio sid"), "{reason}");
    }
}

#[test]
fn both_auth_forms_at_once_are_refused() {
    let (key, reason) = load_err(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\napi_key_sid = \"{API_KEY_SID}\"\napi_key_secret_env = \"TWILIO_API_KEY_SECRET\"\nfrom = \"{FROM}\""
    ));
    assert_eq!(key, "auth_token_env");
    assert!(
        reason.contains("api_key_sid") && reason.contains("not both"),
        "{reason}"
    );
}

#[test]
fn no_auth_at_all_is_refused_naming_both_forms() {
    let (key, reason) = load_err(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\nfrom = \"{FROM}\""
    ));
    assert_eq!(key, "auth_token_env");
    assert!(
        reason.contains("api_key_sid") && reason.contains("api_key_secret_env"),
        "{reason}"
    );
}

#[test]
fn half_an_api_key_is_refused_naming_the_missing_half() {
    let (key, _) = load_err(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\napi_key_sid = \"{API_KEY_SID}\"\nfrom = \"{FROM}\""
    ));
    assert_eq!(key, "api_key_secret_env");
    let (key, _) = load_err(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\napi_key_secret_env = \"TWILIO_API_KEY_SECRET\"\nfrom = \"{FROM}\""
    ));
    assert_eq!(key, "api_key_sid");
}

#[test]
fn from_and_messaging_service_together_are_refused() {
    let (key, reason) = load_err(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\"\nmessaging_service_sid = \"{SERVICE_SID}\""
    ));
    assert_eq!(key, "from");
    assert!(
        reason.contains("messaging_service_sid") && reason.contains("not both"),
        "{reason}"
    );
}

#[test]
fn neither_from_nor_messaging_service_is_refused() {
    let (key, reason) = load_err(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\""
    ));
    assert_eq!(key, "from");
    assert!(reason.contains("messaging_service_sid"), "{reason}");
}

#[test]
fn a_bad_from_is_refused() {
    for from in ["+1 500", "TooLongSenderId", "Mtaa-DAO", ""] {
        let (key, _) = load_err(&format!(
            "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{from}\""
        ));
        assert_eq!(key, "from", "{from:?}");
    }
}

#[test]
fn urls_must_be_http_or_https() {
    let base = format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\""
    );
    for (extra, expected) in [
        ("base_url = \"ftp://api.twilio.com\"", "base_url"),
        ("base_url = \"api.twilio.com\"", "base_url"),
        ("base_url = \"https://api.twilio.com/?x=1\"", "base_url"),
        (
            "status_callback_url = \"mailto:ops@example.org\"",
            "status_callback_url",
        ),
        ("status_callback_url = \"/receipts\"", "status_callback_url"),
    ] {
        let (key, _) = load_err(&format!("{base}\n{extra}"));
        assert_eq!(key, expected, "{extra}");
    }
}

#[test]
fn validity_period_must_be_whole_seconds_from_1_to_36000() {
    let base = format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\""
    );
    for bad in ["0s", "36001s", "1500ms", "10 parsecs"] {
        let (key, _) = load_err(&format!("{base}\nvalidity_period = \"{bad}\""));
        assert_eq!(key, "validity_period", "{bad}");
    }
    for (good, secs) in [("1s", 1), ("10h", 36_000), ("90s", 90)] {
        let config =
            load_keys(&format!("{base}\nvalidity_period = \"{good}\"")).expect("valid period");
        assert_eq!(config.validity_period, Some(Duration::from_secs(secs)));
    }
}

#[test]
fn debug_of_the_config_and_the_provider_shows_no_secret() {
    let token = load_keys(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\""
    ))
    .expect("valid config");
    let key = load_keys(&format!(
        "account_sid = \"{ACCOUNT_SID}\"\napi_key_sid = \"{API_KEY_SID}\"\napi_key_secret_env = \"TWILIO_API_KEY_SECRET\"\nfrom = \"{FROM}\""
    ))
    .expect("valid config");
    for config in [token, key] {
        let shown = format!("{config:?}");
        assert!(shown.contains(ACCOUNT_SID), "{shown}");
        assert_no_secret(&shown);
        let twilio = Twilio::new(config, Duration::from_secs(5)).expect("client");
        assert_no_secret(&format!("{twilio:?}"));
    }
}

// ---------------------------------------------------------------- sending

#[tokio::test]
async fn a_201_records_the_sid_status_and_string_segment_count_without_a_cost() {
    let accepted = send_answered(json_answer(201, &created_body()))
        .await
        .expect("accepted");
    assert_eq!(accepted.provider_message_id, MESSAGE_SID);
    assert_eq!(accepted.provider_status.as_deref(), Some("queued"));
    assert_eq!(accepted.segments, Some(1));
    assert_eq!(accepted.cost, None);
}

#[tokio::test]
async fn an_api_key_authenticates_as_the_key_with_the_account_still_in_the_path() {
    let server = MockServer::start().await;
    let callback = "https://tuma.example.org/receipts/twilio?key=abc";
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(header("authorization", API_KEY_HEADER))
        .and(header("accept", "application/json"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(FormIs::new(&[
            ("To", TO),
            ("MessagingServiceSid", SERVICE_SID),
            ("Body", TEXT),
            ("StatusCallback", callback),
            ("ValidityPeriod", "600"),
        ]))
        .respond_with(json_answer(
            201,
            &created_body().replace("\"queued\"", "\"accepted\""),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let config = TwilioConfig {
        auth: TwilioAuth::ApiKey {
            sid: API_KEY_SID.into(),
            secret: SecretString::from(API_KEY_SECRET),
        },
        sender: TwilioSender::MessagingService(SERVICE_SID.into()),
        status_callback_url: Some(callback.parse().expect("URL")),
        validity_period: Some(Duration::from_secs(600)),
        ..config(&server.uri())
    };
    let twilio = Twilio::new(config, Duration::from_secs(5)).expect("client");
    let accepted = twilio.send(&sms(TEXT)).await.expect("accepted");
    assert_eq!(accepted.provider_status.as_deref(), Some("accepted"));
}

#[tokio::test]
async fn a_base_url_with_a_path_and_trailing_slash_keeps_its_path() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/proxy{}", messages_path())))
        .respond_with(json_answer(201, &created_body()))
        .expect(1)
        .mount(&server)
        .await;
    let twilio = Twilio::new(
        config(&format!("{}/proxy/", server.uri())),
        Duration::from_secs(5),
    )
    .expect("client");
    twilio.send(&sms(TEXT)).await.expect("accepted");
}

#[tokio::test]
async fn unicode_text_is_sent_as_is_and_twilio_segments_are_recorded() {
    let text = "Karibu! Msimbo wako ni 493817 \u{1F600} «ok»";
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(FormIs::new(&[("To", TO), ("From", FROM), ("Body", text)]))
        .respond_with(json_answer(
            201,
            &created_body().replace("\"num_segments\":\"1\"", "\"num_segments\":\"2\""),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let accepted = provider(&server).send(&sms(text)).await.expect("accepted");
    assert_eq!(accepted.segments, Some(2));
}

#[tokio::test]
async fn a_price_in_the_answer_is_recorded_as_its_absolute_value_exactly() {
    let body = created_body().replace("\"price\":null", "\"price\":\"-0.00750\"");
    let accepted = send_answered(json_answer(201, &body))
        .await
        .expect("accepted");
    let cost = accepted.cost.expect("a cost");
    assert_eq!(cost.micros, 7_500);
    assert_eq!(cost.currency.as_str(), "USD");
}

#[tokio::test]
async fn a_numeric_segment_count_and_unknown_fields_are_tolerated() {
    let body = serde_json::json!({
        "sid": MESSAGE_SID,
        "status": "queued",
        "num_segments": 3,
        "price": null,
        "something_new": {"nested": [1, 2, 3]}
    })
    .to_string();
    let accepted = send_answered(json_answer(201, &body))
        .await
        .expect("accepted");
    assert_eq!(accepted.segments, Some(3));
    assert_eq!(accepted.cost, None);
}

#[tokio::test]
async fn a_success_with_only_a_sid_is_accepted() {
    let body = format!("{{\"sid\":\"{MESSAGE_SID}\"}}");
    let accepted = send_answered(json_answer(201, &body))
        .await
        .expect("accepted");
    assert_eq!(accepted.provider_message_id, MESSAGE_SID);
    assert_eq!(accepted.provider_status, None);
    assert_eq!(accepted.segments, None);
    assert_eq!(accepted.cost, None);
}

#[tokio::test]
async fn an_unreadable_price_or_segment_count_leaves_them_unknown() {
    let body = created_body()
        .replace("\"price\":null", "\"price\":\"about a cent\"")
        .replace("\"num_segments\":\"1\"", "\"num_segments\":\"one\"");
    let accepted = send_answered(json_answer(201, &body))
        .await
        .expect("accepted");
    assert_eq!(accepted.cost, None);
    assert_eq!(accepted.segments, None);
}

#[tokio::test]
async fn a_success_without_a_sid_is_unknown_and_quotes_the_body() {
    let body = created_body().replace("\"sid\"", "\"message_sid\"");
    let result = send_answered(json_answer(201, &body)).await;
    assert_unreadable(&result);
    let message = message_of(&result);
    assert!(message.contains("no message `sid`"), "{message}");
    assert!(message.contains("message_sid"), "{message}");
}

#[tokio::test]
async fn a_malformed_json_success_is_unknown_and_quotes_the_body() {
    let result = send_answered(json_answer(201, "{\"sid\": \"SM3f1c")).await;
    assert_unreadable(&result);
    // A fetch that cannot be read is only asked again later.
    for body in ["", "<html>", "{\"status\":\"sent\"}"] {
        assert!(
            matches!(
                classify_fetched(StatusCode::OK, body),
                Err(SendError::Transient { .. })
            ),
            "{body}"
        );
    }
    let message = message_of(&result);
    assert!(message.contains("not a JSON object"), "{message}");
    assert!(message.contains("{\"sid\": \"SM3f1c"), "{message}");
}

#[tokio::test]
async fn an_empty_success_body_is_unknown() {
    let result = send_answered(ResponseTemplate::new(201)).await;
    assert_unreadable(&result);
    assert!(message_of(&result).contains("an empty body"));
}

#[test]
fn a_201_whose_sid_is_not_sm_or_mm_and_32_hex_digits_is_unknown_naming_what_is_wrong() {
    let hex = "0123456789abcdef0123456789ABCDEF";
    for (sid, fault) in [
        ("SM123".to_owned(), "exactly 32 hexadecimal digits"),
        (format!("SM{hex}0"), "exactly 32 hexadecimal digits"),
        (format!("XX{hex}"), "does not start with SM or MM"),
        (format!("MG{hex}"), "does not start with SM or MM"),
        (format!("sm{hex}"), "does not start with SM or MM"),
        (
            "SM\"<x>\"".to_owned(),
            "characters other than hexadecimal digits",
        ),
        (
            format!("SM{}g", &hex[1..]),
            "characters other than hexadecimal digits",
        ),
        (
            format!("SM{}", "f".repeat(5_000)),
            "exactly 32 hexadecimal digits",
        ),
    ] {
        let body = serde_json::json!({"sid": sid, "status": "queued"}).to_string();
        let result = classify(StatusCode::CREATED, &body);
        assert_unreadable(&result);
        let message = message_of(&result);
        assert!(message.contains(fault), "{sid}: {message}");
        assert!(message.contains("HTTP 201"), "{message}");
        assert!(
            message.chars().count() < 300,
            "the sid is capped: {} characters",
            message.chars().count()
        );
    }
    let shown = message_of(&classify(StatusCode::CREATED, r#"{"sid":"SM\"<x>\u0007"}"#));
    assert!(shown.contains(r#""SM\"<x>""#), "quoted, cleaned: {shown}");
    assert!(!shown.contains('\u{7}'), "{shown}");
    // Both documented prefixes, either case of hex digit.
    for sid in [format!("SM{hex}"), format!("MM{hex}")] {
        let body = serde_json::json!({"sid": sid}).to_string();
        assert_eq!(
            classify(StatusCode::CREATED, &body)
                .expect("accepted")
                .provider_message_id,
            sid
        );
    }
}

#[tokio::test]
async fn a_long_unexpected_body_is_cut_to_500_characters() {
    let body = "x".repeat(5_000);
    let result =
        send_answered(ResponseTemplate::new(502).set_body_raw(body, "text/html; charset=utf-8"))
            .await;
    assert_transient(&result, None);
    let message = message_of(&result);
    assert!(
        message.contains(&format!("{}…", "x".repeat(500))),
        "{message}"
    );
    assert!(!message.contains(&"x".repeat(501)), "{message}");
}

// ------------------------------------------- the classification table, row by row

#[tokio::test]
async fn code_20003_with_401_is_permanent_and_alerts() {
    let body = serde_json::json!({
        "code": 20003,
        "detail": "Your AccountSid or AuthToken was incorrect.",
        "message": "Authentication Error - invalid username",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401
    })
    .to_string();
    let answer =
        json_answer(401, &body).insert_header("www-authenticate", "Basic realm=\"Twilio API\"");
    let result = send_answered(answer).await;
    assert_permanent(&result, Some("20003"));
    let message = message_of(&result);
    assert!(message.contains("refused the credentials"), "{message}");
    assert!(message.contains("Authentication Error"), "{message}");
}

#[test]
fn a_credentials_refusal_is_logged_as_an_error_without_the_secret() {
    let captured = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Capture(sink.clone()))
        .with_ansi(false)
        .finish();
    let body = error_body(20003, "Authentication Error - invalid username", 401);
    let result =
        tracing::subscriber::with_default(subscriber, || classify(StatusCode::UNAUTHORIZED, &body));
    assert_permanent(&result, Some("20003"));
    let logs = String::from_utf8(captured.lock().expect("lock").clone()).expect("UTF-8");
    assert!(logs.contains("ERROR"), "{logs}");
    assert!(logs.contains("refused the credentials"), "{logs}");
    assert_no_secret(&logs);
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_401_without_a_json_body_is_permanent() {
    let answer = ResponseTemplate::new(401).set_body_raw("Unauthorized", "text/plain");
    let result = send_answered(answer).await;
    assert_permanent(&result, None);
    assert!(message_of(&result).contains("body: Unauthorized"));
}

#[tokio::test]
async fn code_20429_with_429_is_transient() {
    let body = error_body(20429, "Too Many Requests", 429);
    let result = send_answered(json_answer(429, &body)).await;
    assert_transient(&result, Some("20429"));
}

#[tokio::test]
async fn a_429_without_a_body_is_transient() {
    let result = send_answered(ResponseTemplate::new(429)).await;
    assert_transient(&result, None);
    assert!(message_of(&result).contains("(empty body)"));
}

#[tokio::test]
async fn code_20500_with_500_is_transient() {
    let body = error_body(20500, "An internal server error has occurred", 500);
    let result = send_answered(json_answer(500, &body)).await;
    assert_transient(&result, Some("20500"));
    assert!(message_of(&result).contains("may or may not have been created"));
}

#[tokio::test]
async fn any_5xx_is_transient_even_with_a_non_json_body() {
    for status in [502, 503, 504] {
        let answer = ResponseTemplate::new(status)
            .set_body_raw("<html>Service Unavailable</html>", "text/html");
        let result = send_answered(answer).await;
        assert_transient(&result, None);
        assert!(message_of(&result).contains("Service Unavailable"));
    }
}

#[tokio::test]
async fn code_21211_invalid_to_number_is_permanent() {
    let body = error_body(
        21211,
        "The 'To' number +254711000001 is not a valid phone number.",
        400,
    );
    let result = send_answered(json_answer(400, &body)).await;
    assert_permanent(&result, Some("21211"));
    let message = message_of(&result);
    assert!(message.contains("is not a valid phone number"), "{message}");
    assert!(message.contains("HTTP 400"), "{message}");
}

#[tokio::test]
async fn code_21408_region_not_enabled_is_permanent() {
    let body = error_body(
        21408,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: +254711000001",
        400,
    );
    let result = send_answered(json_answer(400, &body)).await;
    assert_permanent(&result, Some("21408"));
    assert!(message_of(&result).contains("geo permissions"));
}

#[tokio::test]
async fn code_21610_recipient_replied_stop_is_permanent() {
    let body = error_body(21610, "Attempt to send to unsubscribed recipient", 400);
    let result = send_answered(json_answer(400, &body)).await;
    assert_permanent(&result, Some("21610"));
    assert!(message_of(&result).contains("replied STOP"));
}

#[tokio::test]
async fn code_21614_not_a_mobile_number_is_permanent() {
    let body = error_body(21614, "'To' number is not a valid mobile number", 400);
    let result = send_answered(json_answer(400, &body)).await;
    assert_permanent(&result, Some("21614"));
    assert!(message_of(&result).contains("not a mobile number"));
}

#[tokio::test]
async fn another_4xx_code_is_permanent_and_keeps_the_code() {
    let body = error_body(
        21606,
        "The From phone number is not a valid, SMS-capable inbound phone number or short code for your account.",
        400,
    );
    let result = send_answered(json_answer(400, &body)).await;
    assert_permanent(&result, Some("21606"));
    assert!(message_of(&result).contains("Twilio refused the request"));
}

#[tokio::test]
async fn a_non_json_4xx_is_permanent_with_the_body() {
    let answer = ResponseTemplate::new(400).set_body_raw("Bad Request", "text/plain");
    let result = send_answered(answer).await;
    assert_permanent(&result, None);
    assert!(message_of(&result).contains("body: Bad Request"));
}

#[tokio::test]
async fn a_404_with_code_20404_is_permanent() {
    let body = error_body(20404, "The requested resource was not found", 404);
    let result = send_answered(json_answer(404, &body)).await;
    assert_permanent(&result, Some("20404"));
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_is_transient() {
    let answer = ResponseTemplate::new(302).insert_header("location", "https://elsewhere.example/");
    let result = send_answered(answer).await;
    assert_transient(&result, None);
    assert!(message_of(&result).contains("unexpected answer"));
}

#[test]
fn a_json_error_whose_code_is_a_string_is_still_classified() {
    let body = r#"{"code":"21211","message":"invalid","status":400}"#;
    let result = classify(StatusCode::BAD_REQUEST, body);
    assert_permanent(&result, Some("21211"));
}

#[test]
fn the_http_status_wins_for_5xx_whatever_the_code() {
    let body = error_body(21211, "odd", 503);
    assert_transient(
        &classify(StatusCode::SERVICE_UNAVAILABLE, &body),
        Some("21211"),
    );
}

#[test]
fn no_body_of_any_shape_makes_classify_panic() {
    let bodies = [
        "",
        " ",
        "null",
        "[]",
        "42",
        "\"text\"",
        "{",
        "{}",
        "{\"code\":null}",
        "{\"code\":1e400}",
        "{\"code\":-1,\"message\":7}",
        "{\"sid\":5}",
        "{\"sid\":\"\"}",
        "\u{0}\u{1}",
        "{\"price\":\"-99999999999999999999\",\"price_unit\":\"USD\",\"sid\":\"SM3f1c2b7a9e8d4c6b5a4f3e2d1c0b9a87\"}",
        "{\"price\":\"-9223372036854.775808\",\"price_unit\":\"USD\",\"sid\":\"SM3f1c2b7a9e8d4c6b5a4f3e2d1c0b9a87\"}",
        "{\"num_segments\":\"-1\",\"sid\":\"SM3f1c2b7a9e8d4c6b5a4f3e2d1c0b9a87\"}",
        "{\"num_segments\":99999999999,\"sid\":\"SM3f1c2b7a9e8d4c6b5a4f3e2d1c0b9a87\"}",
    ];
    for status in [200, 201, 204, 302, 400, 401, 404, 429, 500, 503, 599] {
        let status = StatusCode::from_u16(status).expect("status");
        for body in bodies {
            let _ = classify(status, body);
            let _ = classify_fetched(status, body);
        }
    }
}

// ------------------------------------------------------- network failures

#[tokio::test]
async fn no_answer_within_the_timeout_is_unknown_since_the_request_went_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(json_answer(201, &created_body()).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let twilio = Twilio::new(config(&server.uri()), Duration::from_millis(300)).expect("client");
    let result = twilio.send(&sms(TEXT)).await;
    assert!(
        matches!(
            &result,
            Err(SendError::Unknown {
                cause: UnknownCause::NoAnswer { timeout },
                ..
            }) if *timeout == Duration::from_millis(300)
        ),
        "{result:?}"
    );
    let message = message_of(&result);
    assert!(message.contains("within 300ms"), "{message}");
    assert_no_secret(&message);
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let twilio =
        Twilio::new(config(&format!("http://{address}")), Duration::from_secs(2)).expect("client");
    let result = twilio.send(&sms(TEXT)).await;
    assert_transient(&result, None);
    let message = message_of(&result);
    assert!(message.contains("cannot reach 127.0.0.1"), "{message}");
    assert_no_secret(&message);
    assert_no_secret(&format!("{result:?}"));
}

// ---------------------------------------------------- refused before sending

#[tokio::test]
async fn an_email_is_a_permanent_error_and_nothing_is_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json_answer(201, &created_body()))
        .expect(0)
        .mount(&server)
        .await;
    let result = provider(&server).send(&email()).await;
    assert_permanent(&result, None);
    assert!(message_of(&result).contains("SMS only"));
}

#[tokio::test]
async fn a_text_over_1600_characters_is_permanent_and_nothing_is_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json_answer(201, &created_body()))
        .expect(0)
        .mount(&server)
        .await;
    let result = provider(&server).send(&sms(&"é".repeat(1601))).await;
    assert_permanent(&result, None);
    assert!(message_of(&result).contains("1601 characters"));
}

#[tokio::test]
async fn a_text_of_exactly_1600_characters_is_sent() {
    let text = "é".repeat(1600);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(FormIs::new(&[("To", TO), ("From", FROM), ("Body", &text)]))
        .respond_with(json_answer(201, &created_body()))
        .expect(1)
        .mount(&server)
        .await;
    provider(&server).send(&sms(&text)).await.expect("accepted");
}

// ------------------------------------------------------------------ secrets

#[tokio::test]
async fn no_error_message_holds_a_secret() {
    let answers = [
        json_answer(
            401,
            &error_body(20003, "Authentication Error - invalid username", 401),
        ),
        json_answer(400, &error_body(21211, "invalid", 400)),
        json_answer(429, &error_body(20429, "Too Many Requests", 429)),
        json_answer(500, &error_body(20500, "internal", 500)),
        ResponseTemplate::new(401).set_body_raw("Unauthorized", "text/plain"),
        ResponseTemplate::new(201).set_body_raw("not json", "text/plain"),
        ResponseTemplate::new(429),
    ];
    for answer in answers {
        let result = send_answered(answer).await;
        let error = result.expect_err("an error");
        assert_no_secret(&error.to_string());
        assert_no_secret(&format!("{error:?}"));
    }
}

#[test]
fn dry_run_shows_the_exact_request_with_secrets_masked() {
    let config = TwilioConfig {
        status_callback_url: Some(
            "https://tuma.example.org/receipts/twilio"
                .parse()
                .expect("URL"),
        ),
        validity_period: Some(Duration::from_secs(300)),
        ..config("https://api.twilio.com")
    };
    let twilio = Twilio::new(config, Duration::from_secs(5)).expect("client");
    let shown = twilio.dry_run(&sms(TEXT));
    assert_no_secret(&shown);
    assert!(
        shown.starts_with(&format!(
            "POST https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json\n"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "authorization: Basic **** (user {ACCOUNT_SID}, password ****)"
        )),
        "{shown}"
    );
    assert!(shown.contains("accept: application/json"), "{shown}");
    assert!(
        shown.contains("content-type: application/x-www-form-urlencoded"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "To=%2B254711000001&From=%2B15005550006&Body=Your+MtaaDAO+code+is+493817.+It+expires+in+5+minutes.&StatusCallback=https%3A%2F%2Ftuma.example.org%2Freceipts%2Ftwilio&ValidityPeriod=300"
        ),
        "{shown}"
    );
}

#[test]
fn dry_run_with_an_api_key_masks_the_key_secret() {
    let config = TwilioConfig {
        auth: TwilioAuth::ApiKey {
            sid: API_KEY_SID.into(),
            secret: SecretString::from(API_KEY_SECRET),
        },
        ..config("https://api.twilio.com")
    };
    let twilio = Twilio::new(config, Duration::from_secs(5)).expect("client");
    let shown = twilio.dry_run(&sms(TEXT));
    assert_no_secret(&shown);
    assert!(
        shown.contains(&format!("(user {API_KEY_SID}, password ****)")),
        "{shown}"
    );
}

#[test]
fn dry_run_of_an_email_says_why_it_cannot_be_sent() {
    let twilio =
        Twilio::new(config("https://api.twilio.com"), Duration::from_secs(5)).expect("client");
    let shown = twilio.dry_run(&email());
    assert!(shown.contains("SMS only"), "{shown}");
}

// ------------------------------------------------------------ fetch_message

fn fetched_body() -> String {
    created_body()
        .replace("\"status\":\"queued\"", "\"status\":\"delivered\"")
        .replace("\"price\":null", "\"price\":\"-0.00750\"")
        .replace(
            "\"date_sent\":null",
            "\"date_sent\":\"Thu, 26 Nov 2026 10:00:02 +0000\"",
        )
}

async fn expect_fetch(server: &MockServer, answer: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(format!(
            "/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{MESSAGE_SID}.json"
        )))
        .and(header("authorization", AUTH_HEADER))
        .and(header("accept", "application/json"))
        .respond_with(answer)
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_fetched_message_reports_its_price_as_positive_micro_units() {
    let server = MockServer::start().await;
    expect_fetch(&server, json_answer(200, &fetched_body())).await;
    let fetched = provider(&server)
        .fetch_message(MESSAGE_SID)
        .await
        .expect("fetched");
    let price = fetched.price.expect("a price");
    assert_eq!(price.micros, 7_500);
    assert_eq!(price.currency.as_str(), "USD");
    assert_eq!(
        fetched,
        FetchedMessage {
            sid: MESSAGE_SID.into(),
            status: "delivered".into(),
            price: Some(price),
            num_segments: Some(1),
            error_code: None,
        }
    );
}

#[tokio::test]
async fn a_fetched_undelivered_message_reports_its_error_code() {
    let body = created_body()
        .replace("\"status\":\"queued\"", "\"status\":\"undelivered\"")
        .replace("\"error_code\":null", "\"error_code\":30003")
        .replace(
            "\"error_message\":null",
            "\"error_message\":\"Unreachable destination handset\"",
        );
    let server = MockServer::start().await;
    expect_fetch(&server, json_answer(200, &body)).await;
    let fetched = provider(&server)
        .fetch_message(MESSAGE_SID)
        .await
        .expect("fetched");
    assert_eq!(fetched.status, "undelivered");
    assert_eq!(fetched.error_code, Some(30003));
    assert_eq!(fetched.price, None);
}

#[tokio::test]
async fn fetching_an_unknown_sid_is_permanent_with_code_20404() {
    let server = MockServer::start().await;
    let body = error_body(
        20404,
        &format!(
            "The requested resource /2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{MESSAGE_SID}.json was not found"
        ),
        404,
    );
    expect_fetch(&server, json_answer(404, &body)).await;
    let result = provider(&server).fetch_message(MESSAGE_SID).await;
    match &result {
        Err(SendError::Permanent { code, message }) => {
            assert_eq!(code.as_deref(), Some("20404"));
            assert!(message.contains("no such resource"), "{message}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn fetching_during_an_outage_is_transient() {
    let server = MockServer::start().await;
    expect_fetch(
        &server,
        json_answer(503, &error_body(20500, "internal", 503)),
    )
    .await;
    let result = provider(&server).fetch_message(MESSAGE_SID).await;
    assert!(
        matches!(result, Err(SendError::Transient { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_fetched_message_without_a_status_is_transient() {
    let server = MockServer::start().await;
    expect_fetch(
        &server,
        json_answer(200, &format!("{{\"sid\":\"{MESSAGE_SID}\"}}")),
    )
    .await;
    let result = provider(&server).fetch_message(MESSAGE_SID).await;
    assert!(
        matches!(result, Err(SendError::Transient { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn fetching_a_sid_that_is_not_letters_and_digits_is_refused_without_a_call() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(json_answer(200, &fetched_body()))
        .expect(0)
        .mount(&server)
        .await;
    for sid in ["", "../Calls", "SM1?x=1", "SM 1"] {
        let result = provider(&server).fetch_message(sid).await;
        assert!(
            matches!(result, Err(SendError::Permanent { .. })),
            "{sid:?}: {result:?}"
        );
    }
}

#[test]
fn sids_must_be_their_prefix_and_exactly_32_hexadecimal_digits() {
    let hex = "0123456789abcdef0123456789ABCDEF";
    for bad in [
        "AC123".to_owned(),
        format!("AC{hex}0"),
        format!("AC{}", &hex[1..]),
        format!("AC{}g", &hex[1..]),
        format!("MG{hex}"),
    ] {
        let (key, reason) = load_err(&format!(
            "account_sid = \"{bad}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\""
        ));
        assert_eq!(key, "account_sid", "{bad}");
        assert!(reason.contains("32 hexadecimal digits"), "{reason}");
    }
    let (key, _) = load_err(&format!(
        "account_sid = \"AC{hex}\"\nauth_token_env = \"TWILIO_AUTH_TOKEN\"\nmessaging_service_sid = \"MG123\""
    ));
    assert_eq!(key, "messaging_service_sid");
    let (key, _) = load_err(&format!(
        "account_sid = \"AC{hex}\"\napi_key_sid = \"SK123\"\napi_key_secret_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"{FROM}\""
    ));
    assert_eq!(key, "api_key_sid");
    let config = load_keys(&format!(
        "account_sid = \"AC{hex}\"\napi_key_sid = \"SK{hex}\"\napi_key_secret_env = \"TWILIO_AUTH_TOKEN\"\nmessaging_service_sid = \"MG{hex}\""
    ))
    .expect("well-formed sids");
    assert_eq!(config.account_sid, format!("AC{hex}"));
}

fn otp_with(left: Option<Duration>) -> OutgoingMessage {
    OutgoingMessage {
        valid_for: left,
        ..sms(TEXT)
    }
}

fn validity_sent(configured: Option<u64>, left: Option<Duration>) -> Option<String> {
    let config = TwilioConfig {
        validity_period: configured.map(Duration::from_secs),
        ..config("https://api.twilio.com")
    };
    let twilio = Twilio::new(config, Duration::from_secs(5)).expect("client");
    let shown = twilio.dry_run(&otp_with(left));
    shown
        .split(['&', '\n'])
        .find_map(|f| f.strip_prefix("ValidityPeriod="))
        .map(str::to_owned)
}

#[test]
fn an_otp_goes_with_the_whole_seconds_it_has_left_never_more_than_configured() {
    let left = |ms: u64| Some(Duration::from_millis(ms));
    assert_eq!(
        validity_sent(Some(600), left(90_700)).as_deref(),
        Some("90")
    );
    assert_eq!(
        validity_sent(Some(600), left(1_000_000)).as_deref(),
        Some("600")
    );
    assert_eq!(validity_sent(None, left(300_000)).as_deref(), Some("300"));
    assert_eq!(
        validity_sent(None, left(90_000_000)).as_deref(),
        Some("36000")
    );
    assert_eq!(validity_sent(Some(600), None).as_deref(), Some("600"));
    assert_eq!(validity_sent(None, None), None);
}

#[tokio::test]
async fn an_otp_with_under_a_second_left_is_not_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let result = provider(&server)
        .send(&otp_with(Some(Duration::from_millis(999))))
        .await;
    match result {
        Err(SendError::Permanent { message, .. }) => {
            assert!(message.contains("under a second left"), "{message}")
        }
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
}

#[test]
fn a_fetched_message_s_body_is_never_quoted_in_an_error() {
    let body = serde_json::json!({
        "status": "delivered",
        "body": "Your MtaaDAO code is 493817. It expires in 5 minutes.",
        "price": "-0.00750",
        "price_unit": "USD"
    })
    .to_string();
    let error = classify_fetched(StatusCode::OK, &body).expect_err("no sid");
    let shown = error.to_string();
    assert!(shown.contains("no message `sid`"), "{shown}");
    assert!(
        !shown.contains("493817") && !shown.contains("MtaaDAO code"),
        "{shown}"
    );
}

#[test]
fn a_fetched_price_stays_the_positive_charge_and_nonsense_segment_counts_are_dropped() {
    let body = serde_json::json!({
        "sid": MESSAGE_SID,
        "status": "delivered",
        "price": "-0.00750",
        "price_unit": "USD",
        "num_segments": "100000"
    })
    .to_string();
    let fetched = classify_fetched(StatusCode::OK, &body).expect("fetched");
    assert_eq!(fetched.price.map(|p| p.micros), Some(7_500));
    assert_eq!(fetched.num_segments, None);
}

#[tokio::test]
async fn invalid_unsubscribed_and_landline_numbers_are_marked_for_suppression() {
    for (code, gone) in [(21211, true), (21610, true), (21614, true), (21408, false)] {
        let body = error_body(code, "refused", 400);
        let server = MockServer::start().await;
        expect_default_send(&server, json_answer(400, &body)).await;
        let p = provider(&server);
        let Err(SendError::Permanent { code: got, message }) = p.send(&sms(TEXT)).await else {
            panic!("{code}: expected a permanent error");
        };
        assert_eq!(
            p.recipient_gone(got.as_deref(), &message).is_some(),
            gone,
            "{code}"
        );
    }
}

// ------------------------------------------------------------ message lookup

use chrono::{DateTime, TimeDelta, Utc};
use wiremock::matchers::query_param;

use crate::providers::capability::{FoundMessage, Lookup, MessageLookup};

/// A message as Twilio's list resource shows it (`api.v2010.account.message`):
/// dates in RFC 2822, `date_sent` null until sent, `price` null until known.
fn listed(
    sid: &str,
    body: &str,
    created: DateTime<Utc>,
    sent: Option<DateTime<Utc>>,
    status: &str,
) -> serde_json::Value {
    serde_json::json!({
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": created.to_rfc2822(),
        "date_sent": sent.map(|d| d.to_rfc2822()),
        "date_updated": created.to_rfc2822(),
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": FROM,
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": status,
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}/Media.json")
        },
        "to": TO,
        "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json")
    })
}

/// The query of page `page` of the list tuma asks for.
fn page_query(page: u32, token: Option<&str>) -> String {
    let mut query = format!("To=%2B254711000001&PageSize=50&Page={page}");
    if let Some(token) = token {
        query.push_str(&format!("&PageToken={token}"));
    }
    query
}

/// A list page as Twilio writes it: `messages`, the paging URIs, `page`,
/// `page_size`, `start`, `end`.
fn list_page(page: u32, messages: Vec<serde_json::Value>, next_token: Option<&str>) -> String {
    let list = format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json");
    let count = u32::try_from(messages.len()).expect("a small page");
    serde_json::json!({
        "end": page * 50 + count.saturating_sub(1),
        "first_page_uri": format!("{list}?{}", page_query(0, None)),
        "next_page_uri": next_token.map(|t| format!("{list}?{}", page_query(page + 1, Some(t)))),
        "page": page,
        "page_size": 50,
        "previous_page_uri": (page > 0).then(|| format!("{list}?{}", page_query(page - 1, None))),
        "messages": messages,
        "start": page * 50,
        "uri": format!("{list}?{}", page_query(page, None)),
    })
    .to_string()
}

/// Mounts the list's first page (`To` and `PageSize`, no page token).
async fn expect_first_page(server: &MockServer, answer: ResponseTemplate, times: u64) {
    Mock::given(method("GET"))
        .and(path(messages_path()))
        .and(header("authorization", AUTH_HEADER))
        .and(header("accept", "application/json"))
        .and(query_param("To", TO))
        .and(query_param("PageSize", "50"))
        .and(NoPageToken)
        .respond_with(answer)
        .expect(times)
        .mount(server)
        .await;
}

/// Matches a request without a `PageToken`: the first page.
struct NoPageToken;

impl Match for NoPageToken {
    fn matches(&self, request: &Request) -> bool {
        !request.url.query_pairs().any(|(k, _)| k == "PageToken")
    }
}

/// Mounts page `page` reached by `token`.
async fn expect_page(server: &MockServer, page: u32, token: &str, answer: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(messages_path()))
        .and(header("authorization", AUTH_HEADER))
        .and(query_param("To", TO))
        .and(query_param("Page", page.to_string()))
        .and(query_param("PageToken", token))
        .respond_with(answer)
        .expect(1)
        .mount(server)
        .await;
}

/// A whole second, as Twilio's dates are.
fn second(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).expect("a date")
}

#[tokio::test]
async fn a_send_whose_answer_never_came_is_found_by_a_lookup_without_a_second_post() {
    let server = MockServer::start().await;
    // Twilio takes the message but answers after the adapter stopped waiting.
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(FormIs::new(&[("To", TO), ("From", FROM), ("Body", TEXT)]))
        .respond_with(json_answer(201, &created_body()).set_delay(Duration::from_secs(3)))
        .expect(1)
        .mount(&server)
        .await;
    let since = Utc::now();
    let twilio = Twilio::new(config(&server.uri()), Duration::from_millis(300)).expect("client");
    let sent = twilio.send(&sms(TEXT)).await;
    assert!(
        matches!(
            sent,
            Err(SendError::Unknown {
                cause: UnknownCause::NoAnswer { .. },
                ..
            })
        ),
        "{sent:?}"
    );
    // Still queued (no date_sent), listed beside an older message to the same number.
    let created = second(since) + TimeDelta::seconds(1);
    let page = list_page(
        0,
        vec![
            listed(MESSAGE_SID, TEXT, created, None, "queued"),
            listed(
                "SM00000000000000000000000000000001",
                "Your MtaaDAO code is 111111. It expires in 5 minutes.",
                created - TimeDelta::hours(2),
                Some(created - TimeDelta::hours(2)),
                "delivered",
            ),
        ],
        None,
    );
    expect_first_page(&server, json_answer(200, &page), 1).await;
    let found = twilio
        .find_sent(&sms(TEXT), since)
        .await
        .expect("an answer");
    assert_eq!(
        found,
        Lookup::Found(FoundMessage {
            provider_message_id: MESSAGE_SID.into(),
            provider_status: Some("queued".into()),
            cost: None,
            segments: Some(1),
        })
    );
}

#[tokio::test]
async fn a_lookup_follows_next_page_uri_and_reads_the_price_as_the_positive_charge() {
    let server = MockServer::start().await;
    let since = second(Utc::now());
    let other = |n: u32| {
        listed(
            &format!("SM{n:032x}"),
            "Your order 2219 has shipped.",
            since + TimeDelta::seconds(30),
            Some(since + TimeDelta::seconds(31)),
            "sent",
        )
    };
    expect_first_page(
        &server,
        json_answer(
            200,
            &list_page(0, vec![other(1), other(2)], Some("PAMMc2622385")),
        ),
        1,
    )
    .await;
    let mut ours = listed(
        MESSAGE_SID,
        TEXT,
        since,
        Some(since + TimeDelta::seconds(2)),
        "delivered",
    );
    ours["price"] = "-0.01500".into();
    ours["num_segments"] = "2".into();
    expect_page(
        &server,
        1,
        "PAMMc2622385",
        json_answer(200, &list_page(1, vec![ours], None)),
    )
    .await;
    let Lookup::Found(found) = provider(&server)
        .find_sent(&sms(TEXT), since)
        .await
        .expect("an answer")
    else {
        panic!("found on the second page");
    };
    assert_eq!(found.provider_message_id, MESSAGE_SID);
    assert_eq!(found.provider_status.as_deref(), Some("delivered"));
    let cost = found.cost.expect("a price");
    assert_eq!((cost.micros, cost.currency.as_str()), (15_000, "USD"));
    assert_eq!(found.segments, Some(2));
}

#[tokio::test]
async fn a_lookup_matches_only_tumas_text_to_the_number_created_since_the_send() {
    let server = MockServer::start().await;
    let since = second(Utc::now());
    let mut inbound = listed(
        "SM00000000000000000000000000000003",
        TEXT,
        since + TimeDelta::seconds(5),
        Some(since + TimeDelta::seconds(5)),
        "received",
    );
    inbound["direction"] = "inbound".into();
    let mut elsewhere = listed(
        "SM00000000000000000000000000000004",
        TEXT,
        since,
        None,
        "queued",
    );
    elsewhere["to"] = "+254711000009".into();
    let page = list_page(
        0,
        vec![
            // The same text an hour before the send: an earlier message.
            listed(
                "SM00000000000000000000000000000001",
                TEXT,
                since - TimeDelta::hours(1),
                None,
                "queued",
            ),
            // Another text since the send.
            listed(
                "SM00000000000000000000000000000002",
                "Your MtaaDAO code is 493818. It expires in 5 minutes.",
                since + TimeDelta::seconds(1),
                None,
                "queued",
            ),
            inbound,
            elsewhere,
        ],
        None,
    );
    expect_first_page(&server, json_answer(200, &page), 1).await;
    assert_eq!(
        provider(&server).find_sent(&sms(TEXT), since).await,
        Ok(Lookup::NotFound)
    );
}

#[tokio::test]
async fn a_lookup_allows_for_twilio_s_clock_running_a_little_behind() {
    let server = MockServer::start().await;
    let since = Utc::now();
    let page = list_page(
        0,
        vec![listed(
            MESSAGE_SID,
            TEXT,
            second(since) - TimeDelta::seconds(20),
            None,
            "accepted",
        )],
        None,
    );
    expect_first_page(&server, json_answer(200, &page), 1).await;
    assert!(matches!(
        provider(&server).find_sent(&sms(TEXT), since).await,
        Ok(Lookup::Found(_))
    ));
}

#[tokio::test]
async fn a_lookup_stops_at_the_first_message_sent_before_the_send() {
    let server = MockServer::start().await;
    let since = second(Utc::now());
    let old = listed(
        "SM00000000000000000000000000000001",
        "An older message",
        since - TimeDelta::days(1),
        Some(since - TimeDelta::days(1)),
        "delivered",
    );
    expect_first_page(
        &server,
        json_answer(200, &list_page(0, vec![old], Some("PAold"))),
        1,
    )
    .await;
    Mock::given(method("GET"))
        .and(query_param("PageToken", "PAold"))
        .respond_with(json_answer(200, &list_page(1, vec![], None)))
        .expect(0)
        .mount(&server)
        .await;
    assert_eq!(
        provider(&server).find_sent(&sms(TEXT), since).await,
        Ok(Lookup::NotFound)
    );
}

#[tokio::test]
async fn a_lookup_reads_at_most_three_pages_then_says_twilio_cannot_say() {
    let server = MockServer::start().await;
    let since = second(Utc::now());
    let recent = |n: u32| {
        listed(
            &format!("SM{n:032x}"),
            "Another message",
            since + TimeDelta::seconds(1),
            Some(since + TimeDelta::seconds(1)),
            "sent",
        )
    };
    expect_first_page(
        &server,
        json_answer(200, &list_page(0, vec![recent(1)], Some("PA1"))),
        1,
    )
    .await;
    expect_page(
        &server,
        1,
        "PA1",
        json_answer(200, &list_page(1, vec![recent(2)], Some("PA2"))),
    )
    .await;
    expect_page(
        &server,
        2,
        "PA2",
        json_answer(200, &list_page(2, vec![recent(3)], Some("PA3"))),
    )
    .await;
    Mock::given(method("GET"))
        .and(query_param("PageToken", "PA3"))
        .respond_with(json_answer(200, &list_page(3, vec![], None)))
        .expect(0)
        .mount(&server)
        .await;
    let result = provider(&server).find_sent(&sms(TEXT), since).await;
    match result {
        Err(SendError::Permanent { message, .. }) => {
            assert!(message.contains("150 messages"), "{message}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_next_page_uri_of_another_host_account_or_resource_is_not_followed() {
    for next in [
        "https://elsewhere.example/2010-04-01/Accounts/ACa1b2c3d4e5f60718293a4b5c6d7e8f90/Messages.json?Page=1".to_owned(),
        "/2010-04-01/Accounts/AC00000000000000000000000000000000/Messages.json?Page=1".to_owned(),
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json?Page=1"),
        format!("//elsewhere.example/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json?Page=1"),
    ] {
        let server = MockServer::start().await;
        let since = second(Utc::now());
        let mut page: serde_json::Value =
            serde_json::from_str(&list_page(0, vec![], Some("PA1"))).expect("JSON");
        page["next_page_uri"] = next.clone().into();
        expect_first_page(&server, json_answer(200, &page.to_string()), 1).await;
        let result = provider(&server).find_sent(&sms(TEXT), since).await;
        assert!(
            matches!(result, Err(SendError::Permanent { .. })),
            "{next}: {result:?}"
        );
        assert_eq!(
            server.received_requests().await.expect("recorded").len(),
            1,
            "{next}"
        );
    }
}

#[tokio::test]
async fn lookup_errors_5xx_429_and_no_answer_are_transient_and_401_403_404_permanent() {
    for (status, code, transient) in [
        (500, 20500, true),
        (503, 20500, true),
        (429, 20429, true),
        (401, 20003, false),
        (403, 20403, false),
        (404, 20404, false),
    ] {
        let server = MockServer::start().await;
        expect_first_page(
            &server,
            json_answer(status, &error_body(code, "refused", status)),
            1,
        )
        .await;
        let result = provider(&server).find_sent(&sms(TEXT), Utc::now()).await;
        match (&result, transient) {
            (Err(SendError::Transient { .. }), true)
            | (Err(SendError::Permanent { .. }), false) => {}
            _ => panic!("HTTP {status}: {result:?}"),
        }
    }
    // A list that is not a page: ask again later.
    let server = MockServer::start().await;
    expect_first_page(&server, json_answer(200, "{\"messages\":7}"), 1).await;
    assert!(matches!(
        provider(&server).find_sent(&sms(TEXT), Utc::now()).await,
        Err(SendError::Transient { .. })
    ));
    // No answer in time: a read changes nothing, so it is only transient.
    let server = MockServer::start().await;
    expect_first_page(
        &server,
        json_answer(200, &list_page(0, vec![], None)).set_delay(Duration::from_secs(3)),
        1,
    )
    .await;
    let twilio = Twilio::new(config(&server.uri()), Duration::from_millis(300)).expect("client");
    assert!(matches!(
        twilio.find_sent(&sms(TEXT), Utc::now()).await,
        Err(SendError::Transient { .. })
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let nobody =
        Twilio::new(config(&format!("http://{address}")), Duration::from_secs(2)).expect("client");
    assert!(matches!(
        nobody.find_sent(&sms(TEXT), Utc::now()).await,
        Err(SendError::Transient { .. })
    ));
}

#[tokio::test]
async fn a_lookup_never_quotes_the_page_or_the_code() {
    let server = MockServer::start().await;
    let since = second(Utc::now());
    let mut bad = listed("SM\"<x>\"", TEXT, since, None, "queued");
    bad["to"] = TO.into();
    expect_first_page(&server, json_answer(200, &list_page(0, vec![bad], None)), 1).await;
    let error = provider(&server)
        .find_sent(&sms(TEXT), since)
        .await
        .expect_err("a sid tuma cannot record");
    let shown = error.to_string();
    assert!(matches!(error, SendError::Permanent { .. }), "{shown}");
    assert!(
        !shown.contains("493817") && !shown.contains("MtaaDAO"),
        "{shown}"
    );
    let server = MockServer::start().await;
    expect_first_page(
        &server,
        json_answer(500, &format!("{{\"code\":20500,\"message\":\"{TEXT}\"}}")),
        1,
    )
    .await;
    let shown = provider(&server)
        .find_sent(&sms(TEXT), since)
        .await
        .expect_err("an outage")
        .to_string();
    assert!(!shown.contains("493817"), "{shown}");
}

#[tokio::test]
async fn a_lookup_of_an_email_is_permanent_and_asks_twilio_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(json_answer(200, &list_page(0, vec![], None)))
        .expect(0)
        .mount(&server)
        .await;
    assert!(matches!(
        provider(&server).find_sent(&email(), Utc::now()).await,
        Err(SendError::Permanent { .. })
    ));
}

#[test]
fn the_twilio_kind_gives_its_adapter_a_message_lookup() {
    use crate::providers::registry::KindConfig;
    let adapter = config("https://api.twilio.com")
        .build(Duration::from_secs(5))
        .expect("builds");
    assert!(adapter.lookup.is_some());
    assert!(adapter.status.is_some());
}
