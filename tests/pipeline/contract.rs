//! The OpenAPI document against the live API: every route is called, for
//! its successes and for each error the document lists, and every answer's
//! body is validated against the document's own schema for that route,
//! status and content type (JSON Schema 2020-12, `$ref`s resolved into the
//! document's components). At the end every documented (operation, status)
//! must have been seen, but for the two listed in `NOT_PROVOKED` with why.

use std::collections::BTreeSet;

use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use tuma::clock::Clock;

use crate::on_both_backends;
use crate::support::*;

const PHONE: &str = "+254711000001";
/// What `.cargo/config.toml` puts in the test environment.
const TWILIO_TOKEN: &str = "twilio-callback-token-8c1d4e";
const AT_SECRET: &str = "at-report-secret-4f7b2c9d1e6a8b3c";
const CALLBACK_URL: &str = "https://tuma.example.org/v1/callbacks/twilio";

/// Documented answers this test does not provoke, and why.
const NOT_PROVOKED: [(u16, &str); 2] = [
    (
        409,
        "idempotency-key-in-flight: only when a claim is seen whose row cannot be read",
    ),
    (
        503,
        "unavailable: provoked by cutting the database (api.rs, Postgres only), same Problem schema",
    ),
];

fn extra() -> String {
    format!(
        r#"
[[provider]]
name = "twilio"
kind = "twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token_env = "TUMA_TEST_TWILIO_TOKEN"
from = "+15005550006"
base_url = "http://127.0.0.1:9"
status_callback_url = "{CALLBACK_URL}"

[[provider]]
name = "africastalking"
kind = "africastalking"
username = "mtaadao"
api_key_env = "TUMA_TEST_AT_API_KEY"
callback_secret_env = "TUMA_TEST_AT_CALLBACK_SECRET"
base_url = "http://127.0.0.1:9"

[[provider]]
name = "vonage"
kind = "vonage"
api_key = "a1b2c3d4"
signature_secret_env = "TUMA_TEST_VONAGE_SIGNATURE_SECRET"
signature_method = "sha256"
from = "MTAADAO"
currency = "EUR"
base_url = "http://127.0.0.1:9"

[[budget]]
currency = "KES"
period = "month"
limit = "100000.00"
kinds = ["notification"]

[api]
otp_per_recipient = {{ max = 2, per = "15m" }}
max_body_bytes = 4096
"#
    )
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn twilio_signature(params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut data = String::from(CALLBACK_URL);
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(TWILIO_TOKEN.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// What `.cargo/config.toml` gives `TUMA_TEST_VONAGE_SIGNATURE_SECRET`.
const VONAGE_SECRET: &str = "vonage-signature-secret-2e9a7c41";

/// A Vonage receipt's fields signed as Vonage signs them (SHA-256 HMAC over
/// `&name=value` sorted, `&` and `=` in values as `_`), as a query string.
fn vonage_query(fields: &[(&str, &str)], timestamp: i64) -> String {
    let timestamp = timestamp.to_string();
    let mut all: Vec<(&str, &str)> = fields.to_vec();
    all.push(("timestamp", &timestamp));
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut text = String::new();
    for (k, v) in &all {
        text.push_str(&format!("&{k}={}", v.replace(['&', '='], "_")));
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(VONAGE_SECRET.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(all)
        .append_pair("sig", &sig)
        .finish()
}

/// The document, and what this test has seen of it.
struct Contract {
    doc: Value,
    seen: BTreeSet<(String, String, u16)>,
}

impl Contract {
    /// Checks `response` to `method template` against the document and
    /// returns its status and JSON body (Null when it is not JSON).
    async fn check(
        &mut self,
        method: &str,
        template: &str,
        response: reqwest::Response,
    ) -> (u16, Value) {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = response.text().await.unwrap();
        let op = &self.doc["paths"][template][method];
        assert!(op.is_object(), "{method} {template} is not documented");
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {template} answered {status}, which the document does not list: {text}"
        );
        self.seen
            .insert((method.to_owned(), template.to_owned(), status));
        let Some(content) = documented["content"].as_object() else {
            return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
        };
        let media = content
            .iter()
            .find(|(name, _)| {
                let base = |s: &str| s.split(';').next().unwrap_or("").trim().to_owned();
                base(name) == base(&content_type)
            })
            .unwrap_or_else(|| {
                panic!(
                    "{method} {template} {status}: content type `{content_type}` is not documented"
                )
            })
            .1;
        if !content_type.contains("json") {
            assert!(
                media["schema"]["type"] == "string",
                "{method} {template} {status}: a text body documented as {}",
                media["schema"]
            );
            return (status, Value::Null);
        }
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {template} {status}: not JSON ({e}): {text}"));
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [media["schema"]],
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{method} {template} {status}: schema does not build: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: the body does not match the document:\n{}\n{body:#}",
            errors.join("\n")
        );
        (status, body)
    }

    /// Every documented (method, path, status) this test has not seen.
    fn unseen(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for status in op["responses"].as_object().unwrap().keys() {
                    let status: u16 = status.parse().unwrap();
                    if NOT_PROVOKED.iter().any(|(s, _)| *s == status) {
                        continue;
                    }
                    if !self.seen.contains(&(method.clone(), path.clone(), status)) {
                        missing.push(format!("{method} {path} {status}"));
                    }
                }
            }
        }
        missing
    }
}

async fn every_route_answers_as_the_openapi_document_says(backend: Backend) {
    let s = spawn_app_with(backend, &extra()).await;
    let all = s.key("all", &["send", "read", "ops", "reports"]).await;
    let reader = s.key("reader", &["read"]).await;
    let sender = s.key("sender", &["send"]).await;
    let sender_reader = s.key("sender-reader", &["send", "read"]).await;
    let doc: Value = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut c = Contract {
        doc,
        seen: BTreeSet::new(),
    };
    let c = &mut c;
    let client = &s.client;
    let big = "x".repeat(5000);

    // GET /openapi.json, /healthz, /readyz, /metrics.
    let r = client.get(s.url("/openapi.json")).send().await.unwrap();
    c.check("get", "/openapi.json", r).await;
    let r = client.get(s.url("/healthz")).send().await.unwrap();
    c.check("get", "/healthz", r).await;
    let r = client.get(s.url("/readyz")).send().await.unwrap();
    c.check("get", "/readyz", r).await;
    let r = client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(c.check("get", "/metrics", r).await.0, 200);

    // Sends: each success and each refusal, on both send routes.
    for (path, ok) in [
        (
            "/v1/otp",
            json!({"to": PHONE, "code": "482913", "purpose": "login"}),
        ),
        (
            "/v1/notifications",
            json!({"to": "Amina@Example.org", "template": "welcome",
                   "vars": {"name": "Amina", "points": 12.5, "vip": true}, "ttl": "1h"}),
        ),
    ] {
        let post = |key: Option<&str>| {
            let mut r = client.post(s.url(path));
            if let Some(key) = key {
                r = r.bearer_auth(key);
            }
            r
        };
        let r = post(Some(&sender))
            .header("Idempotency-Key", format!("contract-{path}"))
            .json(&ok)
            .send()
            .await
            .unwrap();
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let (status, first) = c.check("post", path, r).await;
        assert_eq!(status, 202);
        assert_eq!(
            location,
            format!("/v1/deliveries/{}", first["id"].as_str().unwrap())
        );
        // The same Idempotency-Key again: the original answer, Location too.
        let r = post(Some(&sender))
            .header("Idempotency-Key", format!("contract-{path}"))
            .json(&ok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(r.headers()["location"].to_str().unwrap(), location);
        let (status, again) = c.check("post", path, r).await;
        assert_eq!((status, &again), (202, &first));

        let r = post(Some(&sender))
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(c.check("post", path, r).await.0, 400);
        let r = post(None).json(&ok).send().await.unwrap();
        assert_eq!(c.check("post", path, r).await.0, 401);
        let r = post(Some(&reader)).json(&ok).send().await.unwrap();
        assert_eq!(c.check("post", path, r).await.0, 403);
        let r = post(Some(&sender))
            .json(&json!({"to": PHONE, "padding": big}))
            .send()
            .await
            .unwrap();
        assert_eq!(c.check("post", path, r).await.0, 413);
        let r = post(Some(&sender))
            .header("content-type", "text/plain")
            .body(ok.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(c.check("post", path, r).await.0, 415);
        let mut invalid = ok.clone();
        invalid["to"] = json!("not a number");
        let r = post(Some(&sender)).json(&invalid).send().await.unwrap();
        let (status, problem) = c.check("post", path, r).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some("to")));
    }
    // The batch route: accepted and refused items, and the batch's own errors.
    let t = "/v1/notifications/batch";
    let batch = json!({"items": [
        {"to": PHONE, "template": "welcome", "vars": {"name": "Amina"}, "idempotency_key": "batch-0",
         "ttl": "1h"},
        {"to": "not a number", "template": "welcome", "vars": {"name": "Juma"}},
    ]});
    let r = client
        .post(s.url(t))
        .bearer_auth(&sender)
        .json(&batch)
        .send()
        .await
        .unwrap();
    let (status, answer) = c.check("post", t, r).await;
    assert_eq!(status, 200);
    assert_eq!(answer["items"][1]["problem"]["field"], "items[1].to");
    let r = client
        .post(s.url(t))
        .bearer_auth(&sender)
        .json(&batch)
        .send()
        .await
        .unwrap();
    let (_, again) = c.check("post", t, r).await;
    assert_eq!(again["items"][0]["replayed"], true);
    let r = client
        .post(s.url(t))
        .bearer_auth(&sender)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 400);
    let r = client.post(s.url(t)).json(&batch).send().await.unwrap();
    assert_eq!(c.check("post", t, r).await.0, 401);
    let r = client
        .post(s.url(t))
        .bearer_auth(&reader)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 403);
    // Its own client: the server answers before reading such a body and
    // closes the connection, which must not be pooled for the next request.
    let r = reqwest::Client::new()
        .post(s.url(t))
        .bearer_auth(&sender)
        .json(&json!({"items": [{"to": PHONE, "template": "welcome",
            "vars": {"name": "x".repeat(1024 * 1024)}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 413);
    let r = client
        .post(s.url(t))
        .bearer_auth(&sender)
        .header("content-type", "text/plain")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 415);
    let r = client
        .post(s.url(t))
        .bearer_auth(&sender)
        .json(&json!({"items": []}))
        .send()
        .await
        .unwrap();
    let (status, problem) = c.check("post", t, r).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("items")));

    // The per-recipient limit (max 2 in this test's configuration).
    let mut limited = None;
    for _ in 0..3 {
        let r = s
            .post(
                "/v1/otp",
                &sender,
                &json!({"to": "+254711000009", "code": "1234"}),
            )
            .await;
        limited = Some(c.check("post", "/v1/otp", r).await.0);
    }
    assert_eq!(limited, Some(429));

    // Deliveries: one sent, with attempts and cost.
    let id = s
        .post(
            "/v1/otp",
            &sender,
            &json!({"to": "+254711000002", "code": "1234"}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.t.drain().await;
    let one = format!("/v1/deliveries/{id}");
    let (status, shown) = c
        .check("get", "/v1/deliveries/{id}", s.get(&one, &reader).await)
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["attempts"][0]["outcome"], "accepted");
    assert_eq!(shown["cost"]["currency"], "KES");
    let r = client.get(s.url(&one)).send().await.unwrap();
    assert_eq!(c.check("get", "/v1/deliveries/{id}", r).await.0, 401);
    let r = s.get(&one, &sender).await;
    assert_eq!(c.check("get", "/v1/deliveries/{id}", r).await.0, 403);
    let r = s.get("/v1/deliveries/nope", &reader).await;
    assert_eq!(c.check("get", "/v1/deliveries/{id}", r).await.0, 404);

    // The list, by recipient (a national number), since and error code.
    let r = s
        .get(
            "/v1/deliveries?recipient=0711000002&since=2h&limit=1",
            &reader,
        )
        .await;
    let (status, page) = c.check("get", "/v1/deliveries", r).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["id"], id.as_str());
    let r = client.get(s.url("/v1/deliveries")).send().await.unwrap();
    assert_eq!(c.check("get", "/v1/deliveries", r).await.0, 401);
    let r = s.get("/v1/deliveries", &sender).await;
    assert_eq!(c.check("get", "/v1/deliveries", r).await.0, 403);
    let r = s.get("/v1/deliveries?since=yesterday", &reader).await;
    assert_eq!(c.check("get", "/v1/deliveries", r).await.0, 422);
    let r = s.get("/v1/deliveries?recipient=nobody", &reader).await;
    let (status, problem) = c.check("get", "/v1/deliveries", r).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("recipient"))
    );
    let r = s
        .get(
            &format!(
                "/v1/deliveries?since={}",
                urlencode(&(s.t.clock.now() - chrono::Duration::hours(1)).to_rfc3339())
            ),
            &reader,
        )
        .await;
    let (status, page) = c.check("get", "/v1/deliveries", r).await;
    assert_eq!(status, 200);
    assert!(!page["items"].as_array().unwrap().is_empty());

    // Cancel: a scheduled notification, then again (409), and refusals.
    let later = s.t.clock.now() + chrono::Duration::hours(3);
    let scheduled = s
        .post(
            "/v1/notifications",
            &sender,
            &json!({"to": PHONE, "template": "welcome", "vars": {"name": "Juma"},
                    "send_at": later.to_rfc3339()}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancel = format!("/v1/deliveries/{scheduled}/cancel");
    let t = "/v1/deliveries/{id}/cancel";
    let r = client.post(s.url(&cancel)).send().await.unwrap();
    assert_eq!(c.check("post", t, r).await.0, 401);
    let r = client
        .post(s.url(&cancel))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 403);
    // Another key's delivery, to a key that may read it.
    let r = client
        .post(s.url(&cancel))
        .bearer_auth(&sender_reader)
        .send()
        .await
        .unwrap();
    let (status, problem) = c.check("post", t, r).await;
    assert_eq!(status, 403);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("another API key"),
        "{problem}"
    );
    let r = client
        .post(s.url(&cancel))
        .bearer_auth(&sender)
        .send()
        .await
        .unwrap();
    let (status, canceled) = c.check("post", t, r).await;
    assert_eq!(
        (status, canceled["status"].as_str()),
        (200, Some("canceled"))
    );
    let r = client
        .post(s.url(&cancel))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    let (status, problem) = c.check("post", t, r).await;
    assert_eq!(
        (status, problem["delivery_status"].as_str()),
        (409, Some("canceled"))
    );
    let r = client
        .post(s.url("/v1/deliveries/nope/cancel"))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 404);

    // Replays: a failed delivery, replayed alone and by filter.
    let failed = seed(
        &s.t.app.db,
        Seed::notification(
            &s.t.clock.now().to_rfc3339(),
            "+254711000003",
            "primary",
            SeedEnd::Failed(tuma::store::Outcome::Transient, Some("30003")),
        ),
    )
    .await;
    let t = "/v1/deliveries/{id}/replay";
    let replay = format!("/v1/deliveries/{failed}/replay");
    let r = client
        .post(s.url(&replay))
        .bearer_auth(&all)
        .json(&json!({"dry_run": true}))
        .send()
        .await
        .unwrap();
    let (status, report) = c.check("post", t, r).await;
    assert_eq!((status, report["dry_run"].as_bool()), (200, Some(true)));
    let r = client
        .post(s.url(&replay))
        .bearer_auth(&all)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 400);
    let r = client.post(s.url(&replay)).send().await.unwrap();
    assert_eq!(c.check("post", t, r).await.0, 401);
    let r = client
        .post(s.url(&replay))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 403);
    let r = client
        .post(s.url("/v1/deliveries/nope/replay"))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 404);
    let r = client
        .post(s.url(&replay))
        .bearer_auth(&all)
        .json(&json!({"force": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 413);
    let r = client
        .post(s.url(&replay))
        .bearer_auth(&all)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 415);
    let r = client
        .post(s.url(&replay))
        .bearer_auth(&all)
        .json(&json!({"again": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 422);
    let r = client
        .post(s.url(&replay))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    let (status, report) = c.check("post", t, r).await;
    assert_eq!(status, 200);
    assert_eq!(report["replayed"][0]["original"], failed.as_str());
    let (_, original) = c
        .check(
            "get",
            "/v1/deliveries/{id}",
            s.get(&format!("/v1/deliveries/{failed}"), &reader).await,
        )
        .await;
    assert_eq!(original["error_code"], "30003");
    assert_eq!(
        original["replays"][0]["id"],
        report["replayed"][0]["replay"]
    );
    let (_, replica) = c
        .check(
            "get",
            "/v1/deliveries/{id}",
            s.get(
                &format!(
                    "/v1/deliveries/{}",
                    report["replayed"][0]["replay"].as_str().unwrap()
                ),
                &reader,
            )
            .await,
        )
        .await;
    assert_eq!(replica["replay_of"]["id"], failed.as_str());
    let r = s.get("/v1/deliveries?error_code=30003", &reader).await;
    let (_, page) = c.check("get", "/v1/deliveries", r).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);

    let t = "/v1/replays";
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .json(&json!({"filter": {"status": "failed"}, "dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 200);
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .header("content-type", "application/json")
        .body("[")
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 400);
    let r = client.post(s.url(t)).json(&json!({})).send().await.unwrap();
    assert_eq!(c.check("post", t, r).await.0, 401);
    let r = client
        .post(s.url(t))
        .bearer_auth(&reader)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 403);
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .json(&json!({"filter": {"provider": big}}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 413);
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 415);
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .json(&json!({"filter": {"limit": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 422);

    // The cost report, as JSON and as CSV.
    let t = "/v1/reports/costs";
    let r = s.get("/v1/reports/costs?by=month,provider", &all).await;
    let (status, report) = c.check("get", t, r).await;
    assert_eq!(status, 200);
    assert!(report["totals"].is_array());
    let r = s.get("/v1/reports/costs?format=csv", &all).await;
    assert_eq!(c.check("get", t, r).await.0, 200);
    let r = client.get(s.url(t)).send().await.unwrap();
    assert_eq!(c.check("get", t, r).await.0, 401);
    let r = s.get(t, &reader).await;
    assert_eq!(c.check("get", t, r).await.0, 403);
    let r = s.get("/v1/reports/costs?by=decade", &all).await;
    assert_eq!(c.check("get", t, r).await.0, 422);

    // Callbacks, checked by a signature or by the secret in the URL.
    let t = "/v1/callbacks/{provider}";
    let unknown = [("MessageSid", "SMunknown"), ("MessageStatus", "delivered")];
    let r = client
        .post(s.url("/v1/callbacks/twilio"))
        .header("X-Twilio-Signature", twilio_signature(&unknown))
        .form(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 200);
    let r = client
        .post(s.url("/v1/callbacks/twilio"))
        .form(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 403);
    let missing = [("MessageStatus", "delivered")];
    let r = client
        .post(s.url("/v1/callbacks/twilio"))
        .header("X-Twilio-Signature", twilio_signature(&missing))
        .form(&missing)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 422);
    let r = client
        .post(s.url("/v1/callbacks/twilio"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 413);
    let r = client
        .post(s.url("/v1/callbacks/carrier-pigeon"))
        .form(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 404);

    // The same path by GET, the fields in the query (Vonage's GET webhooks).
    let now = s.t.clock.now().timestamp();
    let dlr = [("messageId", "0C00000000000000"), ("status", "delivered")];
    let r = client
        .get(s.url(&format!("/v1/callbacks/vonage?{}", vonage_query(&dlr, now))))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("get", t, r).await.0, 200);
    let r = client
        .get(s.url(&format!(
            "/v1/callbacks/vonage?{}",
            vonage_query(&dlr, now - 3600)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("get", t, r).await.0, 403, "an hour old");
    let r = client
        .get(s.url(&format!(
            "/v1/callbacks/vonage?{}",
            vonage_query(&[("status", "delivered")], now)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("get", t, r).await.0, 422);
    let r = client
        .get(s.url("/v1/callbacks/carrier-pigeon?status=delivered"))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("get", t, r).await.0, 404);

    let t = "/v1/callbacks/{provider}/{secret}";
    let at = format!("/v1/callbacks/africastalking/{AT_SECRET}");
    let r = client
        .get(s.url(&format!("{at}?id=ATXid_unknown&status=Success")))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("get", t, r).await.0, 200);
    let r = client
        .get(s.url("/v1/callbacks/africastalking/not-the-secret?id=ATXid_unknown&status=Success"))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("get", t, r).await.0, 404);
    let r = client
        .get(s.url(&format!("{at}?status=Success")))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("get", t, r).await.0, 422);
    let report = [("id", "ATXid_unknown"), ("status", "Success")];
    let r = client.post(s.url(&at)).form(&report).send().await.unwrap();
    assert_eq!(c.check("post", t, r).await.0, 200);
    let r = client
        .post(s.url("/v1/callbacks/africastalking/not-the-secret"))
        .form(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 404);
    let r = client
        .post(s.url(&at))
        .form(&[("status", "Success")])
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 422);
    let r = client
        .post(s.url(&at))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 413);

    // Webhook endpoints: register one on a local receiver, list, test, remove.
    let hooks = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(204))
        .mount(&hooks)
        .await;
    let t = "/v1/webhooks";
    let endpoint = json!({"key": "sender", "url": format!("{}/hooks", hooks.uri()),
        "events": ["delivery.failed", "delivery.delivered"]});
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .json(&endpoint)
        .send()
        .await
        .unwrap();
    let (status, created) = c.check("post", t, r).await;
    assert_eq!(status, 201);
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let hook = created["id"].as_str().unwrap().to_owned();
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 400);
    let r = client.post(s.url(t)).json(&endpoint).send().await.unwrap();
    assert_eq!(c.check("post", t, r).await.0, 401);
    let r = client
        .post(s.url(t))
        .bearer_auth(&reader)
        .json(&endpoint)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 403);
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .json(&json!({"key": "sender", "url": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 413);
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .header("content-type", "text/plain")
        .body(endpoint.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 415);
    for (body, field) in [
        (
            json!({"key": "sender", "url": "ftp://127.0.0.1/hooks"}),
            "url",
        ),
        (
            json!({"key": "nobody", "url": format!("{}/hooks", hooks.uri())}),
            "key",
        ),
        (
            json!({"key": "sender", "url": format!("{}/hooks", hooks.uri()),
                "events": ["delivery.lost"]}),
            "events",
        ),
        (
            json!({"key": "sender", "url": format!("{}/hooks", hooks.uri()),
                "secret": "whsec_mine"}),
            "secret",
        ),
    ] {
        let r = client
            .post(s.url(t))
            .bearer_auth(&all)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, problem) = c.check("post", t, r).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)));
    }
    let r = s.get(t, &all).await;
    let (status, listed) = c.check("get", t, r).await;
    assert_eq!(status, 200);
    assert_eq!(listed["endpoints"][0]["id"], hook.as_str());
    assert!(listed["endpoints"][0].get("secret").is_none());
    let r = client.get(s.url(t)).send().await.unwrap();
    assert_eq!(c.check("get", t, r).await.0, 401);
    let r = s.get(t, &reader).await;
    assert_eq!(c.check("get", t, r).await.0, 403);

    let t = "/v1/webhooks/{id}/test";
    let tested = format!("/v1/webhooks/{hook}/test");
    let r = client
        .post(s.url(&tested))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    let (status, result) = c.check("post", t, r).await;
    assert_eq!(
        (status, result["outcome"].as_str()),
        (200, Some("delivered"))
    );
    assert_eq!(result["status_code"], 204);
    let r = client.post(s.url(&tested)).send().await.unwrap();
    assert_eq!(c.check("post", t, r).await.0, 401);
    let r = client
        .post(s.url(&tested))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 403);
    let r = client
        .post(s.url("/v1/webhooks/wh_nope/test"))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 404);

    let t = "/v1/webhooks/{id}";
    let removed = format!("/v1/webhooks/{hook}");
    let r = client.delete(s.url(&removed)).send().await.unwrap();
    assert_eq!(c.check("delete", t, r).await.0, 401);
    let r = client
        .delete(s.url(&removed))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("delete", t, r).await.0, 403);
    let r = client
        .delete(s.url(&removed))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("delete", t, r).await.0, 204);
    let r = client
        .delete(s.url(&removed))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("delete", t, r).await.0, 404);

    // Budgets: the overview and a release.
    let t = "/v1/budget";
    let r = s.get(t, &all).await;
    let (status, overview) = c.check("get", t, r).await;
    assert_eq!(status, 200);
    assert_eq!(overview["budgets"][0]["budget"], "KES/month");
    let r = client.get(s.url(t)).send().await.unwrap();
    assert_eq!(c.check("get", t, r).await.0, 401);
    let r = s.get(t, &reader).await;
    assert_eq!(c.check("get", t, r).await.0, 403);
    let t = "/v1/budget/release";
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .json(&json!({"currency": "KES"}))
        .send()
        .await
        .unwrap();
    let (status, released) = c.check("post", t, r).await;
    assert_eq!((status, released["released"].as_u64()), (200, Some(0)));
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 400);
    let r = client.post(s.url(t)).json(&json!({})).send().await.unwrap();
    assert_eq!(c.check("post", t, r).await.0, 401);
    let r = client
        .post(s.url(t))
        .bearer_auth(&reader)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 403);
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .json(&json!({"currency": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 413);
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", t, r).await.0, 415);
    let r = client
        .post(s.url(t))
        .bearer_auth(&all)
        .json(&json!({"currency": "K3S"}))
        .send()
        .await
        .unwrap();
    let (status, problem) = c.check("post", t, r).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("currency")));

    // Metrics behind a key.
    s.stop().await;
    let s = spawn_app_with(backend, "[api]\nmetrics_need_key = true\n").await;
    let reader = s.key("reader", &["read"]).await;
    c.check(
        "get",
        "/metrics",
        s.client.get(s.url("/metrics")).send().await.unwrap(),
    )
    .await;
    c.check("get", "/metrics", s.get("/metrics", &reader).await)
        .await;

    let unseen = c.unseen();
    assert!(
        unseen.is_empty(),
        "documented but never answered: {unseen:#?}"
    );
    s.stop().await;
}
on_both_backends!(every_route_answers_as_the_openapi_document_says);
