//! `tuma send`: enqueue an OTP or a notification from the command line.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::app::App;
use crate::config::parse_duration_in;
use crate::delivery_view::DeliveryView;
use crate::domain::Channel;
use crate::intake::{Deadline, IntakeError, NotificationRequest, OtpRequest, Suppressions};

#[derive(Debug, Subcommand)]
pub(super) enum SendCommand {
    /// A one-time code.
    Otp {
        /// Phone number (E.164, or national with the default region) or email address.
        #[arg(long)]
        to: String,
        /// The code: 4 to 10 digits.
        #[arg(long)]
        code: String,
        /// sms or email; inferred from --to.
        #[arg(long)]
        channel: Option<String>,
        /// Template locale (en, sw, …).
        #[arg(long)]
        locale: Option<String>,
        /// How long the code may still be sent, e.g. 5m.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        #[command(flatten)]
        suppression: SuppressionArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// A templated notification (or one per row of a CSV file).
    Notification {
        /// Phone number or email address.
        #[arg(long, required_unless_present = "csv", conflicts_with = "csv")]
        to: Option<String>,
        /// A CSV file with a `to` column and one column per variable: one
        /// notification per row, in this one process.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// With --csv: the column whose value identifies each row, so a run
        /// cut short can be run again and sends no row twice (default: the
        /// `idempotency_key` column, when the file has one).
        #[arg(long, requires = "csv")]
        idempotency_column: Option<String>,
        /// Template name (a folder under templates/).
        #[arg(long)]
        template: String,
        /// A template variable, NAME=VALUE; repeat for more.
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Template locale (en, sw, …).
        #[arg(long)]
        locale: Option<String>,
        /// Send at this time (RFC 3339, e.g. 2026-12-24T08:00:00Z), as `send_at` over HTTP.
        #[arg(long, value_parser = parse_at)]
        at: Option<DateTime<Utc>>,
        /// Its own deadline, from now (30s to 30d, e.g. 2h): past it, it is
        /// expired, never sent late. With --csv, from each row's sending.
        #[arg(long, value_parser = parse_notification_ttl, conflicts_with = "expires_at")]
        ttl: Option<Duration>,
        /// Its own deadline as an RFC 3339 time, 30 s to 30 days from now:
        /// from then on it is expired, never sent.
        #[arg(long, value_parser = parse_at)]
        expires_at: Option<DateTime<Utc>>,
        #[command(flatten)]
        suppression: SuppressionArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
}

/// `--ttl` or `--expires-at` of a notification, as intake takes it.
fn deadline(ttl: Option<Duration>, expires_at: Option<DateTime<Utc>>) -> Option<Deadline> {
    ttl.map(Deadline::Ttl).or(expires_at.map(Deadline::At))
}

#[derive(Debug, Args)]
pub(super) struct SuppressionArgs {
    /// Send even to a suppressed recipient (one a provider said does not
    /// exist, is barred or unsubscribed): by default it is refused, as over
    /// the API.
    #[arg(long)]
    ignore_suppression: bool,
}

impl SuppressionArgs {
    fn policy(&self) -> Suppressions {
        if self.ignore_suppression {
            Suppressions::Ignore
        } else {
            Suppressions::Honour
        }
    }
}

/// An intake error as the command line says it: a suppressed recipient's
/// refusal names the way past it.
fn refusal(e: IntakeError) -> anyhow::Error {
    match &e {
        IntakeError::Refused { rule, .. } if *rule == crate::suppression::RULE => {
            anyhow::anyhow!("{e}; --ignore-suppression sends it anyway")
        }
        _ => e.into(),
    }
}

#[derive(Debug, Args)]
pub(super) struct OutputArgs {
    /// `id` prints the new delivery id alone; `json` prints the record.
    #[arg(long, value_enum, default_value_t = SendFormat::Id)]
    format: SendFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SendFormat {
    Id,
    Json,
}

/// `send otp --ttl`: the bounds intake applies to every OTP.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    parse_duration_in(s, crate::intake::MIN_OTP_TTL, crate::intake::MAX_OTP_TTL)
}

/// `send notification --ttl`: the bounds intake applies to a notification's
/// own deadline.
fn parse_notification_ttl(s: &str) -> Result<Duration, String> {
    parse_duration_in(
        s,
        crate::intake::MIN_NOTIFICATION_TTL,
        crate::intake::MAX_NOTIFICATION_TTL,
    )
}

/// `send notification --at`: an RFC 3339 time.
fn parse_at(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time (2026-12-24T08:00:00Z): {e}"))
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// Enqueues the send and prints its id or record.
pub(super) async fn run(app: &App, cmd: SendCommand) -> anyhow::Result<()> {
    let (delivery, out) = match cmd {
        SendCommand::Otp {
            to,
            code,
            channel,
            locale,
            ttl,
            suppression,
            out,
        } => {
            let channel = channel
                .map(|c| c.parse::<Channel>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let d = app
                .enqueue_otp_with(
                    OtpRequest {
                        to,
                        code,
                        channel,
                        locale,
                        ttl,
                    },
                    suppression.policy(),
                )
                .await
                .map_err(refusal)?;
            (d, out)
        }
        SendCommand::Notification {
            csv: Some(file),
            idempotency_column,
            template,
            vars,
            locale,
            at,
            ttl,
            expires_at,
            suppression,
            ..
        } => {
            return super::csv_send::send_file(
                app,
                &file,
                &template,
                locale.as_deref(),
                at,
                deadline(ttl, expires_at),
                &vars,
                idempotency_column.as_deref(),
                suppression.policy(),
            )
            .await;
        }
        SendCommand::Notification {
            to,
            template,
            vars,
            locale,
            at,
            ttl,
            expires_at,
            suppression,
            out,
            ..
        } => {
            let to = to.unwrap_or_default();
            let vars: Map<String, Value> = vars
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let d = app
                .enqueue_notification_with(
                    NotificationRequest {
                        to,
                        template,
                        locale,
                        vars,
                        send_at: at,
                        expires: deadline(ttl, expires_at),
                    },
                    suppression.policy(),
                )
                .await
                .map_err(refusal)?;
            (d, out)
        }
    };
    match out.format {
        SendFormat::Id => println!("{}", delivery.row.id),
        SendFormat::Json => {
            let view = DeliveryView::many(
                &app.db,
                std::slice::from_ref(&delivery),
                Utc::now(),
                app.config.receipts.no_receipt_after,
            )
            .await?;
            let Some(view) = view.first() else {
                anyhow::bail!(
                    "delivery {} vanished after it was recorded",
                    delivery.row.id
                );
            };
            println!("{}", serde_json::to_string_pretty(view)?)
        }
    }
    Ok(())
}
