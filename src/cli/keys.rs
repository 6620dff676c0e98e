//! `tuma keys`: HTTP API keys.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Subcommand;

use crate::config::parse_duration_in;
use crate::store::Db;

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Create a key and print it once (only its hash is stored).
    Create {
        /// A unique name, e.g. the calling service.
        #[arg(long)]
        name: String,
        /// send, read, ops or reports; repeat for more.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by name; it stops working at once (a rotated-out one too).
    Revoke {
        /// The key's name.
        name: String,
    },
    /// Replace a key: print a new one with the same scopes; the old one
    /// keeps working until the grace ends.
    Rotate {
        /// The key's name.
        name: String,
        /// How long the old key keeps working, 0s to 30d.
        #[arg(long, default_value = "24h", value_parser = parse_grace)]
        grace: Duration,
    },
}

/// `keys rotate --grace`: 0s (the old key stops now) to 30 days.
fn parse_grace(s: &str) -> Result<Duration, String> {
    parse_duration_in(s, Duration::ZERO, Duration::from_secs(30 * 24 * 3600))
}

pub(super) async fn run(db: &Db, cmd: KeysCommand) -> anyhow::Result<()> {
    use crate::api::auth::{Scope, generate_key, hash_key};
    match cmd {
        KeysCommand::Create { name, scopes } => {
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            let mut parsed = scopes
                .iter()
                .map(|s| s.parse::<Scope>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            parsed.sort();
            parsed.dedup();
            let scopes: Vec<&str> = parsed.iter().map(|s| s.as_str()).collect();
            let key = generate_key();
            if !db
                .create_api_key(&name, &hash_key(&key), &scopes.join(","), Utc::now())
                .await?
            {
                bail!(
                    "a live key is named `{name}`: `tuma keys rotate {name}` replaces it, or pick another name"
                );
            }
            eprintln!(
                "created key `{name}` with scopes {}; it is shown only now:",
                scopes.join(", ")
            );
            println!("{key}");
            Ok(())
        }
        KeysCommand::List => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<24}  {:<24}  {:<20}  {:<20}  {:<20}  REVOKED",
                "NAME", "SCOPES", "CREATED (UTC)", "LAST USED", "WORKS UNTIL"
            )?;
            let when = |t: Option<chrono::DateTime<Utc>>| {
                t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".into())
            };
            for k in db.api_keys().await? {
                writeln!(
                    out,
                    "{:<24}  {:<24}  {:<20}  {:<20}  {:<20}  {}",
                    k.name,
                    k.scopes,
                    when(Some(k.created_at)),
                    when(k.last_used_at),
                    when(k.expires_at),
                    when(k.revoked_at)
                )?;
            }
            Ok(())
        }
        KeysCommand::Revoke { name } => {
            if !db.revoke_api_key(&name, Utc::now()).await? {
                bail!("no live key is named `{name}`; `tuma keys list` shows them");
            }
            println!("revoked key `{name}`");
            Ok(())
        }
        KeysCommand::Rotate { name, grace } => {
            let now = Utc::now();
            let until = now + chrono::Duration::from_std(grace).context("--grace is too long")?;
            let key = generate_key();
            let Some(scopes) = db
                .rotate_api_key(&name, &hash_key(&key), until, now)
                .await?
            else {
                bail!("no live key is named `{name}`; `tuma keys list` shows them");
            };
            eprintln!(
                "rotated key `{name}` (scopes {scopes}): the old key works until {} UTC; the new one is shown only now:",
                until.format("%Y-%m-%d %H:%M:%S")
            );
            println!("{key}");
            Ok(())
        }
    }
}
