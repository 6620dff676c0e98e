//! `tuma report`: reports for finance.

use chrono::Utc;
use clap::Subcommand;

use super::ListFormat;
use crate::config::Config;
use crate::reports::{CostParams, CostQuery, cost_report};
use crate::store::Db;

#[derive(Debug, Subcommand)]
pub(super) enum ReportCommand {
    /// Messages, segments, receipts and cost per group; totals per currency (UTC).
    Costs {
        /// A period ending now, e.g. 30d (the default without dates).
        #[arg(long, conflicts_with_all = ["from", "to"])]
        since: Option<String>,
        /// First day, e.g. 2026-11-01 (UTC midnight, included).
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// Last day, e.g. 2026-12-01 (UTC midnight, excluded).
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// Groupings: day|week|month, provider, country, template, channel.
        #[arg(long, default_value = "month")]
        by: String,
        /// A sent message without a receipt after this long counts as no-receipt.
        #[arg(long, default_value = "24h")]
        receipt_horizon: String,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

/// Builds the report from `db` (closed once read) and prints it.
pub(super) async fn run(db: Db, config: &Config, cmd: ReportCommand) -> anyhow::Result<()> {
    let ReportCommand::Costs {
        since,
        from,
        to,
        by,
        receipt_horizon,
        format,
    } = cmd;
    let params = CostParams {
        since,
        from,
        to,
        by: Some(by),
        receipt_horizon: Some(receipt_horizon),
    };
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let report = cost_report(&db, &CostQuery::from_params(&params, now)?, now).await;
    let budgets = crate::spend::status(&db, config, now).await;
    db.close().await;
    let (report, budgets) = (report?, budgets?);
    match format {
        ListFormat::Table => print!(
            "{}\nbudgets (this period):\n{}",
            report.to_table(),
            crate::spend::status_table(&budgets)
        ),
        ListFormat::Csv => print!("{}", report.to_csv()?),
        ListFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&crate::spend::with_budgets(&report, &budgets)?)?
        ),
    }
    Ok(())
}
