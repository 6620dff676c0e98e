//! `tuma webhooks`: status webhook endpoints of an API key.

use std::io::Write;

use anyhow::bail;
use chrono::Utc;
use clap::Subcommand;

use crate::config::Config;
use crate::store::Db;
use crate::webhooks::dispatch::{Sender, test_endpoint};
use crate::webhooks::register::{NewEndpoint, RegisterError, add_endpoint};
use crate::webhooks::{events_of, parse_events};

#[derive(Debug, Subcommand)]
pub(super) enum WebhooksCommand {
    /// Register an endpoint for an API key's deliveries; prints its signing
    /// secret once.
    Add {
        /// The API key (by name) whose deliveries' events the endpoint hears.
        #[arg(long)]
        key: String,
        /// Where events go: https, or http to loopback.
        #[arg(long)]
        url: String,
        /// Comma-separated event types (default: all the key may hear):
        /// delivery.sent, delivery.delivered, delivery.undelivered,
        /// delivery.failed, delivery.expired, delivery.canceled, and
        /// budget.threshold (keys with the ops scope only).
        #[arg(long)]
        events: Option<String>,
        /// Send the recipient unmasked (default: masked, `+2547******01`).
        #[arg(long)]
        with_recipient: bool,
    },
    /// List endpoints (never their secrets).
    List,
    /// Remove an endpoint and its pending events.
    Remove {
        /// The endpoint's id (`wh_…`).
        id: String,
    },
    /// Send a signed `webhook.test` event to an endpoint now and print what it answered.
    Test {
        /// The endpoint's id (`wh_…`).
        id: String,
    },
}

pub(super) async fn run(db: &Db, config: &Config, cmd: WebhooksCommand) -> anyhow::Result<()> {
    match cmd {
        WebhooksCommand::Add {
            key,
            url,
            events,
            with_recipient,
        } => {
            let events =
                parse_events(events.as_deref()).map_err(|e| anyhow::anyhow!("--events: {e}"))?;
            let new = NewEndpoint {
                key,
                url,
                events,
                with_recipient,
            };
            let row = match add_endpoint(db, &config.webhooks.policy(), new, Utc::now()).await {
                Ok(row) => row,
                Err(RegisterError::Invalid { field, reason }) => bail!("--{field}: {reason}"),
                Err(RegisterError::Store(e)) => return Err(e.into()),
            };
            eprintln!(
                "registered {} for key `{}` ({}); its signing secret is shown only now:",
                row.id,
                row.api_key_name,
                names(&row.events)
            );
            println!("{}", row.id);
            println!("{}", row.secret);
            Ok(())
        }
        WebhooksCommand::List => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<30}  {:<16}  {:<8}  {:<20}  {:<40}  URL",
                "ID", "KEY", "STATE", "CREATED (UTC)", "EVENTS"
            )?;
            for e in db.webhook_endpoints(None).await? {
                let state = match (&e.disabled_at, &e.failing_since) {
                    (Some(_), _) => "disabled",
                    (None, Some(_)) => "failing",
                    (None, None) => "ok",
                };
                writeln!(
                    out,
                    "{:<30}  {:<16}  {:<8}  {:<20}  {:<40}  {}{}",
                    e.id,
                    e.api_key_name,
                    state,
                    e.created_at.format("%Y-%m-%d %H:%M:%S"),
                    names(&e.events),
                    e.url,
                    if e.with_recipient {
                        "  (with recipient)"
                    } else {
                        ""
                    }
                )?;
                if let Some(why) = &e.disabled_reason {
                    writeln!(out, "    disabled: {why}")?;
                }
            }
            Ok(())
        }
        WebhooksCommand::Remove { id } => {
            if !db.remove_webhook_endpoint(&id).await? {
                bail!("no webhook endpoint has id `{id}`; `tuma webhooks list` shows them");
            }
            println!("removed {id}");
            Ok(())
        }
        WebhooksCommand::Test { id } => {
            let Some(endpoint) = db.webhook_endpoint(&id).await? else {
                bail!("no webhook endpoint has id `{id}`; `tuma webhooks list` shows them");
            };
            let sender = Sender::new(&config.webhooks).map_err(anyhow::Error::msg)?;
            let (message, sent) = test_endpoint(db, &sender, &endpoint, Utc::now()).await?;
            let status = sent
                .status_code
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "{message}: {} (status {status}, {} ms)",
                sent.outcome, sent.latency_ms
            );
            if let Some(e) = &sent.error {
                println!("  {e}");
            }
            if !sent.delivered() {
                bail!("the endpoint did not take the test event");
            }
            Ok(())
        }
    }
}

fn names(stored: &str) -> String {
    let names: Vec<&str> = events_of(stored).iter().map(|e| e.as_str()).collect();
    names.join(",")
}
