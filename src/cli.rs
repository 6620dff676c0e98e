//! The `tuma` command line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::config::{Config, ProviderKind, parse_duration};
use crate::domain::segments::count_segments;
use crate::domain::{Channel, DeliveryStatus};
use crate::intake::{NotificationRequest, OtpRequest};
use crate::replay::{ReplayFilter, ReplayPlan, os_user};
use crate::reports::{CostParams, CostQuery, cost_report};
use crate::store::{AttemptRow, Db, Delivery, ListFilter, ReceiptRow, mask_password};
use crate::worker;

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API and the workers until SIGTERM or Ctrl-C.
    Serve {
        /// Address the HTTP API listens on.
        #[arg(long, env = "TUMA_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Manage HTTP API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run the workers.
    Worker {
        /// Deliver everything due now, then exit.
        #[arg(long)]
        drain: bool,
        /// With --drain: give up (exit non-zero) after this long.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Apply database migrations.
    Migrate,
    /// Validate the configuration and templates; print routes and SMS segment counts.
    Check,
    /// Enqueue a send.
    #[command(subcommand)]
    Send(SendCommand),
    /// Inspect deliveries.
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Talk to one provider directly.
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Reports for finance.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Send failed deliveries again, each as a new delivery linked to the original.
    Replay(ReplayArgs),
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
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

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Delivery ids; without them, the filters below choose.
    ids: Vec<String>,
    /// Status to replay (failed, undelivered, expired).
    #[arg(long, default_value = "failed")]
    status: String,
    /// Only those created within this long, e.g. 2h.
    #[arg(long, value_parser = parse_duration)]
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
    /// Show what would be replayed and refused; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask before replaying.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
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
    /// Revoke a key by name; it stops working at once.
    Revoke {
        /// The key's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProvidersCommand {
    /// Send one test message through one provider, outside the queue (nothing
    /// is recorded), and print its answer.
    Test {
        /// The provider's name in providers.toml.
        name: String,
        /// Phone number or email address.
        #[arg(long)]
        to: String,
        /// Print the exact request, secrets masked, instead of sending it.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SendCommand {
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
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// A templated notification.
    Notification {
        /// Phone number or email address.
        #[arg(long)]
        to: String,
        /// Template name (a folder under templates/).
        #[arg(long)]
        template: String,
        /// A template variable, NAME=VALUE; repeat for more.
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Template locale (en, sw, …).
        #[arg(long)]
        locale: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
}

#[derive(Debug, Args)]
struct OutputArgs {
    /// `id` prints the new delivery id alone; `json` prints the record.
    #[arg(long, value_enum, default_value_t = SendFormat::Id)]
    format: SendFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SendFormat {
    Id,
    Json,
}

#[derive(Debug, Subcommand)]
enum DeliveriesCommand {
    /// One delivery with its attempts.
    Show {
        /// The delivery id.
        id: String,
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
    /// Deliveries, newest first.
    List {
        /// Only this status (pending, sending, sent, delivered, undelivered, failed, expired).
        #[arg(long)]
        status: Option<String>,
        /// Only this channel (sms, email).
        #[arg(long)]
        channel: Option<String>,
        /// Only those created within this long, e.g. 24h.
        #[arg(long, value_parser = parse_duration)]
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
enum ShowFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
    Csv,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// Runs the command line; the binary only calls this.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // The configuration is checked before anything touches the database.
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Check => check(config),
        Command::Migrate => {
            let db = open(&cli.database_url, &config).await?;
            println!(
                "migrated {} database {}",
                db.backend_name(),
                mask_password(&cli.database_url)
            );
            Ok(())
        }
        Command::Serve { listen } => {
            let app = start(&cli.database_url, config).await?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("--listen {listen}: cannot listen there"))?;
            worker::serve(app, listener).await?;
            Ok(())
        }
        Command::Keys(cmd) => {
            let db = open(&cli.database_url, &config).await?;
            let out = keys(&db, cmd).await;
            db.close().await;
            out
        }
        Command::Worker { drain, timeout } => {
            let app = start(&cli.database_url, config).await?;
            if drain {
                worker::drain(app, timeout).await?;
            } else {
                worker::run(app).await?;
            }
            Ok(())
        }
        Command::Send(cmd) => {
            let app = start(&cli.database_url, config).await?;
            let (delivery, out) = match cmd {
                SendCommand::Otp {
                    to,
                    code,
                    channel,
                    locale,
                    ttl,
                    out,
                } => {
                    let channel = channel
                        .map(|c| c.parse::<Channel>())
                        .transpose()
                        .map_err(anyhow::Error::msg)?;
                    let d = app
                        .enqueue_otp(OtpRequest {
                            to,
                            code,
                            channel,
                            locale,
                            ttl,
                        })
                        .await?;
                    (d, out)
                }
                SendCommand::Notification {
                    to,
                    template,
                    vars,
                    locale,
                    out,
                } => {
                    let vars: Map<String, Value> = vars
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect();
                    let d = app
                        .enqueue_notification(NotificationRequest {
                            to,
                            template,
                            locale,
                            vars,
                            send_at: None,
                        })
                        .await?;
                    (d, out)
                }
            };
            match out.format {
                SendFormat::Id => println!("{}", delivery.row.id),
                SendFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&delivery_json(
                        &delivery,
                        None,
                        app.config.receipts.no_receipt_after
                    ))?
                ),
            }
            app.db.close().await;
            Ok(())
        }
        Command::Providers(ProvidersCommand::Test { name, to, dry_run }) => {
            provider_test(&config, &name, &to, dry_run).await
        }
        Command::Deliveries(cmd) => {
            let db = open(&cli.database_url, &config).await?;
            let out = deliveries(&db, cmd, config.receipts.no_receipt_after).await;
            db.close().await;
            out
        }
        Command::Report(ReportCommand::Costs {
            since,
            from,
            to,
            by,
            receipt_horizon,
            format,
        }) => {
            let db = open(&cli.database_url, &config).await?;
            let params = CostParams {
                since,
                from,
                to,
                by: Some(by),
                receipt_horizon: Some(receipt_horizon),
            };
            let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
            let report = cost_report(&db, &CostQuery::from_params(&params, now)?, now).await;
            db.close().await;
            let report = report?;
            match format {
                ListFormat::Table => print!("{}", report.to_table()),
                ListFormat::Csv => print!("{}", report.to_csv()),
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(())
        }
        Command::Replay(args) => {
            let app = start(&cli.database_url, config).await?;
            replay(&app, args).await
        }
    }
}

async fn provider_test(config: &Config, name: &str, to: &str, dry_run: bool) -> anyhow::Result<()> {
    let Some(provider) = config.provider(name) else {
        let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no provider is named `{name}` (configured: {})",
            names.join(", ")
        );
    };
    let recipient = crate::domain::Recipient::parse(to, config.otp.default_region)
        .map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    if !provider.kind.channels().contains(&recipient.channel()) {
        bail!(
            "provider `{name}` ({}) cannot send {}",
            provider.kind.as_str(),
            recipient.channel()
        );
    }
    let providers = crate::providers::Providers::from_config(config)?;
    let handle = providers
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("provider `{name}` was not built"))?;
    let text = format!("Test message from tuma via {name}.");
    let content = match &recipient {
        crate::domain::Recipient::Phone(p) => crate::providers::Content::Sms {
            to: p.clone(),
            text,
        },
        crate::domain::Recipient::Email(e) => crate::providers::Content::Email {
            to: e.clone(),
            subject: "tuma test message".into(),
            text,
            html: None,
        },
    };
    let message = crate::providers::OutgoingMessage {
        delivery_id: format!("test-{}", uuid::Uuid::now_v7()),
        kind: crate::domain::DeliveryKind::Notification,
        content,
    };
    if dry_run {
        println!("{}", handle.provider.dry_run(&message));
        return Ok(());
    }
    let started = std::time::Instant::now();
    match tokio::time::timeout(handle.timeout, handle.provider.send(&message)).await {
        Ok(Ok(accepted)) => {
            println!("accepted by {name} in {} ms", started.elapsed().as_millis());
            println!("  message id  {}", accepted.provider_message_id);
            if let Some(s) = accepted.provider_status {
                println!("  status      {s}");
            }
            if let Some(c) = accepted.cost {
                println!("  cost        {c}");
            }
            if let Some(s) = accepted.segments {
                println!("  segments    {s}");
            }
            Ok(())
        }
        Ok(Err(e)) => bail!("{name} refused it: {e}"),
        Err(_) => bail!(
            "{name} did not answer within {}",
            humantime::format_duration(handle.timeout)
        ),
    }
}

async fn open(url: &str, config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(url, App::pool_size(config)).await?;
    db.migrate().await?;
    Ok(db)
}

async fn start(url: &str, config: Config) -> anyhow::Result<Arc<App>> {
    let db = open(url, &config).await?;
    Ok(Arc::new(App::new(config, db)?))
}

fn check(config: Config) -> anyhow::Result<()> {
    let templates = crate::templates::Templates::load(&config.templates)?;
    crate::providers::Providers::from_config(&config)?;
    println!("configuration {} is valid", config.file.display());
    println!();
    println!("providers:");
    for p in &config.providers {
        let detail = match &p.kind {
            ProviderKind::Outbox(c) => format!("writes to {}", c.dir.display()),
            ProviderKind::Smtp(c) => {
                format!("{}:{} ({}) from {}", c.host, c.port, c.tls.as_str(), c.from)
            }
            ProviderKind::Twilio(c) => format!(
                "{} account {}{}",
                c.base_url,
                c.account_sid,
                if c.status_callback_url.is_some() {
                    ", status callbacks on"
                } else {
                    ""
                }
            ),
            ProviderKind::AfricasTalking(c) => format!(
                "{} as {}{}",
                c.base_url,
                c.username,
                c.sender_id
                    .as_deref()
                    .map(|s| format!(", sender id {s}"))
                    .unwrap_or_default()
            ),
        };
        println!(
            "  {:<16} {:<15} {}/s (burst {}), timeout {}  {detail}",
            p.name,
            p.kind.as_str(),
            p.rate_limit.per_second,
            p.rate_limit.burst,
            humantime::format_duration(p.timeout)
        );
    }
    println!();
    println!("routes (longest prefix wins; then failover in order):");
    for r in &config.routes {
        println!(
            "  {:<6} {:<10} {}",
            r.channel,
            r.prefix.as_deref().unwrap_or("(default)"),
            r.providers.join(" -> ")
        );
    }
    if !config.prices.is_empty() {
        println!();
        println!("prices (estimates where a provider does not say its cost):");
        for p in &config.prices {
            println!(
                "  {:<16} {:<8} {} per segment",
                p.provider, p.prefix, p.per_segment
            );
        }
    }
    println!();
    println!(
        "circuit breaker: {} transient failures in a row skip a provider for {}",
        config.circuit_breaker.failures,
        humantime::format_duration(config.circuit_breaker.cooldown)
    );
    println!(
        "retry: {} attempts, {} doubling to {}{}",
        config.retry.max_attempts,
        humantime::format_duration(config.retry.initial_delay),
        humantime::format_duration(config.retry.max_delay),
        if config.retry.jitter {
            ", with jitter"
        } else {
            ""
        }
    );
    println!();
    println!("SMS templates (with a 6-digit code and sample values):");
    let mut problems = Vec::new();
    for (name, locale, parts) in templates.catalogue() {
        if !parts.contains("sms.txt") {
            continue;
        }
        let mut vars = Map::new();
        vars.insert("code".into(), json!("123456"));
        vars.insert("ttl_minutes".into(), json!(5));
        vars.insert("name".into(), json!("Amina Wanjiru"));
        match templates.render(name, locale, Channel::Sms, &vars) {
            Ok(r) => {
                let info = count_segments(&r.text);
                println!(
                    "  {name:<12} {locale:<4} {} {:>3} units, {} segment{}",
                    info.encoding,
                    info.units,
                    info.segments,
                    if info.segments == 1 { "" } else { "s" }
                );
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut email = BTreeMap::new();
    for (name, locale, parts) in templates.catalogue() {
        if parts.contains("email.txt") {
            email.entry(name).or_insert_with(Vec::new).push(locale);
        }
    }
    println!();
    println!("email templates:");
    for (name, locales) in email {
        println!("  {name:<12} {}", locales.join(", "));
    }
    if !problems.is_empty() {
        bail!("templates with problems:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

async fn deliveries(
    db: &Db,
    cmd: DeliveriesCommand,
    no_receipt_after: std::time::Duration,
) -> anyhow::Result<()> {
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
                    let mut v = delivery_json(&d, Some(&attempts), no_receipt_after);
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("receipts".into(), json!(receipts));
                        obj.insert("replay_of".into(), json!(origin));
                        obj.insert("replays".into(), json!(replays));
                    }
                    println!("{}", serde_json::to_string_pretty(&v)?)
                }
                ShowFormat::Text => {
                    print_delivery(&d, &attempts, &receipts, no_receipt_after)?;
                    if let Some(o) = origin {
                        let by = o.replayed_by.as_deref().unwrap_or("?");
                        println!("replay of  {} (by {by})", o.replay_of);
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
        DeliveriesCommand::List {
            status,
            channel,
            since,
            provider,
            error_code,
            limit,
            format,
        } => {
            let filter = ListFilter {
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
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => {
                    let list: Vec<Value> = rows
                        .iter()
                        .map(|d| delivery_json(d, None, no_receipt_after))
                        .collect();
                    writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                }
                ListFormat::Csv => {
                    writeln!(
                        out,
                        "id,kind,channel,recipient,status,attempts,provider,provider_message_id,cost,currency,cost_is_estimate,segments,created_at,sent_at,last_error"
                    )?;
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
                        ];
                        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                        writeln!(out, "{}", line.join(","))?;
                    }
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

/// `tuma replay`: show the plan, ask, replay with progress, summarise.
async fn replay(app: &App, a: ReplayArgs) -> anyhow::Result<()> {
    let plan = if a.ids.is_empty() {
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
            limit: Some(a.limit),
        };
        app.plan_replay_matching(&filter).await?
    } else {
        app.plan_replay(&a.ids, a.force).await?
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
        .execute_replay(&plan, &actor, a.force, |done, total| {
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

async fn keys(db: &Db, cmd: KeysCommand) -> anyhow::Result<()> {
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
                bail!("a key named `{name}` exists; revoke it or pick another name");
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
                "{:<24}  {:<24}  {:<20}  {:<20}  REVOKED",
                "NAME", "SCOPES", "CREATED (UTC)", "LAST USED"
            )?;
            let when = |t: Option<chrono::DateTime<Utc>>| {
                t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".into())
            };
            for k in db.api_keys().await? {
                writeln!(
                    out,
                    "{:<24}  {:<24}  {:<20}  {:<20}  {}",
                    k.name,
                    k.scopes,
                    when(Some(k.created_at)),
                    when(k.last_used_at),
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
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A delivery as JSON; the OTP code is never in it (bodies are stored redacted).
/// `display_status` is `no receipt` for a delivery sent longer than
/// `no_receipt_after` ago without a final receipt, else the status.
pub fn delivery_json(
    d: &Delivery,
    attempts: Option<&[AttemptRow]>,
    no_receipt_after: std::time::Duration,
) -> Value {
    let r = &d.row;
    let mut v = json!({
        "id": r.id,
        "kind": r.kind,
        "channel": r.channel,
        "recipient": r.recipient,
        "status": r.status,
        "display_status": d.display_status(Utc::now(), no_receipt_after),
        "template": r.template,
        "locale": r.locale,
        "provider": r.provider,
        "provider_message_id": r.provider_message_id,
        "cost": d.cost.map(|c| c.to_decimal_string()),
        "currency": r.currency,
        "cost_is_estimate": r.cost_is_estimate,
        "segments": r.segments,
        "encoding": r.encoding,
        "attempts": r.attempts,
        "max_attempts": r.max_attempts,
        "last_error": r.last_error,
        "subject": r.subject,
        "body": r.body,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "sent_at": r.sent_at,
        "delivered_at": r.delivered_at,
        "price_reconciled_at": r.reconciled_at,
        "price_note": r.reconcile_note,
        "expires_at": r.expires_at,
        "next_attempt_at": r.next_attempt_at,
    });
    if let (Some(list), Some(obj)) = (attempts, v.as_object_mut()) {
        obj.insert("attempt_log".into(), json!(list));
    }
    v
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
            a.outcome.as_deref().unwrap_or("open"),
            a.started_at.format("%H:%M:%S%.3f"),
            a.latency_ms.map(|l| format!("{l}ms ")).unwrap_or_default(),
            a.error
                .as_deref()
                .or(a.provider_message_id.as_deref())
                .unwrap_or("")
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
