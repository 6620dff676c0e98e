//! The `tuma` binary as a user runs it: send, drain, show; bad configuration;
//! and a worker killed with SIGKILL mid-run, then restarted.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::on_both_backends;
use crate::support::*;

fn tuma(config: &Path, database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tuma"));
    cmd.env("TUMA_CONFIG", config)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn");
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("run tuma");
    assert!(
        out.status.success(),
        "tuma failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn send_drain_and_show_from_the_command_line(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (config, _) = write_config(db.path(), 6);
    let id = run_ok(tuma(&config, &db.url).args([
        "send",
        "otp",
        "--to",
        "0711000001",
        "--code",
        "123456",
    ]));
    let id = id.trim();
    assert_eq!(id.len(), 36, "the id alone on stdout: {id:?}");
    run_ok(tuma(&config, &db.url).args(["worker", "--drain"]));

    let shown = run_ok(tuma(&config, &db.url).args(["deliveries", "show", id]));
    assert!(shown.contains("status     sent"), "{shown}");
    let json: serde_json::Value = serde_json::from_str(&run_ok(tuma(&config, &db.url).args([
        "deliveries",
        "show",
        id,
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(json["status"], "sent");
    assert_eq!(json["kind"], "otp");
    assert_eq!(json["channel"], "sms");
    assert_eq!(json["recipient"], "+254711000001");
    assert_eq!(json["provider"], "primary");
    // One shape with the HTTP API: attempts are a list, the count beside it.
    assert_eq!(json["attempt_count"], 1);
    // The outbox says no cost: the price table's estimate is recorded, flagged.
    assert_eq!(
        json["cost"],
        serde_json::json!({"amount": "0.80", "currency": "KES", "estimate": true})
    );
    assert_eq!(json["attempts"][0]["reason"], "primary");
    assert_eq!(json["segments"], 1);
    assert_eq!(json["attempts"][0]["outcome"], "accepted");
    assert_eq!(json["attempts"][0]["cost"]["amount"], "0.80");
    assert_eq!(json["receipts"], serde_json::json!([]));
    assert_eq!(json["replays"], serde_json::json!([]));
    assert_eq!(json["replay_of"], serde_json::Value::Null);
    assert!(
        !json.to_string().contains("123456"),
        "the code leaked into JSON"
    );
    let file = db.path().join("outbox").join(format!("{id}.json"));
    assert!(std::fs::read_to_string(file).unwrap().contains("123456"));

    let note = run_ok(tuma(&config, &db.url).args([
        "send",
        "notification",
        "--to",
        "amina@example.org",
        "--template",
        "welcome",
        "--var",
        "name=Amina",
        "--locale",
        "sw",
        "--format",
        "json",
    ]));
    let note: serde_json::Value = serde_json::from_str(&note).unwrap();
    assert_eq!(note["status"], "pending");
    assert_eq!(note["subject"], "Karibu tuma, Amina");

    let csv = run_ok(tuma(&config, &db.url).args([
        "deliveries",
        "list",
        "--status",
        "sent",
        "--format",
        "csv",
    ]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("id,kind,channel,recipient,status"));
    assert!(lines[1].starts_with(id));
    let pending = run_ok(tuma(&config, &db.url).args([
        "deliveries",
        "list",
        "--channel",
        "email",
        "--format",
        "json",
    ]));
    let pending: serde_json::Value = serde_json::from_str(&pending).unwrap();
    assert_eq!(pending.as_array().unwrap().len(), 1);
}
on_both_backends!(send_drain_and_show_from_the_command_line);

#[test]
fn bad_input_on_the_command_line_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path(), 6);
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let out = tuma(&config, &url)
        .args(["send", "otp", "--to", "0711", "--code", "123456"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("to:") && err.contains("not a valid phone number"),
        "{err}"
    );
    let out = tuma(&config, &url)
        .args(["deliveries", "show", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no delivery has id nope"));
}

#[test]
fn a_bad_configuration_is_refused_before_the_database_is_touched() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[retry]\nmax_attempts = 6\nbogus = 1\n",
            "bogus",
            "unknown field",
        ),
        (
            "[[provider]]\nname = \"x\"\nkind = \"carrier-pigeon\"\n",
            "provider[x].kind",
            "unknown provider kind `carrier-pigeon`",
        ),
        (
            "[[provider]]\nname = \"x\"\nkind = \"outbox\"\ndir = \"o\"\ncolour = \"red\"\n",
            "provider[x].colour",
            "unknown field",
        ),
        (
            "[[provider]]\nname = \"x\"\nkind = \"outbox\"\ndir = \"o\"\n[[route]]\nchannel = \"sms\"\nproviders = [\"twilio\"]\n",
            "route[0].providers",
            "no provider is named `twilio`",
        ),
        (
            "[retry]\ninitial_delay = \"soon\"\n",
            "retry.initial_delay",
            "is not a duration",
        ),
        (
            "[otp]\ndefault_region = \"XX\"\n",
            "otp.default_region",
            "XX",
        ),
        (
            "[[provider]]\nname = \"x\"\nkind = \"outbox\"\ndir = \"o\"\n[[route]]\nchannel = \"fax\"\nproviders = [\"x\"]\n",
            "route[0].channel",
            "unknown channel `fax`",
        ),
        (
            "[[provider]]\nname = \"x\"\nkind = \"outbox\"\ndir = \"o\"\n[[route]]\nchannel = \"sms\"\nprefix = \"254\"\nproviders = [\"x\"]\n",
            "route[0].prefix",
            "not an E.164 prefix",
        ),
    ];
    for (text, key, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("providers.toml");
        std::fs::write(&config, text).unwrap();
        let db = dir.path().join("t.db");
        let out = tuma(&config, &format!("sqlite://{}", db.display()))
            .arg("migrate")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(err.contains("providers.toml"), "names the file: {err}");
        assert!(err.contains(key), "names `{key}`: {err}");
        assert!(err.contains(reason), "says `{reason}`: {err}");
        assert!(!db.exists(), "the database was touched for {text}");
    }
    // A missing file says how to point at one.
    let out = tuma(Path::new("/nonexistent/providers.toml"), "sqlite://x.db")
        .arg("check")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("TUMA_CONFIG"));
}

#[test]
fn the_shipped_configuration_checks_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_tuma"))
            .current_dir(root)
            .env_remove("TUMA_CONFIG")
            .arg("check"),
    );
    for line in [
        "otp          en   gsm7",
        "otp          sw   gsm7",
        "welcome      en   gsm7",
    ] {
        assert!(out.contains(line), "{out}");
    }
    assert!(
        !out.contains("2 segments"),
        "every shipped SMS template fits one segment: {out}"
    );
}

async fn a_worker_killed_mid_run_finishes_every_delivery_after_a_restart(backend: Backend) {
    const N: usize = 40;
    let db = TestDb::new(backend).await;
    let (config, _) = write_config(db.path(), 6);
    // A slow outbox (100 ms a message, 4 at a time) so the kill lands mid-run.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("timeout = \"2s\"", "timeout = \"2s\"\nlatency = \"100ms\"")
        .replace("[worker]", "[worker]\nnotification_concurrency = 4");
    std::fs::write(&config, text).unwrap();

    let store = db.connect().await;
    let app = tuma::app::App::new(tuma::config::Config::load(&config).unwrap(), store).unwrap();
    let mut ids = Vec::new();
    for i in 0..N {
        let d = app
            .enqueue_notification(tuma::intake::NotificationRequest {
                to: format!("+2547110001{i:02}"),
                template: "welcome".into(),
                locale: None,
                vars: serde_json::Map::from_iter([("name".to_owned(), serde_json::json!("Amina"))]),
                send_at: None,
                expires: None,
            })
            .await
            .unwrap();
        ids.push(d.row.id);
    }

    let outbox = db.path().join("outbox");
    let mut child = tuma(&config, &db.url)
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let written = std::fs::read_dir(&outbox).map(|d| d.count()).unwrap_or(0);
        if written >= 8 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let unfinished = app
        .db
        .list_deliveries(&tuma::store::ListFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .filter(|d| d.status.is_sendable())
        .count();
    assert!(unfinished > 0, "the kill came too late to test anything");

    run_ok(tuma(&config, &db.url).args(["worker", "--drain", "--timeout", "60s"]));

    for id in &ids {
        let d = app.db.delivery(id).await.unwrap().unwrap();
        assert_eq!(
            d.status,
            tuma::domain::DeliveryStatus::Sent,
            "{id}: {:?}",
            d.row.last_error
        );
        // Interrupted sends were retried on the route's next provider.
        let file = format!("{id}.json");
        assert!(
            outbox.join(&file).exists() || db.path().join("outbox-backup").join(&file).exists()
        );
    }
    assert_eq!(leased_rows(&app.db).await, 0);
}
on_both_backends!(a_worker_killed_mid_run_finishes_every_delivery_after_a_restart);

#[test]
fn a_provider_can_be_tried_directly_or_shown_as_a_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path(), 6);
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let shown = run_ok(tuma(&config, &url).args([
        "providers",
        "test",
        "primary",
        "--to",
        "0711000001",
        "--dry-run",
    ]));
    assert!(shown.contains("\"to\": \"+254711000001\""), "{shown}");
    assert!(
        shown.contains("Test message from tuma via primary."),
        "{shown}"
    );
    assert!(
        !dir.path().join("outbox").read_dir().unwrap().any(|_| true),
        "a dry run writes nothing"
    );

    let sent = run_ok(tuma(&config, &url).args([
        "providers",
        "test",
        "backup",
        "--to",
        "amina@example.org",
    ]));
    assert!(sent.starts_with("accepted by backup"), "{sent}");
    assert_eq!(
        dir.path().join("outbox-backup").read_dir().unwrap().count(),
        1
    );
    assert!(!dir.path().join("t.db").exists(), "nothing is recorded");

    let out = tuma(&config, &url)
        .args(["providers", "test", "nope", "--to", "0711000001"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no provider is named `nope` (configured: primary, backup)")
    );
}

/// The shipped providers.toml with every `#:` example switched on.
fn shipped_config_with_examples(dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("providers.toml")).unwrap();
    let enabled: String = text
        .lines()
        .map(|l| l.strip_prefix("#: ").or(l.strip_prefix("#:")).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "dir = \"templates\"",
            &format!("dir = \"{}\"", templates_dir().display()),
        );
    let file = dir.join("providers.toml");
    std::fs::write(&file, enabled).unwrap();
    file
}

#[test]
fn the_commented_examples_in_the_shipped_configuration_parse() {
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_config_with_examples(dir.path());
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let secrets = [
        ("SMTP_PASSWORD", "smtp-secret-1"),
        ("AT_API_KEY", "at-secret-2"),
        ("TWILIO_AUTH_TOKEN", "twilio-secret-3"),
        (
            "AT_CALLBACK_SECRET",
            "at-callback-secret-4-0123456789abcdef",
        ),
        ("VONAGE_API_SECRET", "vonage-secret-5"),
    ];
    let out = run_ok(tuma(&config, &url).envs(secrets).arg("check"));
    for expected in [
        "smtp             smtp",
        "africastalking   africastalking",
        "twilio           twilio",
        "vonage           vonage",
        "+254       africastalking -> twilio",
        "twilio           +1       USD 0.0079 per segment",
        "circuit breaker: 5 transient failures in a row",
    ] {
        assert!(out.contains(expected), "`{expected}` missing from:\n{out}");
    }
    for (_, secret) in secrets {
        assert!(!out.contains(secret), "a secret was printed");
    }

    // An unset secret is named, with its key, before anything else happens.
    let out = tuma(&config, &url)
        .envs(secrets.iter().filter(|(k, _)| *k != "AT_API_KEY").copied())
        .env_remove("AT_API_KEY")
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("provider[africastalking].api_key_env"),
        "{err}"
    );
    assert!(
        err.contains("environment variable AT_API_KEY is not set"),
        "{err}"
    );
}

#[test]
fn read_only_commands_run_without_provider_secrets_and_sending_ones_name_the_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_config_with_examples(dir.path());
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let without_secrets = |args: &[&str]| {
        let mut cmd = tuma(&config, &url);
        for var in [
            "SMTP_PASSWORD",
            "AT_API_KEY",
            "TWILIO_AUTH_TOKEN",
            "AT_CALLBACK_SECRET",
            "VONAGE_API_SECRET",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args);
        cmd
    };
    run_ok(&mut without_secrets(&["migrate"]));
    run_ok(&mut without_secrets(&["report", "costs", "--since", "30d"]));
    run_ok(&mut without_secrets(&["deliveries", "list"]));
    run_ok(&mut without_secrets(&["keys", "list"]));
    // `send` only enqueues; a worker, which has the secrets, delivers.
    let id = run_ok(&mut without_secrets(&[
        "send",
        "otp",
        "--to",
        "0711000001",
        "--code",
        "123456",
    ]));
    assert_eq!(id.trim().len(), 36, "{id}");
    for args in [
        &["worker", "--drain"][..],
        &["check"][..],
        &[
            "providers",
            "test",
            "twilio",
            "--to",
            "+15005550006",
            "--dry-run",
        ][..],
    ] {
        let out = without_secrets(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} ran without secrets");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("provider[smtp].password_env"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("environment variable SMTP_PASSWORD is not set"),
            "{args:?}: {err}"
        );
    }
}

async fn a_rotated_key_works_until_its_grace_ends_and_a_revoked_name_can_be_used_again(
    backend: Backend,
) {
    let s = spawn_app(backend).await;
    let config = s.t.db.path().join("providers.toml");
    let url = s.t.db.url.clone();
    let status = |key: String| {
        let s = &s;
        async move { s.get("/v1/deliveries", &key).await.status().as_u16() }
    };
    let old = s.key("billing", &["read"]).await;
    assert_eq!(status(old.clone()).await, 200);

    let out = tuma(&config, &url)
        .args(["keys", "create", "--name", "billing", "--scope", "read"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second live key named billing");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tuma keys rotate billing"));

    let new = run_ok(tuma(&config, &url).args(["keys", "rotate", "billing", "--grace", "1h"]));
    let new = new.trim().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        status(old.clone()).await,
        200,
        "the old key works in its grace"
    );
    assert_eq!(status(new.clone()).await, 200, "the new key works at once");
    let list = run_ok(tuma(&config, &url).args(["keys", "list"]));
    assert!(list.contains("WORKS UNTIL"), "{list}");
    let rows: Vec<&str> = list.lines().filter(|l| l.starts_with("billing")).collect();
    assert_eq!(rows.len(), 2, "{list}");
    let until = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%d %H:")
        .to_string();
    assert!(
        rows.iter().any(|r| r.contains(&until)),
        "grace end shown: {list}"
    );

    // The CLI's grace starts at the real time, a little after the app's clock.
    s.t.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(status(old.clone()).await, 401, "the grace is over");
    assert_eq!(status(new.clone()).await, 200);

    run_ok(tuma(&config, &url).args(["keys", "revoke", "billing"]));
    assert_eq!(status(new.clone()).await, 401);
    let again = run_ok(
        tuma(&config, &url).args(["keys", "create", "--name", "billing", "--scope", "read"]),
    );
    assert_eq!(
        status(again.trim().to_owned()).await,
        200,
        "the name is free again"
    );
    assert_eq!(status(old).await, 401);
    assert_eq!(status(new).await, 401);
    let out = tuma(&config, &url)
        .args(["keys", "rotate", "nobody"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no live key is named `nobody`"));
}
on_both_backends!(a_rotated_key_works_until_its_grace_ends_and_a_revoked_name_can_be_used_again);

async fn an_unknown_provider_filter_is_refused_listing_the_configured_ones(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (config, _) = write_config(db.path(), 6);
    run_ok(tuma(&config, &db.url).arg("migrate"));
    // A provider since removed from the file, still in the history.
    let store = db.connect().await;
    let retired = seed(
        &store,
        Seed::notification(
            "2026-11-30T10:00:00Z",
            "+254711000009",
            "retired",
            SeedEnd::Failed(tuma::store::Outcome::Transient, Some("E1")),
        ),
    )
    .await;
    store.close().await;
    for args in [
        &["deliveries", "list", "--provider", "twillio"][..],
        &["replay", "--provider", "twillio", "--dry-run"][..],
    ] {
        let out = tuma(&config, &db.url).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} matched nothing silently");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no provider is named `twillio`")
                && err.contains("(configured: primary, backup)"),
            "{args:?}: {err}"
        );
    }
    let listed = run_ok(tuma(&config, &db.url).args([
        "deliveries",
        "list",
        "--provider",
        "retired",
        "--format",
        "csv",
    ]));
    assert!(listed.contains(&retired), "{listed}");
    run_ok(tuma(&config, &db.url).args(["deliveries", "list", "--provider", "backup"]));
    let plan = run_ok(tuma(&config, &db.url).args([
        "replay",
        "--provider",
        "retired",
        "--dry-run",
        "--since",
        "3650d",
    ]));
    assert!(plan.contains("dry run"), "{plan}");
}
on_both_backends!(an_unknown_provider_filter_is_refused_listing_the_configured_ones);

async fn deliveries_list_in_csv_and_json_carries_the_latest_error_code(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (config, _) = write_config(db.path(), 6);
    run_ok(tuma(&config, &db.url).arg("migrate"));
    let store = db.connect().await;
    let failed = seed(
        &store,
        Seed::notification(
            "2026-11-30T10:00:00Z",
            "+254711000009",
            "primary",
            SeedEnd::Failed(tuma::store::Outcome::Permanent, Some("21211")),
        ),
    )
    .await;
    let sent = seed(
        &store,
        Seed::notification(
            "2026-11-30T11:00:00Z",
            "+254711000008",
            "primary",
            SeedEnd::Sent(None),
        ),
    )
    .await;
    store.close().await;

    let csv = run_ok(tuma(&config, &db.url).args(["deliveries", "list", "--format", "csv"]));
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = header
        .iter()
        .position(|h| *h == "error_code")
        .expect("error_code column");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let row = |id: &str| rows.iter().find(|r| r[0] == id).unwrap().clone();
    assert_eq!(row(&failed)[column], "21211", "{csv}");
    assert_eq!(row(&sent)[column], "", "{csv}");

    let json: serde_json::Value = serde_json::from_str(&run_ok(tuma(&config, &db.url).args([
        "deliveries",
        "list",
        "--format",
        "json",
    ])))
    .unwrap();
    let by_id = |id: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&failed)["error_code"], "21211");
    assert_eq!(by_id(&sent)["error_code"], serde_json::Value::Null);
}
on_both_backends!(deliveries_list_in_csv_and_json_carries_the_latest_error_code);

#[test]
fn a_closed_stdout_ends_every_short_command_quietly_and_logs_are_not_coloured_in_a_pipe() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path(), 6);
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    run_ok(tuma(&config, &url).args(["send", "otp", "--to", "0711000001", "--code", "123456"]));
    for args in [
        &["deliveries", "list", "--format", "json"][..],
        &["deliveries", "list"][..],
        &["check"][..],
        &["keys", "list"][..],
        &["report", "costs"][..],
    ] {
        let mut child = tuma(&config, &url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before tuma writes, as `| head` does.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {err}");
    }

    // Logs into a pipe carry no colour codes.
    let out = tuma(&config, &url)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .args(["worker", "--drain"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.is_empty(), "the worker logged something");
    assert!(!err.contains('\u{1b}'), "ANSI codes in a pipe: {err:?}");
}

/// A copy of the shipped templates in `dir/templates`, changed by `change`,
/// and a configuration using it: the configuration file.
fn config_with_templates(dir: &Path, change: impl Fn(&Path)) -> std::path::PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let templates = dir.join("templates");
    let _ = std::fs::remove_dir_all(&templates);
    copy(&templates_dir(), &templates);
    change(&templates);
    let text = config_text(dir, 6).replace(
        &templates_dir().display().to_string(),
        &templates.display().to_string(),
    );
    let file = dir.join("providers.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_serve_refuse_the_same_bad_templates_and_accept_the_same_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let url = format!("sqlite://{}", db.display());
    fn write(file: &'static str, text: &'static str) -> impl Fn(&Path) {
        move |t: &Path| {
            let path = t.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }
    fn remove(file: &'static str) -> impl Fn(&Path) {
        move |t: &Path| std::fs::remove_file(t.join(file)).unwrap()
    }
    type Change = Box<dyn Fn(&Path)>;
    let bad: Vec<(&str, Change, &str)> = vec![
        (
            "a locale missing one channel",
            Box::new(|t: &Path| {
                for part in ["email.subject.txt", "email.txt", "email.html"] {
                    std::fs::remove_file(t.join("welcome/sw").join(part)).unwrap();
                }
            }),
            "welcome: is sent by email in en but not in sw",
        ),
        (
            "an email without its subject",
            Box::new(remove("welcome/en/email.subject.txt")),
            "welcome/en: an email needs email.subject.txt and email.txt, and email.subject.txt is missing",
        ),
        (
            "no default locale",
            Box::new(|t: &Path| std::fs::remove_dir_all(t.join("welcome/en")).unwrap()),
            "welcome: has no locale `en` (templates.default_locale)",
        ),
        (
            "a filter that does not exist",
            Box::new(write("welcome/sw/sms.txt", "Karibu {{ name | shout }}")),
            "welcome/sw/sms.txt: unknown filter",
        ),
        (
            "a part that does not parse",
            Box::new(write("welcome/en/sms.txt", "Welcome {{ name ")),
            "welcome/en/sms.txt: syntax error",
        ),
        (
            "a locale folder with no template in it",
            Box::new(write("welcome/fr/sms.text", "Bienvenue {{ name }}")),
            "welcome/fr: holds none of sms.txt",
        ),
    ];
    for (what, change, problem) in &bad {
        let config = config_with_templates(dir.path(), change);
        for args in [&["check"][..], &["serve", "--listen", "127.0.0.1:0"][..]] {
            let out = tuma_command(&config, &url)
                .args(args)
                .output()
                .await
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} accepted {what}");
            assert!(
                err.contains("providers.toml: templates.dir: ") && err.contains(problem),
                "{args:?} with {what}: {err}"
            );
            assert!(!db.exists(), "{args:?} with {what} touched the database");
        }
    }

    // A template whose variables the samples lack is fine for both: `check`
    // says its length depends on them, and `serve` starts.
    let config = config_with_templates(dir.path(), |t: &Path| {
        write(
            "invoice/en/sms.txt",
            "Invoice {{ number }}: {{ amount }} due",
        )(t);
        write("invoice/sw/sms.txt", "Ankara {{ number }}: {{ amount }}")(t);
    });
    let checked = tuma_ok(tuma_command(&config, &url).arg("check")).await;
    assert!(
        checked.contains("invoice      en   not counted: its length depends on `amount`"),
        "{checked}"
    );
    let (serve, _) =
        spawn_serve(tuma_command(&config, &url).args(["serve", "--listen", "127.0.0.1:0"])).await;
    stop_child(serve).await;
}

#[test]
fn the_database_pool_size_is_validated_naming_the_key_and_defaults_to_what_tuma_always_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.toml");
    let base = config_text(dir.path(), 6);
    let load = |extra: &str| {
        std::fs::write(&path, format!("{base}\n{extra}\n")).unwrap();
        tuma::config::Config::load(&path)
    };
    let pg = "postgres://tuma@db/tuma";
    let sqlite = "sqlite://tuma.db";
    // The defaults: a connection per worker slot up to 16, and six more, on
    // Postgres (22 with the default [worker]); four on SQLite.
    let c = load("").unwrap();
    assert_eq!(c.database.max_connections, None);
    assert_eq!(tuma::app::App::pool_size(&c, sqlite), 4);
    assert_eq!(tuma::app::App::pool_size(&c, pg), 22);
    let c = load("[database]\nmax_connections = 3\n").unwrap();
    assert_eq!(tuma::app::App::pool_size(&c, pg), 3);
    assert_eq!(tuma::app::App::pool_size(&c, sqlite), 3);
    assert!(load("[database]\nmax_connections = 1000\n").is_ok());
    for (extra, reason) in [
        ("max_connections = 2", "2 is below the minimum 3"),
        ("max_connections = 0", "0 is below the minimum 3"),
        ("max_connections = 1001", "1001 is above the maximum 1000"),
        ("max_connection = 10", "unknown field `max_connection`"),
    ] {
        let e = load(&format!("[database]\n{extra}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("providers.toml: "), "{extra}: {e}");
        if !extra.starts_with("max_connection ") {
            assert!(e.contains("database.max_connections: "), "{extra}: {e}");
        }
        assert!(e.contains(reason), "{extra}: {e}");
    }
    // As every configuration error: before the database is touched.
    let db = dir.path().join("t.db");
    std::fs::write(&path, format!("{base}\n[database]\nmax_connections = 2\n")).unwrap();
    let out = tuma(&path, &format!("sqlite://{}", db.display()))
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.max_connections"));
    assert!(!db.exists());
}

/// The backends of the process connected as `application_name` to the
/// database of `admin` (a connection of the test's own).
async fn backends_of(admin: &mut sqlx::PgConnection, application_name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(application_name)
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_max_connections_3_never_holds_more_than_3_postgres_connections() {
    use sqlx::Connection;
    if postgres_admin_url().is_none() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let path = db.path().join("providers.toml");
    // A request waits at most 2 s on the database, for a connection or a lock.
    let text = format!(
        "{}\n[database]\nmax_connections = 3\n\n[api]\nrequest_timeout = \"2s\"\n",
        config_text(db.path(), 6)
    );
    std::fs::write(&path, text).unwrap();
    let key = tuma_ok(tuma_command(&path, &db.url).args([
        "keys", "create", "--name", "pool", "--scope", "send", "--scope", "read",
    ]))
    .await;
    let key = key.trim().to_owned();
    // The serving process, and only it, connects under this name.
    let name = "tuma-pool-under-test";
    let url = format!("{}?application_name={name}", db.url);
    let (serve, base) =
        spawn_serve(tuma_command(&path, &url).args(["serve", "--listen", "127.0.0.1:0"])).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();

    // Work: sends through the API, delivered by its workers.
    let mut ids = Vec::new();
    for i in 0..20 {
        let answer = client
            .post(format!("{base}/v1/notifications"))
            .bearer_auth(&key)
            .json(&serde_json::json!({
                "to": format!("amina+{i}@example.org"),
                "template": "welcome",
                "vars": {"name": "Amina"},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
        let body: serde_json::Value = answer.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let started = Instant::now();
    for id in &ids {
        loop {
            let d: serde_json::Value = client
                .get(format!("{base}/v1/deliveries/{id}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if d["status"] == "sent" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "not sent: {d}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(backends_of(&mut admin, name).await <= 3);

    // A jam: every statement on `deliveries` waits behind the test's lock,
    // and twelve requests each want a connection for one. Each answers 503
    // after waiting its 2 s, for the lock or for a connection; by then each
    // has had every chance to open one, and a pool of 22 would hold twelve.
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let answers = futures::future::join_all((0..12).map(|i| {
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        async move {
            client
                .get(format!("{base}/v1/deliveries/{}", ids_or(i)))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 503), "{answers:?}");
    let mut counter = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let held = backends_of(&mut counter, name).await;
    assert_eq!(
        held, 3,
        "the process holds {held} connections; it may hold 3"
    );
    lock.rollback().await.unwrap();

    // The jam over, the same three serve as before.
    let d = client
        .get(format!("{base}/v1/deliveries/{}", ids[0]))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 200);
    assert!(backends_of(&mut counter, name).await <= 3);
    stop_child(serve).await;
}

/// A delivery id no delivery has: the lookup runs, and finds nothing.
fn ids_or(i: usize) -> String {
    format!("00000000-0000-7000-8000-{i:012}")
}

async fn send_notification_takes_its_own_deadline_from_ttl_or_expires_at(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (config, _) = write_config(db.path(), 6);
    let send = |extra: &[&str]| {
        let mut cmd = tuma(&config, &db.url);
        cmd.args([
            "send",
            "notification",
            "--to",
            "+254711000720",
            "--template",
            "welcome",
            "--var",
            "name=Amina",
            "--format",
            "json",
        ])
        .args(extra);
        cmd
    };
    let expiry = |json: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(json["expires_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let before = chrono::Utc::now();
    let by_ttl: serde_json::Value =
        serde_json::from_str(&run_ok(&mut send(&["--ttl", "1m"]))).unwrap();
    let after = chrono::Utc::now();
    let at = expiry(&by_ttl);
    assert!(
        at >= before + chrono::Duration::seconds(60) && at <= after + chrono::Duration::seconds(60),
        "{by_ttl}"
    );
    let until = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let by_time: serde_json::Value =
        serde_json::from_str(&run_ok(&mut send(&["--expires-at", &until]))).unwrap();
    assert_eq!(
        expiry(&by_time),
        chrono::DateTime::parse_from_rfc3339(&until).unwrap()
    );
    let shown = run_ok(tuma(&config, &db.url).args([
        "deliveries",
        "show",
        by_time["id"].as_str().unwrap(),
    ]));
    assert!(shown.contains("expires    "), "{shown}");

    let past = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    for (extra, says) in [
        (&["--expires-at", past.as_str()][..], "expires_at: "),
        (&["--expires-at", past.as_str()][..], "is not in the future"),
        (&["--ttl", "10s"][..], "10s is below the minimum 30s"),
        (&["--ttl", "40d"][..], "is above the maximum"),
        (
            &["--ttl", "1m", "--expires-at", until.as_str()][..],
            "cannot be used with",
        ),
    ] {
        let out = send(extra).output().unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{extra:?}: {err}");
    }

    // A file: each row gets the deadline.
    let csv = db.path().join("rows.csv");
    std::fs::write(&csv, "to,name\n+254711000721,Juma\n+254711000722,Neema\n").unwrap();
    let summary = run_ok(tuma(&config, &db.url).args([
        "send",
        "notification",
        "--csv",
        csv.to_str().unwrap(),
        "--template",
        "welcome",
        "--ttl",
        "2h",
    ]));
    assert!(summary.starts_with("accepted 2, refused 0"), "{summary}");
    let listed: serde_json::Value = serde_json::from_str(&run_ok(tuma(&config, &db.url).args([
        "deliveries",
        "list",
        "--format",
        "json",
    ])))
    .unwrap();
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{listed}");
    assert!(rows.iter().all(|d| d["expires_at"].is_string()), "{listed}");

    // In time, they are sent.
    run_ok(tuma(&config, &db.url).args(["worker", "--drain"]));
    let listed: serde_json::Value = serde_json::from_str(&run_ok(tuma(&config, &db.url).args([
        "deliveries",
        "list",
        "--status",
        "sent",
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
}
on_both_backends!(send_notification_takes_its_own_deadline_from_ttl_or_expires_at);
