//! `tuma replay`: send failed deliveries again, each as a new delivery.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Args;

use super::{check_provider_filter, parse_since};
use crate::app::App;
use crate::replay::{ReplayFilter, ReplayPlan, ReplayRules, os_user};

#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    /// Delivery ids; without them, the filters below choose.
    ids: Vec<String>,
    /// Status to replay (failed, undelivered, expired).
    #[arg(long, default_value = "failed")]
    status: String,
    /// Only those created within this long, e.g. 2h.
    #[arg(long, value_parser = parse_since)]
    since: Option<Duration>,
    /// Only this channel (sms, email).
    #[arg(long)]
    channel: Option<String>,
    /// Only those whose latest attempt went to this provider.
    #[arg(long)]
    provider: Option<String>,
    /// Only those whose latest attempt ended with this provider error code.
    #[arg(long)]
    error_code: Option<String>,
    /// At most this many (newest first).
    #[arg(long, default_value_t = crate::replay::DEFAULT_REPLAY_LIMIT)]
    limit: i64,
    /// Replay permanent-error failures too (they will probably fail again).
    #[arg(long)]
    force: bool,
    /// Replay to suppressed recipients too (--force does not); each such
    /// replay records that you ignored the suppression.
    #[arg(long)]
    ignore_suppression: bool,
    /// Show what would be replayed and refused; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask before replaying.
    #[arg(long)]
    yes: bool,
}

/// `tuma replay`: show the plan, ask, replay with progress, summarise.
pub(super) async fn run(app: &App, a: ReplayArgs) -> anyhow::Result<()> {
    let rules = ReplayRules {
        force: a.force,
        ignore_suppression: a.ignore_suppression,
    };
    let plan = if a.ids.is_empty() {
        if let Some(name) = &a.provider {
            check_provider_filter(&app.db, &app.config, name).await?;
        }
        let filter = ReplayFilter {
            status: Some(a.status.parse().map_err(anyhow::Error::msg)?),
            since: a
                .since
                .map(|s| chrono::Duration::from_std(s).map(|d| Utc::now() - d))
                .transpose()
                .context("--since is too long")?,
            channel: a
                .channel
                .map(|c| c.parse())
                .transpose()
                .map_err(anyhow::Error::msg)?,
            provider: a.provider,
            error_code: a.error_code,
            force: a.force,
            ignore_suppression: a.ignore_suppression,
            limit: Some(a.limit),
        };
        app.plan_replay_matching(&filter).await?
    } else {
        app.plan_replay(&a.ids, rules).await?
    };
    print_plan(&plan);
    if a.dry_run || plan.replayable.is_empty() {
        println!(
            "{}nothing replayed",
            if a.dry_run { "dry run: " } else { "" }
        );
        return Ok(());
    }
    if !a.yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            bail!("not replaying: pass --yes to replay without a terminal to confirm on");
        }
        eprint!("replay {} deliveries? [y/N] ", plan.replayable.len());
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing replayed");
            return Ok(());
        }
    }
    let actor = os_user();
    let step = (plan.replayable.len() / 10).max(100);
    let report = app
        .execute_replay(&plan, &actor, rules, |done, total| {
            if total > 100 && (done % step == 0 || done == total) {
                eprintln!("replayed {done}/{total}");
            }
        })
        .await?;
    let late = report.refused.len() - plan.refused.len();
    println!(
        "replayed {} as {actor}, refused {}{}",
        report.replayed.len(),
        report.refused.len(),
        if late > 0 {
            format!(" ({late} changed since the plan)")
        } else {
            String::new()
        }
    );
    for r in report.replayed.iter().take(20) {
        println!("  {} -> {}", r.original, r.replay);
    }
    if report.replayed.len() > 20 {
        println!("  … and {} more", report.replayed.len() - 20);
    }
    Ok(())
}

fn print_plan(plan: &ReplayPlan) {
    println!("to replay: {}", plan.replayable.len());
    for c in plan.replayable.iter().take(20) {
        println!(
            "  {}  {:<5} {:<20} {:<12} {:<12} {}",
            c.id,
            c.channel,
            c.recipient,
            c.template,
            c.provider.as_deref().unwrap_or("-"),
            c.last_error.as_deref().unwrap_or("")
        );
    }
    if plan.replayable.len() > 20 {
        println!("  … and {} more", plan.replayable.len() - 20);
    }
    println!("refused: {}", plan.refused.len());
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &plan.refused {
        by_reason.entry(&r.message).or_default().push(&r.id);
    }
    for (message, ids) in by_reason {
        println!("  {} × {message}", ids.len());
        for id in ids.iter().take(5) {
            println!("      {id}");
        }
        if ids.len() > 5 {
            println!("      … and {} more", ids.len() - 5);
        }
    }
}
