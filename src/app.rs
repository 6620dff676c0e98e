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
    /// The configuration names something unusable (templates, the OTP key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// What an app is built from besides its database and clock: the
/// templates, the provider adapters and the OTP keys, each read and checked
/// by [`App::check_parts`] before the database is opened.
#[derive(Debug)]
pub struct Parts {
    templates: Templates,
    providers: Providers,
    otp_keys: OtpKeys,
}

/// The providers of a configuration: none when its secrets were not read.
fn providers_of(config: &Config) -> Result<Providers, StartError> {
    Ok(match config.secrets {
        crate::config::Secrets::Read => Providers::from_config(config)?,
        // `send` and `replay` only enqueue: no adapter is built, so no
        // placeholder secret can reach a provider.
        crate::config::Secrets::Skip => Providers::default(),
    })
}

impl App {
    /// Builds the app from a configuration and an open, migrated database,
    /// with the configured providers and the system clock.
    pub fn new(config: Config, db: Db) -> Result<App, StartError> {
        let providers = providers_of(&config)?;
        App::with_parts(config, db, providers, Arc::new(SystemClock))
    }

    /// Reads and checks what an app on the database at `url` needs from its
    /// configuration: the templates (`Templates::load`, whose checks `tuma
    /// check` makes too), the providers and the OTP keys (from `otp.key_env`,
    /// or the SQLite key file beside the database). Called before the
    /// database is opened, so a bad template set or an unset or wrong key
    /// stops a command as every configuration error does, naming the file
    /// and the key, with no database created or touched.
    pub fn check_parts(config: &Config, url: &str) -> Result<Parts, StartError> {
        let templates = Templates::load_configured(config)?;
        let db_file = crate::store::DbFile::of_url(url)?;
        let otp_keys = OtpKeys::load(&config.otp, &db_file).map_err(|e| {
            e.in_config(&config.file)
                .map_or_else(StartError::OtpKey, StartError::Config)
        })?;
        let providers = providers_of(config)?;
        Ok(Parts {
            templates,
            providers,
            otp_keys,
        })
    }

    /// Builds the app from [`App::check_parts`]'s parts and an open, migrated
    /// database. Starts the batch tasks, on the current Tokio runtime.
    pub fn from_parts(config: Config, db: Db, parts: Parts, clock: Arc<dyn Clock>) -> App {
        let Parts {
            templates,
            providers,
            otp_keys,
        } = parts;
        App::assemble(config, db, templates, providers, otp_keys, clock)
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
        let otp_keys = OtpKeys::load(&config.otp, &db.file())?;
        Ok(App::assemble(
            config, db, templates, providers, otp_keys, clock,
        ))
    }

    fn assemble(
        config: Config,
        db: Db,
        templates: Templates,
        providers: Providers,
        otp_keys: OtpKeys,
        clock: Arc<dyn Clock>,
    ) -> App {
        let router = Router::new(&config);
        let pricing = Pricing::new(config.prices.clone());
        let circuits = crate::shared_circuits::SharedCircuits::start(
            db.clone(),
            providers.clone(),
            clock.clone(),
        );
        App {
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
        }
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

    /// The size of the database pool of a process on the database at
    /// `url`: `[database] max_connections`, or the backend's default
    /// ([`crate::config::DatabaseConfig::pool_size`]).
    pub fn pool_size(config: &Config, url: &str) -> u32 {
        config.database.pool_size(&config.worker, url)
    }
}
