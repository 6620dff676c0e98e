//! `tuma budget`: each budget's spend, reservations, limit and held count for
//! the current period, and the number ranges refused for an OTP burst; `tuma budget release [--currency KES]`: held
//! deliveries go back to the queue and are sent past their budget.

use anyhow::Context;
use chrono::{SubsecRound, Utc};
use clap::{Args, Subcommand, ValueEnum};

use crate::app::App;
use crate::config::Config;
use crate::domain::money::Currency;
use crate::store::Db;

/// `tuma budget [release]`.
#[derive(Debug, Args)]
pub struct BudgetArgs {
    #[command(subcommand)]
    command: Option<BudgetCommand>,
    /// Output format of the budgets.
    #[arg(long, value_enum, default_value_t = BudgetFormat::Table)]
    format: BudgetFormat,
}

#[derive(Debug, Subcommand)]
enum BudgetCommand {
    /// Send every held delivery now (of budgets in one currency with
    /// --currency), even while its budget is still reached.
    Release {
        /// Only deliveries held by budgets in this currency, e.g. KES.
        #[arg(long)]
        currency: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BudgetFormat {
    Table,
    Json,
}

/// Runs `tuma budget`.
pub async fn run(db: Db, config: Config, args: BudgetArgs) -> anyhow::Result<()> {
    let now = Utc::now().trunc_subsecs(6);
    match args.command {
        None => {
            let rows = crate::spend::status(&db, &config, now).await;
            let ranges = crate::pumping::refused_ranges(&db, &config, now).await;
            db.close().await;
            let (rows, ranges) = (rows?, ranges?);
            match args.format {
                BudgetFormat::Table => {
                    print!("{}", crate::spend::status_table(&rows));
                    println!("\nnumber ranges refused for an OTP burst ([range_burst]):");
                    if ranges.is_empty() {
                        println!("  none");
                    }
                    for r in &ranges {
                        println!(
                            "  {:<16} until {}  ({} codes lately; threshold {} per window)",
                            r.range,
                            r.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            r.recent,
                            r.threshold
                        );
                    }
                }
                BudgetFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "budgets": rows, "refused_ranges": ranges })
                    )?
                ),
            }
            Ok(())
        }
        Some(BudgetCommand::Release { currency }) => {
            let currency = currency
                .map(|c| {
                    c.parse::<Currency>()
                        .ok()
                        .filter(Currency::is_active_iso4217)
                        .with_context(|| {
                            format!(
                                "--currency `{c}`: not an active ISO 4217 currency code (e.g. KES)"
                            )
                        })
                })
                .transpose()?;
            // Releasing wakes the lanes: the app's queue door, no provider built.
            let app = App::new(config, db)?;
            let released = crate::spend::release(&app, currency, now).await;
            app.stop().await;
            println!("released {} held deliveries", released?);
            Ok(())
        }
    }
}
