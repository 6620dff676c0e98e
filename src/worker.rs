//! Runs the lanes as apalis workers over tuma's own backend
//! (`queue_backend.rs`), plus the sweeper and price reconciliation.
//!
//! Each lane has its own worker and concurrency; `tuma worker --lanes` runs
//! some of them only. Idle workers wake at once for new work (in-process
//! signals after this process's commits; on Postgres, also a `LISTEN` on
//! each lane's channel, which the intake transaction notifies at commit),
//! at the lane's next due time, and every `worker.poll_interval`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use tracing::{Instrument, error, info, info_span, warn};

use crate::app::App;
use crate::dispatch::handle_claimed;
use crate::queue::Lane;
use crate::queue_backend::{InFlight, LaneBackend};
use crate::store::{ClaimedDelivery, Db, StoreError};
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
    /// Drain mode ran out of time.
    #[error("drain did not finish within {0}: {1} deliveries are still due or sending")]
    DrainTimeout(String, i64),
}

/// apalis's task handler: one delivery attempt, under a hard timeout, inside
/// a span naming the delivery and the lane (so the lines logged while it runs
/// need not repeat them).
async fn handle(
    claimed: ClaimedDelivery,
    app: Data<Arc<App>>,
    lane: Data<Lane>,
    in_flight: Data<InFlight>,
) -> Result<(), BoxDynError> {
    let _handled = in_flight.ends_on_drop();
    let ClaimedDelivery { job, row } = claimed;
    let span = info_span!("job", delivery = %job.delivery_id, lane = lane.queue_name());
    async move {
        let limit = app.config.longest_send() + Duration::from_secs(5);
        let _first = (*lane == Lane::Otp).then(|| app.batcher.otp_in_flight());
        match tokio::time::timeout(limit, handle_claimed(&app, *lane, &job, row)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // Its lease runs out and whoever finds it first takes it on.
                error!(error = %e, "job failed on a database error");
                Err(e.into())
            }
            Err(_) => {
                error!("job hit the handler timeout");
                // If it had opened an attempt, the sweeper settles it saying so.
                app.unsettled.job_limit_hit(&job.job_id, limit);
                Err("handler timeout".into())
            }
        }
    }
    .instrument(span)
    .await
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

fn monitor(app: &Arc<App>, lanes: &[Lane]) -> Monitor {
    let mut monitor = Monitor::new()
        .should_restart(|ctx, err| {
            warn!(worker = %ctx.name(), error = %err, "worker stopped on an error; restarting");
            true
        })
        .shutdown_timeout(app.config.longest_send() + Duration::from_secs(5));
    for &lane in lanes {
        let app = app.clone();
        monitor = monitor.register(move |_restarts| {
            let name = worker_name(lane);
            let in_flight = InFlight::default();
            let backend = LaneBackend::new(
                app.clone(),
                lane,
                &name,
                concurrency(&app, lane),
                in_flight.clone(),
            );
            WorkerBuilder::new(name)
                .backend(backend)
                .concurrency(concurrency(&app, lane))
                .data(app.clone())
                .data(lane)
                .data(in_flight)
                .build(handle)
        });
    }
    monitor
}

/// Postgres: wakes this process's workers of a lane when any process's
/// commit notifies its channel (`Lane::channel`). Reconnects after a pause
/// when the connection drops; meanwhile the workers poll.
async fn listen(app: Arc<App>, lanes: Vec<Lane>) {
    let Db::Postgres(pool) = &app.db else {
        return;
    };
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
            listener
                .listen_all(lanes.iter().map(|lane| lane.channel()))
                .await?;
            // Anything committed before the LISTEN took hold.
            for &lane in &lanes {
                app.wakers.wake(lane);
            }
            loop {
                let note = listener.recv().await?;
                if let Some(&lane) = lanes.iter().find(|l| l.channel() == note.channel()) {
                    app.wakers.wake(lane);
                }
            }
        };
        let outcome: Result<(), sqlx::Error> = listening.await;
        if let Err(e) = outcome {
            warn!(error = %e, "listening for new deliveries failed; polling meanwhile");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs both lanes' workers and the sweeper until `stop` resolves, then
/// finishes in-flight deliveries and returns.
pub async fn run_until<F>(app: Arc<App>, stop: F) -> Result<(), WorkerError>
where
    F: Future<Output = std::io::Result<()>> + Send + 'static,
{
    run_lanes_until(app, &Lane::ALL, stop).await
}

/// Runs the workers of `lanes` (and the sweeper, the reconciler and the
/// webhook dispatcher) until `stop` resolves, then finishes in-flight
/// deliveries, gives back what was claimed and not started, and returns.
pub async fn run_lanes_until<F>(app: Arc<App>, lanes: &[Lane], stop: F) -> Result<(), WorkerError>
where
    F: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let first = sweeper::sweep(&app).await?;
    if first.resolved > 0 {
        info!(resolved = first.resolved, "recovered deliveries at start");
    }
    // The sweeper, reconciler and webhook dispatcher: in one process at a time.
    let housekeeping = app.start_housekeeping();
    let listener = tokio::spawn(listen(app.clone(), lanes.to_vec()));
    info!(
        backend = app.db.backend_name(),
        lanes = %lanes.iter().map(|l| l.queue_name()).collect::<Vec<_>>().join(","),
        otp = app.config.worker.otp_concurrency,
        notifications = app.config.worker.notification_concurrency,
        "workers started"
    );
    let result = monitor(&app, lanes)
        .run_with_signal(stop)
        .await
        .map_err(|e| WorkerError::Monitor(e.to_string()));
    // Calls past their timeout are still listened to: their answers are
    // recorded before the process ends (each for at most its grace).
    let awaited = app.late.in_flight();
    if awaited > 0 {
        info!(awaited, "waiting for late answers");
        let left = app
            .late
            .wait_idle(app.providers.longest_late_answer_grace())
            .await;
        if left > 0 {
            warn!(
                left,
                "stopped with late answers unheard; the sweeper settles them"
            );
        }
    }
    housekeeping.stop().await;
    listener.abort();
    info!("workers stopped");
    result
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
        // A late answer may yet move a delivery (or bring its retry forward).
        if due == 0 && app.late.in_flight() == 0 {
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
