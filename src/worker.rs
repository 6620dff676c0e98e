//! Runs the two lanes as apalis workers, plus the sweeper and the price
//! reconciliation of Twilio deliveries.
//!
//! Each lane is its own apalis queue with its own worker and concurrency.
//! Idle workers wake at once for new work (Postgres LISTEN/NOTIFY; in-process
//! signals after tuma's own commits on both backends, each echoed once a
//! moment later in case a fetch already running spent it) and poll every
//! `worker.poll_interval` for due retries. apalis never retries a job: every
//! job is pushed with `max_attempts = 1`, and retries are new jobs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use tracing::{error, info, warn};

use crate::app::App;
use crate::dispatch::handle_job;
use crate::queue::{DeliveryJob, Lane};
use crate::store::{Db, StoreError};
use crate::sweeper;

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// apalis's monitor failed.
    #[error("the queue monitor stopped: {0}")]
    Monitor(String),
    /// The HTTP API failed.
    #[error("the HTTP API stopped: {0}")]
    Api(String),
    /// Drain mode ran out of time.
    #[error("drain did not finish within {0}: {1} deliveries are still due or sending")]
    DrainTimeout(String, i64),
}

/// apalis's job handler: one delivery attempt, under a hard timeout.
async fn handle(
    job: DeliveryJob,
    app: Data<Arc<App>>,
    lane: Data<Lane>,
) -> Result<(), BoxDynError> {
    let limit = app.config.longest_send() + Duration::from_secs(5);
    let _first = (*lane == Lane::Otp).then(|| app.batcher.otp_in_flight());
    match tokio::time::timeout(limit, handle_job(&app, *lane, &job)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            // The sweeper finds the delivery (its job is now finished) and retries it.
            error!(delivery = %job.delivery_id, error = %e, "job failed on a database error");
            Err(e.into())
        }
        Err(_) => {
            error!(delivery = %job.delivery_id, "job hit the handler timeout");
            Err("handler timeout".into())
        }
    }
}

fn concurrency(app: &App, lane: Lane) -> usize {
    match lane {
        Lane::Otp => app.config.worker.otp_concurrency,
        Lane::Notifications => app.config.worker.notification_concurrency,
    }
}

fn worker_name(lane: Lane) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!(
        "{}-{host}-{}-{}",
        lane.queue_name(),
        std::process::id(),
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

/// A worker restarted after an error (the database went away, say) waits a
/// little longer each time, up to 30 s, instead of spinning.
async fn restart_pause<E>(restarts: usize) -> Result<(), E> {
    if restarts > 0 {
        let secs = u64::try_from(restarts.min(30)).unwrap_or(30);
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    Ok(())
}

fn poll_strategy(app: &App, lane: Lane) -> Strategy {
    let mut strategy = Strategy::new();
    if let Some(wakeups) = app.wakers.take_stream(lane) {
        strategy = strategy.stream(wakeups);
    }
    strategy.interval(app.config.worker.poll_interval)
}

fn monitor(app: &Arc<App>) -> Monitor {
    let mut monitor = Monitor::new()
        .should_restart(|ctx, err| {
            warn!(worker = %ctx.name(), error = %err, "worker stopped on an error; restarting");
            true
        })
        .shutdown_timeout(app.config.longest_send() + Duration::from_secs(5));
    for lane in Lane::ALL {
        let app = app.clone();
        monitor = match &app.db {
            Db::Sqlite(pool) => {
                let config = apalis_sqlite::Config::default()
                    .queue(lane.queue_name())
                    .heartbeat_interval(app.config.worker.heartbeat)
                    .batch_size(concurrency(&app, lane).max(1));
                let pool = pool.clone();
                monitor.register(move |restarts| {
                    let backend = SqliteStorage::<DeliveryJob>::new(&pool)
                        .with_config(config.clone())
                        .poll_with_strategy(poll_strategy(&app, lane))
                        .before_start(move |_| restart_pause(restarts));
                    WorkerBuilder::new(worker_name(lane))
                        .backend(backend)
                        .concurrency(concurrency(&app, lane))
                        .data(app.clone())
                        .data(lane)
                        .build(handle)
                })
            }
            Db::Postgres(pool) => {
                let config = apalis_postgres::Config::default()
                    .queue(lane.queue_name())
                    .heartbeat_interval(app.config.worker.heartbeat)
                    .batch_size(concurrency(&app, lane).max(1));
                let pool = pool.clone();
                monitor.register(move |restarts| {
                    let notify =
                        apalis_postgres::Pubsub::new(pool.clone(), lane.queue_name().to_owned());
                    let strategy = poll_strategy(&app, lane).stream(notify);
                    let backend = PostgresStorage::<DeliveryJob>::new(&pool)
                        .with_config(config.clone())
                        .poll_with_strategy(strategy)
                        .before_start(move |_| restart_pause(restarts));
                    WorkerBuilder::new(worker_name(lane))
                        .backend(backend)
                        .concurrency(concurrency(&app, lane))
                        .data(app.clone())
                        .data(lane)
                        .build(handle)
                })
            }
        };
    }
    monitor
}

/// Runs workers and the sweeper until `stop` resolves, then finishes in-flight
/// deliveries and returns.
pub async fn run_until<F>(app: Arc<App>, stop: F) -> Result<(), WorkerError>
where
    F: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let first = sweeper::sweep(&app).await?;
    if first.requeued > 0 || first.resolved > 0 {
        info!(
            requeued = first.requeued,
            resolved = first.resolved,
            "recovered deliveries at start"
        );
    }
    let sweeper = tokio::spawn(sweeper::run(app.clone()));
    let reconciler = tokio::spawn(crate::reconcile::run(app.clone()));
    info!(
        backend = app.db.backend_name(),
        otp = app.config.worker.otp_concurrency,
        notifications = app.config.worker.notification_concurrency,
        "workers started"
    );
    let result = monitor(&app)
        .run_with_signal(stop)
        .await
        .map_err(|e| WorkerError::Monitor(e.to_string()));
    sweeper.abort();
    reconciler.abort();
    // Leave the queue tidy for the next run.
    if let Err(e) = app.db.delete_finished_jobs(true).await {
        warn!(error = %e, "could not delete finished jobs at shutdown");
    }
    info!("workers stopped");
    result
}

/// Runs the HTTP API on `listener` and the workers in this process until
/// SIGTERM or Ctrl-C: then the API stops accepting and finishes its
/// in-flight requests while the workers finish their in-flight deliveries.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) -> Result<(), WorkerError> {
    serve_until(app, listener, shutdown_signal()).await
}

/// [`serve`] until `stop` resolves. Should either half stop on its own, the
/// other is stopped too.
pub async fn serve_until<F>(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    stop: F,
) -> Result<(), WorkerError>
where
    F: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    let tx = Arc::new(tx);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let signal_tx = tx.clone();
    let signal = tokio::spawn(async move {
        if let Err(e) = stop.await {
            warn!(error = %e, "shutdown signal failed; stopping");
        }
        signal_tx.send_replace(true);
    });
    let api_tx = tx.clone();
    let api = tokio::spawn(crate::api::serve(
        app.clone(),
        listener,
        stopped(rx.clone()),
    ));
    let api = async move {
        let result = api.await;
        api_tx.send_replace(true);
        result
    };
    let workers_tx = tx.clone();
    let workers = async move {
        let stop_rx = rx.clone();
        let result = run_until(app, async move {
            stopped(stop_rx).await;
            Ok(())
        })
        .await;
        workers_tx.send_replace(true);
        result
    };
    let (api, workers) = tokio::join!(api, workers);
    signal.abort();
    match api {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(WorkerError::Api(e.to_string())),
        Err(e) => return Err(WorkerError::Api(e.to_string())),
    }
    workers
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(app: Arc<App>) -> Result<(), WorkerError> {
    run_until(app, shutdown_signal()).await
}

/// Delivers everything due now (retries that come due meanwhile included),
/// then stops. Fails if that takes longer than `timeout`.
pub async fn drain(app: Arc<App>, timeout: Duration) -> Result<(), WorkerError> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<(), WorkerError>>();
    let watcher_app = app.clone();
    let watcher = async move {
        let outcome = watch_until_settled(&watcher_app, timeout).await;
        let _ = done_tx.send(outcome);
        Ok(())
    };
    run_until(app, watcher).await?;
    done_rx
        .await
        .unwrap_or_else(|_| Err(WorkerError::Monitor("drain watcher vanished".into())))
}

async fn watch_until_settled(app: &App, timeout: Duration) -> Result<(), WorkerError> {
    let started = tokio::time::Instant::now();
    let tick = app
        .config
        .worker
        .poll_interval
        .min(Duration::from_millis(200));
    let mut quiet = 0;
    loop {
        tokio::time::sleep(tick).await;
        let due = app.db.unsettled_due(app.clock.now()).await?;
        if due == 0 {
            quiet += 1;
            // Twice in a row: a job fetched between two counts is not missed.
            if quiet >= 2 {
                return Ok(());
            }
        } else {
            // Deliveries stranded by a dead worker come back through the
            // sweeper that `run_until` runs beside the workers.
            quiet = 0;
            if started.elapsed() >= timeout {
                return Err(WorkerError::DrainTimeout(
                    humantime::format_duration(timeout).to_string(),
                    due,
                ));
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        info!("shutdown signal received; finishing in-flight deliveries");
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
