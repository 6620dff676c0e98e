//! The web console over HTTP: sign-in and its session, CSRF, scopes, headers,
//! escaping, and the pages' content, on both backends (the browser drives
//! the same pages in `console_browser.rs`).

use std::time::Duration;

use serde_json::json;
use tuma::clock::Clock;
use tuma::replay::ReplayRules;
use tuma::store::Outcome;

use crate::on_both_backends;
use crate::support::*;

/// A browser-like client of the console: keeps the session cookie, never
/// follows redirects (the tests look at them).
pub struct Console<'a> {
    pub s: &'a TestServer,
    pub client: reqwest::Client,
    pub cookie: Option<String>,
}

impl<'a> Console<'a> {
    pub fn new(s: &'a TestServer) -> Console<'a> {
        Console {
            s,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    /// Signs in with `key`; returns the response (303 on success).
    pub async fn sign_in(&mut self, key: &str) -> reqwest::Response {
        let response = self
            .client
            .post(self.s.url("/console/sign-in"))
            .form(&[("key", key)])
            .send()
            .await
            .unwrap();
        if let Some(set) = response.headers().get("set-cookie") {
            let set = set.to_str().unwrap();
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        response
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        let mut req = self.client.get(self.s.url(path));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    pub async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.unwrap()
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.post(self.s.url(path)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    /// The CSRF token in the session's pages.
    pub async fn csrf(&self) -> String {
        let page = self.page("/console/deliveries?q=").await;
        csrf_in(&page)
    }
}

pub fn csrf_in(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[start..start + 64].to_owned()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

async fn signing_in_opens_a_session_whose_cookie_is_http_only_strict_and_scoped(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("ops-amina", &["read", "ops"]).await;
    let mut c = Console::new(&s);

    let root = c.get("/").await;
    assert_eq!(root.status(), 303);
    assert_eq!(location(&root), "/console");
    let before = c.get("/console").await;
    assert_eq!(before.status(), 303, "no session: to the sign-in page");
    assert_eq!(location(&before), "/console/sign-in");

    let wrong = c.sign_in("tuma_not-a-key").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    let ok = c.sign_in(&key).await;
    assert_eq!(ok.status(), 303);
    assert_eq!(location(&ok), "/console");
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain http on loopback: no Secure flag ({cookie})"
    );
    let id = c.cookie.clone().unwrap();
    let id = id.trim_start_matches("tuma_console=");
    assert_eq!(id.len(), 43, "32 random bytes: {id}");

    let overview = c.get("/console").await;
    assert_eq!(overview.status(), 200);
    let h = overview.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "same-origin");
    let html = overview.text().await.unwrap();
    assert!(
        html.contains("Overview") && html.contains("primary"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "no inline script");

    // Only the session id's hash is stored; the key never is.
    let text = all_database_text(&s.t.app.db).await;
    assert!(!text.contains(id), "the session id is not stored");
    assert!(text.contains(&tuma::api::auth::hash_key(id)));
    assert!(!text.contains(&key));
    s.stop().await;
}
on_both_backends!(signing_in_opens_a_session_whose_cookie_is_http_only_strict_and_scoped);

async fn a_session_ends_at_sign_out_after_30_idle_minutes_and_after_8_hours(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("ops", &["read", "ops"]).await;

    let mut c = Console::new(&s);
    assert_eq!(c.sign_in(&key).await.status(), 303);
    let csrf = c.csrf().await;
    let out = c.post("/console/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = c.get("/console/deliveries").await;
    assert_eq!(after.status(), 303, "the old cookie no longer works");

    let mut idle = Console::new(&s);
    assert_eq!(idle.sign_in(&key).await.status(), 303);
    s.t.advance(Duration::from_secs(29 * 60)).await;
    assert_eq!(idle.get("/console").await.status(), 200, "29 idle minutes");
    s.t.advance(Duration::from_secs(29 * 60)).await;
    assert_eq!(
        idle.get("/console").await.status(),
        200,
        "use starts the idle time again"
    );
    s.t.advance(Duration::from_secs(31 * 60)).await;
    assert_eq!(idle.get("/console").await.status(), 303, "31 idle minutes");

    let mut long = Console::new(&s);
    assert_eq!(long.sign_in(&key).await.status(), 303);
    for _ in 0..16 {
        s.t.advance(Duration::from_secs(29 * 60)).await;
        assert_eq!(long.get("/console").await.status(), 200);
    }
    s.t.advance(Duration::from_secs(29 * 60)).await;
    assert_eq!(
        long.get("/console").await.status(),
        303,
        "8 hours after sign-in, however busy"
    );

    // Revoking the key ends its sessions.
    let mut revoked = Console::new(&s);
    assert_eq!(revoked.sign_in(&key).await.status(), 303);
    s.t.app
        .db
        .revoke_api_key("ops", s.t.clock.now())
        .await
        .unwrap();
    assert_eq!(revoked.get("/console").await.status(), 303);
    s.stop().await;
}
on_both_backends!(a_session_ends_at_sign_out_after_30_idle_minutes_and_after_8_hours);

async fn failed_sign_ins_are_limited_and_logged_without_the_key(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("ops", &["read"]).await;
    let mut c = Console::new(&s);
    let guess = "tuma_guessing-0123456789abcdefghijklmnopqrstuvw";
    for _ in 0..5 {
        assert_eq!(c.sign_in(guess).await.status(), 401);
    }
    assert_eq!(c.sign_in(guess).await.status(), 429);
    assert_eq!(
        c.sign_in(&key).await.status(),
        429,
        "refused while limited, even with a good key"
    );
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(logs.contains("console sign-in failed"), "logged");
    assert!(!logs.contains(guess), "the key is never logged");
    s.stop().await;
}
on_both_backends!(failed_sign_ins_are_limited_and_logged_without_the_key);

async fn state_changing_requests_need_the_sessions_csrf_token(backend: Backend) {
    let s = spawn_app(backend).await;
    let failed = seed(
        &s.t.app.db,
        Seed::notification(
            &s.t.clock.now().to_rfc3339(),
            "+254711000020",
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    let key = s.key("ops", &["read", "ops"]).await;
    let mut a = Console::new(&s);
    a.sign_in(&key).await;
    let mut b = Console::new(&s);
    b.sign_in(&key).await;
    let theirs = b.csrf().await;
    let mine = a.csrf().await;
    assert_ne!(mine, theirs, "each session has its own token");

    for form in [
        vec![("id", failed.as_str())],
        vec![("id", failed.as_str()), ("csrf", theirs.as_str())],
        vec![("id", failed.as_str()), ("csrf", "")],
    ] {
        let r = a.post("/console/replay", &form).await;
        assert_eq!(r.status(), 403, "{form:?}");
        assert!(r.text().await.unwrap().contains("CSRF"));
    }
    assert_eq!(
        a.post("/console/keys/create", &[("name", "x"), ("scope", "read")])
            .await
            .status(),
        403
    );
    assert_eq!(a.post("/console/sign-out", &[]).await.status(), 403);
    assert_eq!(s.delivery_count().await, 1, "nothing was replayed");

    let r = a
        .post("/console/replay", &[("id", &failed), ("csrf", &mine)])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.delivery_count().await, 2);
    s.stop().await;
}
on_both_backends!(state_changing_requests_need_the_sessions_csrf_token);

async fn scopes_decide_the_pages_and_a_read_key_cannot_replay(backend: Backend) {
    let s = spawn_app(backend).await;
    let failed = seed(
        &s.t.app.db,
        Seed::notification(
            &s.t.clock.now().to_rfc3339(),
            "+254711000021",
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    let reader = s.key("reader", &["read"]).await;
    let finance = s.key("finance", &["reports"]).await;
    let sender = s.key("auth-service", &["send"]).await;

    let mut r = Console::new(&s);
    assert_eq!(r.sign_in(&reader).await.status(), 303);
    let csrf = r.csrf().await;
    assert_eq!(r.get("/console/deliveries").await.status(), 200);
    assert_eq!(
        r.get(&format!("/console/deliveries/{failed}"))
            .await
            .status(),
        200
    );
    for path in ["/console/failures", "/console/keys", "/console/costs"] {
        assert_eq!(r.get(path).await.status(), 403, "{path}");
    }
    let page = r.page(&format!("/console/deliveries/{failed}")).await;
    assert!(!page.contains("replay-this"), "no replay button for read");
    let replay = r
        .post("/console/replay", &[("id", &failed), ("csrf", &csrf)])
        .await;
    assert_eq!(replay.status(), 403);
    assert!(replay.text().await.unwrap().contains("`ops`"));
    let plan = r
        .post("/console/replay/plan", &[("id", &failed), ("csrf", &csrf)])
        .await;
    assert_eq!(plan.status(), 403);
    assert_eq!(s.delivery_count().await, 1);
    let nav = r.page("/console").await;
    assert!(!nav.contains("/console/failures") && !nav.contains("/console/keys"));

    let mut f = Console::new(&s);
    let home = f.sign_in(&finance).await;
    assert_eq!(location(&home), "/console/costs");
    assert_eq!(f.get("/console/costs").await.status(), 200);
    assert_eq!(f.get("/console/deliveries").await.status(), 403);

    let mut x = Console::new(&s);
    assert_eq!(
        x.sign_in(&sender).await.status(),
        401,
        "send alone opens nothing"
    );
    s.stop().await;
}
on_both_backends!(scopes_decide_the_pages_and_a_read_key_cannot_replay);

async fn a_national_number_finds_its_deliveries_and_an_otp_page_never_shows_the_code(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let sender = s.key("auth-service", &["send", "read"]).await;
    let sent = s
        .post(
            "/v1/otp",
            &sender,
            &json!({"to": "+254711000030", "code": "482913", "purpose": "login"}),
        )
        .await;
    assert_eq!(sent.status(), 202);
    let id = sent.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.t.drain().await;
    seed(
        &s.t.app.db,
        Seed::notification(
            &s.t.clock.now().to_rfc3339(),
            "+254722000000",
            "primary",
            SeedEnd::Sent(None),
        ),
    )
    .await;
    let key = s.key("ops", &["read"]).await;
    let mut c = Console::new(&s);
    c.sign_in(&key).await;

    let found = c.page("/console/deliveries?q=0711+000+030").await;
    assert!(found.contains("+254711000030"), "{found}");
    assert!(found.contains(&id), "{found}");
    assert!(!found.contains("+254722000000"), "only that recipient");
    assert_eq!(found.matches("class=\"delivery-link\"").count(), 1);

    let bad = c.get("/console/deliveries?q=not+a+number").await;
    assert_eq!(bad.status(), 422);
    assert!(bad.text().await.unwrap().contains("q: not a delivery id"));
    let unknown = c.get("/console/deliveries?colour=red").await;
    assert_eq!(unknown.status(), 422);

    let by_id = c.page(&format!("/console/deliveries?q={id}")).await;
    assert!(by_id.contains(&id));

    let page = c.page(&format!("/console/deliveries/{id}")).await;
    assert!(page.contains("******"), "the code as stars: {page}");
    assert!(!page.contains("482913"), "never the code");
    assert!(
        page.contains("primary") && page.contains("accepted"),
        "attempt shown"
    );
    assert!(page.contains("No receipt received."), "{page}");

    // Older pages follow by keyset.
    for i in 0..55 {
        seed(
            &s.t.app.db,
            Seed::notification(
                &(s.t.clock.now() - chrono::Duration::minutes(i + 1)).to_rfc3339(),
                "+254733000000",
                "primary",
                SeedEnd::Sent(None),
            ),
        )
        .await;
    }
    let first = c.page("/console/deliveries?q=%2B254733000000").await;
    assert_eq!(first.matches("class=\"delivery-link\"").count(), 50);
    let start = first.find("id=\"older\"").expect("an older page");
    let href_at = first[..start].rfind("href=\"").unwrap() + 6;
    let href = first[href_at..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&")
        .replace("&#x2f;", "/");
    let second = c.page(&href).await;
    assert_eq!(second.matches("class=\"delivery-link\"").count(), 5);
    assert!(!second.contains("id=\"older\""));
    s.stop().await;
}
on_both_backends!(a_national_number_finds_its_deliveries_and_an_otp_page_never_shows_the_code);

/// A template variable with markup: the welcome template puts `name` in the text.
pub const INJECTED: &str =
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";

async fn markup_in_a_template_variable_is_shown_as_text(backend: Backend) {
    let s = spawn_app(backend).await;
    let sender = s.key("auth-service", &["send"]).await;
    let sent = s
        .post(
            "/v1/notifications",
            &sender,
            &json!({"to": "+254711000040", "template": "welcome", "vars": {"name": INJECTED}}),
        )
        .await;
    assert_eq!(sent.status(), 202);
    let id = sent.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = s.key("<script>alert(1)</script>", &["read", "ops"]).await;
    let mut c = Console::new(&s);
    c.sign_in(&key).await;
    let page = c.page(&format!("/console/deliveries/{id}")).await;
    assert!(!page.contains("<script>"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(page.contains("&lt;script&gt;document.title="), "{page}");
    assert!(page.contains("onerror=&quot;"), "{page}");
    let keys = c.page("/console/keys").await;
    assert!(!keys.contains("<script>alert"));
    assert!(
        keys.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{keys}"
    );
    s.stop().await;
}
on_both_backends!(markup_in_a_template_variable_is_shown_as_text);

async fn the_failures_page_groups_and_a_replay_is_dry_run_then_recorded_as_the_key(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let now = s.t.clock.now().to_rfc3339();
    let db = &s.t.app.db;
    let transient = seed(
        db,
        Seed::notification(
            &now,
            "+254711000050",
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    let permanent = seed(
        db,
        Seed::notification(
            &now,
            "+254711000051",
            "primary",
            SeedEnd::Failed(Outcome::Permanent, Some("403")),
        ),
    )
    .await;
    let delivered = seed(
        db,
        Seed::notification(&now, "+254711000052", "primary", SeedEnd::Delivered(None)),
    )
    .await;
    let key = s.key("ops-amina", &["read", "ops"]).await;
    let mut c = Console::new(&s);
    c.sign_in(&key).await;
    let csrf = c.csrf().await;

    let failures = c.page("/console/failures").await;
    assert!(failures.contains("<code>500</code>") && failures.contains("<code>403</code>"));
    assert!(!failures.contains(&delivered));

    let plan = c
        .post(
            "/console/replay/plan",
            &[
                ("csrf", &csrf),
                ("id", &transient),
                ("id", &permanent),
                ("id", &delivered),
            ],
        )
        .await;
    assert_eq!(plan.status(), 200);
    let plan = plan.text().await.unwrap();
    assert!(plan.contains("id=\"replayable-count\">1<"), "{plan}");
    assert!(plan.contains("id=\"refused-count\">2<"), "{plan}");
    assert!(plan.contains("permanent_error") && plan.contains("not_replayable_status"));
    assert_eq!(s.delivery_count().await, 3, "a dry run writes nothing");

    // The whole group, by filter.
    let group = c
        .post(
            "/console/replay/plan",
            &[
                ("csrf", &csrf),
                ("mode", "filter"),
                ("status", "failed"),
                ("provider", "primary"),
                ("error_code", "500"),
                ("since", "24h"),
            ],
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(
        group.contains(&transient) && !group.contains(&permanent),
        "{group}"
    );

    let done = c
        .post("/console/replay", &[("csrf", &csrf), ("id", &transient)])
        .await;
    assert_eq!(done.status(), 200);
    let done = done.text().await.unwrap();
    assert!(done.contains("id=\"replayed-count\">1<"), "{done}");
    let replays = db.replays_of(&transient).await.unwrap();
    assert_eq!(replays.len(), 1);
    assert_eq!(replays[0].replayed_by.as_deref(), Some("ops-amina"));
    let again = c
        .post("/console/replay", &[("csrf", &csrf), ("id", &transient)])
        .await
        .text()
        .await
        .unwrap();
    assert!(
        again.contains("already_replayed"),
        "one live replay: {again}"
    );
    let original = c.page(&format!("/console/deliveries/{transient}")).await;
    assert!(original.contains(&replays[0].id) && original.contains("ops-amina"));
    s.stop().await;
}
on_both_backends!(the_failures_page_groups_and_a_replay_is_dry_run_then_recorded_as_the_key);

/// Seeds KES and USD costs in November 2026.
pub async fn seed_costs(db: &tuma::store::Db) {
    for (at, to, end) in [
        (
            "2026-11-02T08:00:00Z",
            "+254711000001",
            SeedEnd::Delivered(cost("0.80", "KES", false)),
        ),
        (
            "2026-11-02T09:00:00Z",
            "+254711000002",
            SeedEnd::Sent(cost("0.80", "KES", true)),
        ),
        (
            "2026-11-03T08:00:00Z",
            "+254711000003",
            SeedEnd::Delivered(cost("1.60", "KES", false)),
        ),
        (
            "2026-11-03T10:00:00Z",
            "+14155552671",
            SeedEnd::Delivered(cost("0.0079", "USD", false)),
        ),
        (
            "2026-11-04T08:00:00Z",
            "+14155552672",
            SeedEnd::Sent(cost("0.0158", "USD", true)),
        ),
    ] {
        seed(db, Seed::notification(at, to, "primary", end)).await;
    }
    seed(
        db,
        Seed::notification(
            "2026-11-04T09:00:00Z",
            "+447700900123",
            "backup",
            SeedEnd::Delivered(cost("0.04", "GBP", false)),
        ),
    )
    .await;
}

/// What `tuma report costs` prints for these arguments.
pub fn cli_report(s: &TestServer, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuma"))
        .env("TUMA_CONFIG", s.t.db.path().join("providers.toml"))
        .env("DATABASE_URL", &s.t.db.url)
        .env("RUST_LOG", "warn")
        .arg("report")
        .arg("costs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn costs_chart_each_currency_and_the_csv_is_what_tuma_report_costs_prints(backend: Backend) {
    let s = spawn_app(backend).await;
    seed_costs(&s.t.app.db).await;
    let key = s.key("finance", &["reports"]).await;
    let mut c = Console::new(&s);
    c.sign_in(&key).await;
    let page = c
        .page("/console/costs?from=2026-11-01&to=2026-12-01&period=day&split=provider")
        .await;
    assert_eq!(
        page.matches("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\"")
            .count(),
        3,
        "KES, USD, GBP"
    );
    for cur in ["KES", "USD", "GBP"] {
        assert!(page.contains(&format!("data-currency=\"{cur}\"")), "{cur}");
    }
    assert!(page.contains("url(#hatch-"), "estimates are hatched");
    let csv = c
        .get("/console/costs.csv?from=2026-11-01&to=2026-12-01&period=day&split=provider")
        .await;
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let csv = csv.text().await.unwrap();
    let cli = cli_report(
        &s,
        &[
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--by",
            "day,provider",
            "--format",
            "csv",
        ],
    );
    assert_eq!(csv, cli);
    assert!(csv.contains("KES") && csv.contains("USD"));
    let by_country = c
        .get("/console/costs.csv?from=2026-11-01&to=2026-12-01&period=month&split=country")
        .await
        .text()
        .await
        .unwrap();
    let cli = cli_report(
        &s,
        &[
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--by",
            "month,country",
            "--format",
            "csv",
        ],
    );
    assert_eq!(by_country, cli);
    let json: serde_json::Value = c
        .get("/console/costs.json?from=2026-11-01&to=2026-12-01&period=month&split=country")
        .await
        .json()
        .await
        .unwrap();
    let mut cli: serde_json::Value = serde_json::from_str(&cli_report(
        &s,
        &[
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--by",
            "month,country",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    cli["generated_at"] = json["generated_at"].clone();
    assert_eq!(json, cli, "the same report but for when it was made");
    let bad = c.get("/console/costs?period=week").await;
    assert_eq!(bad.status(), 422);
    s.stop().await;
}
on_both_backends!(costs_chart_each_currency_and_the_csv_is_what_tuma_report_costs_prints);

async fn keys_are_created_rotated_and_revoked_and_a_new_key_is_shown_once(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("ops", &["read", "ops"]).await;
    let mut c = Console::new(&s);
    c.sign_in(&key).await;
    let csrf = c.csrf().await;
    let created = c
        .post(
            "/console/keys/create",
            &[
                ("csrf", &csrf),
                ("name", "billing"),
                ("scope", "reports"),
                ("scope", "read"),
            ],
        )
        .await;
    assert_eq!(created.status(), 200);
    let created = created.text().await.unwrap();
    let start = created.find("id=\"new-key\">").unwrap() + 13;
    let new_key = created[start..].split('<').next().unwrap().to_owned();
    assert!(new_key.starts_with("tuma_"), "{new_key}");
    let list = c.page("/console/keys").await;
    assert!(list.contains("billing") && list.contains("read, reports"));
    assert!(!list.contains(&new_key), "never shown again");
    let mut billing = Console::new(&s);
    assert_eq!(billing.sign_in(&new_key).await.status(), 303);

    let rotated = c
        .post(
            "/console/keys/rotate",
            &[("csrf", &csrf), ("name", "billing"), ("grace", "1h")],
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(rotated.contains("keeps working until"), "{rotated}");
    let dup = c
        .post(
            "/console/keys/create",
            &[("csrf", &csrf), ("name", "ops"), ("scope", "read")],
        )
        .await;
    assert_eq!(dup.status(), 422);
    let revoke = c
        .post("/console/keys/revoke", &[("csrf", &csrf), ("name", "ops")])
        .await;
    assert_eq!(revoke.status(), 303);
    assert_eq!(
        c.get("/console/keys").await.status(),
        303,
        "revoking the session's own key ends the session"
    );
    s.stop().await;
}
on_both_backends!(keys_are_created_rotated_and_revoked_and_a_new_key_is_shown_once);

async fn a_sent_delivery_past_the_receipt_horizon_is_shown_as_no_receipt(backend: Backend) {
    let s = spawn_app(backend).await;
    let old = seed(
        &s.t.app.db,
        Seed::notification(
            &(s.t.clock.now() - chrono::Duration::days(3)).to_rfc3339(),
            "+254711000090",
            "primary",
            SeedEnd::Sent(None),
        ),
    )
    .await;
    let fresh = seed(
        &s.t.app.db,
        Seed::notification(
            &s.t.clock.now().to_rfc3339(),
            "+254711000090",
            "primary",
            SeedEnd::Sent(None),
        ),
    )
    .await;
    let key = s.key("support", &["read"]).await;
    let mut c = Console::new(&s);
    c.sign_in(&key).await;
    let list = c.page("/console/deliveries?q=0711000090").await;
    assert_eq!(
        list.matches("class=\"status no-receipt\">no receipt<")
            .count(),
        1,
        "{list}"
    );
    assert_eq!(
        list.matches("class=\"status sent\">sent<").count(),
        1,
        "{list}"
    );
    let page = c.page(&format!("/console/deliveries/{old}")).await;
    assert!(page.contains("id=\"status\">no receipt<"), "{page}");
    let page = c.page(&format!("/console/deliveries/{fresh}")).await;
    assert!(page.contains("id=\"status\">sent<"), "{page}");
    s.stop().await;
}
on_both_backends!(a_sent_delivery_past_the_receipt_horizon_is_shown_as_no_receipt);

/// The cost report read from the per-day rollups equals the one read from
/// every delivery, for every grouping, at `now`.
async fn assert_rollups_match_the_report(db: &tuma::store::Db, now: chrono::DateTime<chrono::Utc>) {
    use tuma::reports::{CostParams, CostQuery, cost_report, cost_report_from_rollups};
    let today = now.date_naive();
    let from = (today - chrono::Duration::days(40))
        .format("%Y-%m-%d")
        .to_string();
    let to = (today + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let rollups = db
        .cost_rollups(
            today - chrono::Duration::days(40),
            today + chrono::Duration::days(1),
        )
        .await
        .unwrap();
    assert!(
        rollups.len() >= 5,
        "the report is read from rollups: {rollups:?}"
    );
    for by in [
        "day,provider",
        "month,country",
        "week,template,channel",
        "day,country,provider,template,channel",
        "month",
    ] {
        let query = CostQuery::from_params(
            &CostParams {
                from: Some(from.clone()),
                to: Some(to.clone()),
                by: Some(by.into()),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        let rolled = cost_report_from_rollups(db, &query, now).await.unwrap();
        let read = cost_report(db, &query, now).await.unwrap();
        assert_eq!(rolled, read, "by {by}");
        assert!(!read.rows.is_empty(), "by {by}");
    }
}

async fn cost_rollups_follow_receipts_reconciled_prices_replays_and_the_receipt_horizon(
    backend: Backend,
) {
    use tuma::domain::DeliveryKind;
    use tuma::domain::receipt::ReceiptVerdict;
    use tuma::store::NewReceipt;
    let s = spawn_app(backend).await;
    let db = &s.t.app.db;
    let now = s.t.clock.now();
    let ago = |h: i64| (now - chrono::Duration::hours(h)).to_rfc3339();
    let priced = seed(
        db,
        Seed::notification(
            &ago(30 * 24),
            "+254711000001",
            "primary",
            SeedEnd::Sent(cost("0.80", "KES", true)),
        ),
    )
    .await;
    let awaiting = seed(
        db,
        Seed::notification(
            &ago(2),
            "+254711000002",
            "primary",
            SeedEnd::Sent(cost("0.80", "KES", true)),
        ),
    )
    .await;
    seed(
        db,
        Seed::notification(
            &ago(3 * 24),
            "+14155552671",
            "backup",
            SeedEnd::Delivered(cost("0.0079", "USD", false)),
        ),
    )
    .await;
    seed(
        db,
        Seed::notification(
            &ago(5),
            "+447700900123",
            "backup",
            SeedEnd::Undelivered(cost("0.04", "GBP", false)),
        ),
    )
    .await;
    seed(
        db,
        Seed::notification(
            &ago(26),
            "amina@example.com",
            "primary",
            SeedEnd::Sent(None),
        ),
    )
    .await;
    let failed = seed(
        db,
        Seed::notification(
            &ago(20 * 24),
            "+254711000003",
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    let mut otp = Seed::notification(&ago(10 * 24), "+254711000004", "primary", SeedEnd::Expired);
    otp.kind = DeliveryKind::Otp;
    otp.template = "otp";
    seed(db, otp).await;
    assert_rollups_match_the_report(db, now).await;

    // A reconciliation learns the actual price of an estimated one.
    let price = tuma::domain::money::Money::parse("0.75", "KES").unwrap();
    assert!(
        db.record_receipt_price("primary", &format!("msg-{priced}"), price, &[], now)
            .await
            .unwrap()
            .is_some()
    );
    assert_rollups_match_the_report(db, now).await;

    // A receipt moves the one still awaiting its receipt to delivered.
    db.record_receipt(&NewReceipt {
        provider: "primary".into(),
        provider_message_id: format!("msg-{awaiting}"),
        status: "DELIVRD".into(),
        verdict: ReceiptVerdict::Delivered,
        error_code: None,
        error: None,
        fields: json!({}),
        received_at: now,
    })
    .await
    .unwrap();
    assert_rollups_match_the_report(db, now).await;

    // A replay of the failure is a new delivery today, sent by the worker.
    let replay =
        s.t.app
            .replay_delivery(&failed, "ops-amina", ReplayRules::default(), false)
            .await
            .unwrap();
    assert_eq!(replay.replayed.len(), 1, "{replay:?}");
    s.t.drain().await;
    assert_rollups_match_the_report(db, now).await;

    // The console's download is still what `tuma report costs` prints.
    let key = s.key("finance", &["reports"]).await;
    let mut c = Console::new(&s);
    c.sign_in(&key).await;
    let (from, to) = (
        (now.date_naive() - chrono::Duration::days(40)).to_string(),
        (now.date_naive() + chrono::Duration::days(1)).to_string(),
    );
    let csv = c
        .get(&format!(
            "/console/costs.csv?from={from}&to={to}&period=day&split=country"
        ))
        .await
        .text()
        .await
        .unwrap();
    let cli = cli_report(
        &s,
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--by",
            "day,country",
            "--format",
            "csv",
        ],
    );
    assert_eq!(csv, cli);
    assert!(
        csv.contains(",KE,Kenya,") && csv.contains(",US,United States,"),
        "{csv}"
    );

    // A day later every `sent` one is past the receipt horizon.
    s.t.advance(Duration::from_secs(25 * 3600)).await;
    assert_rollups_match_the_report(db, s.t.clock.now()).await;

    // Rows recorded before deliveries kept their country get it at start.
    let sql = "UPDATE deliveries SET country = NULL WHERE channel = 'sms'";
    match db {
        tuma::store::Db::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        tuma::store::Db::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
    }
    .unwrap();
    db.migrate().await.unwrap();
    assert_rollups_match_the_report(db, s.t.clock.now()).await;
    s.stop().await;
}
on_both_backends!(cost_rollups_follow_receipts_reconciled_prices_replays_and_the_receipt_horizon);

async fn the_keys_page_shows_each_keys_webhook_endpoints_and_their_latest_attempts(
    backend: Backend,
) {
    use tuma::webhooks::dispatch::{Sender, run_once};
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let s = spawn_app_with(
        backend,
        "\n[webhooks]\npoll_interval = \"60s\"\nfirst_retry = \"5s\"\n",
    )
    .await;
    let send = s.key("auth-service", &["send", "read"]).await;
    let ops = s.key("ops-amina", &["ops"]).await;
    let hooks = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&hooks)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&hooks)
        .await;
    let r = s
        .post(
            "/v1/webhooks",
            &ops,
            &json!({ "key": "auth-service", "url": format!("{}/hook?shop=1&b=2", hooks.uri()) }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let registered: serde_json::Value = r.json().await.unwrap();
    let (endpoint, secret) = (
        registered["id"].as_str().unwrap().to_owned(),
        registered["secret"].as_str().unwrap().to_owned(),
    );

    let mut c = Console::new(&s);
    c.sign_in(&ops).await;
    let page = c.page("/console/keys").await;
    assert!(page.contains(&endpoint), "{page}");
    assert!(page.contains("No attempts yet."), "{page}");

    let r = s
        .post(
            "/v1/otp",
            &send,
            &json!({ "to": "+254712345601", "code": "246810", "purpose": "login" }),
        )
        .await;
    assert_eq!(r.status(), 202);
    let delivery = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.t.drain().await;
    let sender = Sender::new(&s.t.app.config.webhooks).unwrap();
    assert_eq!(run_once(&s.t.app, &sender).await.unwrap().attempts, 1);
    let page = c.page("/console/keys").await;
    assert!(page.contains("failing since"), "{page}");
    s.t.advance(Duration::from_secs(5)).await;
    assert_eq!(run_once(&s.t.app, &sender).await.unwrap().delivered, 1);

    let page = c.page("/console/keys").await;
    let section = &page[page.find("id=\"webhooks\"").expect("a webhooks section")..];
    assert!(section.contains("auth-service"), "{section}");
    assert!(
        section.contains("hook?shop=1&amp;b=2"),
        "the URL is shown as escaped text: {section}"
    );
    assert!(section.contains("delivery.sent"), "{section}");
    assert!(section.contains("badge good\">working<"), "{section}");
    let rows: Vec<&str> = section
        .split("<tr><td>")
        .skip(1)
        .map(|r| r.split("</tr>").next().unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{section}");
    assert!(
        rows[0].contains("<td>204</td>") && rows[0].contains(">delivered<"),
        "newest first: {}",
        rows[0]
    );
    assert!(
        rows[1].contains("<td>503</td>") && rows[1].contains(">rejected<"),
        "{}",
        rows[1]
    );
    assert!(rows[0].contains(&format!("/console/deliveries/{delivery}")));
    assert!(
        !page.contains(&secret[6..]),
        "the signing secret is never shown"
    );
    assert!(!page.contains("246810"), "nor the code");

    // Scope `ops` only.
    let read = s.key("support", &["read"]).await;
    let mut r = Console::new(&s);
    r.sign_in(&read).await;
    assert_eq!(r.get("/console/keys").await.status(), 403);
    s.stop().await;
}
on_both_backends!(the_keys_page_shows_each_keys_webhook_endpoints_and_their_latest_attempts);

async fn a_console_replay_to_a_suppressed_recipient_needs_the_ignore_suppression_box_and_shows_who_ticked_it(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let now = s.t.clock.now();
    let db = &s.t.app.db;
    let to = "+254711000060";
    let failed = seed(
        db,
        Seed::notification(
            &now.to_rfc3339(),
            to,
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    db.suppress(&tuma::store::Suppression {
        channel: "sms".into(),
        recipient: to.into(),
        reason: "number not in service".into(),
        delivery_id: "another-clients-delivery-0003".into(),
        provider: "primary".into(),
        error_code: Some("21614".into()),
        created_at: now - chrono::Duration::hours(1),
    })
    .await
    .unwrap();
    let key = s.key("ops-amina", &["read", "ops"]).await;
    let mut c = Console::new(&s);
    c.sign_in(&key).await;
    let csrf = c.csrf().await;

    let failures = c.page("/console/failures").await;
    assert!(
        failures.contains("name=\"ignore_suppression\""),
        "{failures}"
    );
    let forced = c
        .post(
            "/console/replay",
            &[("csrf", &csrf), ("id", &failed), ("force", "1")],
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(forced.contains("suppressed since"), "{forced}");
    assert!(db.replays_of(&failed).await.unwrap().is_empty());

    let plan = c
        .post(
            "/console/replay/plan",
            &[
                ("csrf", &csrf),
                ("id", &failed),
                ("ignore_suppression", "1"),
            ],
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(plan.contains("id=\"replayable-count\">1<"), "{plan}");
    assert!(
        plan.contains("name=\"ignore_suppression\" value=\"1\""),
        "the confirmation carries it: {plan}"
    );
    let done = c
        .post(
            "/console/replay",
            &[
                ("csrf", &csrf),
                ("id", &failed),
                ("ignore_suppression", "1"),
            ],
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(done.contains("id=\"replayed-count\">1<"), "{done}");
    let replay = db.replays_of(&failed).await.unwrap()[0].id.clone();
    let page = c.page(&format!("/console/deliveries/{replay}")).await;
    assert!(page.contains("suppression ignored by ops-amina"), "{page}");
    s.stop().await;
}
on_both_backends!(
    a_console_replay_to_a_suppressed_recipient_needs_the_ignore_suppression_box_and_shows_who_ticked_it
);
