//! The HTTP server under hostile clients: idle, slow and oversized
//! connections; the database going away mid-request; and `/metrics` as
//! Prometheus reads it.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::on_both_backends;
use crate::support::*;

const PHONE: &str = "+254711000001";
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Reads what the server sends until it closes the connection (or `within`
/// passes: then `None`).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect_many(addr: &str, n: usize, first_bytes: &[u8]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(200) {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..200.min(n - chunk * 200) {
            let addr = addr.to_owned();
            let bytes = first_bytes.to_vec();
            set.spawn(async move {
                let mut s = TcpStream::connect(&addr).await.expect("connect");
                if !bytes.is_empty() {
                    s.write_all(&bytes).await.expect("write");
                }
                s
            });
        }
        while let Some(s) = set.join_next().await {
            out.push(s.unwrap());
        }
    }
    out
}

async fn thousands_of_idle_and_slow_connections_neither_lock_out_clients_nor_stay_open(
    backend: Backend,
) {
    // The client side of this test needs its file descriptors too.
    tuma::api::server::raise_fd_limit();
    let s = spawn_app_with(
        backend,
        "[api]\nheader_read_timeout = \"5s\"\nbody_read_timeout = \"5s\"\n\
         idle_timeout = \"5s\"\nmax_connections = 2200\n",
    )
    .await;
    let key = s.key("auth-service", &["send", "read"]).await;
    let addr = s.base.trim_start_matches("http://").to_owned();

    // 1,500 connections that never send a byte, 500 that send half a
    // request head, 500 that send a head and a tenth of the body: 2,500
    // in all, past the cap of 2,200.
    let started = Instant::now();
    let idle = connect_many(&addr, 1500, b"").await;
    let slow_heads = connect_many(&addr, 500, b"POST /v1/otp HTTP/1.1\r\nHost: tuma\r\n").await;
    let head = format!(
        "POST /v1/otp HTTP/1.1\r\nHost: tuma\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"to\": \"+"
    );
    let slow_bodies = connect_many(&addr, 500, head.as_bytes()).await;
    let opened = started.elapsed();

    // Real clients still get answers at once: within a second, with a
    // margin for a loaded 2-core machine (held connections meant no answer).
    for i in 0..5 {
        let client = reqwest::Client::new();
        let t = Instant::now();
        let health = client.get(s.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert!(
            t.elapsed() < ANSWER_WITHIN,
            "/healthz took {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let otp = client
            .post(s.url("/v1/otp"))
            .bearer_auth(&key)
            .json(&json!({"to": PHONE, "code": format!("12{i}4")}))
            .send()
            .await
            .unwrap();
        assert_eq!(otp.status(), 202);
        assert!(
            t.elapsed() < ANSWER_WITHIN,
            "POST /v1/otp took {:?}",
            t.elapsed()
        );
    }

    // Every hostile connection is closed by its timeout (the slow bodies
    // with a 408 problem), well before the 130 s they used to be held.
    let bound = Duration::from_secs(25);
    let mut closing = tokio::task::JoinSet::new();
    for mut stream in idle.into_iter().chain(slow_heads) {
        closing.spawn(async move { ("head", read_until_closed(&mut stream, bound).await) });
    }
    for mut stream in slow_bodies {
        closing.spawn(async move { ("body", read_until_closed(&mut stream, bound).await) });
    }
    let mut closed = 0;
    while let Some(outcome) = closing.join_next().await {
        let (kind, seen) = outcome.unwrap();
        let seen = seen.unwrap_or_else(|| panic!("a slow {kind} connection stayed open"));
        if kind == "body" {
            assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
            assert!(seen.contains("application/problem+json"), "{seen}");
            assert!(seen.contains("api.body_read_timeout"), "{seen}");
        }
        closed += 1;
    }
    assert_eq!(closed, 2500);
    assert!(
        started.elapsed() < opened + Duration::from_secs(20),
        "closing took {:?}",
        started.elapsed()
    );
    // Nothing was created by the hostile connections.
    assert_eq!(s.delivery_count().await, 5);
    s.stop().await;
}
on_both_backends!(thousands_of_idle_and_slow_connections_neither_lock_out_clients_nor_stay_open);

async fn a_keep_alive_connection_serves_requests_until_idle_too_long(backend: Backend) {
    let s = spawn_app_with(
        backend,
        "[api]\nheader_read_timeout = \"5s\"\nidle_timeout = \"1s\"\n",
    )
    .await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: tuma\r\n\r\n";
    for _ in 0..3 {
        stream.write_all(get).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let t = Instant::now();
    let rest = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(rest.as_deref(), Some(""), "closed without a word");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    s.stop().await;
}
on_both_backends!(a_keep_alive_connection_serves_requests_until_idle_too_long);

async fn shutdown_closes_idle_connections_and_finishes_a_request_in_flight(backend: Backend) {
    let s = spawn_app_with(backend, "[api]\nbody_read_timeout = \"10s\"\n").await;
    let key = s.key("auth-service", &["send"]).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let body = json!({"to": PHONE, "code": "4321"}).to_string();
    let mut busy = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/otp HTTP/1.1\r\nHost: tuma\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(&body.as_bytes()[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(s.stop());
    // The idle connection closes at once.
    assert_eq!(
        read_until_closed(&mut idle, Duration::from_secs(3))
            .await
            .as_deref(),
        Some("")
    );
    // The request in flight finishes and is answered.
    busy.write_all(&body.as_bytes()[5..]).await.unwrap();
    let answer = read_until_closed(&mut busy, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(answer.contains("\"id\""), "{answer}");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the server stopped")
        .unwrap();
}
on_both_backends!(shutdown_closes_idle_connections_and_finishes_a_request_in_flight);

/// Postgres only: its server ends tuma's connections while requests run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ending_connections_mid_request_answers_503_with_retry_after_never_500() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let s = spawn_app(Backend::Postgres).await;
    let key = s.key("auth-service", &["send", "read"]).await;
    let db_name = s.t.db.url.rsplit_once('/').unwrap().1.to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            let mut ended = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&db_name)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                ended += n;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            ended
        })
    };
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut accepted = Vec::new();
    let started = Instant::now();
    let mut i = 0u32;
    while started.elapsed() < Duration::from_secs(4) {
        i += 1;
        let mut set = tokio::task::JoinSet::new();
        for (n, path) in ["/v1/otp", "/v1/deliveries", "/readyz", "/v1/otp"]
            .into_iter()
            .enumerate()
        {
            let client = s.client.clone();
            let url = s.url(path);
            let key = key.clone();
            let to = format!("+2547110{:05}", i * 4 + n as u32);
            set.spawn(async move {
                let response = if path == "/v1/otp" {
                    client
                        .post(url)
                        .bearer_auth(key)
                        .json(&json!({"to": to, "code": "9876"}))
                        .send()
                        .await
                } else {
                    client.get(url).bearer_auth(key).send().await
                }
                .unwrap();
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").cloned();
                let kind = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                (path, status, retry_after, kind, body)
            });
        }
        while let Some(r) = set.join_next().await {
            let (path, status, retry_after, kind, body) = r.unwrap();
            *statuses.entry(status).or_default() += 1;
            assert_ne!(status, 500, "{path}: {body}");
            if status == 503 {
                assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
                assert_eq!(kind.as_deref(), Some("application/problem+json"));
                assert_eq!(body["type"], "https://tuma.dev/problems/unavailable");
            }
            if path == "/v1/otp" && status == 202 {
                accepted.push(body["id"].as_str().unwrap().to_owned());
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let ended = killer.await.unwrap();
    eprintln!("statuses {statuses:?}, {ended} connections ended");
    assert!(ended > 0);
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "no request met an ended connection: {statuses:?}"
    );
    // Every accepted delivery is there. A pooled connection the killer ended
    // while it sat idle fails its next statement once (503, Retry-After: 1),
    // so the read does what the answer asks: it comes back a second later.
    for id in accepted {
        let mut status = 0;
        for _ in 0..5 {
            status = s
                .get(&format!("/v1/deliveries/{id}"), &key)
                .await
                .status()
                .as_u16();
            if status != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(status, 200, "delivery {id}");
    }
    s.stop().await;
}

/// Sends `request` raw and reads the whole answer.
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("answered")
}

fn problem_of(answer: &str) -> serde_json::Value {
    assert!(
        answer
            .to_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

async fn errors_below_the_handlers_are_problem_json_where_the_server_can_answer(backend: Backend) {
    let s = spawn_app_with(backend, "[api]\nmax_header_bytes = 4096\n").await;
    let key = s.key("auth-service", &["send", "read"]).await;
    let addr = s.base.trim_start_matches("http://").to_owned();

    // Headers past api.max_header_bytes: 431 with a problem naming the key.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: tuma\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(5000)
    );
    let answer = raw(&addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let p = problem_of(&answer);
    assert_eq!(p["type"], "https://tuma.dev/problems/headers-too-large");
    assert_eq!(p["status"], 431);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("api.max_header_bytes")
    );

    // Too many headers: 431 with a problem.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: tuma\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw(&addr, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        problem_of(&answer)["detail"]
            .as_str()
            .unwrap()
            .contains("100 headers")
    );

    // axum's own rejection: a path that is not UTF-8.
    for path in ["/v1/deliveries/%FF%FE", "/v1/deliveries/%C3%28"] {
        let response = s.get(path, &key).await;
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let p: serde_json::Value = response.json().await.unwrap();
        assert_eq!(p["status"], 400);
        assert!(!p["detail"].as_str().unwrap().is_empty());
    }

    // Far past the limit hyper itself refuses, before any of tuma's code:
    // a bare 431 (README says so), and the server carries on.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: tuma\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let answer = raw(&addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        s.client
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.stop().await;
}
on_both_backends!(errors_below_the_handlers_are_problem_json_where_the_server_can_answer);

/// Runs `promtool check metrics` on `text`: its complaints, or `None` when
/// promtool is not installed (a failure under CI, where `.ci/run` installs it).
pub(crate) fn promtool_complaints(text: &str) -> Option<String> {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var("CI").is_err(),
                "promtool is needed under CI: {e}"
            );
            eprintln!("promtool is not installed: its check is skipped");
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Some(if out.status.success() {
        String::new()
    } else {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

async fn metrics_pass_promtool_and_a_reconciled_price_moves_a_gauge_not_a_counter(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let key = s.key("auth-service", &["send", "read"]).await;
    assert_eq!(
        s.post("/v1/otp", &key, &json!({"to": PHONE, "code": "2468"}))
            .await
            .status(),
        202
    );
    let id = seed(
        &s.t.app.db,
        Seed::notification(
            "2026-11-30T10:00:00Z",
            "+15550000001",
            "primary",
            SeedEnd::Sent(cost("0.0400", "USD", true)),
        ),
    )
    .await;
    let scrape = || async {
        s.client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    assert!(
        before.contains("tuma_delivery_cost{currency=\"USD\",estimate=\"true\"} 0.040000"),
        "{before}"
    );
    // The provider's price replaces the estimate, and it is lower.
    s.t.app
        .db
        .record_actual_price(
            &id,
            1,
            tuma::domain::money::Money::parse("0.0100", "USD").unwrap(),
            None,
            &s.t.app.config.spend.terms(),
            tuma::clock::Clock::now(&*s.t.clock),
        )
        .await
        .unwrap();
    let after = scrape().await;
    assert!(
        after.contains("tuma_delivery_cost{currency=\"USD\",estimate=\"false\"} 0.010000"),
        "{after}"
    );
    assert!(
        !after.contains("currency=\"USD\",estimate=\"true\""),
        "{after}"
    );
    assert!(!after.contains("tuma_cost_total"), "{after}");

    // Every family has HELP and TYPE; `_total` names counters and only them.
    let mut types = std::collections::BTreeMap::new();
    for line in after.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                after.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
            assert_eq!(
                name.ends_with("_total"),
                kind == "counter",
                "{name} is a {kind}"
            );
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    for (name, kind) in [
        ("tuma_build_info", "gauge"),
        ("tuma_http_request_duration_seconds", "histogram"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert!(after.contains(&format!(
        "tuma_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(
        after.contains(
            "tuma_http_request_duration_seconds_count{route=\"/v1/otp\",method=\"POST\"} 1"
        ),
        "{after}"
    );
    // A made-up method is one `OTHER` series, not a series per method.
    let odd = reqwest::Method::from_bytes(b"BREW").unwrap();
    let _ = s
        .client
        .request(odd, s.url("/healthz"))
        .send()
        .await
        .unwrap();
    let last = scrape().await;
    assert!(!last.contains("BREW"), "{last}");
    assert!(last.contains("method=\"OTHER\""), "{last}");

    if let Some(complaints) = promtool_complaints(&last) {
        assert!(complaints.is_empty(), "promtool: {complaints}\n{last}");
    }
    s.stop().await;
}
on_both_backends!(metrics_pass_promtool_and_a_reconciled_price_moves_a_gauge_not_a_counter);

#[test]
fn the_connection_limits_are_validated_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.toml");
    let base = config_text(dir.path(), 6);
    let load = |extra: &str| {
        std::fs::write(&path, format!("{base}\n[api]\n{extra}\n")).unwrap();
        tuma::config::Config::load(&path)
    };
    let defaults = load("").unwrap().api;
    assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
    assert_eq!(defaults.body_read_timeout, Duration::from_secs(30));
    assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
    assert_eq!(defaults.max_connections, 10_000);
    assert_eq!(defaults.max_header_bytes, 16 * 1024);
    for (extra, key) in [
        ("header_read_timeout = \"0s\"", "api.header_read_timeout"),
        ("header_read_timeout = \"soon\"", "api.header_read_timeout"),
        ("body_read_timeout = \"2h\"", "api.body_read_timeout"),
        ("idle_timeout = \"10ms\"", "api.idle_timeout"),
        ("max_connections = 0", "api.max_connections"),
        ("max_header_bytes = 100", "api.max_header_bytes"),
    ] {
        let e = load(extra).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
        assert!(
            e.contains("minimum") || e.contains("maximum") || e.contains("duration"),
            "{extra}: {e}"
        );
    }
}
