//! The SMTP adapter against a scripted SMTP server speaking real SMTP over
//! TCP (`double.rs`), and once against a real server implementation
//! (Python's aiosmtpd). Everything binds 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use super::double::{Answer, DoubleTls, SmtpDouble, Step};
use super::{DEFAULT_MAX_CONNECTIONS, Outcome, Smtp, SmtpAuth, SmtpConfig, SmtpTls, classify};
use crate::domain::DeliveryKind;
use crate::domain::email::EmailAddress;
use crate::domain::phone::PhoneNumber;
use crate::domain::unknown::UnknownCause;
use crate::providers::{Accepted, Content, OutgoingMessage, Provider, SendError};

const PASSWORD: &str = "s3cret-pa55word";
/// base64 of "\0mailer\0s3cret-pa55word", what AUTH PLAIN carries.
const PLAIN_CREDENTIALS: &str = "AG1haWxlcgBzM2NyZXQtcGE1NXdvcmQ=";
const DELIVERY: &str = "01JDELIVERY0000000000000001";
const MESSAGE_ID: &str = "<01JDELIVERY0000000000000001@mtaadao.org>";
const TO: &str = "wanjiku@example.com";

// ---------------------------------------------------------------- helpers

fn table(text: &str) -> toml::Table {
    toml::from_str(text).expect("valid TOML")
}

/// An environment where only `SMTP_PASSWORD` is set.
fn env(asked: &str) -> Result<SecretString, String> {
    if asked == "SMTP_PASSWORD" {
        Ok(SecretString::from(PASSWORD))
    } else {
        Err(format!("environment variable {asked} is not set"))
    }
}

fn parse(text: &str) -> Result<SmtpConfig, (String, String)> {
    SmtpConfig::from_table_with(table(text), Path::new("."), env)
}

fn refused_key(text: &str) -> (String, String) {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e,
    }
}

fn config(addr: SocketAddr) -> SmtpConfig {
    SmtpConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        tls: SmtpTls::None,
        auth: None,
        from: "MtaaDAO <no-reply@mtaadao.org>"
            .parse()
            .expect("valid mailbox"),
        hello_name: Some("tuma.test".into()),
        max_connections: 2,
        ca: None,
        allow_plaintext_login: false,
    }
}

fn with_login(mut config: SmtpConfig) -> SmtpConfig {
    config.auth = Some(SmtpAuth {
        username: "mailer".into(),
        password: SecretString::from(PASSWORD),
        password_env: "SMTP_PASSWORD".into(),
    });
    config
}

fn provider(config: SmtpConfig) -> Smtp {
    Smtp::new(config, Duration::from_secs(5)).expect("builds")
}

fn email_to(delivery_id: &str, html: Option<&str>) -> OutgoingMessage {
    OutgoingMessage {
        delivery_id: delivery_id.into(),
        kind: DeliveryKind::Notification,
        content: Content::Email {
            to: EmailAddress::parse(TO).expect("valid address"),
            subject: "Your MtaaDAO statement".into(),
            text: "Hello Wanjiku, your statement is ready.".into(),
            html: html.map(str::to_owned),
        },
        code: None,
        valid_for: None,
    }
}

fn email() -> OutgoingMessage {
    email_to(
        DELIVERY,
        Some("<p>Hello Wanjiku, your <b>statement</b> is ready.</p>"),
    )
}

fn sms() -> OutgoingMessage {
    OutgoingMessage {
        delivery_id: DELIVERY.into(),
        kind: DeliveryKind::Otp,
        content: Content::Sms {
            to: PhoneNumber::parse_e164("+254711000001").expect("valid number"),
            text: "Your code is 482913".into(),
        },
        code: None,
        valid_for: None,
    }
}

fn permanent(result: Result<Accepted, SendError>) -> (Option<String>, String) {
    match result {
        Err(SendError::Permanent { code, message }) => (code, message),
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

fn transient(result: Result<Accepted, SendError>) -> (Option<String>, String) {
    match result {
        Err(SendError::Transient { code, message }) => (code, message),
        other => panic!("expected a transient error, got {other:?}"),
    }
}

#[track_caller]
fn unknown(result: Result<Accepted, SendError>, cause: UnknownCause) -> String {
    match result {
        Err(SendError::Unknown { cause: c, message }) if c == cause => message,
        other => panic!("expected an unknown outcome {cause:?}, got {other:?}"),
    }
}

/// The value of a header in a received message (first occurrence).
fn header<'a>(data: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    data.split("\r\n")
        .take_while(|line| !line.is_empty())
        .find(|line| line.to_ascii_lowercase().starts_with(&prefix))
        .map(|line| line[prefix.len()..].trim())
}

/// A certificate authority made for one test, and a server certificate it
/// signed for 127.0.0.1.
struct TestCa {
    /// The CA's certificate, as a `ca_file` holds it.
    pem: String,
    /// TLS for the double, with the server certificate.
    acceptor: tokio_rustls::TlsAcceptor,
}

fn test_ca() -> TestCa {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tuma test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![server_cert.der().clone()], key)
    .expect("server TLS config");
    TestCa {
        pem: ca_cert.pem(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    }
}

/// Settings read from `text` with `ca.pem` (the test CA) in the folder.
fn parse_with_ca_file(text: &str, ca: &TestCa) -> (tempfile::TempDir, SmtpConfig) {
    let dir = tempfile::tempdir().expect("temporary folder");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).expect("write ca.pem");
    let config = SmtpConfig::from_table_with(table(text), dir.path(), env).expect("parses");
    (dir, config)
}

// ---------------------------------------------------------------- config

#[test]
fn a_full_smtp_table_parses_into_typed_settings() {
    let config = parse(
        r#"
        host = "smtp.mtaadao.org"
        port = 2525
        tls = "tls"
        username = "mailer"
        password_env = "SMTP_PASSWORD"
        from = "MtaaDAO <no-reply@mtaadao.org>"
        hello_name = "worker1.mtaadao.org"
        max_connections = 3
        "#,
    )
    .expect("parses");
    assert_eq!(config.max_connections, 3);
    assert_eq!(config.host, "smtp.mtaadao.org");
    assert_eq!(config.port, 2525);
    assert_eq!(config.tls, SmtpTls::Tls);
    let auth = config.auth.expect("a login");
    assert_eq!(auth.username, "mailer");
    assert_eq!(auth.password.expose_secret(), PASSWORD);
    assert_eq!(auth.password_env, "SMTP_PASSWORD");
    assert_eq!(config.from.to_string(), "MtaaDAO <no-reply@mtaadao.org>");
    assert_eq!(config.hello_name.as_deref(), Some("worker1.mtaadao.org"));
}

#[test]
fn a_minimal_table_uses_starttls_on_port_587_without_login() {
    let config = parse(
        r#"
        host = "smtp.mtaadao.org"
        from = "MtaaDAO <no-reply@mtaadao.org>"
        "#,
    )
    .expect("parses");
    assert_eq!(config.tls, SmtpTls::StartTls);
    assert_eq!(config.port, 587);
    assert!(config.auth.is_none());
    assert!(config.hello_name.is_none());
    assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
}

#[test]
fn each_tls_mode_has_its_usual_port() {
    for (mode, port) in [("tls", 465), ("starttls", 587), ("none", 25)] {
        let config = parse(&format!(
            "host = \"mx.local\"\ntls = \"{mode}\"\nfrom = \"a@mtaadao.org\"\n"
        ))
        .expect("parses");
        assert_eq!(config.port, port, "tls = {mode}");
        assert_eq!(config.tls.as_str(), mode);
    }
}

#[test]
fn an_unset_password_variable_is_an_error_naming_the_key_and_the_variable() {
    let (key, reason) = refused_key(
        r#"
        host = "smtp.mtaadao.org"
        username = "mailer"
        password_env = "MTAADAO_SMTP_PASSWORD"
        from = "MtaaDAO <no-reply@mtaadao.org>"
        "#,
    );
    assert_eq!(key, "password_env");
    assert!(reason.contains("MTAADAO_SMTP_PASSWORD"), "{reason}");
}

#[test]
fn a_username_without_password_env_is_refused() {
    let (key, reason) = refused_key(
        "host = \"smtp.mtaadao.org\"\nusername = \"mailer\"\nfrom = \"a@mtaadao.org\"\n",
    );
    assert_eq!(key, "password_env");
    assert!(reason.contains("username"), "{reason}");
}

#[test]
fn a_password_env_without_username_is_refused() {
    let (key, _) = refused_key(
        "host = \"smtp.mtaadao.org\"\npassword_env = \"SMTP_PASSWORD\"\nfrom = \"a@mtaadao.org\"\n",
    );
    assert_eq!(key, "password_env");
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let (key, reason) = refused_key(
        "host = \"smtp.mtaadao.org\"\nfrom = \"a@mtaadao.org\"\npassword = \"hunter22\"\n",
    );
    assert_eq!(key, "password");
    assert!(reason.contains("unknown field"), "{reason}");
    assert!(!reason.contains("hunter22"), "{reason}");
}

#[test]
fn bad_values_are_refused_naming_their_key() {
    let cases = [
        ("from = \"a@mtaadao.org\"", "host"),
        ("host = \"smtp.mtaadao.org\"", "from"),
        ("host = \"\"\nfrom = \"a@mtaadao.org\"", "host"),
        (
            "host = \"smtp://smtp.mtaadao.org\"\nfrom = \"a@mtaadao.org\"",
            "host",
        ),
        (
            "host = \"smtp.mtaadao.org:587\"\nfrom = \"a@mtaadao.org\"",
            "host",
        ),
        (
            "host = \"smtp.mtaadao.org\"\nfrom = \"not an address\"",
            "from",
        ),
        (
            "host = \"smtp.mtaadao.org\"\nfrom = \"a@mtaadao.org\"\ntls = \"ssl\"",
            "tls",
        ),
        (
            "host = \"smtp.mtaadao.org\"\nfrom = \"a@mtaadao.org\"\nport = 0",
            "port",
        ),
        (
            "host = \"smtp.mtaadao.org\"\nfrom = \"a@mtaadao.org\"\nport = 70000",
            "port",
        ),
        (
            "host = \"smtp.mtaadao.org\"\nfrom = \"a@mtaadao.org\"\nport = \"25\"",
            "port",
        ),
        (
            "host = \"smtp.mtaadao.org\"\nfrom = \"a@mtaadao.org\"\nhello_name = \"my host\"",
            "hello_name",
        ),
        (
            "host = \"smtp.mtaadao.org\"\nfrom = \"a@mtaadao.org\"\nmax_connections = 0",
            "max_connections",
        ),
        (
            "host = \"smtp.mtaadao.org\"\nfrom = \"a@mtaadao.org\"\nusername = \" mailer\"\npassword_env = \"SMTP_PASSWORD\"",
            "username",
        ),
    ];
    for (text, expected) in cases {
        let (key, reason) = refused_key(text);
        assert_eq!(key, expected, "{text}: {reason}");
        assert!(!reason.is_empty());
    }
}

#[test]
fn a_login_without_tls_is_refused_unless_allow_plaintext_login_says_so() {
    let base = "host = \"mx.local\"\ntls = \"none\"\nusername = \"mailer\"\npassword_env = \"SMTP_PASSWORD\"\nfrom = \"a@mtaadao.org\"\n";
    for text in [
        base.to_owned(),
        format!("{base}allow_plaintext_login = false\n"),
    ] {
        let (key, reason) = refused_key(&text);
        assert_eq!(key, "username", "{reason}");
        assert!(reason.contains("unencrypted"), "{reason}");
        assert!(reason.contains("allow_plaintext_login = true"), "{reason}");
        assert!(!reason.contains(PASSWORD), "{reason}");
    }
    let config = parse(&format!("{base}allow_plaintext_login = true\n")).expect("parses");
    assert!(config.allow_plaintext_login);
    assert_eq!(config.auth.expect("a login").username, "mailer");
    for mode in ["starttls", "tls"] {
        let text = base.replace("\"none\"", &format!("\"{mode}\""));
        parse(&text).unwrap_or_else(|e| panic!("tls = {mode}: {e:?}"));
    }
}

#[test]
fn ca_file_is_read_from_the_configurations_folder() {
    let ca = test_ca();
    let (dir, config) = parse_with_ca_file(
        "host = \"relay.internal\"\nca_file = \"ca.pem\"\nfrom = \"a@mtaadao.org\"\n",
        &ca,
    );
    let file = config.ca.expect("a CA file");
    assert_eq!(file.path, dir.path().join("ca.pem"));
    assert_eq!(file.certificates.len(), 1);
}

#[test]
fn a_bad_ca_file_is_refused_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("temporary folder");
    std::fs::write(dir.path().join("empty.pem"), "no certificate here\n").unwrap();
    std::fs::write(
        dir.path().join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("good.pem"), test_ca().pem).unwrap();
    let cases = [
        ("missing.pem", "starttls", "missing.pem"),
        ("empty.pem", "starttls", "no certificate"),
        ("broken.pem", "tls", "broken.pem"),
        ("good.pem", "none", "tls = \"none\""),
    ];
    for (file, mode, expected) in cases {
        let text = format!(
            "host = \"relay.internal\"\ntls = \"{mode}\"\nca_file = \"{file}\"\nfrom = \"a@mtaadao.org\"\n"
        );
        match SmtpConfig::from_table_with(table(&text), dir.path(), env) {
            Ok(config) => panic!("{file}: expected an error, got {config:?}"),
            Err((key, reason)) => {
                assert_eq!(key, "ca_file", "{file}: {reason}");
                assert!(reason.contains(expected), "{file}: {reason}");
            }
        }
    }
}

#[test]
fn an_ipv6_literal_host_is_accepted() {
    let config =
        parse("host = \"::1\"\ntls = \"none\"\nfrom = \"a@mtaadao.org\"\n").expect("parses");
    assert_eq!(config.host, "::1");
}

#[test]
fn debug_of_the_config_and_the_provider_shows_no_password() {
    let config = with_login(config("127.0.0.1:2525".parse().unwrap()));
    let shown = format!("{config:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("mailer"), "{shown}");
    let smtp = provider(config);
    let shown = format!("{smtp:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("127.0.0.1"), "{shown}");
}

// ---------------------------------------------------------------- dry run

#[test]
fn dry_run_shows_the_conversation_with_the_password_masked() {
    let smtp = provider(with_login(config("127.0.0.1:2525".parse().unwrap())));
    let shown = smtp.dry_run(&email());
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(!shown.contains(PLAIN_CREDENTIALS), "{shown}");
    for expected in [
        "connect 127.0.0.1:2525 (no TLS)",
        "EHLO tuma.test",
        "AUTH mailer **** (password from $SMTP_PASSWORD)",
        "MAIL FROM:<no-reply@mtaadao.org>",
        "RCPT TO:<wanjiku@example.com>",
        "DATA",
        "Message-ID: <01JDELIVERY0000000000000001@mtaadao.org>",
        "From: MtaaDAO <no-reply@mtaadao.org>",
        "multipart/alternative",
    ] {
        assert!(shown.contains(expected), "missing {expected:?} in\n{shown}");
    }
}

#[test]
fn dry_run_without_hello_name_shows_the_from_domain_in_ehlo() {
    let mut config = config("127.0.0.1:2525".parse().unwrap());
    config.hello_name = None;
    let shown = provider(config).dry_run(&email());
    assert!(shown.contains("EHLO mtaadao.org\n"), "{shown}");
}

#[test]
fn dry_run_of_an_sms_says_smtp_sends_email_only() {
    let smtp = provider(config("127.0.0.1:2525".parse().unwrap()));
    assert!(smtp.dry_run(&sms()).contains("SMTP sends email only"));
}

// ---------------------------------------------------------------- the message

#[tokio::test]
async fn an_email_with_html_goes_out_as_text_and_html_alternatives() {
    let server = SmtpDouble::start().await;
    let accepted = provider(config(server.addr))
        .send(&email())
        .await
        .expect("accepted");
    assert_eq!(accepted.provider_message_id, "ABC123");

    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    let got = &messages[0];
    assert_eq!(got.mail_from, "MAIL FROM:<no-reply@mtaadao.org>");
    assert_eq!(
        got.rcpt_to,
        vec!["RCPT TO:<wanjiku@example.com>".to_owned()]
    );
    let data = &got.data;
    assert_eq!(header(data, "Message-ID"), Some(MESSAGE_ID));
    assert_eq!(header(data, "From"), Some("MtaaDAO <no-reply@mtaadao.org>"));
    assert_eq!(header(data, "To"), Some(TO));
    assert_eq!(header(data, "Subject"), Some("Your MtaaDAO statement"));
    assert!(
        header(data, "Content-Type").is_some_and(|v| v.starts_with("multipart/alternative")),
        "{data}"
    );
    assert!(data.contains("Content-Type: text/plain"), "{data}");
    assert!(data.contains("Content-Type: text/html"), "{data}");
    assert!(
        data.contains("Hello Wanjiku, your statement is ready."),
        "{data}"
    );
    assert!(data.contains("<b>statement</b>"), "{data}");
    assert!(server.commands().contains(&"EHLO tuma.test".to_owned()));
}

#[tokio::test]
async fn an_email_without_html_goes_out_as_plain_text() {
    let server = SmtpDouble::start().await;
    provider(config(server.addr))
        .send(&email_to(DELIVERY, None))
        .await
        .expect("accepted");
    let data = server.messages()[0].data.clone();
    assert!(
        header(&data, "Content-Type").is_some_and(|v| v.starts_with("text/plain")),
        "{data}"
    );
    assert!(!data.contains("multipart"), "{data}");
    assert!(!data.contains("text/html"), "{data}");
    assert_eq!(header(&data, "Message-ID"), Some(MESSAGE_ID));
}

#[tokio::test]
async fn a_text_only_email_says_mime_version_1_0() {
    let server = SmtpDouble::start().await;
    let smtp = provider(config(server.addr));
    smtp.send(&email_to(DELIVERY, None))
        .await
        .expect("accepted");
    smtp.send(&email()).await.expect("accepted");
    for got in server.messages() {
        assert_eq!(
            header(&got.data, "MIME-Version"),
            Some("1.0"),
            "{}",
            got.data
        );
    }
}

/// The header lines of a message, up to the blank line.
fn header_lines(data: &str) -> Vec<&str> {
    data.split("\r\n")
        .take_while(|line| !line.is_empty())
        .collect()
}

/// A header's value with its folded lines joined, RFC 2047 words decoded
/// (base64, UTF-8: what tuma writes).
fn decoded_header(data: &str, name: &str) -> String {
    use base64::Engine;
    let lines = header_lines(data);
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let at = lines
        .iter()
        .position(|line| line.to_ascii_lowercase().starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name} in\n{data}"));
    let mut value = lines[at][prefix.len()..].to_owned();
    for line in &lines[at + 1..] {
        if !line.starts_with([' ', '\t']) {
            break;
        }
        value.push_str(line);
    }
    let words: Vec<&str> = value.split_whitespace().collect();
    if !words.iter().all(|w| w.starts_with("=?utf-8?b?")) {
        return value.trim().to_owned();
    }
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|word| {
            let inner = &word["=?utf-8?b?".len()..word.len() - "?=".len()];
            base64::engine::general_purpose::STANDARD
                .decode(inner)
                .expect("base64")
        })
        .collect();
    String::from_utf8(bytes).expect("UTF-8")
}

#[tokio::test]
async fn a_1200_character_subject_without_spaces_goes_out_in_header_lines_of_at_most_78_octets() {
    let server = SmtpDouble::start().await;
    let subject: String = (0..1200)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap()))
        .collect();
    let mut message = email_to(DELIVERY, None);
    if let Content::Email { subject: s, .. } = &mut message.content {
        s.clone_from(&subject);
    }
    provider(config(server.addr))
        .send(&message)
        .await
        .expect("accepted");
    let data = server.messages()[0].data.clone();
    for line in header_lines(&data) {
        assert!(line.len() <= 78, "{} octets: {line}", line.len());
    }
    assert_eq!(decoded_header(&data, "Subject"), subject);
}

#[tokio::test]
async fn without_hello_name_ehlo_names_the_from_domain() {
    let server = SmtpDouble::start().await;
    let mut config = config(server.addr);
    config.hello_name = None;
    provider(config).send(&email()).await.expect("accepted");
    let commands = server.commands();
    assert!(
        commands.contains(&"EHLO mtaadao.org".to_owned()),
        "{commands:?}"
    );
}

#[tokio::test]
async fn an_sms_is_a_permanent_error_and_opens_no_connection() {
    let server = SmtpDouble::start().await;
    let (code, message) = permanent(provider(config(server.addr)).send(&sms()).await);
    assert_eq!(code, None);
    assert_eq!(message, "SMTP sends email only");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn a_retried_send_of_the_same_delivery_carries_the_same_message_id() {
    let server = SmtpDouble::start().await;
    server.reply(Step::EndOfData, "451 4.3.0 Error: queue file write error");
    let smtp = provider(config(server.addr));
    transient(smtp.send(&email()).await);
    smtp.send(&email()).await.expect("accepted on retry");

    let messages = server.messages();
    assert_eq!(messages.len(), 2);
    for got in &messages {
        assert_eq!(header(&got.data, "Message-ID"), Some(MESSAGE_ID));
    }
}

#[tokio::test]
async fn the_login_is_sent_with_auth_plain() {
    let server = SmtpDouble::start().await;
    provider(with_login(config(server.addr)))
        .send(&email())
        .await
        .expect("accepted");
    let commands = server.commands();
    assert!(
        commands.contains(&format!("AUTH PLAIN {PLAIN_CREDENTIALS}")),
        "{commands:?}"
    );
}

// ------------------------------------------------- classification, row by row

#[tokio::test]
async fn a_250_with_queued_as_gives_the_servers_queue_id() {
    let server = SmtpDouble::start().await;
    server.reply(Step::EndOfData, "250 2.0.0 Ok: queued as 4XyzAbC");
    let accepted = provider(config(server.addr))
        .send(&email())
        .await
        .expect("accepted");
    assert_eq!(
        accepted,
        Accepted {
            provider_message_id: "4XyzAbC".into(),
            provider_status: Some("250".into()),
            cost: None,
            segments: None,
            part_ids: Vec::new(),
        }
    );
}

#[tokio::test]
async fn a_250_without_queued_as_gives_our_message_id() {
    let server = SmtpDouble::start().await;
    server.reply(Step::EndOfData, "250 2.0.0 OK 1732615200 x12si345.gsmtp");
    let accepted = provider(config(server.addr))
        .send(&email())
        .await
        .expect("accepted");
    assert_eq!(accepted.provider_message_id, MESSAGE_ID);
    assert_eq!(accepted.provider_status.as_deref(), Some("250"));
}

#[tokio::test]
async fn a_421_greeting_is_transient_with_its_code() {
    let server = SmtpDouble::start().await;
    server.reply(
        Step::Greeting,
        "421 4.3.2 double.test Service not available, closing transmission channel",
    );
    let (code, message) = transient(provider(config(server.addr)).send(&email()).await);
    assert_eq!(code.as_deref(), Some("421"));
    assert!(message.contains("Service not available"), "{message}");
}

#[tokio::test]
async fn a_450_at_rcpt_is_transient_with_its_code() {
    let server = SmtpDouble::start().await;
    server.reply(
        Step::Rcpt,
        "450 4.2.0 <wanjiku@example.com>: Recipient address rejected: Greylisted",
    );
    let (code, message) = transient(provider(config(server.addr)).send(&email()).await);
    assert_eq!(code.as_deref(), Some("450"));
    assert!(message.contains("Greylisted"), "{message}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn a_550_at_rcpt_is_permanent_with_its_code() {
    let server = SmtpDouble::start().await;
    server.reply(
        Step::Rcpt,
        "550 5.1.1 <wanjiku@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
    );
    let (code, message) = permanent(provider(config(server.addr)).send(&email()).await);
    assert_eq!(code.as_deref(), Some("550"));
    assert!(message.contains("User unknown"), "{message}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn a_550_after_data_is_permanent_with_its_code() {
    let server = SmtpDouble::start().await;
    server.reply(Step::EndOfData, "550 5.7.1 Message rejected as spam");
    let (code, message) = permanent(provider(config(server.addr)).send(&email()).await);
    assert_eq!(code.as_deref(), Some("550"));
    assert!(message.contains("rejected as spam"), "{message}");
    assert_eq!(
        server.messages().len(),
        1,
        "the message was sent before the reply"
    );
}

#[tokio::test]
async fn a_535_on_auth_is_permanent_and_the_error_holds_no_password() {
    let server = SmtpDouble::start().await;
    server.reply(
        Step::Auth,
        "535 5.7.8 Error: authentication failed: UGFzc3dvcmQ6",
    );
    let result = provider(with_login(config(server.addr)))
        .send(&email())
        .await;
    let shown = format!("{result:?}");
    let (code, message) = permanent(result);
    assert_eq!(code.as_deref(), Some("535"));
    assert!(message.contains("authentication failed"), "{message}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(!shown.contains(PLAIN_CREDENTIALS), "{shown}");
    assert!(server.messages().is_empty());
}

/// Collects what tracing writes, for tests that look at the logs.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_refused_login_is_logged_as_an_error_without_the_password() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = SmtpDouble::start().await;
    server.reply(
        Step::Auth,
        &format!("535 5.7.8 Error: authentication failed for {PASSWORD}"),
    );
    permanent(
        provider(with_login(config(server.addr)))
            .send(&email())
            .await,
    );

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(logged.contains("SMTP login refused"), "{logged}");
    assert!(
        logged.contains("SMTP_PASSWORD"),
        "names the variable: {logged}"
    );
    assert!(!logged.contains(PASSWORD), "{logged}");
    assert!(!logged.contains(PLAIN_CREDENTIALS), "{logged}");
}

#[tokio::test]
async fn a_530_authentication_required_is_permanent() {
    let server = SmtpDouble::start().await;
    server.reply(Step::Mail, "530 5.7.0 Authentication required");
    let (code, _) = permanent(provider(config(server.addr)).send(&email()).await);
    assert_eq!(code.as_deref(), Some("530"));
}

#[tokio::test]
async fn a_password_echoed_by_the_server_is_masked_in_the_error() {
    let server = SmtpDouble::start().await;
    server.reply(
        Step::Auth,
        &format!("535 5.7.8 bad password {PASSWORD} for mailer"),
    );
    let result = provider(with_login(config(server.addr)))
        .send(&email())
        .await;
    let (_, message) = permanent(result);
    assert!(!message.contains(PASSWORD), "{message}");
    assert!(
        message.contains("bad password **** for mailer"),
        "{message}"
    );
}

#[tokio::test]
async fn a_connection_dropped_after_the_final_dot_is_unknown_and_one_lost_before_stays_transient() {
    let server = SmtpDouble::start().await;
    server.script(Step::EndOfData, Answer::Drop);
    let message = unknown(
        provider(config(server.addr)).send(&email()).await,
        UnknownCause::ConnectionLost,
    );
    assert!(message.contains("after the message was sent"), "{message}");
    assert_eq!(server.messages().len(), 1, "the server had it whole");
    for step in [Step::Rcpt, Step::Data] {
        let server = SmtpDouble::start().await;
        server.script(step, Answer::Drop);
        let (code, _) = transient(provider(config(server.addr)).send(&email()).await);
        assert_eq!(code, None, "{step:?}");
        assert!(server.messages().is_empty());
    }
    let server = SmtpDouble::start().await;
    server.script(Step::Data, Answer::Hang);
    let smtp = Smtp::new(config(server.addr), Duration::from_millis(300)).expect("builds");
    transient(smtp.send(&email()).await);
    // A refusal of the message itself is an answer, not a loss.
    let server = SmtpDouble::start().await;
    server.reply(Step::EndOfData, "451 4.3.0 Error: queue file write error");
    let (code, _) = transient(provider(config(server.addr)).send(&email()).await);
    assert_eq!(code.as_deref(), Some("451"));
}

#[tokio::test]
async fn a_connection_dropped_after_the_final_dot_over_tls_or_starttls_is_unknown_too() {
    let ca = test_ca();
    for (tls, mode) in [
        (DoubleTls::Implicit(ca.acceptor.clone()), "tls"),
        (DoubleTls::StartTls(ca.acceptor.clone()), "starttls"),
    ] {
        let server = SmtpDouble::start_with(tls).await;
        server.script(Step::EndOfData, Answer::Drop);
        let (_dir, config) = parse_with_ca_file(
            &format!(
                "host = \"127.0.0.1\"\nport = {}\ntls = \"{mode}\"\nca_file = \"ca.pem\"\nfrom = \"MtaaDAO <no-reply@mtaadao.org>\"\n",
                server.addr.port()
            ),
            &ca,
        );
        unknown(
            provider(config).send(&email()).await,
            UnknownCause::ConnectionLost,
        );
        assert!(server.messages()[0].tls, "{mode}");
    }
}

#[tokio::test]
async fn no_reply_to_the_message_s_final_dot_within_the_timeout_is_unknown_no_answer() {
    let server = SmtpDouble::start().await;
    server.script(Step::EndOfData, Answer::Hang);
    let smtp = Smtp::new(config(server.addr), Duration::from_millis(300)).expect("builds");
    let message = unknown(
        smtp.send(&email()).await,
        UnknownCause::NoAnswer {
            timeout: Duration::from_millis(300),
        },
    );
    assert!(message.contains("did not reply within 300ms"), "{message}");
}

#[tokio::test]
async fn a_reply_to_the_final_dot_that_does_not_parse_is_unknown_unreadable() {
    let server = SmtpDouble::start().await;
    server.reply(Step::EndOfData, "hello there");
    unknown(
        provider(config(server.addr)).send(&email()).await,
        UnknownCause::UnreadableAnswer,
    );
}

#[tokio::test]
async fn a_connection_dropped_at_mail_from_is_transient() {
    let server = SmtpDouble::start().await;
    server.script(Step::Mail, Answer::Drop);
    let (code, _) = transient(provider(config(server.addr)).send(&email()).await);
    assert_eq!(code, None);
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    // A port that was free a moment ago: nothing listens there now.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let (code, message) = transient(provider(config(closed)).send(&email()).await);
    assert_eq!(code, None);
    assert!(message.to_lowercase().contains("connect"), "{message}");
}

#[tokio::test]
async fn a_server_that_never_greets_times_out_as_transient() {
    let server = SmtpDouble::start().await;
    server.script(Step::Greeting, Answer::Hang);
    let smtp = Smtp::new(config(server.addr), Duration::from_millis(300)).expect("builds");
    let started = Instant::now();
    let (code, message) = transient(smtp.send(&email()).await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, None);
    assert!(message.contains("300ms"), "{message}");
}

#[tokio::test]
async fn implicit_tls_to_a_plain_text_server_is_transient() {
    let server = SmtpDouble::start().await;
    let mut config = config(server.addr);
    config.tls = SmtpTls::Tls;
    let (code, _) = transient(provider(config).send(&email()).await);
    assert_eq!(code, None);
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn starttls_to_a_server_without_starttls_is_permanent_and_sends_nothing() {
    let server = SmtpDouble::start().await;
    let mut config = with_login(config(server.addr));
    config.tls = SmtpTls::StartTls;
    let (code, message) = permanent(provider(config).send(&email()).await);
    assert_eq!(code, None);
    assert!(message.contains("STARTTLS"), "{message}");
    assert!(server.messages().is_empty());
    assert!(
        !server.commands().iter().any(|c| c.starts_with("AUTH")),
        "no login over plain text"
    );
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn a_relay_whose_certificate_a_private_ca_signed_is_trusted_through_ca_file() {
    let ca = test_ca();
    let server = SmtpDouble::start_with(DoubleTls::Implicit(ca.acceptor.clone())).await;
    let (_dir, config) = parse_with_ca_file(
        &format!(
            "host = \"127.0.0.1\"\nport = {}\ntls = \"tls\"\nca_file = \"ca.pem\"\nfrom = \"MtaaDAO <no-reply@mtaadao.org>\"\n",
            server.addr.port()
        ),
        &ca,
    );
    let accepted = provider(config).send(&email()).await.expect("accepted");
    assert_eq!(accepted.provider_message_id, "ABC123");
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].tls, "the message came over TLS");
}

#[tokio::test]
async fn starttls_to_a_relay_of_a_private_ca_logs_in_only_after_the_upgrade() {
    let ca = test_ca();
    let server = SmtpDouble::start_with(DoubleTls::StartTls(ca.acceptor.clone())).await;
    let (_dir, config) = parse_with_ca_file(
        &format!(
            "host = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"ca.pem\"\nusername = \"mailer\"\npassword_env = \"SMTP_PASSWORD\"\nfrom = \"MtaaDAO <no-reply@mtaadao.org>\"\n",
            server.addr.port()
        ),
        &ca,
    );
    provider(config).send(&email()).await.expect("accepted");
    let commands = server.commands();
    let starttls = commands.iter().position(|c| c == "STARTTLS");
    let auth = commands.iter().position(|c| c.starts_with("AUTH"));
    assert!(
        matches!((starttls, auth), (Some(s), Some(a)) if s < a),
        "{commands:?}"
    );
    assert!(server.messages()[0].tls, "the message came over TLS");
}

#[tokio::test]
async fn without_ca_file_a_certificate_from_a_private_ca_is_refused_and_nothing_is_sent() {
    let ca = test_ca();
    let server = SmtpDouble::start_with(DoubleTls::Implicit(ca.acceptor.clone())).await;
    let mut config = with_login(config(server.addr));
    config.tls = SmtpTls::Tls;
    let (code, message) = transient(provider(config).send(&email()).await);
    assert_eq!(code, None);
    assert!(message.contains("TLS"), "{message}");
    assert!(server.commands().is_empty(), "{:?}", server.commands());
    assert!(server.messages().is_empty());
}

// ---------------------------------------------------------------- the pool

#[tokio::test]
async fn forty_concurrent_sends_with_max_connections_4_open_at_most_4_connections() {
    let server = SmtpDouble::start().await;
    let mut config = config(server.addr);
    config.max_connections = 4;
    let smtp = provider(config);
    for round in 0..3 {
        let sends = (0..40).map(|i| {
            let message = email_to(&format!("01JDELIVERY00000000000{round}{i:04}"), None);
            let smtp = &smtp;
            async move { smtp.send(&message).await }
        });
        for result in futures::future::join_all(sends).await {
            result.expect("accepted");
        }
    }
    assert_eq!(server.messages().len(), 120);
    let opened = server.connections();
    assert!(
        (1..=4).contains(&opened),
        "{opened} connections for 120 sends with max_connections = 4"
    );
}

/// lettre puts a used connection back in its pool from a spawned task: give
/// it a moment, as the time between two real sends would.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_second_send_reuses_the_connection_after_a_noop() {
    let server = SmtpDouble::start().await;
    server.reply(Step::EndOfData, "250 2.0.0 Ok: queued as FIRST1");
    server.reply(Step::EndOfData, "250 2.0.0 Ok: queued as SECOND2");
    let smtp = provider(config(server.addr));
    let first = smtp.send(&email()).await.expect("accepted");
    settle().await;
    let second = smtp
        .send(&email_to("01JDELIVERY0000000000000002", None))
        .await
        .expect("accepted");
    assert_eq!(first.provider_message_id, "FIRST1");
    assert_eq!(second.provider_message_id, "SECOND2");
    assert_eq!(server.connections(), 1);
    assert!(server.commands().contains(&"NOOP".to_owned()));
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced_without_failing_the_send() {
    let server = SmtpDouble::start().await;
    server.script(Step::Noop, Answer::Drop);
    let smtp = provider(config(server.addr));
    smtp.send(&email()).await.expect("accepted");
    settle().await;
    smtp.send(&email())
        .await
        .expect("accepted on a new connection");
    assert_eq!(server.connections(), 2);
    assert!(server.commands().contains(&"NOOP".to_owned()));
}

#[tokio::test]
async fn a_reply_that_comes_after_the_timeout_is_not_read_as_the_next_sends_answer() {
    let server = SmtpDouble::start().await;
    server.script(
        Step::EndOfData,
        Answer::Later(
            Duration::from_millis(600),
            "250 2.0.0 Ok: queued as LATE01".into(),
        ),
    );
    server.reply(Step::EndOfData, "250 2.0.0 Ok: queued as NEXT02");
    let smtp = Smtp::new(config(server.addr), Duration::from_millis(300)).expect("builds");
    unknown(
        smtp.send(&email()).await,
        UnknownCause::NoAnswer {
            timeout: Duration::from_millis(300),
        },
    );
    // Let the late reply arrive on the first connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = smtp
        .send(&email_to("01JDELIVERY0000000000000002", None))
        .await
        .expect("accepted");
    assert_eq!(accepted.provider_message_id, "NEXT02");
    assert_eq!(
        server.connections(),
        2,
        "the cut-short connection is not reused"
    );
}

#[tokio::test]
async fn a_send_cancelled_by_its_caller_leaves_no_connection_to_misread() {
    let server = SmtpDouble::start().await;
    server.script(
        Step::EndOfData,
        Answer::Later(
            Duration::from_millis(600),
            "250 2.0.0 Ok: queued as LATE01".into(),
        ),
    );
    server.reply(Step::EndOfData, "250 2.0.0 Ok: queued as NEXT02");
    let smtp = provider(config(server.addr));
    // The dispatcher's own timeout drops the send future mid-conversation.
    let cut = tokio::time::timeout(Duration::from_millis(300), smtp.send(&email())).await;
    assert!(cut.is_err(), "the caller gave up first");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = smtp
        .send(&email_to("01JDELIVERY0000000000000002", None))
        .await
        .expect("accepted");
    assert_eq!(accepted.provider_message_id, "NEXT02");
    assert_eq!(server.connections(), 2);
}

#[test]
fn a_positive_reply_other_than_2yz_at_the_end_of_data_is_unknown() {
    let reply = "354 End data with <CR><LF>.<CR><LF>\r\n"
        .parse()
        .expect("a reply");
    let message = unknown(
        classify(Outcome::Replied(reply), MESSAGE_ID),
        UnknownCause::UnreadableAnswer,
    );
    assert!(message.contains("unexpected reply 354"), "{message}");
}

#[test]
fn queued_as_is_found_on_any_line_of_a_multi_line_reply() {
    let reply = "250-2.0.0 Ok\r\n250 2.0.0 Queued as <Q9W8E7>\r\n"
        .parse()
        .expect("a reply");
    let accepted = classify(Outcome::Replied(reply), MESSAGE_ID).expect("accepted");
    assert_eq!(accepted.provider_message_id, "Q9W8E7");
}

// ---------------------------------------------------------------- aiosmtpd

/// Saves each message as `<queue id>.eml` and answers Postfix-style.
const SINK_MODULE: &str = r#"
import itertools
import os


class Sink:
    def __init__(self, folder):
        self.folder = folder
        self.ids = itertools.count(1)

    @classmethod
    def from_cli(cls, parser, *args):
        return cls(*args)

    async def handle_DATA(self, server, session, envelope):
        queue_id = "SINK%04d" % next(self.ids)
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        path = os.path.join(self.folder, queue_id + ".eml")
        with open(path + ".tmp", "wb") as f:
            f.write(content)
        os.replace(path + ".tmp", path)
        return "250 2.0.0 Ok: queued as " + queue_id
"#;

#[tokio::test]
async fn an_email_through_a_real_smtp_server_arrives_whole() {
    let has_aiosmtpd = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_aiosmtpd {
        if std::env::var_os("CI").is_some() {
            panic!(
                "Python's aiosmtpd is needed for this test: `python3 -m pip install aiosmtpd==1.4.6`"
            );
        }
        eprintln!(
            "skipped: Python's aiosmtpd is not installed (`python3 -m pip install aiosmtpd==1.4.6`)"
        );
        return;
    }

    let dir = tempfile::tempdir().expect("temporary folder");
    std::fs::write(dir.path().join("tuma_smtp_sink.py"), SINK_MODULE).expect("write module");
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).expect("inbox folder");
    let log = std::fs::File::create(dir.path().join("aiosmtpd.log")).expect("log file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut server = tokio::process::Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .args(["-c", "tuma_smtp_sink.Sink"])
        .arg(&inbox)
        .env("PYTHONPATH", dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start aiosmtpd");
    let server_log =
        || std::fs::read_to_string(dir.path().join("aiosmtpd.log")).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = server.try_wait() {
            panic!("aiosmtpd exited with {status}:\n{}", server_log());
        }
        assert!(
            Instant::now() < deadline,
            "aiosmtpd did not start:\n{}",
            server_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let accepted = provider(config(addr))
        .send(&email())
        .await
        .unwrap_or_else(|e| panic!("not accepted: {e}\n{}", server_log()));
    assert_eq!(accepted.provider_message_id, "SINK0001");
    assert_eq!(accepted.provider_status.as_deref(), Some("250"));

    let saved = std::fs::read_to_string(inbox.join("SINK0001.eml")).expect("saved message");
    let saved = saved.replace("\r\n", "\n").replace('\n', "\r\n");
    assert_eq!(header(&saved, "Message-ID"), Some(MESSAGE_ID));
    assert_eq!(
        header(&saved, "From"),
        Some("MtaaDAO <no-reply@mtaadao.org>")
    );
    assert_eq!(header(&saved, "To"), Some(TO));
    assert_eq!(header(&saved, "Subject"), Some("Your MtaaDAO statement"));
    assert!(saved.contains("multipart/alternative"), "{saved}");
    assert!(saved.contains("Content-Type: text/plain"), "{saved}");
    assert!(saved.contains("Content-Type: text/html"), "{saved}");
    assert!(saved.contains("<b>statement</b>"), "{saved}");
    assert_eq!(header(&saved, "MIME-Version"), Some("1.0"));

    // A subject of 1,200 characters without a space: a real server refuses
    // a header line that long; folded, it takes it whole.
    let subject = "0123456789".repeat(120);
    let mut long = email_to("01JDELIVERY0000000000000002", None);
    if let Content::Email { subject: s, .. } = &mut long.content {
        s.clone_from(&subject);
    }
    let accepted = provider(config(addr))
        .send(&long)
        .await
        .unwrap_or_else(|e| panic!("not accepted: {e}\n{}", server_log()));
    let saved =
        std::fs::read_to_string(inbox.join(format!("{}.eml", accepted.provider_message_id)))
            .expect("saved message");
    let saved = saved.replace("\r\n", "\n").replace('\n', "\r\n");
    for line in header_lines(&saved) {
        assert!(line.len() <= 78, "{} octets: {line}", line.len());
    }
    assert_eq!(decoded_header(&saved, "Subject"), subject);
    assert_eq!(header(&saved, "MIME-Version"), Some("1.0"));

    server.kill().await.expect("stop aiosmtpd");
}

#[tokio::test]
async fn an_unknown_mailbox_is_marked_for_suppression_and_spam_refusals_are_not() {
    for (reply, gone) in [
        (
            "550 5.1.1 <wanjiku@example.com>: Recipient address rejected: User unknown",
            true,
        ),
        ("550 5.7.1 Message rejected as spam", false),
        ("553 5.1.1 mailbox name not allowed", false),
    ] {
        let server = SmtpDouble::start().await;
        server.reply(Step::Rcpt, reply);
        let p = provider(config(server.addr));
        let (code, message) = permanent(p.send(&email()).await);
        assert_eq!(
            p.recipient_gone(code.as_deref(), &message).is_some(),
            gone,
            "{reply}"
        );
    }
}
