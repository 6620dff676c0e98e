//! `tuma send notification --csv FILE`: one notification per row, in one
//! process (so one database connection pool and one template load for the
//! whole file), read a record at a time so a file of any size fits.
//!
//! The file is RFC 4180 CSV with a header row: a `to` column and one column
//! per template variable (`--var` values apply to every row; a column wins).
//!
//! Resumable: with an idempotency column (`--idempotency-column NAME`, or a
//! column named [`DEFAULT_IDEMPOTENCY_COLUMN`]) each row's delivery id is
//! derived from its key, so a row already sent (by an earlier run cut short
//! by Ctrl-C, a crash or a kill) is counted as already sent and never sent
//! again. Keys are global: the same key is never sent twice, in any file.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::intake::{Deadline, IntakeError, NotificationRequest, Suppressions};

/// The idempotency column used when the file has one of this name and no
/// `--idempotency-column` is given.
pub const DEFAULT_IDEMPOTENCY_COLUMN: &str = "idempotency_key";

/// How often the progress line is redrawn on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The delivery id of the row whose idempotency key is `key`: a UUID
/// (version 8) from the key's SHA-256, the same in every run.
pub fn row_delivery_id(key: &str) -> String {
    let digest = Sha256::digest(format!("tuma csv row\n{key}").as_bytes());
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Reads CSV records one at a time (quoted fields may hold commas, quotes
/// as `""` and line breaks).
struct Records<R> {
    lines: R,
    line: usize,
    /// Bytes read so far.
    read: u64,
}

impl<R: BufRead> Records<R> {
    /// The next record and the line it starts on, or `None` at the end.
    fn next_record(&mut self) -> anyhow::Result<Option<(usize, Vec<String>)>> {
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut started = false;
        let first = self.line + 1;
        loop {
            let mut text = String::new();
            let n = self.lines.read_line(&mut text)?;
            self.read += n as u64;
            if n == 0 {
                if quoted {
                    bail!("line {first}: a quoted field is not closed");
                }
                if !started {
                    return Ok(None);
                }
                fields.push(field);
                return Ok(Some((first, fields)));
            }
            self.line += 1;
            started = true;
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                match (quoted, c) {
                    (true, '"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    (true, '"') => quoted = false,
                    (true, c) => field.push(c),
                    (false, '"') if field.is_empty() => quoted = true,
                    (false, ',') => fields.push(std::mem::take(&mut field)),
                    (false, '\r' | '\n') => {}
                    (false, c) => field.push(c),
                }
            }
            if !quoted {
                fields.push(field);
                return Ok(Some((first, fields)));
            }
        }
    }
}

/// Where the progress of a file goes: a line redrawn in place on a
/// terminal, a line per 1,000 rows otherwise (a log keeps them).
struct Progress {
    terminal: bool,
    total_bytes: u64,
    started: Instant,
    drawn: Instant,
}

impl Progress {
    fn show(&mut self, counts: &Counts, read: u64, last: bool) {
        let done = counts.rows();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(f64::EPSILON);
        if self.terminal {
            if !last && self.drawn.elapsed() < PROGRESS_EVERY {
                return;
            }
            self.drawn = Instant::now();
            let percent = if self.total_bytes == 0 {
                100.0
            } else {
                read as f64 * 100.0 / self.total_bytes as f64
            };
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r{percent:5.1}%  {done} rows: {} sent, {} already sent, {} refused  {rate:.0}/s\x1b[K",
                counts.sent, counts.already, counts.refused
            );
            if last {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        } else if !last && done > 0 && done.is_multiple_of(1000) {
            eprintln!(
                "{done} rows ({} sent, {} already sent, {} refused), {rate:.0}/s",
                counts.sent, counts.already, counts.refused
            );
        }
    }

    /// Ends the redrawn line before another message is printed.
    fn interrupt(&mut self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }
}

/// What became of the rows so far.
#[derive(Default)]
struct Counts {
    sent: u64,
    already: u64,
    refused: u64,
    /// Of the refused, those whose recipient is suppressed.
    suppressed: u64,
}

impl Counts {
    fn rows(&self) -> u64 {
        self.sent + self.already + self.refused
    }
}

/// Sends a notification for each row of `file`; progress on stderr, a
/// summary on stdout. Refused rows are reported (line, field, reason) and
/// skipped; the rest are sent, each at most once when the file has an
/// idempotency column. Ctrl-C stops after the row being sent, with the
/// summary. A suppressed recipient's row is refused unless `suppressions`
/// says to ignore the list. Fails when every row was refused, or when
/// stopped.
#[allow(
    clippy::too_many_arguments,
    reason = "the command's options, passed as they were given"
)]
pub(super) async fn send_file(
    app: &App,
    file: &Path,
    template: &str,
    locale: Option<&str>,
    send_at: Option<DateTime<Utc>>,
    expires: Option<Deadline>,
    fixed: &[(String, String)],
    idempotency_column: Option<&str>,
    suppressions: Suppressions,
) -> anyhow::Result<()> {
    let opened = std::fs::File::open(file)
        .with_context(|| format!("--csv {}: cannot open it", file.display()))?;
    let total_bytes = opened.metadata().map(|m| m.len()).unwrap_or(0);
    let mut records = Records {
        lines: BufReader::new(opened),
        line: 0,
        read: 0,
    };
    let Some((_, header)) = records.next_record()? else {
        bail!("--csv {}: the file is empty", file.display());
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_owned()).collect();
    let Some(to_column) = header.iter().position(|h| h == "to") else {
        bail!(
            "--csv {}: the header has no `to` column (found: {})",
            file.display(),
            header.join(", ")
        );
    };
    let key_column = match idempotency_column {
        Some(name) => Some(header.iter().position(|h| h == name).with_context(|| {
            format!(
                "--idempotency-column {name}: the header of {} has no such column (found: {})",
                file.display(),
                header.join(", ")
            )
        })?),
        None => header.iter().position(|h| h == DEFAULT_IDEMPOTENCY_COLUMN),
    };
    let key_name = key_column.and_then(|i| header.get(i)).cloned();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::SeqCst);
                eprintln!("\rstopping after this row (Ctrl-C again to quit at once)\x1b[K");
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        })
    };
    let mut progress = Progress {
        terminal: std::io::stderr().is_terminal(),
        total_bytes,
        started: Instant::now(),
        drawn: Instant::now(),
    };
    let mut counts = Counts::default();
    let outcome = send_rows(
        app,
        &mut records,
        &header,
        to_column,
        key_column,
        &stop,
        &mut progress,
        &mut counts,
        |vars| NotificationRequest {
            to: String::new(),
            template: template.to_owned(),
            locale: locale.map(str::to_owned),
            vars,
            send_at,
            expires,
        },
        fixed,
        suppressions,
    )
    .await;
    watcher.abort();
    progress.show(&counts, records.read, true);
    let secs = progress.started.elapsed().as_secs_f64();
    let why = if counts.suppressed > 0 {
        format!(
            " ({} suppressed; --ignore-suppression sends to them)",
            counts.suppressed
        )
    } else {
        String::new()
    };
    println!(
        "accepted {}, refused {}{why}, already sent {} in {secs:.2} s ({:.0} rows/s)",
        counts.sent,
        counts.refused,
        counts.already,
        counts.rows() as f64 / secs.max(f64::EPSILON)
    );
    outcome?;
    if stop.load(Ordering::SeqCst) {
        match key_name {
            Some(name) => bail!(
                "stopped at line {}: run the same command again to send the rest (the `{name}` column keeps any row from being sent twice)",
                records.line
            ),
            None => bail!(
                "stopped at line {}: the file has no idempotency column, so running it again would send its first rows twice",
                records.line
            ),
        }
    }
    if counts.sent == 0 && counts.already == 0 && counts.refused > 0 {
        bail!("every row was refused");
    }
    Ok(())
}

/// The loop of [`send_file`]: one row at a time until the end of the file,
/// Ctrl-C, or an error of the database.
#[allow(
    clippy::too_many_arguments,
    reason = "the loop's state, kept apart from the set-up and the summary"
)]
async fn send_rows<R: BufRead>(
    app: &App,
    records: &mut Records<R>,
    header: &[String],
    to_column: usize,
    key_column: Option<usize>,
    stop: &AtomicBool,
    progress: &mut Progress,
    counts: &mut Counts,
    request: impl Fn(Map<String, Value>) -> NotificationRequest,
    fixed: &[(String, String)],
    suppressions: Suppressions,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::SeqCst) {
        let Some((line, fields)) = records.next_record()? else {
            break;
        };
        if fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        let mut vars: Map<String, Value> = fixed
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        for (i, (name, value)) in header.iter().zip(&fields).enumerate() {
            if i != to_column && Some(i) != key_column && !name.is_empty() {
                vars.insert(name.clone(), Value::String(value.clone()));
            }
        }
        let mut req = request(vars);
        req.to = fields.get(to_column).cloned().unwrap_or_default();
        let sent = match key_column {
            None => app
                .enqueue_notification_with(req, suppressions)
                .await
                .map(|_| true),
            Some(column) => {
                let key = fields.get(column).map(|k| k.trim()).unwrap_or_default();
                if key.is_empty() {
                    progress.interrupt();
                    eprintln!(
                        "line {line}: refused: {}: is empty; every row needs its idempotency key",
                        header.get(column).map_or("", String::as_str)
                    );
                    counts.refused += 1;
                    continue;
                }
                app.enqueue_notification_once(req, row_delivery_id(key), suppressions)
                    .await
            }
        };
        match sent {
            Ok(true) => counts.sent += 1,
            Ok(false) => counts.already += 1,
            Err(IntakeError::Store(e)) => {
                progress.interrupt();
                return Err(e).with_context(|| {
                    format!(
                        "line {line}: stopped; {} rows before it were sent",
                        counts.sent
                    )
                });
            }
            Err(e) => {
                progress.interrupt();
                counts.refused += 1;
                if matches!(&e, IntakeError::Refused { rule, .. } if *rule == crate::suppression::RULE)
                {
                    counts.suppressed += 1;
                }
                eprintln!("line {line}: refused: {e}");
            }
        }
        progress.show(counts, records.read, false);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Vec<(usize, Vec<String>)> {
        let mut r = Records {
            lines: text.as_bytes(),
            line: 0,
            read: 0,
        };
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push(rec);
        }
        out
    }

    #[test]
    fn records_keep_quoted_commas_quotes_and_line_breaks() {
        let got = all(
            "to,name\r\n+254711000001,\"Wanjiru, A.\"\n+254711000002,\"say \"\"hi\"\"\nthere\"\n",
        );
        assert_eq!(
            got,
            vec![
                (1, vec!["to".to_owned(), "name".to_owned()]),
                (
                    2,
                    vec!["+254711000001".to_owned(), "Wanjiru, A.".to_owned()]
                ),
                (
                    3,
                    vec!["+254711000002".to_owned(), "say \"hi\"\nthere".to_owned()]
                ),
            ]
        );
    }

    #[test]
    fn an_unclosed_quote_names_its_line() {
        let mut r = Records {
            lines: "to\n\"+2547".as_bytes(),
            line: 0,
            read: 0,
        };
        r.next_record().unwrap();
        let e = r.next_record().unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
