//! The calling service's contract on the command line: `tuma openapi`,
//! `deliveries list --to`, `deliveries cancel`, `send notification --at`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::on_both_backends;
use crate::support::*;

fn tuma(config: &Path, database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tuma"));
    cmd.env("TUMA_CONFIG", config)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn");
    cmd
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run tuma");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn tuma_openapi_prints_the_document_the_server_serves() {
    let db = tempfile::tempdir().unwrap();
    let (config, _) = write_config(db.path(), 6);
    let (ok, out, err) = run(tuma(&config, "sqlite://unused.db").arg("openapi"));
    assert!(ok, "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed, tuma::api::openapi::document());
    assert_eq!(printed["openapi"], "3.1.0");
    assert!(printed["paths"]["/v1/deliveries/{id}/cancel"]["post"].is_object());
}

async fn deliveries_are_found_by_recipient_scheduled_and_canceled(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (config, _) = write_config(db.path(), 6);
    let send = |to: &str, at: Option<&str>| {
        let mut cmd = tuma(&config, &db.url);
        cmd.args([
            "send",
            "notification",
            "--to",
            to,
            "--template",
            "welcome",
            "--var",
            "name=Amina",
        ]);
        if let Some(at) = at {
            cmd.args(["--at", at]);
        }
        let (ok, out, err) = run(&mut cmd);
        assert!(ok, "{err}");
        out.trim().to_owned()
    };
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let scheduled = send("0711000001", Some(&later));
    let email = send("Amina@Example.org", None);
    send("+254711000002", None);

    // By recipient, read as a send reads `to`.
    let list = |to: &str| {
        let (ok, out, err) = run(tuma(&config, &db.url).args([
            "deliveries",
            "list",
            "--to",
            to,
            "--format",
            "json",
        ]));
        assert!(ok, "{err}");
        serde_json::from_str::<Vec<Value>>(&out).unwrap()
    };
    let found = list("+254 711 000 001");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], scheduled.as_str());
    assert_eq!(found[0]["attempts"], serde_json::json!([]));
    assert_eq!(list("AMINA@example.ORG")[0]["id"], email.as_str());
    let (ok, _, err) = run(tuma(&config, &db.url).args(["deliveries", "list", "--to", "nobody"]));
    assert!(!ok);
    assert!(err.contains("--to"), "{err}");

    // --at schedules it.
    let (_, out, _) =
        run(tuma(&config, &db.url).args(["deliveries", "show", &scheduled, "--format", "json"]));
    let shown: Value = serde_json::from_str(&out).unwrap();
    let due =
        chrono::DateTime::parse_from_rfc3339(shown["next_attempt_at"].as_str().unwrap()).unwrap();
    let want = chrono::DateTime::parse_from_rfc3339(&later).unwrap();
    assert!((due - want).num_seconds().abs() <= 1, "{due} vs {want}");

    // Cancel it; then it is too late, and a sent one is too.
    let (ok, out, err) = run(tuma(&config, &db.url).args(["deliveries", "cancel", &scheduled]));
    assert!(ok, "{err}");
    assert!(out.contains("canceled"), "{out}");
    let (ok, _, err) = run(tuma(&config, &db.url).args(["deliveries", "cancel", &scheduled]));
    assert!(!ok);
    assert!(err.contains("is canceled"), "{err}");
    let (ok, _, err) = run(tuma(&config, &db.url).args(["worker", "--drain"]));
    assert!(ok, "{err}");
    let (ok, _, err) = run(tuma(&config, &db.url).args(["deliveries", "cancel", &email]));
    assert!(!ok);
    assert!(err.contains("is sent"), "{err}");
    let found = list("0711000001");
    assert_eq!(found[0]["status"], "canceled");
    assert_eq!(found[0]["attempt_count"], 0);
}
on_both_backends!(deliveries_are_found_by_recipient_scheduled_and_canceled);

#[test]
fn readme_shows_the_typescript_examples_that_ci_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for path in [
        "examples/auth-service/src/send-otp.ts",
        "examples/auth-service/src/verify-webhook.ts",
    ] {
        let file = std::fs::read_to_string(root.join(path)).unwrap();
        let marker = format!("<!-- {path} -->\n```ts\n");
        let start = readme.find(&marker).expect("README marks the snippet") + marker.len();
        let end = start + readme[start..].find("```\n").unwrap();
        assert_eq!(
            &readme[start..end],
            file,
            "README's snippet differs from {path}"
        );
    }
}

async fn a_csv_file_sends_one_notification_per_row_and_names_refused_lines(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (config, _) = write_config(db.path(), 6);
    let file = db.path().join("customers.csv");
    std::fs::write(
        &file,
        "to,name\n0711000001,\"Wanjiru, A.\"\nnot-a-number,Juma\nAmina@Example.org,Amina\n",
    )
    .unwrap();
    let (ok, out, err) = run(tuma(&config, &db.url).args([
        "send",
        "notification",
        "--csv",
        file.to_str().unwrap(),
        "--template",
        "welcome",
    ]));
    assert!(ok, "{err}");
    assert!(out.starts_with("accepted 2, refused 1"), "{out}");
    assert!(err.contains("line 3: refused: to:"), "{err}");
    let (_, out, _) = run(tuma(&config, &db.url).args([
        "deliveries",
        "list",
        "--to",
        "+254711000001",
        "--format",
        "json",
    ]));
    let found: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["vars"]["name"], "Wanjiru, A.");
    assert!(found[0]["body"].as_str().unwrap().contains("Wanjiru, A."));
    let (_, out, _) = run(tuma(&config, &db.url).args(["deliveries", "list", "--format", "json"]));
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 2);

    std::fs::write(&file, "name\nAmina\n").unwrap();
    let (ok, _, err) = run(tuma(&config, &db.url).args([
        "send",
        "notification",
        "--csv",
        file.to_str().unwrap(),
        "--template",
        "welcome",
    ]));
    assert!(!ok);
    assert!(err.contains("no `to` column"), "{err}");
}
on_both_backends!(a_csv_file_sends_one_notification_per_row_and_names_refused_lines);

/// Rows sent so far, and how many distinct recipients they went to.
async fn sent_rows(db: &tuma::store::Db) -> (i64, i64) {
    (
        count(db, "SELECT COUNT(*) FROM deliveries").await,
        count(db, "SELECT COUNT(DISTINCT recipient) FROM deliveries").await,
    )
}

/// Starts `tuma send notification --csv` on `file` and waits until it has
/// sent at least `at_least` rows (the run is still going), then sends it
/// `signal` and waits for it to end.
async fn cut_short(
    db: &tuma::store::Db,
    config: &Path,
    url: &str,
    file: &Path,
    at_least: i64,
    signal: &str,
) -> std::process::Output {
    let child = tuma(config, url)
        .args(["send", "notification", "--csv", file.to_str().unwrap()])
        .args(["--template", "welcome", "--idempotency-column", "customer"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if sent_rows(db).await.0 >= at_least {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    child.wait_with_output().unwrap()
}

async fn a_csv_send_cut_short_by_ctrl_c_or_a_kill_resumes_and_sends_every_row_once(
    backend: Backend,
) {
    const ROWS: i64 = 3000;
    let test_db = TestDb::new(backend).await;
    let db = test_db.connect().await;
    let (config, _) = write_config(test_db.path(), 6);
    let file = test_db.path().join("customers.csv");
    let mut text = String::from("customer,to,name\n");
    for i in 0..ROWS {
        text.push_str(&format!("c-{i},+2547{:08},Customer {i}\n", 11_000_000 + i));
    }
    std::fs::write(&file, text).unwrap();

    // Ctrl-C: stops after the row in hand, with the summary and how to go on.
    let out = cut_short(&db, &config, &test_db.url, &file, 100, "-INT").await;
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(!out.status.success());
    assert!(stdout.starts_with("accepted "), "{stdout}");
    assert!(stderr.contains("run the same command again"), "{stderr}");
    let (after_interrupt, recipients) = sent_rows(&db).await;
    assert!(after_interrupt < ROWS, "the run ended before Ctrl-C");
    assert_eq!(recipients, after_interrupt);
    assert!(
        stdout.starts_with(&format!(
            "accepted {after_interrupt}, refused 0, already sent 0"
        )),
        "{stdout}"
    );

    // A kill -9 in the middle of the second run.
    let out = cut_short(
        &db,
        &config,
        &test_db.url,
        &file,
        after_interrupt + 100,
        "-KILL",
    )
    .await;
    assert!(!out.status.success());
    let (after_kill, recipients) = sent_rows(&db).await;
    assert!(after_kill < ROWS, "the run ended before the kill");
    assert_eq!(recipients, after_kill);

    // The third run sends the rest, and only the rest.
    let (ok, out, err) = run(tuma(&config, &test_db.url)
        .args(["send", "notification", "--csv", file.to_str().unwrap()])
        .args(["--template", "welcome", "--idempotency-column", "customer"]));
    assert!(ok, "{err}");
    // The killed run's last commit may land on the server after the count
    // above: at least that many were already sent.
    let figure = |label: &str| -> i64 {
        let at = out.find(label).unwrap_or_else(|| panic!("{out}")) + label.len();
        out[at..].split([',', ' ']).next().unwrap().parse().unwrap()
    };
    let (accepted, already) = (figure("accepted "), figure("already sent "));
    assert!(out.contains(", refused 0, "), "{out}");
    assert!(already >= after_kill, "{out}");
    assert_eq!(accepted + already, ROWS, "{out}");
    assert_eq!(sent_rows(&db).await, (ROWS, ROWS));
    // The customer column is the key, not a template variable.
    let vars: String = match &db {
        tuma::store::Db::Sqlite(pool) => sqlx::query_scalar("SELECT vars FROM deliveries LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap(),
        tuma::store::Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT vars FROM deliveries LIMIT 1")
                .fetch_one(pool)
                .await
                .unwrap()
        }
    };
    assert!(!vars.contains("customer"), "{vars}");

    // A file whose key column is missing, or a row without its key.
    let (ok, _, err) = run(tuma(&config, &test_db.url)
        .args(["send", "notification", "--csv", file.to_str().unwrap()])
        .args(["--template", "welcome", "--idempotency-column", "order"]));
    assert!(!ok);
    assert!(err.contains("--idempotency-column order"), "{err}");
    std::fs::write(&file, "idempotency_key,to,name\n,+254711000001,Amina\n").unwrap();
    let (ok, _, err) = run(tuma(&config, &test_db.url)
        .args(["send", "notification", "--csv", file.to_str().unwrap()])
        .args(["--template", "welcome"]));
    assert!(!ok);
    assert!(
        err.contains("line 2: refused: idempotency_key: is empty"),
        "{err}"
    );
    db.close().await;
}
on_both_backends!(a_csv_send_cut_short_by_ctrl_c_or_a_kill_resumes_and_sends_every_row_once);
