//! The shared context every part of tuma works through.

use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::pricing::Pricing;
use crate::providers::Providers;
use crate::queue::Wakers;
use crate::router::Router;
use crate::store::{Batcher, Db};
use crate::templates::Templates;

/// Configuration, storage, templates, routes and providers: built once at
/// start and shared (behind an `Arc`) by intake, workers and the sweeper.
#[derive(Debug)]
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// The database (queue and records).
    pub db: Db,
    /// The dispatcher's statements, batched across worker slots.
    pub batcher: Batcher,
    /// Compiled templates.
    pub templates: Templates,
    /// Routing table.
    pub router: Router,
    /// Provider adapters with their limiters.
    pub providers: Providers,
    /// Cost estimates for providers that do not say.
    pub pricing: Pricing,
    /// Where tuma's own timestamps come from.
    pub clock: Arc<dyn Clock>,
    /// Wakes this process's idle workers after a push.
    pub wakers: Wakers,
}

/// Why tuma could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Templates failed to load.
    #[error(transparent)]
    Templates(#[from] crate::templates::TemplateError),
    /// A provider failed to build.
    #[error(transparent)]
    Provider(#[from] crate::providers::BuildError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl App {
    /// Builds the app from a configuration and an open, migrated database,
    /// with the configured providers and the system clock.
    pub fn new(config: Config, db: Db) -> Result<App, StartError> {
        let providers = Providers::from_config(&config)?;
        App::with_parts(config, db, providers, Arc::new(SystemClock))
    }

    /// Builds the app with the given providers and clock (tests, benchmarks).
    pub fn with_parts(
        config: Config,
        db: Db,
        providers: Providers,
        clock: Arc<dyn Clock>,
    ) -> Result<App, StartError> {
        let templates = Templates::load(&config.templates)?;
        let router = Router::new(&config);
        let pricing = Pricing::new(config.prices.clone());
        Ok(App {
            pricing,
            config,
            batcher: Batcher::new(db.clone()),
            db,
            templates,
            router,
            providers,
            clock,
            wakers: Wakers::default(),
        })
    }

    /// The size of the database pool: a connection per worker slot, up to
    /// 16, and six for the queue's fetches and acks, the sweeper and the API.
    /// It need not grow with more slots: their statements go through the
    /// batch tasks (`store/batch.rs`), each of which uses one connection at a
    /// time.
    pub fn pool_size(config: &Config) -> u32 {
        let workers = config.worker.otp_concurrency + config.worker.notification_concurrency;
        u32::try_from(workers.min(16) + 6).unwrap_or(u32::MAX)
    }
}
