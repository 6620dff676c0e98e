//! The Africa's Talking adapter against local doubles that answer as the
//! real API does (201 with per-recipient status codes, a plain-text 401).
//! Everything binds 127.0.0.1.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use wiremock::matchers::{header, method, path};
use wiremock::{Match, Mock, MockServer, Request, Respond, ResponseTemplate};

use super::{AfricasTalking, AfricasTalkingConfig, DEFAULT_BASE_URL, SANDBOX_BASE_URL, classify};
use crate::domain::DeliveryKind;
use crate::domain::email::EmailAddress;
use crate::domain::money::Money;
use crate::domain::phone::PhoneNumber;
use crate::domain::unknown::UnknownCause;
use crate::providers::{Accepted, Content, OutgoingMessage, Provider, SendError};

const KEY: &str = "atsk_0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const TO: &str = "+254711000001";
const TEXT: &str = "Your code is 482913";

// ---------------------------------------------------------------- helpers

fn table(text: &str) -> toml::Table {
    toml::from_str(text).expect("valid TOML")
}

/// An environment where only `var` is set, to `KEY`.
fn env_with(var: &'static str) -> impl Fn(&str) -> Result<SecretString, String> {
    move |asked: &str| {
        if asked == var {
            Ok(SecretString::from(KEY))
        } else {
            Err(format!("environment variable {asked} is not set"))
        }
    }
}

fn parse(text: &str) -> Result<AfricasTalkingConfig, (String, String)> {
    AfricasTalkingConfig::from_table_with(table(text), Path::new("."), env_with("AT_API_KEY"))
}

fn config(base_url: &str) -> AfricasTalkingConfig {
    AfricasTalkingConfig {
        username: "mtaadao".into(),
        api_key: SecretString::from(KEY),
        api_key_env: "AT_API_KEY".into(),
        sender_id: None,
        base_url: Url::parse(base_url).expect("valid URL"),
        enqueue: false,
        callback_secret: None,
    }
}

fn provider(server: &MockServer) -> AfricasTalking {
    AfricasTalking::new(config(&server.uri()), Duration::from_secs(5)).expect("builds")
}

fn sms(text: &str) -> OutgoingMessage {
    OutgoingMessage {
        delivery_id: "01JDELIVERY0000000000000001".into(),
        kind: DeliveryKind::Otp,
        content: Content::Sms {
            to: PhoneNumber::parse_e164(TO).expect("valid number"),
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
            to: EmailAddress::parse("wanjiku@example.com").expect("valid address"),
            subject: "Hello".into(),
            text: "Hello".into(),
            html: None,
        },
        code: None,
        valid_for: None,
    }
}

/// A 201 body as Africa's Talking writes it, for one recipient.
fn answer(status_code: u16, status: &str, cost: &str, message_id: &str) -> String {
    let sent = if status_code < 200 { 1 } else { 0 };
    let total = if sent == 1 { cost } else { "0" };
    serde_json::json!({
        "SMSMessageData": {
            "Message": format!("Sent to {sent}/1 Total Cost: {total}"),
            "Recipients": [{
                "statusCode": status_code,
                "number": TO,
                "status": status,
                "cost": cost,
                "messageId": message_id,
            }],
        }
    })
    .to_string()
}

fn rejected(status_code: u16, status: &str) -> String {
    answer(status_code, status, "0", "None")
}

fn created(body: String) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_raw(body, "application/json")
}

/// The form fields of a request body, in any order, exactly.
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

fn form_of(body: &[u8]) -> Vec<(String, String)> {
    // application/x-www-form-urlencoded is a query string.
    let text = String::from_utf8_lossy(body);
    let url = Url::parse(&format!("http://form.invalid/?{text}")).expect("parses");
    let mut fields: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    fields.sort();
    fields
}

impl Match for FormIs {
    fn matches(&self, request: &Request) -> bool {
        form_of(&request.body) == self.0
    }
}

/// The request every SMS send makes, with the default config.
fn the_send_request() -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .and(header("apiKey", KEY))
        .and(header("accept", "application/json"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(FormIs::new(&[
            ("username", "mtaadao"),
            ("to", TO),
            ("message", TEXT),
        ]))
}

/// Sends one SMS to a double answering `response` to the expected request.
async fn send_against(response: ResponseTemplate) -> Result<Accepted, SendError> {
    let server = MockServer::start().await;
    the_send_request()
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    provider(&server).send(&sms(TEXT)).await
}

fn kes(amount: &str) -> Money {
    Money::parse(amount, "KES").expect("valid amount")
}

#[track_caller]
fn assert_permanent(result: Result<Accepted, SendError>, code: &str, message: &str) {
    match result {
        Err(SendError::Permanent {
            code: c,
            message: m,
        }) => {
            assert_eq!(c.as_deref(), Some(code));
            assert!(m.contains(message), "{m:?} should contain {message:?}");
        }
        other => panic!("expected a permanent error {code}, got {other:?}"),
    }
}

#[track_caller]
fn assert_transient(result: Result<Accepted, SendError>, code: Option<&str>, message: &str) {
    match result {
        Err(SendError::Transient {
            code: c,
            message: m,
        }) => {
            assert_eq!(c.as_deref(), code);
            assert!(m.contains(message), "{m:?} should contain {message:?}");
        }
        other => panic!("expected a transient error {code:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_unknown(result: Result<Accepted, SendError>, cause: UnknownCause, message: &str) {
    match result {
        Err(SendError::Unknown {
            cause: c,
            message: m,
        }) => {
            assert_eq!(c, cause);
            assert!(m.contains(message), "{m:?} should contain {message:?}");
        }
        other => panic!("expected an unknown outcome {cause:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_no_key(text: &str) {
    assert!(!text.contains(KEY), "the API key leaked into {text:?}");
}

/// Log lines written while `f` runs on this thread.
fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
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

/// Recipient answer → classification, without HTTP.
fn recipient(status_code: u16, status: &str) -> Result<Accepted, SendError> {
    classify(StatusCode::CREATED, &rejected(status_code, status))
}

// ---------------------------------------------------------------- config

#[test]
fn config_parses_from_a_toml_snippet_with_every_key() {
    let config = parse(
        r#"
        username = "mtaadao"
        api_key_env = "AT_API_KEY"
        sender_id = "MTAADAO"
        base_url = "http://127.0.0.1:8080/at"
        enqueue = true
        "#,
    )
    .expect("valid");
    assert_eq!(config.username, "mtaadao");
    assert_eq!(config.api_key.expose_secret(), KEY);
    assert_eq!(config.api_key_env, "AT_API_KEY");
    assert_eq!(config.sender_id.as_deref(), Some("MTAADAO"));
    assert_eq!(config.base_url.as_str(), "http://127.0.0.1:8080/at");
    assert!(config.enqueue);
}

#[test]
fn the_example_provider_block_parses_once_the_shared_keys_are_taken_out() {
    let mut block = table(
        r#"
        name = "africastalking"
        kind = "africastalking"
        username = "mtaadao"
        api_key_env = "AT_API_KEY"
        sender_id = "MTAADAO"
        rate_limit = { per_second = 10, burst = 10 }
        timeout = "10s"
        "#,
    );
    for shared in ["name", "kind", "rate_limit", "timeout"] {
        block.remove(shared);
    }
    let config =
        AfricasTalkingConfig::from_table_with(block, Path::new("."), env_with("AT_API_KEY"))
            .expect("valid");
    assert_eq!(config.base_url.as_str(), "https://api.africastalking.com/");
}

#[test]
fn config_defaults_to_the_live_api_without_sender_or_enqueue() {
    let config = parse("username = \"mtaadao\"\napi_key_env = \"AT_API_KEY\"").expect("valid");
    assert_eq!(
        config.base_url,
        Url::parse(DEFAULT_BASE_URL).expect("valid")
    );
    assert_eq!(config.sender_id, None);
    assert!(!config.enqueue);
}

#[test]
fn the_sandbox_username_defaults_to_the_sandbox_api() {
    let config = parse("username = \"sandbox\"\napi_key_env = \"AT_API_KEY\"").expect("valid");
    assert_eq!(
        config.base_url,
        Url::parse(SANDBOX_BASE_URL).expect("valid")
    );
}

#[test]
fn an_explicit_base_url_wins_over_the_sandbox_default() {
    let config = parse(
        "username = \"sandbox\"\napi_key_env = \"AT_API_KEY\"\nbase_url = \"http://127.0.0.1:9\"",
    )
    .expect("valid");
    assert_eq!(config.base_url.as_str(), "http://127.0.0.1:9/");
}

#[test]
fn an_unset_api_key_variable_is_an_error_naming_the_key_and_the_variable() {
    let err = AfricasTalkingConfig::from_table(
        table("username = \"mtaadao\"\napi_key_env = \"TUMA_TEST_AT_KEY_NEVER_SET_4F2A\""),
        Path::new("."),
    )
    .expect_err("the variable is not set");
    assert_eq!(
        err,
        (
            "api_key_env".to_owned(),
            "environment variable TUMA_TEST_AT_KEY_NEVER_SET_4F2A is not set".to_owned()
        )
    );
}

#[test]
fn an_unknown_key_is_refused_and_named() {
    let err = parse("username = \"mtaadao\"\napi_key_env = \"AT_API_KEY\"\napi_key = \"oops\"")
        .expect_err("unknown key");
    assert_eq!(err.0, "api_key");
    assert!(err.1.contains("unknown field"), "{}", err.1);
    assert!(
        !err.1.contains("oops"),
        "the value is not echoed: {}",
        err.1
    );
}

#[test]
fn missing_username_or_api_key_env_is_refused_and_named() {
    let err = parse("api_key_env = \"AT_API_KEY\"").expect_err("no username");
    assert_eq!(err.0, "username");
    let err = parse("username = \"mtaadao\"").expect_err("no api_key_env");
    assert_eq!(err.0, "api_key_env");
}

#[test]
fn empty_username_api_key_env_or_sender_id_is_refused_and_named() {
    let cases = [
        ("username = \" \"\napi_key_env = \"AT_API_KEY\"", "username"),
        (
            "username = \" mtaadao\"\napi_key_env = \"AT_API_KEY\"",
            "username",
        ),
        ("username = \"mtaadao\"\napi_key_env = \"\"", "api_key_env"),
        (
            "username = \"mtaadao\"\napi_key_env = \"AT_API_KEY\"\nsender_id = \"\"",
            "sender_id",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).expect_err(text);
        assert_eq!(err.0, key, "{text}");
    }
}

#[test]
fn a_base_url_that_is_not_a_plain_http_url_is_refused() {
    for bad in [
        "not a url",
        "ftp://api.africastalking.com",
        "file:///tmp/at",
        "https://api.africastalking.com/?x=1",
        "https://api.africastalking.com/#top",
    ] {
        let text =
            format!("username = \"mtaadao\"\napi_key_env = \"AT_API_KEY\"\nbase_url = \"{bad}\"");
        let err = parse(&text).expect_err(bad);
        assert_eq!(err.0, "base_url", "{bad}");
    }
}

#[test]
fn a_base_url_holding_credentials_is_refused_without_echoing_them() {
    let err = parse(
        "username = \"mtaadao\"\napi_key_env = \"AT_API_KEY\"\nbase_url = \"https://user:hunter2@api.africastalking.com\"",
    )
    .expect_err("credentials in the URL");
    assert_eq!(err.0, "base_url");
    assert!(!err.1.contains("hunter2"), "{}", err.1);
}

#[test]
fn enqueue_must_be_a_boolean() {
    let err = parse("username = \"mtaadao\"\napi_key_env = \"AT_API_KEY\"\nenqueue = \"yes\"")
        .expect_err("not a boolean");
    assert_eq!(
        err,
        (
            "enqueue".to_owned(),
            "invalid type: string \"yes\", expected a boolean".to_owned()
        )
    );
}

#[test]
fn a_wrongly_typed_value_names_its_key() {
    let err = parse("username = 5\napi_key_env = \"AT_API_KEY\"").expect_err("not a string");
    assert_eq!(err.0, "username");
}

#[test]
fn config_debug_shows_no_api_key() {
    let config = parse("username = \"mtaadao\"\napi_key_env = \"AT_API_KEY\"").expect("valid");
    let shown = format!("{config:?}");
    assert_no_key(&shown);
    assert!(shown.contains("REDACTED"), "{shown}");
}

// ---------------------------------------------------------------- provider

#[test]
fn provider_debug_shows_no_api_key() {
    let provider =
        AfricasTalking::new(config("http://127.0.0.1:9"), Duration::from_secs(1)).expect("builds");
    let shown = format!("{provider:?}");
    assert_no_key(&shown);
    assert!(
        shown.contains("mtaadao") && shown.contains("****"),
        "{shown}"
    );
}

#[test]
fn an_api_key_that_cannot_be_a_header_is_refused_at_start_naming_only_the_variable() {
    let mut bad = config("http://127.0.0.1:9");
    bad.api_key = SecretString::from("secret\nvalue");
    let err = AfricasTalking::new(bad, Duration::from_secs(1)).expect_err("invalid header");
    assert!(err.contains("AT_API_KEY"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn dry_run_shows_the_exact_request_with_the_key_masked() {
    let mut config = config("https://api.africastalking.com");
    config.sender_id = Some("MTAADAO".into());
    config.enqueue = true;
    let provider = AfricasTalking::new(config, Duration::from_secs(1)).expect("builds");
    let shown = provider.dry_run(&sms("Code: 482913 & more"));
    assert_eq!(
        shown,
        "POST https://api.africastalking.com/version1/messaging\n\
         apikey: ****\n\
         accept: application/json\n\
         content-type: application/x-www-form-urlencoded\n\
         \n\
         username=mtaadao&to=%2B254711000001&message=Code%3A+482913+%26+more&from=MTAADAO&enqueue=1"
    );
    assert_no_key(&shown);
}

#[test]
fn dry_run_of_an_email_says_africas_talking_sends_sms_only() {
    let provider =
        AfricasTalking::new(config("http://127.0.0.1:9"), Duration::from_secs(1)).expect("builds");
    assert!(
        provider
            .dry_run(&email())
            .contains("Africa's Talking sends SMS only")
    );
}

#[tokio::test]
async fn an_accepted_sms_returns_the_message_id_status_and_cost() {
    let accepted = send_against(created(answer(101, "Success", "KES 0.8000", "ATXid_7c9e")))
        .await
        .expect("accepted");
    assert_eq!(
        accepted,
        Accepted {
            provider_message_id: "ATXid_7c9e".into(),
            provider_status: Some("Success".into()),
            cost: Some(kes("0.80")),
            segments: None,
            part_ids: Vec::new(),
        }
    );
    assert_eq!(accepted.cost.map(|c| c.micros), Some(800_000));
}

#[tokio::test]
async fn sender_id_and_enqueue_are_sent_when_configured() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .and(header("apiKey", KEY))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(FormIs::new(&[
            ("username", "mtaadao"),
            ("to", TO),
            ("message", TEXT),
            ("from", "MTAADAO"),
            ("enqueue", "1"),
        ]))
        .respond_with(created(answer(102, "Queued", "KES 0.8000", "ATPid_1")))
        .expect(1)
        .mount(&server)
        .await;
    let mut config = config(&server.uri());
    config.sender_id = Some("MTAADAO".into());
    config.enqueue = true;
    let provider = AfricasTalking::new(config, Duration::from_secs(5)).expect("builds");
    let accepted = provider.send(&sms(TEXT)).await.expect("accepted");
    assert_eq!(accepted.provider_message_id, "ATPid_1");
    assert_eq!(accepted.provider_status.as_deref(), Some("Queued"));
}

#[tokio::test]
async fn a_base_url_with_a_path_keeps_it_before_version1_messaging() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/proxy/at/version1/messaging"))
        .respond_with(created(answer(101, "Success", "KES 0.8000", "ATXid_1")))
        .expect(1)
        .mount(&server)
        .await;
    let config = config(&format!("{}/proxy/at/", server.uri()));
    let provider = AfricasTalking::new(config, Duration::from_secs(5)).expect("builds");
    provider.send(&sms(TEXT)).await.expect("accepted");
}

#[tokio::test]
async fn json_sent_as_text_plain_or_text_html_is_read_all_the_same() {
    for mime in ["text/plain", "text/html; charset=UTF-8"] {
        let response = ResponseTemplate::new(201)
            .set_body_raw(answer(101, "Success", "KES 0.8000", "ATXid_2"), mime);
        let accepted = send_against(response).await.expect(mime);
        assert_eq!(accepted.provider_message_id, "ATXid_2", "{mime}");
    }
}

#[tokio::test]
async fn a_ugx_cost_is_read_in_whole_shillings() {
    let accepted = send_against(created(answer(101, "Success", "UGX 25.0000", "ATXid_3")))
        .await
        .expect("accepted");
    let cost = accepted.cost.expect("a cost");
    assert_eq!(cost.micros, 25_000_000);
    assert_eq!(cost.currency.as_str(), "UGX");
}

#[tokio::test]
async fn a_bare_zero_cost_has_no_currency_and_is_left_out() {
    let accepted = send_against(created(answer(101, "Success", "0", "ATXid_4")))
        .await
        .expect("accepted");
    assert_eq!(accepted.cost, None);
}

#[test]
fn an_unreadable_cost_is_left_out_and_the_message_still_accepted() {
    let body = answer(101, "Success", "KES about-a-shilling", "ATXid_5");
    let accepted = classify(StatusCode::CREATED, &body).expect("accepted");
    assert_eq!(accepted.cost, None);
}

#[tokio::test]
async fn a_rejected_recipient_is_a_permanent_error_with_its_code_and_status() {
    let result = send_against(created(rejected(406, "UserInBlacklist"))).await;
    assert_eq!(
        result,
        Err(SendError::Permanent {
            code: Some("406".into()),
            message: "UserInBlacklist (406)".into(),
        })
    );
}

#[tokio::test]
async fn an_email_is_refused_permanently_without_calling_africas_talking() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created(answer(101, "Success", "KES 0.8000", "ATXid_6")))
        .expect(0)
        .mount(&server)
        .await;
    let result = provider(&server).send(&email()).await;
    assert_eq!(
        result,
        Err(SendError::permanent("Africa's Talking sends SMS only"))
    );
}

#[tokio::test]
async fn a_bad_api_key_401_is_permanent_and_logged_as_an_error() {
    let server = MockServer::start().await;
    the_send_request()
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_raw("The supplied authentication is invalid", "text/plain"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let provider = provider(&server);
    // The test runtime is current-thread, so the log is written on this thread.
    let capture = CaptureGuard::start();
    let result = provider.send(&sms(TEXT)).await;
    let logs = capture.finish();
    assert_permanent(
        result.clone(),
        "HTTP 401",
        "The supplied authentication is invalid",
    );
    assert!(logs.contains("ERROR"), "{logs}");
    assert!(logs.contains("refused the API key"), "{logs}");
    assert_no_key(&logs);
    assert_no_key(&result.expect_err("refused").to_string());
}

/// Captures this thread's log lines until `finish` (for async tests).
struct CaptureGuard {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl CaptureGuard {
    fn start() -> CaptureGuard {
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("not poisoned").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || sink.clone())
            .finish();
        CaptureGuard {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn finish(self) -> String {
        let bytes = self.buffer.lock().expect("not poisoned").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[tokio::test]
async fn a_500_is_transient_with_the_status_and_body() {
    let result = send_against(
        ResponseTemplate::new(500).set_body_raw("Internal Server Error", "text/plain"),
    )
    .await;
    assert_transient(result, Some("HTTP 500"), "Internal Server Error");
}

#[tokio::test]
async fn a_503_with_an_html_page_is_transient() {
    let result = send_against(
        ResponseTemplate::new(503).set_body_raw("<html>Service Unavailable</html>", "text/html"),
    )
    .await;
    assert_transient(result, Some("HTTP 503"), "Service Unavailable");
}

#[tokio::test]
async fn another_4xx_is_permanent_with_the_status_and_body() {
    let result = send_against(
        ResponseTemplate::new(400)
            .set_body_raw("Request is missing required form field 'to'", "text/plain"),
    )
    .await;
    assert_permanent(result, "HTTP 400", "missing required form field");
}

#[tokio::test]
async fn a_429_too_many_requests_is_transient() {
    let result =
        send_against(ResponseTemplate::new(429).set_body_raw("Too Many Requests", "text/plain"))
            .await;
    assert_transient(result, Some("HTTP 429"), "Too Many Requests");
}

#[test]
fn a_408_request_timeout_is_transient() {
    let result = classify(StatusCode::REQUEST_TIMEOUT, "Request Timeout");
    assert_transient(result, Some("HTTP 408"), "Request Timeout");
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_is_transient() {
    let server = MockServer::start().await;
    the_send_request()
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/elsewhere", server.uri())),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let result = provider(&server).send(&sms(TEXT)).await;
    assert_transient(result, Some("HTTP 302"), "unexpected answer");
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_unknown_since_the_request_went_out() {
    let server = MockServer::start().await;
    the_send_request()
        .respond_with(
            created(answer(101, "Success", "KES 0.8000", "ATXid_7"))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let provider =
        AfricasTalking::new(config(&server.uri()), Duration::from_millis(300)).expect("builds");
    let started = std::time::Instant::now();
    let result = provider.send(&sms(TEXT)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up in time"
    );
    assert_unknown(
        result,
        UnknownCause::NoAnswer {
            timeout: Duration::from_millis(300),
        },
        "no answer from Africa's Talking within 300ms",
    );
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        listener.local_addr().expect("has an address").port()
    };
    let provider = AfricasTalking::new(
        config(&format!("http://127.0.0.1:{port}")),
        Duration::from_secs(2),
    )
    .expect("builds");
    let result = provider.send(&sms(TEXT)).await;
    assert_transient(result.clone(), None, "cannot reach Africa's Talking");
    assert_no_key(&result.expect_err("refused").to_string());
}

#[tokio::test]
async fn a_201_with_malformed_json_is_unknown_with_the_body() {
    let result = send_against(ResponseTemplate::new(201).set_body_raw(
        "{\"SMSMessageData\": {\"Recipients\": [",
        "application/json",
    ))
    .await;
    assert_unknown(
        result,
        UnknownCause::UnreadableAnswer,
        "not the expected JSON: {\"SMSMessageData\"",
    );
}

#[tokio::test]
async fn a_201_with_an_empty_body_is_unknown() {
    let result = send_against(ResponseTemplate::new(201)).await;
    assert_unknown(result, UnknownCause::UnreadableAnswer, "(empty body)");
}

#[tokio::test]
async fn a_201_with_no_recipients_is_transient_and_quotes_africas_talking() {
    let body = serde_json::json!({
        "SMSMessageData": {"Message": "Sent to 0/1 Total Cost: 0", "Recipients": []}
    })
    .to_string();
    let result = send_against(created(body)).await;
    assert_transient(result, None, "Sent to 0/1 Total Cost: 0");
}

#[test]
fn a_201_without_sms_message_data_is_unknown() {
    let result = classify(StatusCode::CREATED, "{\"error\":\"unexpected\"}");
    assert_unknown(result, UnknownCause::UnreadableAnswer, "no SMSMessageData");
}

#[test]
fn an_accepted_recipient_without_a_message_id_is_unknown() {
    let result = classify(
        StatusCode::CREATED,
        &answer(101, "Success", "KES 0.8000", "None"),
    );
    assert_unknown(result, UnknownCause::UnreadableAnswer, "no messageId");
}

#[test]
fn a_status_code_written_as_a_string_is_read_all_the_same() {
    let body = answer(101, "Success", "KES 0.8000", "ATXid_8").replace("101", "\"101\"");
    let accepted = classify(StatusCode::CREATED, &body).expect("accepted");
    assert_eq!(accepted.provider_message_id, "ATXid_8");
}

#[test]
fn a_long_unexpected_body_is_cut_to_500_characters() {
    let body = "é".repeat(2_000);
    let Err(SendError::Transient { message, .. }) = classify(StatusCode::BAD_GATEWAY, &body) else {
        panic!("expected a transient error");
    };
    assert!(
        message.chars().filter(|c| *c == 'é').count() == 500,
        "{message}"
    );
    assert!(message.ends_with('…'), "{message}");
}

#[test]
fn classify_never_panics_nor_accepts_on_odd_bodies() {
    let bodies = [
        "",
        "null",
        "[]",
        "42",
        "\"text\"",
        "{\"SMSMessageData\":null}",
        "{\"SMSMessageData\":[]}",
        "{\"SMSMessageData\":{\"Recipients\":{}}}",
        "{\"SMSMessageData\":{\"Recipients\":[null]}}",
        "{\"SMSMessageData\":{\"Recipients\":[{\"statusCode\":-1}]}}",
        "{\"SMSMessageData\":{\"Recipients\":[{\"statusCode\":1e40}]}}",
        "{\"SMSMessageData\":{\"Recipients\":[{\"statusCode\":101,\"messageId\":7,\"cost\":0.8}]}}",
    ];
    for body in bodies {
        for status in [StatusCode::OK, StatusCode::CREATED] {
            assert!(
                matches!(
                    classify(status, body),
                    Err(SendError::Unknown {
                        cause: UnknownCause::UnreadableAnswer,
                        ..
                    })
                ),
                "{status} {body}"
            );
        }
    }
}

#[test]
fn a_2xx_whose_recipient_has_an_unlisted_code_and_a_message_id_is_unknown() {
    let body = answer(199, "SomethingNew", "KES 0.8000", "ATXid_9");
    assert_unknown(
        classify(StatusCode::CREATED, &body),
        UnknownCause::UnreadableAnswer,
        "statusCode 199 is not in tuma's table",
    );
    // With "None" for its id, Africa's Talking made no message: the table's default.
    assert_transient(
        recipient(199, "SomethingNew"),
        Some("199"),
        "not in tuma's table",
    );
}

#[tokio::test]
async fn a_body_that_echoes_the_api_key_has_it_masked_in_the_error() {
    struct Echo;
    impl Respond for Echo {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let key = request
                .headers
                .get("apikey")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            ResponseTemplate::new(500).set_body_string(format!("bad gateway for key {key}"))
        }
    }
    let server = MockServer::start().await;
    the_send_request()
        .respond_with(Echo)
        .expect(1)
        .mount(&server)
        .await;
    let result = provider(&server).send(&sms(TEXT)).await;
    let err = result.expect_err("a 500");
    assert_no_key(&err.to_string());
    assert!(err.to_string().contains("for key ****"), "{err}");
}

// ------------------------------------------- the statusCode table, row by row

#[test]
fn status_100_processed_is_accepted() {
    let body = answer(100, "Processed", "KES 0.8000", "ATXid_100");
    let accepted = classify(StatusCode::CREATED, &body).expect("accepted");
    assert_eq!(accepted.provider_status.as_deref(), Some("Processed"));
}

#[test]
fn status_101_sent_is_accepted() {
    let body = answer(101, "Success", "KES 0.8000", "ATXid_101");
    let accepted = classify(StatusCode::CREATED, &body).expect("accepted");
    assert_eq!(accepted.provider_message_id, "ATXid_101");
}

#[test]
fn status_102_queued_is_accepted() {
    let body = answer(102, "Queued", "KES 0.8000", "ATXid_102");
    let accepted = classify(StatusCode::CREATED, &body).expect("accepted");
    assert_eq!(accepted.provider_status.as_deref(), Some("Queued"));
}

#[test]
fn status_401_risk_hold_is_permanent() {
    assert_permanent(recipient(401, "RiskHold"), "401", "RiskHold (401)");
}

#[test]
fn status_402_invalid_sender_id_is_permanent_and_logged_as_an_error() {
    let (result, logs) = logs_of(|| recipient(402, "InvalidSenderId"));
    assert_permanent(result, "402", "InvalidSenderId (402)");
    assert!(
        logs.contains("ERROR") && logs.contains("sender_id"),
        "{logs}"
    );
}

#[test]
fn status_403_invalid_phone_number_is_permanent() {
    assert_permanent(
        recipient(403, "InvalidPhoneNumber"),
        "403",
        "InvalidPhoneNumber (403)",
    );
}

#[test]
fn status_404_unsupported_number_type_is_permanent() {
    assert_permanent(
        recipient(404, "UnsupportedNumberType"),
        "404",
        "UnsupportedNumberType (404)",
    );
}

#[test]
fn status_405_insufficient_balance_is_transient_and_logged_as_an_error() {
    let (result, logs) = logs_of(|| recipient(405, "InsufficientBalance"));
    assert_transient(result, Some("405"), "InsufficientBalance (405)");
    assert!(
        logs.contains("ERROR") && logs.contains("top it up"),
        "{logs}"
    );
}

#[test]
fn status_406_user_in_blacklist_is_permanent() {
    assert_permanent(
        recipient(406, "UserInBlacklist"),
        "406",
        "UserInBlacklist (406)",
    );
}

#[test]
fn status_407_could_not_route_is_transient() {
    assert_transient(
        recipient(407, "CouldNotRoute"),
        Some("407"),
        "CouldNotRoute (407)",
    );
}

#[test]
fn status_409_do_not_disturb_rejection_is_permanent() {
    assert_permanent(
        recipient(409, "DoNotDisturbRejection"),
        "409",
        "DoNotDisturbRejection (409)",
    );
}

#[test]
fn status_500_internal_server_error_is_transient() {
    assert_transient(
        recipient(500, "InternalServerError"),
        Some("500"),
        "InternalServerError (500)",
    );
}

#[test]
fn status_501_gateway_error_is_transient() {
    assert_transient(
        recipient(501, "GatewayError"),
        Some("501"),
        "GatewayError (501)",
    );
}

#[test]
fn status_502_rejected_by_gateway_is_permanent() {
    assert_permanent(
        recipient(502, "RejectedByGateway"),
        "502",
        "RejectedByGateway (502)",
    );
}

#[test]
fn an_unknown_status_code_is_transient_and_says_it_is_unknown() {
    assert_transient(
        recipient(999, "SomethingNew"),
        Some("999"),
        "SomethingNew (999): a status code not in tuma's table",
    );
}

#[test]
fn a_recipient_without_a_status_word_is_named_from_the_table() {
    let body = rejected(406, "UserInBlacklist").replace("\"UserInBlacklist\"", "null");
    assert_permanent(
        classify(StatusCode::CREATED, &body),
        "406",
        "UserInBlacklist (406)",
    );
}

#[test]
fn the_callback_secret_comes_from_its_variable_and_must_be_long() {
    let long = "r".repeat(32);
    let env = |var: &str| match var {
        "AT_API_KEY" => Ok(SecretString::from(KEY)),
        "AT_LONG" => Ok(SecretString::from(long.clone())),
        "AT_SHORT" => Ok(SecretString::from("short")),
        other => Err(format!("environment variable {other} is not set")),
    };
    let with = |var: &str| {
        AfricasTalkingConfig::from_table_with(
            table(&format!(
                "username = \"mtaadao\"\napi_key_env = \"AT_API_KEY\"\ncallback_secret_env = \"{var}\""
            )),
            Path::new("."),
            env,
        )
    };
    let config = with("AT_LONG").expect("valid");
    assert_eq!(
        config
            .callback_secret
            .as_ref()
            .map(|s| s.expose_secret().len()),
        Some(32)
    );
    assert!(!format!("{config:?}").contains(&long), "Debug hides it");
    for var in ["AT_SHORT", "AT_UNSET", ""] {
        let (key, _) = with(var).unwrap_err();
        assert_eq!(key, "callback_secret_env", "{var}");
    }
    assert!(
        parse("username = \"mtaadao\"\napi_key_env = \"AT_API_KEY\"")
            .unwrap()
            .callback_secret
            .is_none()
    );
}

/// Africa's Talking's answer when it refuses the whole request: no
/// recipient, the reason in `Message`.
fn refused_whole(message: &str) -> String {
    serde_json::json!({"SMSMessageData": {"Message": message, "Recipients": []}}).to_string()
}

#[test]
fn an_invalid_sender_id_with_no_recipients_is_a_permanent_configuration_error_and_alerted() {
    let (result, logs) =
        logs_of(|| classify(StatusCode::CREATED, &refused_whole("InvalidSenderId")));
    assert_permanent(result, "402", "InvalidSenderId (402)");
    assert!(logs.contains("ERROR"), "{logs}");
    assert!(logs.contains("the sender ID is refused"), "{logs}");
}

#[test]
fn the_reasons_an_empty_recipient_list_comes_with_are_read_from_the_one_table() {
    let (result, logs) =
        logs_of(|| classify(StatusCode::CREATED, &refused_whole("InsufficientBalance")));
    assert_transient(result, Some("405"), "InsufficientBalance (405)");
    assert!(logs.contains("top it up"), "{logs}");
    for (said, code) in [
        ("Invalid Sender Id", "402"),
        ("RiskHold", "401"),
        ("InvalidPhoneNumber", "403"),
        ("UserInBlacklist", "406"),
        ("DoNotDisturbRejection", "409"),
    ] {
        assert_permanent(
            classify(StatusCode::CREATED, &refused_whole(said)),
            code,
            "",
        );
    }
    // A success word with nobody sent to is still no send.
    assert_transient(
        classify(StatusCode::CREATED, &refused_whole("Success")),
        None,
        "sent to no recipient",
    );
}

#[test]
fn a_negative_cost_makes_no_sense_and_is_recorded_as_unknown() {
    let accepted = classify(
        StatusCode::CREATED,
        &answer(101, "Success", "KES -5", "ATXid_1"),
    )
    .expect("accepted");
    assert_eq!(accepted.cost, None);
    assert_eq!(accepted.provider_message_id, "ATXid_1");
}

#[tokio::test]
async fn a_code_echoed_by_africas_talking_reaches_neither_its_log_lines_nor_its_errors() {
    let message = OutgoingMessage {
        code: Some(crate::domain::otp::OtpCode::parse("482913").expect("code")),
        valid_for: Some(Duration::from_secs(120)),
        ..sms(TEXT)
    };
    let server = MockServer::start().await;
    // A 401 is logged with its body; this one repeats the request.
    the_send_request()
        .respond_with(ResponseTemplate::new(401).set_body_string(
            "The supplied authentication is invalid for message=Your+code+is+482913: Your code is 482913\u{7}",
        ))
        .mount(&server)
        .await;
    let capture = CaptureGuard::start();
    let result = provider(&server).send(&message).await;
    let logs = capture.finish();
    assert!(logs.contains("refused the API key"), "{logs}");
    assert!(!logs.contains("482913"), "{logs}");
    let error = result.expect_err("refused").to_string();
    assert!(!error.contains("482913"), "{error}");
    assert!(!error.contains('\u{7}'), "{error}");
}

#[tokio::test]
async fn a_number_that_does_not_exist_or_blacklisted_the_sender_is_marked_for_suppression() {
    for (code, word, gone) in [
        (403, "InvalidPhoneNumber", true),
        (406, "UserInBlacklist", true),
        (409, "DoNotDisturbRejection", false),
        (401, "RiskHold", false),
    ] {
        let server = MockServer::start().await;
        the_send_request()
            .respond_with(created(rejected(code, word)))
            .mount(&server)
            .await;
        let p = provider(&server);
        let Err(SendError::Permanent { code: got, message }) = p.send(&sms(TEXT)).await else {
            panic!("{word}: expected a permanent error");
        };
        assert_eq!(
            p.recipient_gone(got.as_deref(), &message).is_some(),
            gone,
            "{word}"
        );
    }
    assert_eq!(super::recipient_gone(Some("HTTP 403"), ""), None);
}
