//! tuma: a durable delivery worker for one-time codes and notifications over
//! SMS and email. See ARCHITECTURE.md for the map.

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod intake;
pub mod pricing;
pub mod providers;
pub mod queue;
pub mod receipts;
pub mod reconcile;
pub mod replay;
pub mod reports;
pub mod retry;
pub mod router;
pub mod store;
pub mod sweeper;
pub mod templates;
pub mod worker;

/// Sets up logging on stderr: human-readable, or JSON with `TUMA_LOG_FORMAT=json`;
/// `RUST_LOG` filters (default: `info` for tuma, `warn` for the rest).
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("TUMA_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
