//! The HTTP API end to end: a real server on port 0 over a fresh database,
//! called with reqwest, on SQLite and Postgres.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tuma::clock::Clock;

use crate::on_both_backends;
use crate::support::*;

const PHONE: &str = "+254711000001";

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "status {status}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("https://tuma.dev/problems/"),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    (status, body)
}

async fn an_otp_is_accepted_delivered_and_shown_without_its_code(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("auth-service", &["send", "read"]).await;
    let response = s
        .post(
            "/v1/otp",
            &key,
            &json!({"to": PHONE, "code": "482913", "purpose": "login", "ttl_seconds": 120}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(response.headers().contains_key("x-request-id"));
    let receipt: Value = response.json().await.unwrap();
    let id = receipt["id"].as_str().unwrap().to_owned();
    assert_eq!(receipt["status"], "pending");
    assert_eq!(location, format!("/v1/deliveries/{id}"));
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(receipt["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires_at, s.t.clock.now() + chrono::Duration::seconds(120));

    // Email too, the channel inferred from `to`, in Swahili.
    let response = s
        .post(
            "/v1/otp",
            &key,
            &json!({"to": "amina@example.org", "code": "482913", "locale": "sw"}),
        )
        .await;
    assert_eq!(response.status(), 202);

    s.t.drain().await;
    let shown: Value = s.get(&location, &key).await.json().await.unwrap();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["status"], "sent");
    assert_eq!(shown["kind"], "otp");
    assert_eq!(shown["channel"], "sms");
    assert_eq!(shown["recipient"], PHONE);
    assert_eq!(shown["provider"], "primary");
    assert_eq!(shown["attempt_count"], 1);
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(shown["attempts"][0]["outcome"], "accepted");
    assert!(
        shown["body"]
            .as_str()
            .unwrap()
            .starts_with("****** is your")
    );
    assert!(!shown.to_string().contains("482913"), "{shown}");

    let missing = s.get("/v1/deliveries/nope", &key).await;
    let (status, body) = problem(missing).await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "https://tuma.dev/problems/not-found");
    s.stop().await;
}
on_both_backends!(an_otp_is_accepted_delivered_and_shown_without_its_code);

async fn a_notification_is_accepted_now_or_scheduled(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("shop", &["send", "read"]).await;
    let response = s
        .post(
            "/v1/notifications",
            &key,
            &json!({"to": "amina@example.org", "template": "welcome", "vars": {"name": "Amina"}}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let receipt: Value = response.json().await.unwrap();
    assert_eq!(receipt["status"], "pending");
    assert!(receipt.get("expires_at").is_none(), "{receipt}");

    let later = s.t.clock.now() + chrono::Duration::hours(2);
    let response = s
        .post(
            "/v1/notifications",
            &key,
            &json!({"to": PHONE, "template": "welcome", "locale": "sw",
                    "vars": {"name": "Amina"}, "send_at": later.to_rfc3339()}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let scheduled: Value = response.json().await.unwrap();
    s.t.drain().await;
    let now_one: Value = s
        .get(
            &format!("/v1/deliveries/{}", receipt["id"].as_str().unwrap()),
            &key,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(now_one["status"], "sent");
    let later_one: Value = s
        .get(
            &format!("/v1/deliveries/{}", scheduled["id"].as_str().unwrap()),
            &key,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(later_one["status"], "pending");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(later_one["next_attempt_at"].as_str().unwrap())
            .unwrap(),
        later
    );
    s.stop().await;
}
on_both_backends!(a_notification_is_accepted_now_or_scheduled);

async fn deliveries_are_listed_newest_first_in_keyset_pages(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("ops", &["send", "read"]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let to = if i == 4 {
            "a@example.org".to_owned()
        } else {
            format!("+25471100010{i}")
        };
        let r: Value = s
            .post("/v1/otp", &key, &json!({"to": to, "code": "1234"}))
            .await
            .json()
            .await
            .unwrap();
        ids.push(r["id"].as_str().unwrap().to_owned());
        s.t.clock.advance(Duration::from_secs(1));
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/deliveries?limit=2&cursor={c}"),
            None => "/v1/deliveries?limit=2".to_owned(),
        };
        let page: Value = s.get(&path, &key).await.json().await.unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
            // The same shape as GET /v1/deliveries/{id}: none sent yet.
            assert_eq!(item["attempts"], json!([]));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");

    let emails: Value = s
        .get("/v1/deliveries?channel=email", &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(emails["items"].as_array().unwrap().len(), 1);
    let since = (s.t.clock.now() - chrono::Duration::seconds(2)).to_rfc3339();
    let url = reqwest::Url::parse_with_params(
        &s.url("/v1/deliveries"),
        &[("since", since.as_str()), ("status", "pending")],
    )
    .unwrap();
    let recent: Value = s
        .client
        .get(url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(recent["items"].as_array().unwrap().len(), 2);
    s.t.drain().await;
    let by_provider: Value = s
        .get("/v1/deliveries?provider=primary&status=sent", &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_provider["items"].as_array().unwrap().len(), 5);
    let none: Value = s
        .get("/v1/deliveries?provider=backup", &key)
        .await
        .json()
        .await
        .unwrap();
    assert!(none["items"].as_array().unwrap().is_empty());

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("status=lost", "status"),
        ("channel=fax", "channel"),
        ("since=yesterday", "since"),
        ("cursor=not-a-cursor", "cursor"),
        ("colour=blue", "colour"),
    ] {
        let (status, body) = problem(s.get(&format!("/v1/deliveries?{query}"), &key).await).await;
        assert_eq!(status, 422, "{query}");
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    s.stop().await;
}
on_both_backends!(deliveries_are_listed_newest_first_in_keyset_pages);

async fn keys_and_scopes_decide_who_may_do_what(backend: Backend) {
    let s = spawn_app(backend).await;
    let sender = s.key("auth-service", &["send"]).await;
    let reader = s.key("dashboard", &["read"]).await;
    let otp = json!({"to": PHONE, "code": "1234"});

    let anonymous = s
        .client
        .post(s.url("/v1/otp"))
        .json(&otp)
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous.headers().get("www-authenticate").unwrap(),
        "Bearer"
    );
    let (status, body) = problem(anonymous).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (401, Some("https://tuma.dev/problems/unauthorized"))
    );
    let (status, _) = problem(s.post("/v1/otp", "tuma_not-a-key", &otp).await).await;
    assert_eq!(status, 401);
    let (status, _) = problem(
        s.client
            .get(s.url("/v1/deliveries"))
            .header("authorization", format!("Basic {sender}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    let (status, body) = problem(s.post("/v1/otp", &reader, &otp).await).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (403, Some("https://tuma.dev/problems/forbidden"))
    );
    assert!(body["detail"].as_str().unwrap().contains("send"));
    let (status, _) = problem(s.get("/v1/deliveries", &sender).await).await;
    assert_eq!(status, 403);
    // A refused request (here: a wrong scope) creates nothing.
    assert_eq!(s.delivery_count().await, 0);

    assert_eq!(s.post("/v1/otp", &sender, &otp).await.status(), 202);
    assert_eq!(s.get("/v1/deliveries", &reader).await.status(), 200);

    assert!(
        s.t.app
            .db
            .revoke_api_key("auth-service", s.t.clock.now())
            .await
            .unwrap()
    );
    let (status, _) = problem(s.post("/v1/otp", &sender, &otp).await).await;
    assert_eq!(status, 401, "a revoked key stops working at once");
    assert_eq!(s.get("/v1/deliveries", &reader).await.status(), 200);
    let listed = s.t.app.db.api_keys().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|k| k.name == "auth-service" && k.revoked_at.is_some())
    );
    assert!(
        listed
            .iter()
            .any(|k| k.name == "dashboard" && k.last_used_at.is_some())
    );
    s.stop().await;
}
on_both_backends!(keys_and_scopes_decide_who_may_do_what);

/// What is sent, where, and the status, problem type, field and words expected.
type BadCase = (
    &'static str,
    &'static str,
    Value,
    u16,
    &'static str,
    Option<&'static str>,
    &'static str,
);

async fn every_bad_request_is_a_problem_naming_the_field_and_creates_nothing(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("auth-service", &["send"]).await;
    let otp = |patch: Value| {
        let mut body = json!({"to": PHONE, "code": "123456"});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<BadCase> = vec![
        (
            "invalid phone number",
            "/v1/otp",
            otp(json!({"to": "+2547"})),
            422,
            "invalid-field",
            Some("to"),
            "",
        ),
        (
            "invalid email",
            "/v1/otp",
            otp(json!({"to": "amina@"})),
            422,
            "invalid-field",
            Some("to"),
            "",
        ),
        (
            "code too short",
            "/v1/otp",
            otp(json!({"code": "123"})),
            422,
            "invalid-field",
            Some("code"),
            "4 to 10 digits",
        ),
        (
            "code too long",
            "/v1/otp",
            otp(json!({"code": "12345678901"})),
            422,
            "invalid-field",
            Some("code"),
            "4 to 10 digits",
        ),
        (
            "code not digits",
            "/v1/otp",
            otp(json!({"code": "12ab56"})),
            422,
            "invalid-field",
            Some("code"),
            "digits only",
        ),
        (
            "code as a number",
            "/v1/otp",
            otp(json!({"code": 123456})),
            422,
            "invalid-field",
            Some("code"),
            "expected a string",
        ),
        (
            "ttl too short",
            "/v1/otp",
            otp(json!({"ttl_seconds": 5})),
            422,
            "invalid-field",
            Some("ttl_seconds"),
            "out of range",
        ),
        (
            "ttl too long",
            "/v1/otp",
            otp(json!({"ttl_seconds": 200000})),
            422,
            "invalid-field",
            Some("ttl_seconds"),
            "out of range",
        ),
        (
            "ttl negative",
            "/v1/otp",
            otp(json!({"ttl_seconds": -1})),
            422,
            "invalid-field",
            Some("ttl_seconds"),
            "",
        ),
        (
            "channel not reaching `to`",
            "/v1/otp",
            otp(json!({"channel": "email"})),
            422,
            "invalid-field",
            Some("channel"),
            "reached by sms",
        ),
        (
            "unknown channel",
            "/v1/otp",
            otp(json!({"channel": "fax"})),
            422,
            "invalid-field",
            Some("channel"),
            "",
        ),
        (
            "unknown locale",
            "/v1/otp",
            otp(json!({"locale": "fr"})),
            422,
            "invalid-field",
            Some("locale"),
            "fr",
        ),
        (
            "bad purpose",
            "/v1/otp",
            otp(json!({"purpose": "log in!"})),
            422,
            "invalid-field",
            Some("purpose"),
            "",
        ),
        (
            "unknown field",
            "/v1/otp",
            otp(json!({"colour": "blue"})),
            422,
            "unknown-field",
            Some("colour"),
            "",
        ),
        (
            "missing field",
            "/v1/otp",
            json!({"to": PHONE}),
            422,
            "invalid-field",
            Some("code"),
            "required",
        ),
        (
            "not an object",
            "/v1/otp",
            json!([1, 2]),
            422,
            "invalid-field",
            Some("(body)"),
            "",
        ),
        (
            "unknown template",
            "/v1/notifications",
            json!({"to": PHONE, "template": "invoice", "vars": {}}),
            422,
            "invalid-field",
            Some("template"),
            "unknown template `invoice`",
        ),
        (
            "missing template variable",
            "/v1/notifications",
            json!({"to": PHONE, "template": "welcome", "vars": {}}),
            422,
            "invalid-field",
            Some("template"),
            "needs variable `name`",
        ),
        (
            "bad send_at",
            "/v1/notifications",
            json!({"to": PHONE, "template": "welcome", "vars": {"name": "A"}, "send_at": "tomorrow"}),
            422,
            "invalid-field",
            Some("send_at"),
            "RFC 3339",
        ),
        (
            "unknown notification field",
            "/v1/notifications",
            json!({"to": PHONE, "template": "welcome", "vars": {"name": "A"}, "priority": 1}),
            422,
            "unknown-field",
            Some("priority"),
            "",
        ),
    ];
    for (what, path, body, status, kind, field, reason) in cases {
        let (got, problem_body) = problem(s.post(path, &key, &body).await).await;
        assert_eq!(got, status, "{what}: {problem_body}");
        assert_eq!(
            problem_body["type"],
            format!("https://tuma.dev/problems/{kind}"),
            "{what}"
        );
        if let Some(field) = field {
            assert_eq!(problem_body["field"], field, "{what}: {problem_body}");
        }
        assert!(
            problem_body["detail"].as_str().unwrap().contains(reason),
            "{what}: {problem_body} should say {reason}"
        );
        assert!(
            !problem_body.to_string().contains("123456"),
            "{what}: {problem_body}"
        );
    }

    // Transport-level refusals.
    let raw = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = s.client.post(s.url("/v1/otp")).bearer_auth(&key).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request
    };
    let (status, body) = problem(
        raw("{\"to\": ", Some("application/json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (400, Some("https://tuma.dev/problems/malformed-json"))
    );
    let (status, body) = problem(
        raw("to=1&code=2", Some("application/x-www-form-urlencoded"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (
            415,
            Some("https://tuma.dev/problems/unsupported-media-type")
        )
    );
    let (status, _) = problem(raw("{}", None).send().await.unwrap()).await;
    assert_eq!(status, 415);
    let big = json!({"to": PHONE, "template": "welcome", "vars": {"name": "x".repeat(20_000)}});
    let (status, body) = problem(s.post("/v1/notifications", &key, &big).await).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (413, Some("https://tuma.dev/problems/body-too-large"))
    );
    // The same without a Content-Length (chunked): the limit holds while reading.
    let mut conn = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut request = format!(
        "POST /v1/otp HTTP/1.1\r\nHost: tuma\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for _ in 0..40 {
        request.push_str(&format!("3e8\r\n{}\r\n", "x".repeat(1000)));
    }
    request.push_str("0\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    let (status, _) = problem(s.client.get(s.url("/v1/otp")).send().await.unwrap()).await;
    assert_eq!(status, 405);
    let (status, _) = problem(s.client.get(s.url("/v2/nothing")).send().await.unwrap()).await;
    assert_eq!(status, 404);

    assert_eq!(
        s.delivery_count().await,
        0,
        "no refused request created a delivery"
    );
    assert_eq!(leased_rows(&s.t.app.db).await, 0);
    s.stop().await;
}
on_both_backends!(every_bad_request_is_a_problem_naming_the_field_and_creates_nothing);

async fn an_idempotency_key_replays_refuses_and_collapses_concurrent_requests(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("auth-service", &["send"]).await;
    let other = s.key("other-service", &["send"]).await;
    let send = |api_key: &str, idem: &str, body: Value| {
        s.client
            .post(s.url("/v1/otp"))
            .bearer_auth(api_key)
            .header("idempotency-key", idem)
            .json(&body)
            .send()
    };
    let body = json!({"to": PHONE, "code": "1234"});
    let first = send(&key, "k-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    // The same body with keys in another order and other spacing is the same request.
    let again = s
        .client
        .post(s.url("/v1/otp"))
        .bearer_auth(&key)
        .header("idempotency-key", "k-1")
        .header("content-type", "application/json")
        .body(format!("{{ \"code\": \"1234\",  \"to\": \"{PHONE}\" }}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the original response, the same delivery");
    assert_eq!(s.delivery_count().await, 1);

    let (status, problem_body) = problem(
        send(&key, "k-1", json!({"to": PHONE, "code": "9999"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        problem_body["type"],
        "https://tuma.dev/problems/idempotency-key-reused"
    );
    assert_eq!(s.delivery_count().await, 1);

    // Keys are per API key.
    let theirs: Value = send(&other, "k-1", body.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(theirs["id"], first["id"]);
    assert_eq!(s.delivery_count().await, 2);

    // Two identical requests at once: one delivery, one id.
    let (a, b) = tokio::join!(
        send(&key, "k-2", json!({"to": "+254711000002", "code": "5678"})),
        send(&key, "k-2", json!({"to": "+254711000002", "code": "5678"}))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (202, 202));
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["id"], b["id"]);
    assert_eq!(s.delivery_count().await, 3);

    // A refused request does not use up its key.
    let (status, _) = problem(
        send(&key, "k-3", json!({"to": PHONE, "code": "12"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(send(&key, "k-3", body.clone()).await.unwrap().status(), 202);
    assert_eq!(s.delivery_count().await, 4);

    // After 24 hours a key is forgotten.
    s.t.clock.advance(Duration::from_secs(24 * 3600 + 1));
    let later: Value = send(&key, "k-1", body.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(later["id"], first["id"]);
    assert_eq!(s.delivery_count().await, 5);
    let purged =
        s.t.app
            .db
            .purge_idempotency_keys(s.t.clock.now() - chrono::Duration::hours(24))
            .await
            .unwrap();
    assert_eq!(
        purged, 3,
        "k-1 (other key), k-2 and k-3 expired; the new k-1 stays"
    );

    let (status, _) = problem(
        s.client
            .post(s.url("/v1/otp"))
            .bearer_auth(&key)
            .header("idempotency-key", "x".repeat(300))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    s.stop().await;
}
on_both_backends!(an_idempotency_key_replays_refuses_and_collapses_concurrent_requests);

async fn too_many_otps_to_one_recipient_get_429_with_retry_after(backend: Backend) {
    let s = spawn_app_with(
        backend,
        "[api]\notp_per_recipient = { max = 2, per = \"15m\" }\n",
    )
    .await;
    let key = s.key("auth-service", &["send"]).await;
    let otp = |to: &str| json!({"to": to, "code": "1234"});
    assert_eq!(s.post("/v1/otp", &key, &otp(PHONE)).await.status(), 202);
    s.t.clock.advance(Duration::from_secs(60));
    assert_eq!(
        s.post("/v1/otp", &key, &otp("0711 000 001")).await.status(),
        202
    );
    let refused = s.post("/v1/otp", &key, &otp(PHONE)).await;
    assert_eq!(
        refused.headers()["retry-after"],
        "840",
        "the oldest leaves the window in 14 minutes"
    );
    let (status, body) = problem(refused).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (429, Some("https://tuma.dev/problems/rate-limited"))
    );
    assert_eq!(s.delivery_count().await, 2);
    // Other recipients, and notifications, are not held back.
    assert_eq!(
        s.post("/v1/otp", &key, &otp("+254711000009"))
            .await
            .status(),
        202
    );
    let welcome = json!({"to": PHONE, "template": "welcome", "vars": {"name": "A"}});
    assert_eq!(
        s.post("/v1/notifications", &key, &welcome).await.status(),
        202
    );
    s.t.clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(s.post("/v1/otp", &key, &otp(PHONE)).await.status(), 202);
    assert_eq!(
        s.state.metrics.refusals().get("api.otp_per_recipient"),
        Some(&1)
    );
    s.stop().await;
}
on_both_backends!(too_many_otps_to_one_recipient_get_429_with_retry_after);

async fn sms_outside_the_prefix_allowlist_is_refused_naming_the_rule(backend: Backend) {
    let s = spawn_app_with(
        backend,
        "[api]\nsms_prefix_allowlist = [\"+255\", \"+256\"]\n",
    )
    .await;
    let key = s.key("auth-service", &["send"]).await;
    let (status, body) = problem(
        s.post("/v1/otp", &key, &json!({"to": PHONE, "code": "1234"}))
            .await,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["type"], "https://tuma.dev/problems/refused");
    assert_eq!(body["rule"], "api.sms_prefix_allowlist");
    assert_eq!(body["field"], "to");
    assert!(body["detail"].as_str().unwrap().contains("+255, +256"));
    let welcome = json!({"to": PHONE, "template": "welcome", "vars": {"name": "A"}});
    assert_eq!(
        s.post("/v1/notifications", &key, &welcome).await.status(),
        422
    );
    assert_eq!(s.delivery_count().await, 0);
    for to in ["+255754000001", "amina@example.org"] {
        assert_eq!(
            s.post("/v1/otp", &key, &json!({"to": to, "code": "1234"}))
                .await
                .status(),
            202,
            "{to}"
        );
    }
    assert_eq!(
        s.state.metrics.refusals().get("api.sms_prefix_allowlist"),
        Some(&2)
    );
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tuma_refusals_total{rule=\"api.sms_prefix_allowlist\"} 2"),
        "{metrics}"
    );
    s.stop().await;
}
on_both_backends!(sms_outside_the_prefix_allowlist_is_refused_naming_the_rule);

async fn health_and_readiness_and_a_lost_database_answers_503_quickly(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("auth-service", &["send", "read"]).await;
    let health = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "ready");

    // The database goes away (its pool is closed).
    s.t.app.db.close().await;
    let started = Instant::now();
    let (status, body) = problem(s.client.get(s.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(body["type"], "https://tuma.dev/problems/unavailable");
    for response in [
        s.post("/v1/otp", &key, &json!({"to": PHONE, "code": "1234"}))
            .await,
        s.get("/v1/deliveries", &key).await,
    ] {
        assert_eq!(response.headers()["retry-after"], "1");
        let (status, body) = problem(response).await;
        assert_eq!(status, 503);
        let text = body.to_string().to_lowercase();
        assert!(
            !text.contains("pool") && !text.contains("sqlx") && !text.contains("database error"),
            "{body}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "503s come quickly"
    );
    // The process itself is still up.
    assert_eq!(
        s.client
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tuma_database_up 0"), "{metrics}");
    s.stop().await;
}
on_both_backends!(health_and_readiness_and_a_lost_database_answers_503_quickly);

async fn metrics_count_requests_deliveries_costs_and_latency(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("auth-service", &["send", "read"]).await;
    for code in ["1234", "5678"] {
        assert_eq!(
            s.post("/v1/otp", &key, &json!({"to": PHONE, "code": code}))
                .await
                .status(),
            202
        );
    }
    let welcome = json!({"to": "a@example.org", "template": "welcome", "vars": {"name": "A"}});
    assert_eq!(
        s.post("/v1/notifications", &key, &welcome).await.status(),
        202
    );
    let _ = s
        .post("/v1/otp", &key, &json!({"to": PHONE, "code": "1"}))
        .await;
    let before = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        before.contains("tuma_queue_depth{lane=\"tuma-otp\"} 2"),
        "{before}"
    );
    assert!(
        before.contains("tuma_queue_depth{lane=\"tuma-notifications\"} 1"),
        "{before}"
    );
    s.t.drain().await;
    let response = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for line in [
        "tuma_http_requests_total{route=\"/v1/otp\",method=\"POST\",status=\"202\"} 2",
        "tuma_http_requests_total{route=\"/v1/otp\",method=\"POST\",status=\"422\"} 1",
        "tuma_http_requests_total{route=\"/v1/notifications\",method=\"POST\",status=\"202\"} 1",
        "tuma_deliveries{channel=\"sms\",provider=\"primary\",status=\"sent\"} 2",
        "tuma_deliveries{channel=\"email\",provider=\"primary\",status=\"sent\"} 1",
        "tuma_queue_depth{lane=\"tuma-otp\"} 0",
        "tuma_delivery_cost{currency=\"KES\",estimate=\"true\"} 1.600000",
        "tuma_attempt_latency_seconds_count{provider=\"primary\"} 3",
        "tuma_attempt_latency_seconds_bucket{provider=\"primary\",le=\"+Inf\"} 3",
        "# TYPE tuma_attempt_latency_seconds histogram",
        "tuma_database_up 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    s.stop().await;

    // Behind a flag, /metrics wants an `ops` key.
    let s = spawn_app_with(backend, "[api]\nmetrics_need_key = true\n").await;
    let ops = s.key("prometheus", &["ops"]).await;
    let reader = s.key("dashboard", &["read"]).await;
    assert_eq!(
        s.client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(s.get("/metrics", &reader).await.status(), 403);
    assert_eq!(s.get("/metrics", &ops).await.status(), 200);
    s.stop().await;
}
on_both_backends!(metrics_count_requests_deliveries_costs_and_latency);

async fn the_openapi_document_describes_the_real_router(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("all", &["send", "read", "ops", "reports"]).await;
    let id = s
        .post("/v1/otp", &key, &json!({"to": PHONE, "code": "1234"}))
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc: Value = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            let url = s.url(
                &path
                    .replace("{id}", &id)
                    .replace("{provider}/{secret}", "africastalking/not-the-secret")
                    .replace("{provider}", "twilio"),
            );
            let request = match method.as_str() {
                "get" => s.client.get(&url),
                "post" => s.client.post(&url).json(&json!({})),
                "delete" => s.client.delete(&url),
                other => panic!("unexpected method {other}"),
            };
            let response = request.bearer_auth(&key).send().await.unwrap();
            let status = response.status().as_u16();
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            let text = response.text().await.unwrap();
            assert!(
                !text.contains("no route matches"),
                "{method} {path} is documented but not routed"
            );
            assert!(
                op["responses"].get(status.to_string()).is_some(),
                "{method} {path} answered {status}, which the document does not list"
            );
        }
    }
    documented.sort();
    let mut expected = vec![
        "POST /v1/otp",
        "POST /v1/notifications",
        "POST /v1/notifications/batch",
        "GET /v1/deliveries",
        "GET /v1/deliveries/{id}",
        "POST /v1/callbacks/{provider}",
        "GET /v1/callbacks/{provider}",
        "POST /v1/callbacks/{provider}/{secret}",
        "GET /v1/callbacks/{provider}/{secret}",
        "POST /v1/deliveries/{id}/cancel",
        "POST /v1/deliveries/{id}/replay",
        "POST /v1/replays",
        "GET /v1/reports/costs",
        "GET /v1/budget",
        "POST /v1/budget/release",
        "GET /v1/webhooks",
        "POST /v1/webhooks",
        "DELETE /v1/webhooks/{id}",
        "POST /v1/webhooks/{id}/test",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
    ];
    expected.sort();
    assert_eq!(documented, expected);
    // And the router has nothing the document does not describe.
    for (method, path) in [
        ("DELETE", "/v1/otp"),
        ("GET", "/v1/otp"),
        ("PUT", "/v1/deliveries"),
    ] {
        let response = s
            .client
            .request(method.parse().unwrap(), s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
    }
    s.stop().await;
}
on_both_backends!(the_openapi_document_describes_the_real_router);

async fn no_otp_code_appears_in_logs_responses_or_the_database(backend: Backend) {
    let logs = captured_logs();
    let s = spawn_app(backend).await;
    let key = s.key("auth-service", &["send", "read"]).await;
    // Codes unique to this test (per backend), so other tests' logs cannot confuse it.
    let (code, bad_code) = match backend {
        Backend::Sqlite => ("80417263", "8041726399999"),
        Backend::Postgres => ("73926014", "7392601488888"),
    };
    let mut seen = String::new();
    let record = |response: reqwest::Response| {
        let head = format!("{} {:?}\n", response.status(), response.headers());
        async move { format!("{head}{}\n", response.text().await.unwrap()) }
    };
    let bodies = [
        json!({"to": PHONE, "code": code, "purpose": "login"}),
        json!({"to": "amina@example.org", "code": code}),
        json!({"to": PHONE, "code": bad_code}),
        json!({"to": PHONE, "code": code.parse::<u64>().unwrap()}),
        json!({"to": "+2547", "code": code}),
        json!({"to": PHONE, "code": code, "ttl_seconds": 1}),
        json!({"to": PHONE, "code": code, "extra": code}),
    ];
    let mut ids = Vec::new();
    for body in &bodies {
        let response = s
            .client
            .post(s.url("/v1/otp"))
            .bearer_auth(&key)
            .header("idempotency-key", format!("login-{}", ids.len()))
            .json(body)
            .send()
            .await
            .unwrap();
        let text = record(response).await;
        if text.starts_with("202") {
            ids.push(
                text.split("\"id\":\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_owned(),
            );
        }
        seen.push_str(&text);
    }
    assert_eq!(ids.len(), 2);
    // A replay, and malformed JSON around a code.
    let replay = s
        .client
        .post(s.url("/v1/otp"))
        .bearer_auth(&key)
        .header("idempotency-key", "login-0")
        .json(&bodies[0])
        .send()
        .await
        .unwrap();
    seen.push_str(&record(replay).await);
    let broken = s
        .client
        .post(s.url("/v1/otp"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(format!("{{\"to\": \"{PHONE}\", \"code\": \"{code}\""))
        .send()
        .await
        .unwrap();
    seen.push_str(&record(broken).await);
    for id in &ids {
        seen.push_str(&record(s.get(&format!("/v1/deliveries/{id}"), &key).await).await);
    }
    s.t.drain().await;
    for id in &ids {
        seen.push_str(&record(s.get(&format!("/v1/deliveries/{id}"), &key).await).await);
    }
    seen.push_str(&record(s.get("/v1/deliveries", &key).await).await);
    seen.push_str(&record(s.client.get(s.url("/metrics")).send().await.unwrap()).await);
    // The code did go out, to the outbox: the search is not vacuous.
    let outbox = std::fs::read_to_string(
        s.t.db
            .path()
            .join("outbox")
            .join(format!("{}.json", ids[0])),
    )
    .unwrap();
    assert!(outbox.contains(code));

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("OTP accepted"),
        "the capture saw this test's requests"
    );
    // Every line logged inside a request names it.
    for line in logs
        .lines()
        .filter(|l| l.contains("OTP accepted") || l.contains("request finished"))
    {
        assert!(line.contains("request{request_id="), "{line}");
    }
    for secret in [code, bad_code, key.as_str()] {
        assert!(!logs.contains(secret), "a log line holds a secret");
        assert!(!seen.contains(secret), "a response holds a secret:\n{seen}");
    }
    let stored = all_database_text(&s.t.app.db).await;
    assert!(
        !stored.contains(code) && !stored.contains(key.as_str()),
        "the database still holds a secret"
    );
    s.stop().await;
}
on_both_backends!(no_otp_code_appears_in_logs_responses_or_the_database);

async fn tuma_serve_answers_http_and_exits_0_on_sigterm_after_finishing_a_send(backend: Backend) {
    use tokio::io::AsyncBufReadExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new(backend).await;
    let (config, _) = write_config(db.path(), 6);
    // A slow outbox, so SIGTERM lands while a send is in flight.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("timeout = \"2s\"", "timeout = \"2s\"\nlatency = \"700ms\"");
    std::fs::write(&config, text).unwrap();

    let key = tuma_ok(tuma_command(&config, &db.url).args([
        "keys",
        "create",
        "--name",
        "auth-service",
        "--scope",
        "send",
        "--scope",
        "read",
    ]))
    .await
    .trim()
    .to_owned();
    assert!(key.starts_with("tuma_") && key.len() > 40, "{key}");
    let listed = tuma_ok(tuma_command(&config, &db.url).args(["keys", "list"])).await;
    assert!(
        listed.contains("auth-service") && listed.contains("send,read"),
        "{listed}"
    );
    assert!(!listed.contains(&key), "keys list never shows a key");
    let refused = tuma_command(&config, &db.url)
        .args(["keys", "create", "--name", "x", "--scope", "admin"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown scope `admin`"));

    let mut child = tuma_command(&config, &db.url)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("TUMA_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on ".len()..];
                return rest
                    .split(|c: char| c.is_whitespace() || c == '"')
                    .next()
                    .unwrap()
                    .to_owned();
            }
        }
        panic!("tuma serve exited before listening");
    })
    .await
    .expect("tuma serve listens");
    let log = tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });

    let client = reqwest::Client::new();
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let receipt: Value = client
        .post(format!("{base}/v1/otp"))
        .bearer_auth(&key)
        .json(&json!({"to": PHONE, "code": "1234"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = receipt["id"].as_str().unwrap().to_owned();
    // Wait until the worker (woken by the commit) has it in flight.
    let store = db.connect().await;
    let started = Instant::now();
    loop {
        let d = store.delivery(&id).await.unwrap().unwrap();
        if d.row.status == "sending" {
            break;
        }
        assert_eq!(d.row.status, "pending");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never picked up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("tuma serve exits after SIGTERM")
        .unwrap();
    let log = log.await.unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(
        log.contains("HTTP API stopped") && log.contains("workers stopped"),
        "{log}"
    );
    let d = store.delivery(&id).await.unwrap().unwrap();
    assert_eq!(
        d.row.status, "sent",
        "the in-flight send was finished\n{log}"
    );
    assert!(!log.contains("1234 is your") && !log.contains(&key));
    // JSON lines; those of a request carry its id.
    let mut request_lines = 0;
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if entry["fields"]["message"] == "OTP accepted" {
            request_lines += 1;
            assert!(entry["span"]["request_id"].is_string(), "{line}");
        }
    }
    assert_eq!(request_lines, 1, "{log}");
    assert!(log.contains("request finished"), "{log}");
    store.close().await;
}
on_both_backends!(tuma_serve_answers_http_and_exits_0_on_sigterm_after_finishing_a_send);

#[test]
fn the_api_table_is_validated_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.toml");
    let base = config_text(dir.path(), 6);
    let load = |extra: &str| {
        std::fs::write(&path, format!("{base}\n[api]\n{extra}\n")).unwrap();
        tuma::config::Config::load(&path)
    };
    let ok =
        load("otp_per_recipient = { max = 3, per = \"1h\" }\nsms_prefix_allowlist = [\"+254\"]")
            .unwrap();
    assert_eq!(
        ok.api.otp_per_recipient,
        Some(tuma::config::RecipientLimit {
            max: 3,
            per: Duration::from_secs(3600)
        })
    );
    assert_eq!(ok.api.sms_prefix_allowlist, vec!["+254".to_owned()]);
    assert_eq!(ok.api.max_body_bytes, 16 * 1024);
    for (extra, key) in [
        (
            "otp_per_recipient = { max = 0, per = \"15m\" }",
            "api.otp_per_recipient.max",
        ),
        (
            "otp_per_recipient = { max = 5, per = \"soon\" }",
            "api.otp_per_recipient.per",
        ),
        (
            "sms_prefix_allowlist = [\"254\"]",
            "api.sms_prefix_allowlist[0]",
        ),
        ("max_body_bytes = 10", "api.max_body_bytes"),
        ("request_timeout = \"0s\"", "api.request_timeout"),
    ] {
        let e = load(extra).unwrap_err();
        assert_eq!(e.key, key, "{extra}: {e}");
    }
    let e = load("listen = \"0.0.0.0:80\"").unwrap_err();
    assert!(e.reason.contains("unknown field `listen`"), "{e}");
    // Without an [api] table the defaults apply: 5 OTPs per 15 minutes.
    std::fs::write(&path, &base).unwrap();
    let defaults = tuma::config::Config::load(&path).unwrap();
    assert_eq!(
        defaults.api.otp_per_recipient,
        Some(tuma::config::RecipientLimit {
            max: 5,
            per: Duration::from_secs(900)
        })
    );
    assert!(defaults.api.sms_prefix_allowlist.is_empty() && !defaults.api.metrics_need_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_gets_quick_503s_and_service_resumes_when_it_returns() {
    // Postgres only: a server that can go away (SQLite is a file in-process).
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let host = admin
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let proxy = DbProxy::start(&host).await;
    let url = db.url.replacen(&host, &proxy.addr.to_string(), 1);
    let s = spawn_app_at(db, &url, "[api]\nrequest_timeout = \"1s\"\n").await;
    let key = s.key("auth-service", &["send", "read"]).await;
    let otp = json!({"to": PHONE, "code": "1234"});
    assert_eq!(s.post("/v1/otp", &key, &otp).await.status(), 202);

    proxy.cut().await;
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = problem(s.post("/v1/otp", &key, &otp).await).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["type"], "https://tuma.dev/problems/unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a 503 within the request timeout"
        );
        let text = body.to_string().to_lowercase();
        assert!(
            !text.contains("connect") && !text.contains("sqlx") && !text.contains("refused"),
            "{body}"
        );
        let ready = s.client.get(s.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
    }

    proxy.restore().await;
    let started = Instant::now();
    loop {
        let response = s
            .post(
                "/v1/otp",
                &key,
                &json!({"to": "+254711000002", "code": "1234"}),
            )
            .await;
        if response.status() == 202 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "service did not resume"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        s.client
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.delivery_count().await,
        2,
        "the refused sends wrote nothing"
    );
    s.stop().await;
}
