//! The sweeper: housekeeping beside the workers, one callable task
//! ([`sweep`]) run at worker start and then every `worker.sweep_interval`:
//! - a delivery left in `sending` whose lease ran out (its worker died, or
//!   outlived its own time limit) has its attempt closed: with the
//!   provider's answer when this process kept it (recording it had failed),
//!   else as `unknown` with its own cause (`UnknownCause`), and is retried;
//!   whichever process finds it first does it, guarded by its token;
//! - Idempotency-Keys older than 24 h are deleted;
//! - held deliveries whose budget period ended are released, held ones past
//!   their `expires_at` (an OTP's TTL, a notification's deadline) expired, and budget reservations a lost process left settled
//!   (`spend::sweep`); suppressions lapse;
//! - the apalis queue an earlier tuma kept is retired once empty.
//!
//! A pending delivery needs no sweeping: it is due by its own row, and a
//! claim whose worker died is claimed again once its lease runs out.

use tracing::{Instrument, info, info_span, warn};

use crate::app::App;
use crate::dispatch::resolve_interrupted;
use crate::domain::DeliveryStatus;
use crate::domain::unknown::UnknownCause;
use crate::store::StoreError;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Interrupted sends settled.
    pub resolved: u64,
}

/// How many interrupted sends one sweep settles; the next sweep takes the rest.
const BATCH: i64 = 1000;

/// Runs one sweep.
pub async fn sweep(app: &App) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    let now = app.clock.now();
    let lease = crate::queue_backend::lease(&app.config);
    // Sending for two leases: no worker could still be on it.
    let stuck_before = now - chrono::Duration::from_std(lease * 2).unwrap_or(chrono::Duration::MAX);
    for id in app.db.expired_leases(now, BATCH).await? {
        if let Some(delivery) = app.db.delivery(&id).await?
            && delivery.status == DeliveryStatus::Sending
        {
            let cause = if delivery.row.updated_at < stuck_before {
                UnknownCause::Stuck {
                    longest_send: app.config.longest_send(),
                }
            } else {
                UnknownCause::WorkerStopped
            };
            let span = info_span!("settle", delivery = %delivery.row.id);
            resolve_interrupted(app, &delivery, cause)
                .instrument(span)
                .await?;
            report.resolved += 1;
        }
    }
    // Held deliveries whose budget period ended; held ones past their expires_at.
    crate::spend::sweep(app, now).await?;
    crate::suppression::sweep(app, now).await?;
    app.db.retire_apalis_queue().await?;
    // Idempotency-Keys are remembered for 24 h.
    app.db
        .purge_idempotency_keys(
            now - chrono::Duration::from_std(crate::intake::IDEMPOTENCY_TTL)
                .unwrap_or(chrono::Duration::MAX),
        )
        .await?;
    if report.resolved > 0 {
        info!(resolved = report.resolved, "sweeper recovered deliveries");
        for lane in crate::queue::Lane::ALL {
            app.wakers.wake(lane);
        }
    }
    Ok(report)
}

/// Runs forever: sweeps every `worker.sweep_interval`, logging failures.
pub async fn run(app: std::sync::Arc<App>) {
    let mut tick = tokio::time::interval(app.config.worker.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; the worker swept just before starting this.
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&app).await {
            warn!(error = %e, "housekeeping failed; will try again");
        }
    }
}
