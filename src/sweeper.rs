//! The sweeper: the safety net under the queue.
//!
//! It runs at worker start and then every `worker.sweep_interval`:
//! - a pending delivery whose job is gone, finished or held by a dead worker
//!   gets a new job (the old one, should it ever run, is stale and ignored);
//! - a delivery left in `sending` by a dead worker (or for longer than any
//!   send may take) has its attempt closed as `unknown` and is retried;
//! - finished queue jobs are deleted, so the queue stays small;
//! - Idempotency-Keys older than 24 h are deleted.

use chrono::Utc;
use tracing::{info, warn};

use crate::app::App;
use crate::dispatch::resolve_interrupted;
use crate::domain::DeliveryStatus;
use crate::store::StoreError;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Pending deliveries given a new job.
    pub requeued: u64,
    /// Interrupted sends settled.
    pub resolved: u64,
    /// Finished queue jobs deleted.
    pub jobs_deleted: u64,
}

/// How many orphans one sweep handles; the next sweep takes the rest.
const BATCH: i64 = 1000;

/// Runs one sweep.
pub async fn sweep(app: &App) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    let now = app.clock.now();
    // Worker liveness is apalis's heartbeat, in real time. A worker busy with
    // its longest possible send may skip beats, so give it that long too.
    let window = (app.config.worker.heartbeat * 3).max(app.config.longest_send());
    let alive_since =
        Utc::now() - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let stale_before = now
        - chrono::Duration::from_std(app.config.longest_send() * 2)
            .unwrap_or(chrono::Duration::MAX);
    for orphan in app.db.orphans(alive_since, stale_before, BATCH).await? {
        match orphan.status.parse::<DeliveryStatus>() {
            Ok(DeliveryStatus::Pending) => {
                let kind = orphan
                    .kind
                    .parse()
                    .map_err(|e: String| StoreError::Corrupt(e))?;
                if app
                    .db
                    .requeue(
                        &orphan.id,
                        orphan.job_id.as_deref(),
                        kind,
                        orphan.next_attempt_at,
                        now,
                    )
                    .await?
                {
                    report.requeued += 1;
                }
            }
            Ok(DeliveryStatus::Sending) => {
                if let Some(delivery) = app.db.delivery(&orphan.id).await?
                    && delivery.status == DeliveryStatus::Sending
                {
                    resolve_interrupted(app, &delivery).await?;
                    report.resolved += 1;
                }
            }
            _ => {}
        }
    }
    report.jobs_deleted = app.db.delete_finished_jobs(true).await?;
    // Idempotency-Keys are remembered for 24 h.
    app.db
        .purge_idempotency_keys(
            now - chrono::Duration::from_std(crate::intake::IDEMPOTENCY_TTL)
                .unwrap_or(chrono::Duration::MAX),
        )
        .await?;
    if report.requeued > 0 || report.resolved > 0 {
        info!(
            requeued = report.requeued,
            resolved = report.resolved,
            "sweeper recovered deliveries"
        );
        for lane in crate::queue::Lane::ALL {
            app.wakers.wake(lane);
        }
    }
    Ok(report)
}

/// Runs forever: deletes finished jobs every second and sweeps every
/// `worker.sweep_interval`, logging failures.
pub async fn run(app: std::sync::Arc<App>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let outcome = if last_sweep.elapsed() >= app.config.worker.sweep_interval {
            last_sweep = tokio::time::Instant::now();
            sweep(&app).await.map(|_| ())
        } else {
            app.db.delete_finished_jobs(false).await.map(|_| ())
        };
        if let Err(e) = outcome {
            warn!(error = %e, "queue maintenance failed; will try again");
        }
    }
}
