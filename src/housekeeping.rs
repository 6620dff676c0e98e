//! Housekeeping runs in one process at a time.
//!
//! The sweeper (lease recovery, orphans, finished jobs), the price
//! reconciler and the webhook dispatcher run in the process that holds the
//! `housekeeping` row of `housekeeping_leases`: taken for [`LEASE`] and
//! renewed every [`RENEW`]. A process that cannot renew in time (it lost the
//! database, or another took the lease) stops them; one that dies leaves the
//! row to expire, and the next process to try takes it over: within
//! `LEASE + RENEW` of the last renewal. A process that stops gives the lease
//! up at once. Every statement they run is conditional (on status, job id,
//! lease), so the moment two overlap, when a stalled holder has not yet
//! noticed, does no harm: it only does the work twice.
//!
//! Started and stopped with the workers (`App::start_housekeeping`).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::app::App;

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often the holder renews it (and others try to take it).
pub const RENEW: Duration = Duration::from_secs(2);
/// The lease's row.
pub const NAME: &str = "housekeeping";

/// The running lease loop.
#[derive(Debug)]
pub struct Housekeeping {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Housekeeping {
    /// Starts trying for the lease, at once and then every [`RENEW`].
    pub fn start(app: Arc<App>) -> Housekeeping {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(app, rx));
        Housekeeping { stop, task }
    }

    /// Stops the tasks and gives the lease up.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            warn!(error = %e, "housekeeping stopped abnormally");
        }
    }
}

/// The tasks that run under the lease.
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn spawn(app: &Arc<App>) -> Tasks {
        Tasks(vec![
            tokio::spawn(crate::sweeper::run(app.clone())),
            tokio::spawn(crate::reconcile::run(app.clone())),
            tokio::spawn(crate::webhooks::dispatch::run(app.clone())),
        ])
    }

    fn abort(self) {
        for task in self.0 {
            task.abort();
        }
    }
}

async fn run(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tasks: Option<Tasks> = None;
    let mut renewed = Instant::now();
    loop {
        let now = app.clock.now();
        let until = now + chrono::Duration::from_std(LEASE).unwrap_or(chrono::Duration::MAX);
        match app.db.take_lease(NAME, &app.instance, now, until).await {
            Ok(true) => {
                renewed = Instant::now();
                if tasks.is_none() {
                    info!(holder = %app.instance, "housekeeping lease taken: sweeper, reconciler and webhooks run here");
                    tasks = Some(Tasks::spawn(&app));
                }
            }
            Ok(false) => {
                if let Some(t) = tasks.take() {
                    warn!(
                        "housekeeping lease taken by another process: stopping housekeeping here"
                    );
                    t.abort();
                }
            }
            Err(e) => {
                warn!(error = %e, "could not renew the housekeeping lease; will try again");
                // Stop before the lease can have expired for the others.
                if tasks.is_some() && renewed.elapsed() + RENEW >= LEASE {
                    warn!("housekeeping lease not renewed in time: stopping housekeeping here");
                    if let Some(t) = tasks.take() {
                        t.abort();
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(t) = tasks.take() {
        t.abort();
        if let Err(e) = app.db.release_lease(NAME, &app.instance).await {
            warn!(error = %e, "could not give the housekeeping lease up; it expires by itself");
        }
    }
}
