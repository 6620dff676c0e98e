//! `[worker]`: lanes, polling and crash recovery.

use super::*;

/// Checks `[worker]`.
pub(super) fn check(w: RawWorker, cx: &Cx) -> Result<WorkerConfig, ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    let worker = WorkerConfig {
        otp_concurrency: count_in(w.otp_concurrency, 1, MAX_CONCURRENCY)
            .map_err(|e| err("worker.otp_concurrency", e))?,
        notification_concurrency: count_in(w.notification_concurrency, 1, MAX_CONCURRENCY)
            .map_err(|e| err("worker.notification_concurrency", e))?,
        poll_interval: parse_duration_in(&w.poll_interval, millis(10), secs(600))
            .map_err(|e| err("worker.poll_interval", e))?,
        sweep_interval: parse_duration_in(&w.sweep_interval, millis(100), secs(HOUR))
            .map_err(|e| err("worker.sweep_interval", e))?,
        rate_limit_wait: parse_duration_in(&w.rate_limit_wait, Duration::ZERO, secs(600))
            .map_err(|e| err("worker.rate_limit_wait", e))?,
    };
    if let Some(heartbeat) = &w.heartbeat {
        parse_duration_in(heartbeat, secs(1), secs(600)).map_err(|e| err("worker.heartbeat", e))?;
    }
    Ok(worker)
}
