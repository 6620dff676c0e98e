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
    assert_eq!(json["attempts"], 1);
    // The outbox says no cost: the price table's estimate is recorded, flagged.
    assert_eq!(json["cost"], "0.80");
    assert_eq!(json["currency"], "KES");
    assert_eq!(json["cost_is_estimate"], true);
    assert_eq!(json["attempt_log"][0]["reason"], "primary");
    assert_eq!(json["segments"], 1);
    assert_eq!(json["attempt_log"][0]["outcome"], "accepted");
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
            "provider[0].kind",
            "unknown provider kind `carrier-pigeon`",
        ),
        (
            "[[provider]]\nname = \"x\"\nkind = \"outbox\"\ndir = \"o\"\ncolour = \"red\"\n",
            "provider[0].colour",
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
    assert_eq!(job_rows(&app.db).await, 0);
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
    ];
    let out = run_ok(tuma(&config, &url).envs(secrets).arg("check"));
    for expected in [
        "smtp             smtp",
        "africastalking   africastalking",
        "twilio           twilio",
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
    assert!(err.contains("provider[2].api_key_env"), "{err}");
    assert!(
        err.contains("environment variable AT_API_KEY is not set"),
        "{err}"
    );
}
