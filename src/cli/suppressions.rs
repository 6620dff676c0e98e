//! `tuma suppressions list | remove RECIPIENT`: the recipients tuma refuses
//! to pay for again (see `suppression`).

use chrono::{SubsecRound, Utc};
use clap::{Subcommand, ValueEnum};

use crate::config::Config;
use crate::domain::email::EmailAddress;
use crate::domain::phone::PhoneNumber;
use crate::store::Db;

/// `tuma suppressions …`.
#[derive(Debug, Subcommand)]
pub enum SuppressionsCommand {
    /// Suppressions in force, newest first.
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Lift a recipient's suppression (every channel): sends to it are taken again.
    Remove {
        /// The E.164 number (+254711000001) or email address.
        recipient: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Runs `tuma suppressions`.
pub async fn run(db: Db, config: &Config, cmd: SuppressionsCommand) -> anyhow::Result<()> {
    let out = run_on(&db, config, cmd).await;
    db.close().await;
    out
}

async fn run_on(db: &Db, config: &Config, cmd: SuppressionsCommand) -> anyhow::Result<()> {
    match cmd {
        SuppressionsCommand::List { format } => {
            let now = Utc::now().trunc_subsecs(6);
            let since = now
                - chrono::Duration::from_std(config.spend.suppression_expire_after)
                    .unwrap_or(chrono::Duration::MAX);
            let rows = db.suppressions(since).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Format::Table => {
                    println!(
                        "{:<32} {:<6} {:<20} {:<36} {:<10} {:<8} REASON",
                        "RECIPIENT", "CHAN", "SINCE", "DELIVERY", "PROVIDER", "CODE"
                    );
                    for s in rows {
                        println!(
                            "{:<32} {:<6} {:<20} {:<36} {:<10} {:<8} {}",
                            s.recipient,
                            s.channel,
                            s.created_at.format("%Y-%m-%d %H:%M:%S"),
                            s.delivery_id,
                            s.provider,
                            s.error_code.as_deref().unwrap_or("-"),
                            s.reason
                        );
                    }
                }
            }
            Ok(())
        }
        SuppressionsCommand::Remove { recipient } => {
            let normalised = if recipient.contains('@') {
                EmailAddress::parse(&recipient)
                    .map(|e| e.as_str().to_owned())
                    .map_err(|e| anyhow::anyhow!("RECIPIENT `{recipient}`: {e}"))?
            } else {
                PhoneNumber::parse_e164(&recipient)
                    .map(|p| p.as_str().to_owned())
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "RECIPIENT `{recipient}`: {e} (write it as E.164, e.g. +254711000001)"
                        )
                    })?
            };
            let lifted = db.unsuppress(&normalised).await?;
            if lifted == 0 {
                anyhow::bail!("{normalised} is not suppressed");
            }
            println!("lifted {lifted} suppression(s) of {normalised}");
            Ok(())
        }
    }
}
