//! The `tuma` command line: the clap commands and their dispatch. Each
//! command group lives in its own file under `cli/`.

mod budget;
mod check;
mod contract;
mod csv_send;
mod deliveries;
mod keys;
mod providers;
mod replay;
mod report;
mod send;
mod serve;
mod suppressions;
mod webhooks;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};

use crate::app::App;
use crate::config::{Config, Secrets, parse_duration_in};
use crate::store::{Db, mask_password};

/// tuma: durable OTP and notification delivery over SMS and email.
#[derive(Debug, Parser)]
#[command(name = "tuma", version, about)]
pub struct Cli {
    /// Provider, route and retry configuration.
    #[arg(
        long,
        global = true,
        env = "TUMA_CONFIG",
        default_value = "providers.toml"
    )]
    config: PathBuf,
    /// sqlite://FILE (the default, created if missing) or postgres://…
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "sqlite://tuma.db"
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// `serve` and `worker` (without `--drain`): the long-running commands.
    pub fn runs_until_stopped(&self) -> bool {
        matches!(
            self.command,
            Command::Serve { .. } | Command::Worker { drain: false, .. }
        )
    }
}
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API and the workers (or, with --no-workers, the API
    /// alone) until SIGTERM or Ctrl-C.
    Serve {
        /// Address the HTTP API listens on.
        #[arg(long, env = "TUMA_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Serve the HTTP API alone: deliveries are sent by `tuma worker`
        /// processes on the same database.
        #[arg(long)]
        no_workers: bool,
    },
    /// Manage HTTP API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Run the workers.
    Worker {
        /// Deliver everything due now, then exit.
        #[arg(long)]
        drain: bool,
        /// With --drain: give up (exit non-zero) after this long.
        #[arg(long, default_value = "10m", value_parser = worker::parse_drain_timeout)]
        timeout: Duration,
        /// The lanes to work: `otp`, `notifications` or both
        /// (`otp,notifications`), to scale them in separate processes.
        #[arg(long, default_value = "otp,notifications", value_parser = worker::parse_lanes, conflicts_with = "drain")]
        lanes: worker::Lanes,
    },
    /// Apply database migrations.
    Migrate,
    /// Validate the configuration and templates; print routes and SMS segment counts.
    Check,
    /// Enqueue a send.
    #[command(subcommand)]
    Send(send::SendCommand),
    /// Inspect deliveries.
    #[command(subcommand)]
    Deliveries(deliveries::DeliveriesCommand),
    /// Talk to one provider directly.
    #[command(subcommand)]
    Providers(providers::ProvidersCommand),
    /// Reports for finance.
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Send failed deliveries again, each as a new delivery linked to the original.
    Replay(replay::ReplayArgs),
    /// Print the HTTP API's OpenAPI 3.1 document (what GET /openapi.json serves).
    Openapi,
    /// Status webhooks: endpoints that hear of an API key's deliveries.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Budgets: spend, reservations and held deliveries; `release` sends the held.
    Budget(budget::BudgetArgs),
    /// Recipients refused because a provider said they do not exist or unsubscribed.
    #[command(subcommand)]
    Suppressions(suppressions::SuppressionsCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
    Csv,
}

/// `--since`: up to ten years back, so the start of the window is a date.
fn parse_since(s: &str) -> Result<Duration, String> {
    parse_duration_in(
        s,
        Duration::from_secs(1),
        Duration::from_secs(3650 * 24 * 3600),
    )
}

/// Runs the command line; the binary only calls this.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // The document depends on the code alone: no configuration needed.
    if let Command::Openapi = cli.command {
        contract::print_openapi();
        return Ok(());
    }
    // The configuration is checked before anything touches the database;
    // provider secrets are read only by the commands that talk to providers.
    let secrets = match &cli.command {
        Command::Serve { .. } | Command::Worker { .. } | Command::Check => Secrets::Read,
        Command::Providers(_) => Secrets::Read,
        _ => Secrets::Skip,
    };
    let config = Config::load_with(&cli.config, secrets)?;
    match cli.command {
        Command::Check => check::run(config),
        Command::Migrate => {
            let db = open(&cli.database_url, &config).await?;
            println!(
                "migrated {} database {}",
                db.backend_name(),
                mask_password(&cli.database_url)
            );
            Ok(())
        }
        Command::Serve { listen, no_workers } => {
            let app = start(&cli.database_url, config).await?;
            let out = serve::run(app.clone(), &listen, !no_workers).await;
            app.stop().await;
            out
        }
        Command::Webhooks(cmd) => {
            let db = open(&cli.database_url, &config).await?;
            let out = webhooks::run(&db, &config, cmd).await;
            db.close().await;
            out
        }
        Command::Keys(cmd) => {
            let db = open(&cli.database_url, &config).await?;
            let out = keys::run(&db, cmd).await;
            db.close().await;
            out
        }
        Command::Worker {
            drain,
            timeout,
            lanes,
        } => {
            let app = start(&cli.database_url, config).await?;
            let out = worker::run(app.clone(), drain, timeout, &lanes.0).await;
            app.stop().await;
            out
        }
        Command::Send(cmd) => {
            let app = start(&cli.database_url, config).await?;
            let out = send::run(&app, cmd).await;
            app.stop().await;
            out
        }
        Command::Providers(providers::ProvidersCommand::Test { name, to, dry_run }) => {
            providers::test(&config, &name, &to, dry_run).await
        }
        Command::Deliveries(cmd) => {
            let db = open(&cli.database_url, &config).await?;
            let out = deliveries::run(&db, &config, cmd).await;
            db.close().await;
            out
        }
        Command::Report(cmd) => {
            let db = open(&cli.database_url, &config).await?;
            report::run(db, &config, cmd).await
        }
        Command::Budget(args) => {
            budget::run(open(&cli.database_url, &config).await?, config, args).await
        }
        Command::Suppressions(cmd) => {
            suppressions::run(open(&cli.database_url, &config).await?, &config, cmd).await
        }
        Command::Replay(args) => {
            let app = start(&cli.database_url, config).await?;
            let out = replay::run(&app, args).await;
            app.stop().await;
            out
        }
        Command::Openapi => {
            contract::print_openapi();
            Ok(())
        }
    }
}

async fn open(url: &str, config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(url, App::pool_size(config, url)).await?;
    db.migrate().await?;
    Ok(db)
}

/// An app for the commands that send or enqueue. Its templates, providers
/// and OTP key are checked before the database is opened: a bad one stops
/// the command with no database created or touched.
async fn start(url: &str, config: Config) -> anyhow::Result<Arc<App>> {
    let parts = App::check_parts(&config, url)?;
    let db = open(url, &config).await?;
    let app = Arc::new(App::from_parts(
        config,
        db,
        parts,
        Arc::new(crate::clock::SystemClock),
    ));
    // Circuits other processes hold open count from this process's first send.
    crate::shared_circuits::refresh(&app.db, &app.providers, app.clock.now()).await?;
    Ok(app)
}

/// `--provider NAME` must be a configured provider or one in the history:
/// a typo would otherwise match nothing, silently.
async fn check_provider_filter(db: &Db, config: &Config, name: &str) -> anyhow::Result<()> {
    if config.provider(name).is_some() || db.provider_in_history(name).await? {
        return Ok(());
    }
    let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
    bail!(
        "--provider: no provider is named `{name}`, and no delivery ever went to one (configured: {})",
        names.join(", ")
    )
}
