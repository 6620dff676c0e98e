//! OTP codes sealed at rest: no readable code in the database's files, its
//! WAL or its rows; key rotation; a wrong key; the key file; key settings.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tuma::app::App;
use tuma::clock::Clock;
use tuma::config::Config;
use tuma::domain::DeliveryStatus;
use tuma::intake::OtpRequest;
use tuma::providers::{Providers, unlimited};
use tuma::store::Db;

use crate::on_both_backends;
use crate::support::*;

fn otp(to: &str, code: &str) -> OtpRequest {
    OtpRequest {
        to: to.into(),
        code: code.into(),
        channel: None,
        locale: None,
        ttl: None,
    }
}

/// Whether `needle` occurs in `haystack`.
fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The test configuration with `otp_lines` in place of its `key_env` line.
fn config_with_keys(dir: &Path, otp_lines: &str) -> (std::path::PathBuf, Config) {
    let text = config_text(dir, 6).replace("key_env = \"TUMA_TEST_OTP_KEY\"\n", otp_lines);
    let path = dir.join("providers.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).expect("valid config");
    (path, config)
}

/// An app over `db` whose `[otp]` table holds `otp_lines`, with `primary`
/// answered by `provider`.
async fn app_with_keys(
    db: &TestDb,
    otp_lines: &str,
    provider: &Arc<Scripted>,
) -> Result<Arc<App>, tuma::app::StartError> {
    let (_, config) = config_with_keys(db.path(), otp_lines);
    let mut providers = Providers::from_config(&config).expect("providers");
    providers.insert(
        "primary",
        provider.clone(),
        unlimited(),
        Duration::from_secs(2),
    );
    let clock: Arc<dyn Clock> = Arc::new(tuma::clock::SystemClock);
    App::with_parts(config, db.connect().await, providers, clock).map(Arc::new)
}

/// Writes `sealed` into the row of `to`, as a hand-edit of the database would.
async fn copy_code(db: &Db, sealed: &str, to: &str) {
    let sql = "UPDATE deliveries SET otp_code = $1 WHERE id = $2";
    let copied = match db {
        Db::Sqlite(pool) => sqlx::query(sql)
            .bind(sealed)
            .bind(to)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        Db::Postgres(pool) => sqlx::query(sql)
            .bind(sealed)
            .bind(to)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    };
    assert_eq!(copied.unwrap(), 1);
}

async fn drain(app: &Arc<App>) {
    tuma::worker::drain(app.clone(), Duration::from_secs(60))
        .await
        .expect("drain");
}

/// `otp_code` of every OTP that still has one, as stored.
async fn stored_codes(db: &Db) -> Vec<(String, String)> {
    let sql = "SELECT id, otp_code FROM deliveries WHERE otp_code IS NOT NULL ORDER BY id";
    match db {
        Db::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
    }
}

/// Everything the database keeps on disk for `deliveries`: on SQLite the
/// database file and its WAL (which must exist: tuma runs in WAL mode); on
/// Postgres, after a checkpoint, the table's heap file (dead rows too) and
/// the WAL segments written since `since`.
async fn bytes_on_disk(t: &TestApp, since: chrono::DateTime<Utc>) -> Vec<(String, Vec<u8>)> {
    match &t.app.db {
        Db::Sqlite(_) => {
            let file = t.db.path().join("tuma.db");
            let wal = t.db.path().join("tuma.db-wal");
            assert!(wal.exists(), "SQLite keeps a WAL while open");
            vec![
                ("tuma.db".into(), std::fs::read(file).unwrap()),
                ("tuma.db-wal".into(), std::fs::read(wal).unwrap()),
            ]
        }
        Db::Postgres(pool) => {
            sqlx::query("CHECKPOINT").execute(pool).await.unwrap();
            let heap: Vec<u8> = sqlx::query_scalar(
                "SELECT pg_read_binary_file(pg_relation_filepath('deliveries'))",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            let mut files = vec![("deliveries heap".to_owned(), heap)];
            // A segment another test's checkpoint recycles meanwhile reads as NULL.
            let wal: Vec<(String, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT name, pg_read_binary_file('pg_wal/' || name, 0, size, true) \
                 FROM pg_ls_waldir() WHERE modification >= $1 AND name ~ '^[0-9A-F]{24}$'",
            )
            .bind(since - chrono::Duration::seconds(2))
            .fetch_all(pool)
            .await
            .unwrap();
            let wal: Vec<(String, Vec<u8>)> =
                wal.into_iter().filter_map(|(n, b)| Some((n, b?))).collect();
            assert!(!wal.is_empty(), "a WAL segment was written");
            files.extend(wal);
            files
        }
    }
}

async fn no_readable_otp_code_is_left_in_the_database_files_wal_or_rows(backend: Backend) {
    let started = Utc::now();
    let t = TestApp::new(backend, 6).await;
    // Sent ones (their code wiped), then pending ones (their code kept).
    let sent = ["8406153927", "7315904862", "6029481735"];
    let pending = ["5193062847", "4870251936"];
    let mut sent_ids = Vec::new();
    for (i, code) in sent.iter().enumerate() {
        let d = t
            .app
            .enqueue_otp(otp(&format!("+25471100060{i}"), code))
            .await
            .unwrap();
        sent_ids.push(d.row.id);
    }
    t.drain().await;
    for (id, code) in sent_ids.iter().zip(sent) {
        assert_eq!(t.delivery(id).await.status, DeliveryStatus::Sent);
        let file = t.db.path().join("outbox").join(format!("{id}.json"));
        let written = std::fs::read_to_string(file).unwrap();
        assert!(written.contains(code), "the right code was sent: {written}");
    }
    let mut pending_ids = Vec::new();
    for (i, code) in pending.iter().enumerate() {
        let d = t
            .app
            .enqueue_otp(otp(&format!("+25471100061{i}"), code))
            .await
            .unwrap();
        pending_ids.push(d.row.id);
    }

    // The rows: only the pending ones hold a code, sealed, bound to their id.
    let stored = stored_codes(&t.app.db).await;
    let mut ids: Vec<String> = stored.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    pending_ids.sort();
    assert_eq!(ids, pending_ids, "codes are kept only while pending");
    let other = tuma::secrets::OtpKeys::from_bytes(&[42; 32], None);
    for (id, value) in &stored {
        assert!(value.starts_with("v1."), "sealed: {value}");
        for code in pending.iter().chain(&sent) {
            assert!(!value.contains(code), "{id} holds a code: {value}");
        }
        assert!(other.open(id, value).is_err(), "opens without the key");
        let code = t.app.otp_keys.open(id, value).expect("opens with the key");
        assert!(pending.contains(&code.expose()));
        let elsewhere = stored.iter().find(|(i, _)| i != id).unwrap();
        assert!(
            t.app.otp_keys.open(&elsewhere.0, value).is_err(),
            "a sealed code copied to another row does not open"
        );
    }
    let text = all_database_text(&t.app.db).await;
    for code in pending.iter().chain(&sent) {
        assert!(!text.contains(code), "a table holds {code}");
    }

    // The bytes on disk.
    for (name, bytes) in bytes_on_disk(&t, started).await {
        for code in pending.iter().chain(&sent) {
            assert!(!holds(&bytes, code), "{name} holds the code {code}");
        }
    }
}
on_both_backends!(no_readable_otp_code_is_left_in_the_database_files_wal_or_rows);

async fn a_code_sealed_with_the_previous_key_is_still_sent_after_a_rotation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let provider = Scripted::new(new_clock(), vec![]);
    let before = app_with_keys(&db, "key_env = \"TUMA_TEST_OTP_OLD_KEY\"\n", &provider)
        .await
        .unwrap();
    let old = before
        .enqueue_otp(otp("+254711000620", "3141592653"))
        .await
        .unwrap();
    before.db.close().await;

    let after = app_with_keys(
        &db,
        "key_env = \"TUMA_TEST_OTP_KEY\"\nprevious_key_env = \"TUMA_TEST_OTP_OLD_KEY\"\n",
        &provider,
    )
    .await
    .unwrap();
    let new = after
        .enqueue_otp(otp("+254711000621", "2718281828"))
        .await
        .unwrap();
    // The new code is sealed with the new key: the old one alone cannot open it.
    let stored = stored_codes(&after.db).await;
    let new_sealed = &stored.iter().find(|(id, _)| *id == new.row.id).unwrap().1;
    assert!(before.otp_keys.open(&new.row.id, new_sealed).is_err());
    assert!(after.otp_keys.open(&new.row.id, new_sealed).is_ok());
    drain(&after).await;

    for (id, code) in [(&old.row.id, "3141592653"), (&new.row.id, "2718281828")] {
        let d = after.db.delivery(id).await.unwrap().unwrap();
        assert_eq!(d.status, DeliveryStatus::Sent, "{:?}", d.row.last_error);
        let call = provider
            .calls()
            .into_iter()
            .find(|c| c.delivery_id == *id)
            .expect("sent");
        assert!(call.text.contains(code), "{}", call.text);
    }
}
on_both_backends!(a_code_sealed_with_the_previous_key_is_still_sent_after_a_rotation);

async fn a_plain_code_written_before_codes_were_sealed_is_still_sent_and_then_wiped(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let provider = Scripted::new(new_clock(), vec![]);
    let app = app_with_keys(&db, "key_env = \"TUMA_TEST_OTP_KEY\"\n", &provider)
        .await
        .unwrap();
    let pending = app
        .enqueue_otp(otp("+254711000625", "5772156649"))
        .await
        .unwrap();
    // A row as an upgraded database holds it: the code in plain text.
    copy_code(&app.db, "5772156649", &pending.row.id).await;
    drain(&app).await;
    let d = app.db.delivery(&pending.row.id).await.unwrap().unwrap();
    assert_eq!(d.status, DeliveryStatus::Sent, "{:?}", d.row.last_error);
    let calls = provider.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].text.contains("5772156649"), "{}", calls[0].text);
    assert!(
        stored_codes(&app.db).await.is_empty(),
        "the code is wiped once sent"
    );
}
on_both_backends!(a_plain_code_written_before_codes_were_sealed_is_still_sent_and_then_wiped);

async fn a_code_that_does_not_open_with_the_key_fails_its_delivery_and_is_never_sent(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let provider = Scripted::new(new_clock(), vec![]);
    let first = app_with_keys(&db, "key_env = \"TUMA_TEST_OTP_KEY\"\n", &provider)
        .await
        .unwrap();
    let lost = first
        .enqueue_otp(otp("+254711000630", "1618033988"))
        .await
        .unwrap();
    // A sealed code copied into another delivery's row does not open there.
    let victim = first
        .enqueue_otp(otp("+254711000631", "1414213562"))
        .await
        .unwrap();
    let sealed = stored_codes(&first.db)
        .await
        .into_iter()
        .find(|(id, _)| *id == lost.row.id)
        .unwrap()
        .1;
    copy_code(&first.db, &sealed, &victim.row.id).await;
    first.db.close().await;

    // The key is lost: the worker has another one.
    let logs = captured_logs();
    let other = app_with_keys(&db, "key_env = \"TUMA_TEST_OTP_OTHER_KEY\"\n", &provider)
        .await
        .unwrap();
    drain(&other).await;
    assert!(provider.calls().is_empty(), "nothing was sent");
    for (id, reason) in [
        (&lost.row.id, "neither the current OTP key"),
        (&victim.row.id, "neither the current OTP key"),
    ] {
        let d = other.db.delivery(id).await.unwrap().unwrap();
        assert_eq!(d.status, DeliveryStatus::Failed);
        let error = d.row.last_error.unwrap_or_default();
        assert!(error.contains("cannot decrypt the code"), "{error}");
        assert!(error.contains(reason), "{error}");
    }
    assert!(stored_codes(&other.db).await.is_empty(), "codes wiped");
    other.db.close().await;

    // With the right key the copied code still does not open in its new row.
    let again = TestDb::new(backend).await;
    let right = app_with_keys(&again, "key_env = \"TUMA_TEST_OTP_KEY\"\n", &provider)
        .await
        .unwrap();
    let a = right
        .enqueue_otp(otp("+254711000632", "1732050807"))
        .await
        .unwrap();
    let b = right
        .enqueue_otp(otp("+254711000633", "2236067977"))
        .await
        .unwrap();
    let sealed_a = stored_codes(&right.db)
        .await
        .into_iter()
        .find(|(id, _)| *id == a.row.id)
        .unwrap()
        .1;
    copy_code(&right.db, &sealed_a, &b.row.id).await;
    drain(&right).await;
    let calls = provider.calls();
    assert_eq!(calls.len(), 1, "only a's own code was sent");
    assert_eq!(calls[0].delivery_id, a.row.id);
    let d = right.db.delivery(&b.row.id).await.unwrap().unwrap();
    assert_eq!(d.status, DeliveryStatus::Failed);
    let error = d.row.last_error.unwrap_or_default();
    assert!(
        error.contains("cannot decrypt the code") && error.contains("does not open"),
        "{error}"
    );

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for code in ["1618033988", "1414213562", "1732050807", "2236067977"] {
        assert!(!logs.contains(code), "a log line holds {code}");
    }
}
on_both_backends!(a_code_that_does_not_open_with_the_key_fails_its_delivery_and_is_never_sent);

fn tuma(config: &Path, database_url: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tuma"));
    cmd.env("TUMA_CONFIG", config)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn");
    cmd
}

fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().expect("run tuma");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_without_key_env_a_0600_key_file_beside_the_database_serves_every_command() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new(Backend::Sqlite).await;
    let (config, _) = config_with_keys(db.path(), "");
    let key_file = db.path().join("tuma.db.key");
    let (ok, id, err) = run(tuma(&config, &db.url).args([
        "send",
        "otp",
        "--to",
        "0711000640",
        "--code",
        "9081726354",
    ]));
    assert!(ok, "{err}");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is the owner's alone");
    let key = std::fs::read(&key_file).unwrap();
    // Another process, the worker, reads the same key and sends the code.
    let (ok, _, err) = run(tuma(&config, &db.url).args(["worker", "--drain"]));
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&key_file).unwrap(), key, "the key is kept");
    let outbox = db.path().join("outbox").join(format!("{}.json", id.trim()));
    assert!(
        std::fs::read_to_string(outbox)
            .unwrap()
            .contains("9081726354")
    );

    // A key file others may read is refused, naming the file and the fix.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (ok, _, err) = run(tuma(&config, &db.url).args([
        "send",
        "otp",
        "--to",
        "0711000641",
        "--code",
        "9081726354",
    ]));
    assert!(!ok);
    assert!(
        err.contains("tuma.db.key") && err.contains("0640") && err.contains("chmod 600"),
        "{err}"
    );
    // Read-only commands do not need the key.
    let (ok, out, err) = run(tuma(&config, &db.url).args(["deliveries", "list"]));
    assert!(ok, "{err}");
    assert!(out.contains("sent"), "{out}");
}

async fn key_settings_are_checked_and_read_only_commands_need_no_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.connect().await.close().await;
    // Settings the file itself gets wrong.
    let dir = db.path();
    for (lines, key, reason) in [
        (
            "key_env = \"\"\n",
            "otp.key_env",
            "not an environment variable name",
        ),
        (
            "key_env = \"TUMA OTP\"\n",
            "otp.key_env",
            "not an environment variable name",
        ),
        (
            "key_env = \"TUMA_TEST_OTP_KEY\"\nprevious_key_env = \"TUMA_TEST_OTP_KEY\"\n",
            "otp.previous_key_env",
            "same variable",
        ),
    ] {
        let text = config_text(dir, 6).replace("key_env = \"TUMA_TEST_OTP_KEY\"\n", lines);
        let e = Config::parse(&text, Path::new("providers.toml")).unwrap_err();
        assert_eq!(e.key, key, "{lines}");
        assert!(e.reason.contains(reason), "{lines}: {}", e.reason);
    }
    // Variables that do not hold a key: `check` and the sending commands
    // refuse them, naming the setting and the variable, never the value.
    let short = std::env::var("TUMA_TEST_OTP_SHORT_KEY").unwrap();
    for (lines, key, var, reason) in [
        (
            "key_env = \"TUMA_TEST_OTP_SHORT_KEY\"\n",
            "otp.key_env",
            "TUMA_TEST_OTP_SHORT_KEY",
            "must hold 32 bytes (base64 or hex), but holds 31",
        ),
        (
            "key_env = \"TUMA_TEST_OTP_UNSET\"\n",
            "otp.key_env",
            "TUMA_TEST_OTP_UNSET",
            "is not set",
        ),
        (
            "key_env = \"TUMA_TEST_OTP_KEY\"\nprevious_key_env = \"TUMA_TEST_OTP_NOT_A_KEY\"\n",
            "otp.previous_key_env",
            "TUMA_TEST_OTP_NOT_A_KEY",
            "neither base64 nor 64 hex digits",
        ),
    ] {
        let (config, _) = config_with_keys(dir, lines);
        for args in [
            vec!["check"],
            vec!["send", "otp", "--to", "0711000650", "--code", "123456"],
            vec!["worker", "--drain"],
        ] {
            let (ok, out, err) = run(tuma(&config, &db.url)
                .args(&args)
                .env_remove("TUMA_TEST_OTP_UNSET")
                .env("TUMA_TEST_OTP_NOT_A_KEY", "not-a-key!"));
            assert!(!ok, "{args:?} with {lines}");
            assert!(
                err.contains(key) && err.contains(var) && err.contains(reason),
                "{args:?} with {lines}: {err}"
            );
            assert!(!err.contains(&short) && !out.contains(&short));
            assert!(
                !err.contains("not-a-key!"),
                "the value is never printed: {err}"
            );
        }
        // Read-only commands run without the key.
        let (ok, _, err) = run(tuma(&config, &db.url)
            .args(["deliveries", "list"])
            .env_remove("TUMA_TEST_OTP_UNSET"));
        assert!(ok, "{lines}: {err}");
    }
    // A good key: `check` says where it comes from by its id, never the key.
    let (config, _) = config_with_keys(dir, "key_env = \"TUMA_TEST_OTP_KEY\"\n");
    let (ok, out, err) = run(tuma(&config, &db.url).arg("check"));
    assert!(ok, "{err}");
    assert!(
        out.contains("environment variable TUMA_TEST_OTP_KEY"),
        "{out}"
    );
    assert!(!out.contains(&std::env::var("TUMA_TEST_OTP_KEY").unwrap()));
}
on_both_backends!(key_settings_are_checked_and_read_only_commands_need_no_key);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_key_env_refuses_to_start_and_says_why() {
    if postgres_admin_url().is_none() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let provider = Scripted::new(new_clock(), vec![]);
    let e = app_with_keys(&db, "", &provider)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("otp.key_env") && e.contains("Postgres"), "{e}");
    let (config, _) = config_with_keys(db.path(), "");
    let (ok, _, err) =
        run(tuma(&config, &db.url).args(["send", "otp", "--to", "0711000660", "--code", "123456"]));
    assert!(!ok);
    assert!(err.contains("otp.key_env"), "{err}");
    let (ok, _, err) = run(tuma(&config, &db.url).args(["deliveries", "list"]));
    assert!(ok, "read-only commands need no key: {err}");
}

/// Runs `cmd` to its end, which must come within 60 s (a command that
/// started serving would run until stopped): its success, stdout, stderr.
fn run_to_end(cmd: &mut std::process::Command) -> (bool, String, String) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tuma");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{cmd:?} was still running after 60 s: it started despite the bad key");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the database at `db` was created or migrated: the SQLite file
/// exists, or the fresh Postgres database holds a table.
async fn database_touched(db: &TestDb) -> bool {
    if db.url.starts_with("sqlite") {
        return db.path().join("tuma.db").exists();
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .expect("connect");
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count tables");
    tables > 0
}

async fn an_unset_or_wrong_length_otp_key_stops_every_command_needing_it_before_the_database_is_touched(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    for (lines, reason) in [
        ("key_env = \"TUMA_TEST_OTP_UNSET\"\n", "is not set"),
        (
            "key_env = \"TUMA_TEST_OTP_SHORT_KEY\"\n",
            "must hold 32 bytes (base64 or hex), but holds 31",
        ),
    ] {
        let (config, _) = config_with_keys(db.path(), lines);
        for args in [
            &["serve", "--listen", "127.0.0.1:0"][..],
            &["serve", "--listen", "127.0.0.1:0", "--no-workers"][..],
            &["worker"][..],
            &["worker", "--drain"][..],
            &["send", "otp", "--to", "0711000670", "--code", "123456"][..],
            &[
                "send",
                "notification",
                "--to",
                "0711000670",
                "--template",
                "welcome",
                "--var",
                "name=Amina",
            ][..],
            &["replay", "--status", "failed", "--dry-run"][..],
        ] {
            let (ok, _, err) = run_to_end(
                tuma(&config, &db.url)
                    .args(args)
                    .env_remove("TUMA_TEST_OTP_UNSET"),
            );
            assert!(!ok, "{args:?} ran with {lines}");
            // One configuration error: the file, the key, the variable, why.
            assert!(
                err.contains("providers.toml: otp.key_env: environment variable TUMA_TEST_OTP_")
                    && err.contains(reason),
                "{args:?} with {lines}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "one error line: {err}");
            assert!(
                !database_touched(&db).await,
                "{args:?} with {lines} touched the database before refusing the key"
            );
        }
    }
}
on_both_backends!(
    an_unset_or_wrong_length_otp_key_stops_every_command_needing_it_before_the_database_is_touched
);
