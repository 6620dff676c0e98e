//! tuma: a durable delivery worker for one-time codes and notifications over
//! SMS and email. See ARCHITECTURE.md for the map.

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod delivery_view;
pub mod digest;
pub mod dispatch;
pub mod domain;
pub mod egress;
pub mod global_rate;
pub mod housekeeping;
pub mod intake;
pub mod late_answers;
pub mod pricing;
pub mod providers;
pub mod pumping;
pub mod queue;
pub mod queue_backend;
pub mod receipts;
pub mod reconcile;
pub mod refusal;
pub mod replay;
pub mod reports;
pub mod retry;
pub mod router;
pub mod secrets;
pub mod serve;
pub mod settings;
pub mod shared_circuits;
pub mod spend;
pub mod store;
pub mod suppression;
pub mod sweeper;
pub mod templates;
pub mod unsettled;
pub mod webhooks;
pub mod worker;

/// Sets up logging on stderr: human-readable, or JSON with `TUMA_LOG_FORMAT=json`;
/// `RUST_LOG` filters (default: `info` for tuma, `warn` for the rest).
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour only on a terminal, and never when NO_COLOR is set (no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if std::env::var("TUMA_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
