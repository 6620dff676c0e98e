//! The shared context every part of tuma works through.

use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::pricing::Pricing;
use crate::providers::Providers;
use crate::queue::Wakers;
use crate::router::Router;
use crate::secrets::OtpKeys;
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
    /// The dispatcher's statements, batched across worker slots, and the
    /// API's across requests: their tasks start with the app and end with
    /// [`App::stop`].
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
    /// Seal OTP codes before they are stored and open them to send.
    pub otp_keys: OtpKeys,
    /// Provider answers this process could not record, and calls cut short.
    pub unsettled: crate::unsettled::Unsettled,
    /// Calls still listened to after their provider's timeout.
    pub late: crate::late_answers::LateAnswers,
    /// This process among the others on the database: who holds a lease or
    /// opened a shared circuit.
    pub instance: String,
    /// The tokens this process holds from the providers' shared buckets.
    pub global_rate: crate::global_rate::GlobalRate,
    /// Reads circuits other processes opened into this one's breakers.
    pub circuits: crate::shared_circuits::SharedCircuits,
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
    /// The OTP key is missing or unusable.
    #[error(transparent)]
    OtpKey(#[from] crate::secrets::KeyError),
}

impl App {
    /// Builds the app from a configuration and an open, migrated database,
    /// with the configured providers and the system clock.
    pub fn new(config: Config, db: Db) -> Result<App, StartError> {
        let providers = match config.secrets {
            crate::config::Secrets::Read => Providers::from_config(&config)?,
            // `send` and `replay` only enqueue: no adapter is built, so no
            // placeholder secret can reach a provider.
            crate::config::Secrets::Skip => Providers::default(),
        };
        App::with_parts(config, db, providers, Arc::new(SystemClock))
    }

    /// Builds the app with the given providers and clock (tests, benchmarks).
    /// Starts the batch tasks, on the current Tokio runtime.
    pub fn with_parts(
        config: Config,
        db: Db,
        providers: Providers,
        clock: Arc<dyn Clock>,
    ) -> Result<App, StartError> {
        let templates = Templates::load(&config.templates)?;
        let router = Router::new(&config);
        let pricing = Pricing::new(config.prices.clone());
        let otp_keys = OtpKeys::load(&config.otp, &db)?;
        let circuits = crate::shared_circuits::SharedCircuits::start(
            db.clone(),
            providers.clone(),
            clock.clone(),
        );
        Ok(App {
            pricing,
            config,
            batcher: Batcher::start(db.clone()),
            db,
            templates,
            router,
            providers,
            clock,
            wakers: Wakers::default(),
            otp_keys,
            unsettled: Default::default(),
            late: Default::default(),
            instance: format!(
                "pid {} ({})",
                std::process::id(),
                uuid::Uuid::now_v7().simple()
            ),
            global_rate: Default::default(),
            circuits,
        })
    }

    /// Stops the app's background tasks (the batch tasks, once they have run
    /// what is queued) and closes the database pool. Call it last: the
    /// workers and the API have stopped.
    pub async fn stop(&self) {
        self.circuits.stop();
        self.batcher.stop().await;
        self.db.close().await;
    }

    /// Starts housekeeping (sweeper, reconciler, webhook dispatcher), which
    /// runs in whichever one process on the database holds its lease; stop
    /// it with [`crate::housekeeping::Housekeeping::stop`] before
    /// [`App::stop`].
    pub fn start_housekeeping(self: &Arc<Self>) -> crate::housekeeping::Housekeeping {
        crate::housekeeping::Housekeeping::start(self.clone())
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
