//! `tuma deliveries`: show one delivery or list them.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::{Subcommand, ValueEnum};

use super::{ListFormat, check_provider_filter, parse_since};
use crate::config::Config;
use crate::delivery_view::DeliveryView;
use crate::domain::attempt::Outcome;
use crate::domain::{Channel, DeliveryStatus};
use crate::store::{AttemptRow, Db, Delivery, ListFilter, ReceiptRow};

#[derive(Debug, Subcommand)]
pub(super) enum DeliveriesCommand {
    /// One delivery with its attempts.
    Show {
        /// The delivery id.
        id: String,
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
    /// Cancel a delivery no provider has had yet (pending, or held for its
    /// budget): it is never sent.
    Cancel {
        /// The delivery id.
        id: String,
    },
    /// Deliveries, newest first.
    List {
        /// Only those to this recipient (a national number in otp.default_region;
        /// an email address in any case).
        #[arg(long)]
        to: Option<String>,
        /// Only this status (pending, sending, sent, delivered, undelivered, failed, expired).
        #[arg(long)]
        status: Option<String>,
        /// Only this channel (sms, email).
        #[arg(long)]
        channel: Option<String>,
        /// Only those created within this long, e.g. 24h.
        #[arg(long, value_parser = parse_since)]
        since: Option<Duration>,
        /// Only those whose latest attempt went to this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only those whose latest attempt ended with this provider error code, e.g. 21211.
        #[arg(long)]
        error_code: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum ShowFormat {
    Text,
    Json,
}

pub(super) async fn run(db: &Db, config: &Config, cmd: DeliveriesCommand) -> anyhow::Result<()> {
    let no_receipt_after = config.receipts.no_receipt_after;
    match cmd {
        DeliveriesCommand::Show { id, format } => {
            let Some(d) = db.delivery(&id).await? else {
                bail!("no delivery has id {id}; `tuma deliveries list` shows recent ones");
            };
            let attempts = db.attempts(&id).await?;
            let receipts = db.receipts(&id).await?;
            let (origin, replays) = (db.replay_origin(&id).await?, db.replays_of(&id).await?);
            match format {
                ShowFormat::Json => {
                    let view = DeliveryView::build(
                        &d,
                        &attempts,
                        &receipts,
                        origin.as_ref(),
                        &replays,
                        Utc::now(),
                        no_receipt_after,
                    );
                    println!("{}", serde_json::to_string_pretty(&view)?)
                }
                ShowFormat::Text => {
                    print_delivery(&d, &attempts, &receipts, no_receipt_after)?;
                    if let Some(o) = origin {
                        let by = o.replayed_by.as_deref().unwrap_or("?");
                        println!("replay of  {} (by {by})", o.replay_of);
                        if let Some(note) = &o.replay_note {
                            println!("note       {note}");
                        }
                    }
                    for r in replays {
                        let at = r.replayed_at.map(|t| t.to_rfc3339()).unwrap_or_default();
                        let by = r.replayed_by.as_deref().unwrap_or("?");
                        println!("replayed   as {} ({}) by {by} at {at}", r.id, r.status);
                    }
                }
            }
            Ok(())
        }
        DeliveriesCommand::Cancel { id } => super::contract::cancel(db, &id).await,
        DeliveriesCommand::List {
            to,
            status,
            channel,
            since,
            provider,
            error_code,
            limit,
            format,
        } => {
            if let Some(name) = &provider {
                check_provider_filter(db, config, name).await?;
            }
            let filter = ListFilter {
                recipient: to
                    .map(|t| {
                        crate::api::handlers::normalise_recipient(&t, config.otp.default_region)
                    })
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--to: {e}"))?,
                provider,
                error_code,
                status: status
                    .map(|s| s.parse::<DeliveryStatus>())
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                channel: channel
                    .map(|c| c.parse::<Channel>())
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                since: since
                    .map(|s| chrono::Duration::from_std(s).map(|d| Utc::now() - d))
                    .transpose()
                    .context("--since is too long")?,
                limit: i64::from(limit),
            };
            let rows = db.list_deliveries(&filter).await?;
            let codes = match format {
                ListFormat::Table | ListFormat::Json => Default::default(),
                ListFormat::Csv => {
                    let ids: Vec<String> = rows.iter().map(|d| d.row.id.clone()).collect();
                    db.latest_error_codes(&ids).await?
                }
            };
            let code = |d: &Delivery| codes.get(&d.row.id).cloned();
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => {
                    let list = DeliveryView::many(db, &rows, Utc::now(), no_receipt_after).await?;
                    writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                }
                ListFormat::Csv => {
                    let mut out = csv::Writer::from_writer(&mut out);
                    out.write_record([
                        "id",
                        "kind",
                        "channel",
                        "recipient",
                        "status",
                        "attempts",
                        "provider",
                        "provider_message_id",
                        "cost",
                        "currency",
                        "cost_is_estimate",
                        "segments",
                        "created_at",
                        "sent_at",
                        "last_error",
                        "error_code",
                    ])?;
                    for d in &rows {
                        let r = &d.row;
                        let fields = [
                            r.id.clone(),
                            r.kind.clone(),
                            r.channel.clone(),
                            r.recipient.clone(),
                            d.display_status(Utc::now(), no_receipt_after),
                            r.attempts.to_string(),
                            r.provider.clone().unwrap_or_default(),
                            r.provider_message_id.clone().unwrap_or_default(),
                            d.cost.map(|c| c.to_decimal_string()).unwrap_or_default(),
                            r.currency.clone().unwrap_or_default(),
                            r.cost_is_estimate
                                .map(|b| b.to_string())
                                .unwrap_or_default(),
                            r.segments.map(|s| s.to_string()).unwrap_or_default(),
                            r.created_at.to_rfc3339(),
                            r.sent_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                            r.last_error.clone().unwrap_or_default(),
                            code(d).unwrap_or_default(),
                        ];
                        out.write_record(&fields)?;
                    }
                    out.flush()?;
                }
                ListFormat::Table => {
                    writeln!(
                        out,
                        "{:<36}  {:<12}  {:<5}  {:<28}  {:<11}  {:>3}  {:<12}  CREATED (UTC)",
                        "ID", "KIND", "CHAN", "RECIPIENT", "STATUS", "TRY", "PROVIDER",
                    )?;
                    for d in &rows {
                        let r = &d.row;
                        writeln!(
                            out,
                            "{:<36}  {:<12}  {:<5}  {:<28}  {:<11}  {:>3}  {:<12}  {}",
                            r.id,
                            r.kind,
                            r.channel,
                            r.recipient,
                            d.display_status(Utc::now(), no_receipt_after),
                            r.attempts,
                            r.provider.as_deref().unwrap_or("-"),
                            r.created_at.format("%Y-%m-%d %H:%M:%S")
                        )?;
                    }
                    if rows.is_empty() {
                        writeln!(out, "(no deliveries match)")?;
                    }
                }
            }
            Ok(())
        }
    }
}

fn print_delivery(
    d: &Delivery,
    attempts: &[AttemptRow],
    receipts: &[ReceiptRow],
    no_receipt_after: std::time::Duration,
) -> anyhow::Result<()> {
    let r = &d.row;
    let mut out = std::io::stdout().lock();
    writeln!(out, "delivery   {}", r.id)?;
    writeln!(
        out,
        "status     {}",
        d.display_status(Utc::now(), no_receipt_after)
    )?;
    writeln!(
        out,
        "kind       {} via {} to {}",
        r.kind, r.channel, r.recipient
    )?;
    writeln!(out, "template   {} ({})", r.template, r.locale)?;
    if let Some(s) = &r.subject {
        writeln!(out, "subject    {s}")?;
    }
    writeln!(out, "message    {}", r.body.replace('\n', "\n           "))?;
    if let (Some(seg), Some(enc)) = (r.segments, &r.encoding) {
        writeln!(out, "segments   {seg} ({enc})")?;
    }
    writeln!(out, "attempts   {} of {}", r.attempts, r.max_attempts)?;
    if let Some(p) = &r.provider {
        writeln!(
            out,
            "provider   {p} {}",
            r.provider_message_id.as_deref().unwrap_or("")
        )?;
    }
    if let Some(c) = &d.cost {
        writeln!(
            out,
            "cost       {c}{}",
            if r.cost_is_estimate == Some(true) {
                " (estimate)"
            } else {
                ""
            }
        )?;
    }
    writeln!(out, "created    {}", r.created_at.to_rfc3339())?;
    if let Some(t) = r.sent_at {
        writeln!(out, "sent       {}", t.to_rfc3339())?;
    }
    if let Some(t) = r.delivered_at {
        writeln!(out, "delivered  {}", t.to_rfc3339())?;
    }
    if let (Some(t), Some(note)) = (r.reconciled_at, &r.reconcile_note) {
        writeln!(out, "price      {note} ({})", t.to_rfc3339())?;
    }
    if let Some(t) = r.expires_at {
        writeln!(out, "expires    {}", t.to_rfc3339())?;
    }
    if let (Some(t), true) = (r.next_attempt_at, d.status == DeliveryStatus::Pending) {
        writeln!(out, "next try   {}", t.to_rfc3339())?;
    }
    if let Some(e) = &r.last_error {
        writeln!(out, "error      {e}")?;
    }
    for a in attempts {
        writeln!(
            out,
            "  #{} {:<12} {:<9} {} {}{}",
            a.attempt,
            a.provider,
            a.outcome.map_or("open", Outcome::as_str),
            a.started_at.format("%H:%M:%S%.3f"),
            a.latency_ms.map(|l| format!("{l}ms ")).unwrap_or_default(),
            a.error
                .as_deref()
                .or(a.provider_message_id.as_deref())
                .unwrap_or("")
        )?;
        if !a.part_ids.is_empty() {
            writeln!(out, "     parts {}", a.part_ids.join(" "))?;
        }
    }
    // Each call that may have reached the recipient, when more than one did.
    let reached: Vec<String> = attempts
        .iter()
        .filter(|a| !matches!(a.outcome, Some(Outcome::Transient | Outcome::Permanent)))
        .map(|a| format!("#{}", a.attempt))
        .collect();
    if reached.len() > 1 {
        writeln!(
            out,
            "may have reached the recipient: attempts {} (possibly {} messages)",
            reached.join(", "),
            reached.len()
        )?;
    }
    for rc in receipts {
        writeln!(
            out,
            "  receipt #{} {:<12} {:<11} {}{}{}",
            rc.attempt,
            rc.provider,
            rc.status,
            rc.received_at.format("%H:%M:%S%.3f"),
            rc.error
                .as_deref()
                .map(|e| format!(" {e}"))
                .unwrap_or_default(),
            if rc.applied { "" } else { " (no change)" }
        )?;
    }
    Ok(())
}
