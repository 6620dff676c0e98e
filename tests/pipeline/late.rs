//! A slow provider is not a failed one. Twilio doubles on 127.0.0.1 take
//! every message and answer after the provider's `timeout`: the attempt is
//! `unknown` (cause `tuma.no_answer`), its slot freed, and the late answer is
//! recorded on the same attempt, so nothing is sent twice by a timeout. A
//! request that never reaches the provider is still retried as transient.
//! What follows an unknown outcome is `retry.after_unknown`: `resend` (OTPs),
//! `resolve` (notifications), `hold`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Map;
use tuma::app::App;
use tuma::clock::Clock;
use tuma::config::Config;
use tuma::domain::DeliveryStatus;
use tuma::domain::attempt::Outcome;
use tuma::intake::{NotificationRequest, OtpRequest};
use tuma::providers::capability::{FoundMessage, Lookup, MessageLookup};
use tuma::providers::{Accepted, OutgoingMessage, Provider, Providers, SendError, unlimited};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::on_both_backends;
use crate::support::*;

/// What a Twilio double took: the recipient of each POST.
#[derive(Clone, Default)]
struct Taken(Arc<Mutex<Vec<String>>>);

impl Taken {
    fn per_recipient(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for to in self.0.lock().unwrap().iter() {
            *counts.entry(to.clone()).or_default() += 1;
        }
        counts
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Takes every message, as Twilio does (201, a new sid), after `delay`.
struct LateTwilio {
    taken: Taken,
    delay: Duration,
    /// Tells the sids of two doubles apart.
    tag: u32,
}

impl Respond for LateTwilio {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let to = form_urlencoded::parse(&request.body)
            .find(|(k, _)| k == "To")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let mut taken = self.taken.0.lock().unwrap();
        taken.push(to);
        let n = taken.len() as u128 + (u128::from(self.tag) << 64);
        drop(taken);
        ResponseTemplate::new(201)
            .set_body_raw(
                format!(
                    r#"{{"sid":"SM{n:032x}","status":"queued","num_segments":"1","price":null,"price_unit":"USD","error_code":null}}"#
                ),
                "application/json",
            )
            .set_delay(self.delay)
    }
}

async fn late_twilio(delay: Duration, tag: u32) -> (MockServer, Taken) {
    let server = MockServer::start().await;
    let taken = Taken::default();
    Mock::given(method("POST"))
        .and(path_regex(r"^/2010-04-01/Accounts/[^/]+/Messages\.json$"))
        .respond_with(LateTwilio {
            taken: taken.clone(),
            delay,
            tag,
        })
        .mount(&server)
        .await;
    (server, taken)
}

/// A configuration whose SMS route is the Twilio providers at `urls` (named
/// `tw-a`, `tw-b`, …), each with `timeout` and `late_answer_grace`;
/// `retry` adds lines to `[retry]`.
fn late_config(dir: &Path, urls: &[String], timeout: &str, grace: &str, retry: &str) -> Config {
    let mut text = String::new();
    let mut names = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let name = format!("tw-{}", (b'a' + i as u8) as char);
        text.push_str(&format!(
            r#"
[[provider]]
name = "{name}"
kind = "twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token_env = "TUMA_TEST_TWILIO_TOKEN"
from = "+15005550006"
base_url = "{url}"
timeout = "{timeout}"
late_answer_grace = "{grace}"
"#
        ));
        names.push(format!("\"{name}\""));
    }
    text.push_str(&format!(
        r#"
[[provider]]
name = "mail"
kind = "outbox"
dir = "{outbox}"

[[route]]
channel = "sms"
providers = [{names}]

[[route]]
channel = "email"
providers = ["mail"]

[retry]
initial_delay = "2s"
max_delay = "1m"
jitter = false
{retry}

[otp]
ttl = "5m"
default_region = "KE"
key_env = "TUMA_TEST_OTP_KEY"

[templates]
dir = "{templates}"
vars = {{ app_name = "tuma" }}

[worker]
poll_interval = "100ms"
sweep_interval = "1s"
rate_limit_wait = "1s"
"#,
        outbox = dir.join("outbox").display(),
        names = names.join(", "),
        templates = templates_dir().display(),
    ));
    let path = dir.join("providers.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).expect("valid test config")
}

async fn app_on(db: TestDb, config: Config, providers: Providers) -> TestApp {
    let clock = new_clock();
    let store = db.connect().await;
    let app = App::with_parts(config, store, providers, clock.clone()).expect("app");
    TestApp {
        app: Arc::new(app),
        clock,
        db,
    }
}

/// An app over the Twilio doubles at `urls`.
async fn late_app(
    backend: Backend,
    urls: &[String],
    timeout: &str,
    grace: &str,
    retry: &str,
) -> TestApp {
    let db = TestDb::new(backend).await;
    let config = late_config(db.path(), urls, timeout, grace, retry);
    let providers = Providers::from_config(&config).expect("providers");
    app_on(db, config, providers).await
}

fn welcome(to: &str) -> NotificationRequest {
    NotificationRequest {
        to: to.into(),
        template: "welcome".into(),
        locale: None,
        vars: Map::from_iter([("name".to_owned(), serde_json::json!("Amina"))]),
        send_at: None,
        expires: None,
    }
}

fn otp(to: &str) -> OtpRequest {
    OtpRequest {
        to: to.into(),
        code: "482913".into(),
        channel: None,
        locale: None,
        ttl: None,
    }
}

async fn drain(t: &TestApp) {
    tuma::worker::drain(t.app.clone(), Duration::from_secs(60))
        .await
        .expect("drain");
}

on_both_backends!(a_provider_that_answers_after_its_timeout_gets_each_notification_exactly_once);
async fn a_provider_that_answers_after_its_timeout_gets_each_notification_exactly_once(
    backend: Backend,
) {
    // Twilio takes each message and answers 1 s later; tuma waits 300 ms.
    let (server, taken) = late_twilio(Duration::from_millis(1000), 1).await;
    let t = late_app(backend, &[server.uri()], "300ms", "30s", "").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let d = t
            .app
            .enqueue_notification(welcome(&format!("+2547114100{i:02}")))
            .await
            .unwrap();
        ids.push(d.row.id);
    }
    drain(&t).await;
    assert_eq!(taken.len(), 10, "one POST per notification");
    assert!(taken.per_recipient().values().all(|n| *n == 1));
    for id in &ids {
        let d = t.delivery(id).await;
        assert_eq!(
            d.status,
            DeliveryStatus::Sent,
            "{id}: {:?}",
            d.row.last_error
        );
        let attempts = t.app.db.attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1, "never sent again");
        let a = &attempts[0];
        assert_eq!(
            a.outcome,
            Some(Outcome::Accepted),
            "the late answer is kept"
        );
        assert!(a.provider_message_id.as_deref().unwrap().starts_with("SM"));
        assert_eq!(d.row.provider_message_id, a.provider_message_id);
        assert!(
            a.latency_ms.unwrap() >= 1000,
            "the latency it really took: {:?}",
            a.latency_ms
        );
    }
    assert!(t.app.db.possible_duplicates().await.unwrap().is_empty());
    t.app.stop().await;
}

on_both_backends!(otps_to_late_providers_go_at_most_once_through_each_provider);
async fn otps_to_late_providers_go_at_most_once_through_each_provider(backend: Backend) {
    let (a, taken_a) = late_twilio(Duration::from_millis(1000), 1).await;
    let (b, taken_b) = late_twilio(Duration::from_millis(1000), 2).await;
    let t = late_app(backend, &[a.uri(), b.uri()], "300ms", "30s", "").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let d = t
            .app
            .enqueue_otp(otp(&format!("+2547114200{i:02}")))
            .await
            .unwrap();
        ids.push(d.row.id);
    }
    drain(&t).await;
    // A second code is better than none: once more, through the other one.
    assert!(taken_a.per_recipient().values().all(|n| *n == 1));
    assert!(taken_b.per_recipient().values().all(|n| *n == 1));
    assert_eq!((taken_a.len(), taken_b.len()), (5, 5));
    for id in &ids {
        let d = t.delivery(id).await;
        assert_eq!(d.status, DeliveryStatus::Sent, "{:?}", d.row.last_error);
        let attempts = t.app.db.attempts(id).await.unwrap();
        let providers: Vec<&str> = attempts.iter().map(|a| a.provider.as_str()).collect();
        assert_eq!(providers, ["tw-a", "tw-b"]);
        assert!(
            attempts
                .iter()
                .all(|a| a.outcome == Some(Outcome::Accepted)),
            "both late answers are kept"
        );
        assert_eq!(
            d.row.provider_message_id, attempts[0].provider_message_id,
            "the first acceptance is the delivery's"
        );
        assert!(attempts[1].reason.as_deref().unwrap().starts_with("resend"));
    }
    let duplicates = t.app.db.possible_duplicates().await.unwrap();
    assert_eq!(duplicates.len(), 1);
    assert_eq!((duplicates[0].a.as_str(), duplicates[0].value), ("tw-b", 5));
    t.app.stop().await;
}

on_both_backends!(with_after_unknown_hold_nothing_is_sent_twice_and_each_is_unknown);
async fn with_after_unknown_hold_nothing_is_sent_twice_and_each_is_unknown(backend: Backend) {
    // It never answers within the grace.
    let (server, taken) = late_twilio(Duration::from_secs(30), 1).await;
    let t = late_app(
        backend,
        &[server.uri()],
        "300ms",
        "0s",
        r#"after_unknown = "hold""#,
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let n = t
            .app
            .enqueue_notification(welcome(&format!("+2547114300{i:02}")))
            .await
            .unwrap();
        let o = t
            .app
            .enqueue_otp(otp(&format!("+2547114310{i:02}")))
            .await
            .unwrap();
        ids.extend([n.row.id, o.row.id]);
    }
    drain(&t).await;
    t.advance(Duration::from_secs(3600)).await;
    drain(&t).await;
    assert_eq!(taken.len(), 8);
    assert!(taken.per_recipient().values().all(|n| *n == 1));
    for id in &ids {
        let d = t.delivery(id).await;
        assert_eq!(d.status, DeliveryStatus::Unknown);
        let attempts = t.app.db.attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome, Some(Outcome::Unknown));
        assert_eq!(attempts[0].error_code.as_deref(), Some("tuma.no_answer"));
        let error = attempts[0].error.as_deref().unwrap();
        assert!(
            error.contains("no answer came within 300ms") && error.contains("left for ops"),
            "{error}"
        );
    }
    let unknown = t
        .app
        .db
        .list_deliveries(&tuma::store::ListFilter {
            status: Some(DeliveryStatus::Unknown),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(unknown.len(), 8, "ops find them by status");
    t.app.stop().await;
}

on_both_backends!(a_late_acceptance_moves_an_unknown_delivery_to_sent);
async fn a_late_acceptance_moves_an_unknown_delivery_to_sent(backend: Backend) {
    let (server, taken) = late_twilio(Duration::from_millis(1000), 1).await;
    let t = late_app(
        backend,
        &[server.uri()],
        "300ms",
        "30s",
        r#"after_unknown = "hold""#,
    )
    .await;
    let d = t
        .app
        .enqueue_notification(welcome("+254711440001"))
        .await
        .unwrap();
    drain(&t).await;
    assert_eq!(taken.len(), 1);
    let d = t.delivery(&d.row.id).await;
    assert_eq!(d.status, DeliveryStatus::Sent);
    assert!(d.row.last_error.is_none());
    t.app.stop().await;
}

on_both_backends!(a_request_that_never_reaches_the_provider_is_retried_as_transient);
async fn a_request_that_never_reaches_the_provider_is_retried_as_transient(backend: Backend) {
    // Nothing listens on the first; the second takes the connection and
    // drops it before any TLS is spoken, so no request is ever written.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset = format!("https://{}", rude.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = rude.accept().await {
            drop(socket);
        }
    });
    let t = late_app(backend, &[refused, reset], "2s", "30s", "").await;
    let d = t
        .app
        .enqueue_notification(welcome("+254711450001"))
        .await
        .unwrap();
    drain(&t).await;
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(Outcome::Transient));
    assert!(
        attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("cannot reach"),
        "{:?}",
        attempts[0].error
    );
    // Its backoff passes: the next provider, whose connection breaks before
    // the request was written, is transient too.
    t.advance(Duration::from_secs(3)).await;
    drain(&t).await;
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1].provider, "tw-b");
    assert_eq!(
        attempts[1].outcome,
        Some(Outcome::Transient),
        "{:?}",
        attempts[1].error
    );
    assert_eq!(t.delivery(&d.row.id).await.status, DeliveryStatus::Pending);
    t.app.stop().await;
}

/// Takes every message and never answers.
#[derive(Debug, Default)]
struct Silent {
    calls: AtomicUsize,
}

#[async_trait]
impl Provider for Silent {
    async fn send(&self, _: &OutgoingMessage) -> Result<Accepted, SendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }

    fn dry_run(&self, _: &OutgoingMessage) -> String {
        String::new()
    }
}

/// Answers "did you take it?" from a fixed answer, recording each question.
#[derive(Debug)]
struct Knows {
    has: bool,
    asked: Mutex<Vec<(String, DateTime<Utc>)>>,
}

#[async_trait]
impl MessageLookup for Knows {
    async fn find_sent(
        &self,
        message: &OutgoingMessage,
        since: DateTime<Utc>,
    ) -> Result<Lookup, SendError> {
        let to = match &message.content {
            tuma::providers::Content::Sms { to, .. } => to.as_str().to_owned(),
            tuma::providers::Content::Email { to, .. } => to.as_str().to_owned(),
        };
        self.asked.lock().unwrap().push((to, since));
        Ok(if self.has {
            Lookup::Found(FoundMessage {
                provider_message_id: "SMfound00000000000000000000000001".into(),
                provider_status: Some("delivered".into()),
                cost: None,
                segments: Some(1),
            })
        } else {
            Lookup::NotFound
        })
    }
}

/// An app whose one SMS provider (`tw-a`) is `silent`, asked with `knows`.
async fn silent_app(backend: Backend, silent: Arc<Silent>, knows: Arc<Knows>) -> TestApp {
    let db = TestDb::new(backend).await;
    let config = late_config(
        db.path(),
        &["http://127.0.0.1:9".to_owned()],
        "300ms",
        "200ms",
        "",
    );
    let mut providers = Providers::from_config(&config).expect("providers");
    providers.insert("tw-a", silent, unlimited(), Duration::from_millis(300));
    providers.set_late_answer_grace("tw-a", Duration::from_millis(200));
    providers.insert_lookup("tw-a", knows);
    app_on(db, config, providers).await
}

on_both_backends!(
    a_provider_that_has_the_unanswered_message_resolves_it_to_sent_without_a_second_send
);
async fn a_provider_that_has_the_unanswered_message_resolves_it_to_sent_without_a_second_send(
    backend: Backend,
) {
    let silent = Arc::new(Silent::default());
    let knows = Arc::new(Knows {
        has: true,
        asked: Mutex::default(),
    });
    let t = silent_app(backend, silent.clone(), knows.clone()).await;
    let d = t
        .app
        .enqueue_notification(welcome("+254711460001"))
        .await
        .unwrap();
    let started = t.clock.now();
    drain(&t).await;
    assert_eq!(t.delivery(&d.row.id).await.status, DeliveryStatus::Pending);
    assert!(
        knows.asked.lock().unwrap().is_empty(),
        "not before the grace"
    );
    // The grace passed with no answer: the provider is asked.
    t.advance(Duration::from_secs(1)).await;
    drain(&t).await;
    let asked = knows.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].0, "+254711460001");
    assert!(asked[0].1 <= started, "from before the attempt began");
    let after = t.delivery(&d.row.id).await;
    assert_eq!(after.status, DeliveryStatus::Sent);
    assert_eq!(
        after.row.provider_message_id.as_deref(),
        Some("SMfound00000000000000000000000001")
    );
    assert_eq!(silent.calls.load(Ordering::SeqCst), 1, "never sent again");
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(Outcome::Accepted));
    t.app.stop().await;
}

on_both_backends!(a_provider_without_a_record_of_it_gets_it_once_more_and_then_ops_do);
async fn a_provider_without_a_record_of_it_gets_it_once_more_and_then_ops_do(backend: Backend) {
    let silent = Arc::new(Silent::default());
    let knows = Arc::new(Knows {
        has: false,
        asked: Mutex::default(),
    });
    let t = silent_app(backend, silent.clone(), knows.clone()).await;
    let d = t
        .app
        .enqueue_notification(welcome("+254711470001"))
        .await
        .unwrap();
    for _ in 0..4 {
        drain(&t).await;
        t.advance(Duration::from_secs(60)).await;
    }
    drain(&t).await;
    assert_eq!(silent.calls.load(Ordering::SeqCst), 2, "sent again once");
    assert_eq!(knows.asked.lock().unwrap().len(), 1);
    let after = t.delivery(&d.row.id).await;
    assert_eq!(after.status, DeliveryStatus::Unknown);
    let attempts = t.app.db.attempts(&d.row.id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("has no record of it"),
        "{:?}",
        attempts[1].reason
    );
    let duplicates = t.app.db.possible_duplicates().await.unwrap();
    assert_eq!((duplicates[0].a.as_str(), duplicates[0].value), ("tw-a", 1));
    t.app.stop().await;
}

on_both_backends!(a_worker_killed_while_it_listens_for_late_answers_loses_nothing);
async fn a_worker_killed_while_it_listens_for_late_answers_loses_nothing(backend: Backend) {
    // Twilio takes each message and answers 2 s later; tuma waits 300 ms
    // and listens on for 5 s. The worker is killed in between.
    let server = MockServer::start().await;
    let history = TwilioHistory::mount(
        &server,
        "AC0123456789abcdef0123456789abcdef",
        Duration::from_secs(2),
    )
    .await;
    let db = TestDb::new(backend).await;
    let config = late_config(db.path(), &[server.uri()], "300ms", "5s", "");
    let config_path = db.path().join("providers.toml");
    let store = db.connect().await;
    let app = App::with_parts(
        config,
        store.clone(),
        Providers::default(),
        Arc::new(tuma::clock::SystemClock),
    )
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let d = app
            .enqueue_notification(welcome(&format!("+2547114800{i:02}")))
            .await
            .unwrap();
        ids.push(d.row.id);
    }
    let mut worker = tuma_command(&config_path, &db.url)
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Every attempt unanswered and listened to: mid-grace.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let unanswered = count(
            &store,
            "SELECT COUNT(*) FROM delivery_attempts WHERE error_code = 'tuma.no_answer'",
        )
        .await;
        if unanswered == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{unanswered} unanswered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.kill().await.unwrap();
    let sent_before = count(
        &store,
        "SELECT COUNT(*) FROM deliveries WHERE status = 'sent'",
    )
    .await;
    // The grace passes with no process to hear the answers: the retries
    // the killed worker left come due.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let out = tuma_command(&config_path, &db.url)
        .args(["worker", "--drain"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in &ids {
        let d = store.delivery(id).await.unwrap().unwrap();
        assert_eq!(
            d.status,
            DeliveryStatus::Sent,
            "{id}: {:?}",
            d.row.last_error
        );
    }
    // What the killed worker never heard, Twilio was asked about: it had
    // each message, so none went twice.
    assert_eq!(history.posts(), 5);
    assert!(store.possible_duplicates().await.unwrap().is_empty());
    assert!(sent_before < 5, "the kill came before the answers");
    app.stop().await;
}

on_both_backends!(a_twilio_double_that_has_the_message_when_asked_resolves_an_unknown_to_sent_without_a_second_post);
async fn a_twilio_double_that_has_the_message_when_asked_resolves_an_unknown_to_sent_without_a_second_post(
    backend: Backend,
) {
    // Twilio takes the message and answers only after 3 s; tuma stops
    // waiting at 300 ms and (grace 0 s) at once asks Twilio's list of the
    // number's messages.
    let server = MockServer::start().await;
    let history = TwilioHistory::mount(
        &server,
        "AC0123456789abcdef0123456789abcdef",
        Duration::from_secs(3),
    )
    .await;
    let t = late_app(backend, &[server.uri()], "300ms", "0s", "").await;
    history.follow(t.clock.clone());
    let mut ids = Vec::new();
    for i in 0..3 {
        let d = t
            .app
            .enqueue_notification(welcome(&format!("+2547114900{i:02}")))
            .await
            .unwrap();
        ids.push(d.row.id);
    }
    drain(&t).await;
    assert_eq!(history.posts(), 3, "no second POST");
    for id in &ids {
        let d = t.delivery(id).await;
        assert_eq!(d.status, DeliveryStatus::Sent, "{:?}", d.row.last_error);
        let attempts = t.app.db.attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome, Some(Outcome::Accepted));
        let sid = attempts[0].provider_message_id.clone().unwrap();
        assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
        assert_eq!(d.row.provider_message_id.as_deref(), Some(sid.as_str()));
    }
    assert!(t.app.db.possible_duplicates().await.unwrap().is_empty());
    t.app.stop().await;
}
