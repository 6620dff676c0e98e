//! The console in a real browser: Chromium driven over WebDriver
//! (chromedriver on 127.0.0.1). Signs in, finds a failed delivery by a
//! national number, replays it from the failures page after the dry run,
//! reads the cost charts of two currencies and downloads the CSV, and checks
//! CSRF, scopes, sign-out and escaping as a browser sees them. The SQLite run
//! saves the screenshots in `docs/console/`. Under CI a missing browser fails
//! the test; elsewhere it is skipped with a note.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tuma::clock::Clock;
use tuma::store::Outcome;

use crate::console::{INJECTED, cli_report, seed_costs};
use crate::on_both_backends;
use crate::support::*;

/// chromedriver, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// chromedriver and the browser, or `None` (a failure under CI).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let found = (
        find_program(&["chromedriver"]),
        find_program(&["chromium", "chromium-browser", "google-chrome"]),
    );
    match found {
        (Some(driver), Some(chrome)) => Some((driver, chrome)),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "chromium and chromedriver must be installed under CI: the browser tests may not be skipped"
            );
            eprintln!("chromium or chromedriver is not installed: browser test skipped");
            None
        }
    }
}

async fn start_driver(program: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(program)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on {port}");
}

async fn open_browser(driver: &Driver, chrome: &Path, downloads: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chrome,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--hide-scrollbars", "--force-device-scale-factor=1"],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn path_of(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_owned()
}

/// Saves a screenshot of the page as `docs/console/<name>.png`, the whole
/// page tall.
async fn screenshot(c: &Client, name: &str) {
    let height = c
        .execute(
            "return Math.ceil(document.querySelector('main').getBoundingClientRect().bottom + window.scrollY + 8 + window.outerHeight - window.innerHeight);",
            vec![],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(1000)
        .clamp(480, 2400);
    c.set_window_size(1280, u32::try_from(height).unwrap_or(1000))
        .await
        .unwrap();
    let png = c.screenshot().await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    c.set_window_size(1280, 1000).await.unwrap();
}

/// Clicks `element` and waits until the page it leads to has loaded.
async fn click_to_page(c: &Client, element: fantoccini::elements::Element) {
    c.execute(
        "document.documentElement.setAttribute('data-left', '1');",
        vec![],
    )
    .await
    .unwrap();
    element.click().await.unwrap();
    for _ in 0..200 {
        let loaded = c
            .execute(
                "return !document.documentElement.hasAttribute('data-left') && document.readyState === 'complete';",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if loaded {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the click led to no new page");
}

/// Finds `locator` and clicks it to a new page.
async fn go(c: &Client, locator: Locator<'_>) {
    let element = c.find(locator).await.unwrap();
    click_to_page(c, element).await;
}

async fn sign_in(c: &Client, base: &str, key: &str) {
    c.goto(&format!("{base}/console")).await.unwrap();
    assert_eq!(path_of(c).await, "/console/sign-in");
    c.find(Locator::Id("key"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    go(c, Locator::Id("sign-in")).await;
}

async fn the_console_works_in_a_real_browser(backend: Backend) {
    let Some((driver_program, chrome)) = browser() else {
        return;
    };
    let s = spawn_app(backend).await;
    let db = &s.t.app.db;
    let now = s.t.clock.now();
    let at = |minutes: i64| (now - chrono::Duration::minutes(minutes)).to_rfc3339();
    // Traffic for the overview and the search.
    let mut seeded = Vec::new();
    for (i, (to, end)) in [
        (
            "+254711000101",
            SeedEnd::Delivered(cost("0.80", "KES", false)),
        ),
        ("+254711000102", SeedEnd::Sent(cost("0.80", "KES", true))),
        (
            "+254722000103",
            SeedEnd::Delivered(cost("0.80", "KES", false)),
        ),
        ("amina@example.org", SeedEnd::Delivered(None)),
        (
            "+254711000105",
            SeedEnd::Failed(Outcome::Permanent, Some("403")),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        seeded.push(
            seed(
                db,
                Seed::notification(&at(40 + i as i64), to, "primary", end),
            )
            .await,
        );
    }
    let failed = seed(
        db,
        Seed::notification(
            &at(12),
            "+254711000060",
            "primary",
            SeedEnd::Failed(Outcome::Transient, Some("500")),
        ),
    )
    .await;
    seed_costs(db).await;
    let sender = s.key("auth-service", &["send"]).await;
    let injected = s
        .post(
            "/v1/notifications",
            &sender,
            &json!({"to": "+254711000070", "template": "welcome", "vars": {"name": INJECTED}}),
        )
        .await;
    assert_eq!(injected.status(), 202);
    let injected = injected.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A webhook endpoint of that key, whose receiver refuses the first event.
    let hooks = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .mount(&hooks)
        .await;
    let hooks_admin = s.key("hooks-admin", &["ops"]).await;
    let registered = s
        .post(
            "/v1/webhooks",
            &hooks_admin,
            &json!({"key": "auth-service", "url": format!("{}/tuma-events", hooks.uri())}),
        )
        .await;
    assert_eq!(registered.status(), 201);
    s.t.drain().await;
    let webhook_sender = tuma::webhooks::dispatch::Sender::new(&s.t.app.config.webhooks).unwrap();
    // (The drain's own dispatcher may have sent it already, or left it
    // leased when it stopped: then its lease is let run out.)
    let attempted: &'static str = Box::leak(
        format!(
            "SELECT COUNT(*) FROM webhook_attempts a JOIN webhook_events e ON e.id = a.event_id \
             WHERE e.delivery_id = '{injected}'"
        )
        .into_boxed_str(),
    );
    for _ in 0..20 {
        tuma::webhooks::dispatch::run_once(&s.t.app, &webhook_sender)
            .await
            .unwrap();
        if count(&s.t.app.db, attempted).await > 0 {
            break;
        }
        s.t.advance(Duration::from_secs(60)).await;
    }
    assert!(
        count(&s.t.app.db, attempted).await > 0,
        "the injected delivery's event was attempted"
    );
    // One waiting in the queue (no worker runs until the test drains).
    let waiting = s
        .post(
            "/v1/notifications",
            &sender,
            &json!({"to": "+254711000080", "template": "welcome", "vars": {"name": "Wanjiru"}}),
        )
        .await;
    assert_eq!(waiting.status(), 202);
    let ops = s.key("ops-amina", &["read", "ops", "reports"]).await;
    let reader = s.key("support-juma", &["read"]).await;

    let downloads = tempfile::tempdir().unwrap();
    let driver = start_driver(&driver_program).await;
    let c = open_browser(&driver, &chrome, downloads.path()).await;
    let base = s.base.clone();
    let shots = backend == Backend::Sqlite;

    // Sign in: the overview.
    sign_in(&c, &base, &ops).await;
    assert_eq!(path_of(&c).await, "/console");
    let overview = text_of(&c, "main").await;
    assert!(
        overview.contains("primary") && overview.contains("notifications"),
        "{overview}"
    );
    if shots {
        screenshot(&c, "overview").await;
    }

    // Search a national number and open its failed delivery.
    go(&c, Locator::LinkText("Deliveries")).await;
    c.find(Locator::Id("q"))
        .await
        .unwrap()
        .send_keys("0711 000 060")
        .await
        .unwrap();
    go(&c, Locator::Id("search")).await;
    assert_eq!(text_of(&c, "#searched-for").await, "+254711000060");
    let rows = c.find_all(Locator::Css("a.delivery-link")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(text_of(&c, "table.list tbody").await.contains("failed"));
    click_to_page(&c, rows[0].clone()).await;
    assert_eq!(path_of(&c).await, format!("/console/deliveries/{failed}"));
    assert_eq!(text_of(&c, "#status").await, "failed");
    let page = text_of(&c, "main").await;
    assert!(
        page.contains("refused by the provider") && page.contains("500"),
        "{page}"
    );
    if shots {
        screenshot(&c, "delivery").await;
    }

    // Replay it from the failures page: the dry run first.
    go(&c, Locator::LinkText("Failures")).await;
    c.find(Locator::Id(&format!("pick-{failed}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // And one that failed permanently: refused without force.
    c.find(Locator::Id(&format!("pick-{}", seeded[4])))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    go(&c, Locator::Id("dry-run")).await;
    assert_eq!(text_of(&c, "#replayable-count").await, "1");
    assert_eq!(text_of(&c, "#refused-count").await, "1");
    assert!(text_of(&c, "#refused").await.contains("permanent_error"));
    assert!(text_of(&c, "#replayable").await.contains("+254711000060"));
    assert_eq!(s.delivery_count().await, 14, "the dry run wrote nothing");
    if shots {
        screenshot(&c, "replay-dry-run").await;
    }
    go(&c, Locator::Id("confirm-replay")).await;
    assert_eq!(text_of(&c, "#replayed-count").await, "1");
    let replay_link = c.find(Locator::Css("a.replay-link")).await.unwrap();
    let replay_id = replay_link.text().await.unwrap();
    s.t.drain().await;
    click_to_page(&c, replay_link).await;
    assert_eq!(
        path_of(&c).await,
        format!("/console/deliveries/{replay_id}")
    );
    assert_eq!(text_of(&c, "#status").await, "sent", "the replay was sent");
    assert!(text_of(&c, "main").await.contains(&failed), "its lineage");
    let by = db.replays_of(&failed).await.unwrap();
    assert_eq!(by[0].replayed_by.as_deref(), Some("ops-amina"));

    // The CSRF token is required, in the browser too.
    c.goto(&format!("{base}/console/failures")).await.unwrap();
    c.execute(
        "document.querySelectorAll('input[name=csrf]').forEach(function (e) { e.value = 'forged'; });",
        vec![],
    )
    .await
    .unwrap();
    go(&c, Locator::Id("dry-run")).await;
    assert!(text_of(&c, "main").await.contains("CSRF"));

    // Costs: one chart per currency, and the CSV as `tuma report costs` prints it.
    c.goto(&format!(
        "{base}/console/costs?from=2026-11-01&to=2026-12-01&period=day&split=provider"
    ))
    .await
    .unwrap();
    let charts = c
        .find_all(Locator::Css("section.chart-card"))
        .await
        .unwrap();
    let mut currencies = Vec::new();
    for chart in &charts {
        currencies.push(chart.attr("data-currency").await.unwrap().unwrap());
        assert_eq!(
            chart
                .find_all(Locator::Css("svg.chart"))
                .await
                .unwrap()
                .len(),
            1
        );
    }
    assert_eq!(currencies, ["GBP", "KES", "USD"]);
    let kes = text_of(&c, "section[data-currency=KES] h2").await;
    assert!(
        kes.contains("actual 2.40") && kes.contains("estimated 0.80"),
        "{kes}"
    );
    let bars: Vec<String> = c
        .execute(
            "return Array.from(document.querySelectorAll('section[data-currency=USD] svg.chart rect title')).map(function (t) { return t.textContent; });",
            vec![],
        )
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        bars.contains(&"2026-11-03 primary actual: 0.0079 USD".to_owned()),
        "{bars:?}"
    );
    assert!(
        bars.contains(&"2026-11-04 primary estimate: 0.0158 USD".to_owned()),
        "{bars:?}"
    );
    if shots {
        screenshot(&c, "costs").await;
    }
    c.find(Locator::Id("download-csv"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let file = downloads
        .path()
        .join("tuma-costs-2026-11-01-2026-12-01-day-provider.csv");
    for _ in 0..100 {
        if file.is_file() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let csv = std::fs::read_to_string(&file).expect("the CSV was downloaded");
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

    // The keys page: the endpoint and its refused attempt; with the
    // keyboard alone, Tab reaches the attempt's delivery and Enter opens it.
    go(&c, Locator::LinkText("Keys")).await;
    let hooks_text = text_of(&c, "main").await;
    assert!(
        hooks_text.contains("Webhook endpoints")
            && hooks_text.contains("/tuma-events")
            && hooks_text.contains("failing since")
            && hooks_text.contains("503"),
        "{hooks_text}"
    );
    if shots {
        screenshot(&c, "keys").await;
    }
    let mut reached = false;
    for _ in 0..120 {
        c.active_element()
            .await
            .unwrap()
            .send_keys("\u{E004}")
            .await
            .unwrap();
        // The injected delivery's attempt (events of several deliveries go
        // to one endpoint at once, so it need not be the first listed).
        let on_attempt = c
            .execute(
                &format!(
                    "var a = document.activeElement; return a !== null && a.closest('.endpoint-attempts') !== null && a.tagName === 'A' && (a.getAttribute('href') || '').endsWith('{injected}');"
                ),
                vec![],
            )
            .await
            .unwrap()
            .as_bool()
            .unwrap_or(false);
        if on_attempt {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab reaches the attempt's delivery link");
    let focused = c.active_element().await.unwrap();
    c.execute(
        "document.documentElement.setAttribute('data-left', '1');",
        vec![],
    )
    .await
    .unwrap();
    focused.send_keys("\u{E007}").await.unwrap();
    for _ in 0..200 {
        if path_of(&c).await == format!("/console/deliveries/{injected}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(path_of(&c).await, format!("/console/deliveries/{injected}"));

    // Markup in a template variable is text, and its script never runs.
    c.goto(&format!("{base}/console/deliveries/{injected}"))
        .await
        .unwrap();
    assert!(
        text_of(&c, "#body")
            .await
            .contains("<script>document.title='pwned'</script>")
    );
    let title = c.title().await.unwrap();
    assert!(!title.contains("pwned"), "{title}");
    assert!(
        c.find_all(Locator::Css("main img, main script"))
            .await
            .unwrap()
            .is_empty()
    );

    // Sign-out ends the session.
    go(&c, Locator::Id("sign-out")).await;
    assert_eq!(path_of(&c).await, "/console/sign-in");
    c.goto(&format!("{base}/console/deliveries")).await.unwrap();
    assert_eq!(path_of(&c).await, "/console/sign-in");

    // A read key sees deliveries but cannot replay.
    sign_in(&c, &base, &reader).await;
    c.goto(&format!("{base}/console/deliveries/{failed}"))
        .await
        .unwrap();
    assert!(
        c.find_all(Locator::Id("replay-this"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        c.find_all(Locator::LinkText("Failures"))
            .await
            .unwrap()
            .is_empty()
    );
    c.goto(&format!("{base}/console/failures")).await.unwrap();
    assert!(
        text_of(&c, "main")
            .await
            .contains("needs a key with the `ops` scope")
    );

    c.goto(&format!("{base}/console/deliveries")).await.unwrap();
    go(&c, Locator::Id("sign-out")).await;
    // Narrow screens: every page fits 360 px without the page scrolling
    // sideways (wide tables scroll inside their card).
    sign_in(&c, &base, &ops).await;
    c.set_window_size(360, 800).await.unwrap();
    for path in [
        "/console".to_owned(),
        "/console/deliveries?q=0711000060".to_owned(),
        format!("/console/deliveries/{failed}"),
        "/console/failures".to_owned(),
        "/console/costs?from=2026-11-01&to=2026-12-01".to_owned(),
        "/console/keys".to_owned(),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        let overflow = c
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await
            .unwrap()
            .as_i64()
            .unwrap();
        let culprits = c
            .execute(
                "var w = document.documentElement.clientWidth; return Array.from(document.querySelectorAll('body *')).filter(function (e) { return e.getBoundingClientRect().right > w + 1 && !e.closest('.scroll'); }).slice(0, 5).map(function (e) { return e.tagName + '.' + e.className + '#' + e.id; }).join(' ');",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow <= 0,
            "{path} scrolls sideways by {overflow} px at 360 px: {culprits}"
        );
    }

    c.close().await.unwrap();
    drop(driver);
    s.stop().await;
}
on_both_backends!(the_console_works_in_a_real_browser);
