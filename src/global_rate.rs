//! Provider rate limits across processes.
//!
//! Every process has its own limiter per provider (governor, in
//! `providers`): on SQLite that is the whole limit, and everywhere it
//! smooths this process's calls. On Postgres a call also needs a token from
//! the provider's shared bucket (`domain::gcra`, one row per provider in
//! `provider_rate_buckets`), so N processes together keep the configured
//! rate. Tokens are taken a few at a time (about 20 ms of the rate, at most
//! the burst) and kept only as long as they stand for: a token not spent by
//! then is dropped, never saved up into a burst the bucket did not allow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::app::App;
use crate::domain::gcra::Gcra;
use crate::providers::ProviderHandle;
use crate::store::StoreError;

/// How much of a provider's rate one take from its shared bucket asks for.
const TAKE_SPAN: Duration = Duration::from_millis(20);

/// This process's side of the shared buckets: the tokens it holds.
#[derive(Debug, Default)]
pub struct GlobalRate {
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
}

#[derive(Debug)]
struct Bucket {
    gcra: Gcra,
    /// Tokens asked for at once.
    want: u32,
    /// Held tokens; the lock also makes this process's slots take from the
    /// database one at a time.
    reserve: tokio::sync::Mutex<Reserve>,
}

#[derive(Debug, Default)]
struct Reserve {
    tokens: u32,
    /// When the held tokens go stale.
    until: Option<Instant>,
}

impl GlobalRate {
    fn bucket(&self, handle: &ProviderHandle) -> Arc<Bucket> {
        let gcra = Gcra::new(handle.rate.per_second, handle.rate.burst);
        let Ok(mut buckets) = self.buckets.lock() else {
            // A poisoned map: a bucket of this call's own (a fresh reserve).
            return Arc::new(Bucket::new(gcra));
        };
        match buckets.get(&handle.name) {
            Some(b) if b.gcra == gcra => b.clone(),
            _ => {
                let b = Arc::new(Bucket::new(gcra));
                buckets.insert(handle.name.clone(), b.clone());
                b
            }
        }
    }
}

impl Bucket {
    fn new(gcra: Gcra) -> Bucket {
        let per_span = TAKE_SPAN.as_micros() / u128::from(gcra.interval_us.unsigned_abs().max(1));
        let want = u32::try_from(per_span)
            .unwrap_or(u32::MAX)
            .clamp(1, gcra.burst.max(1));
        Bucket {
            gcra,
            want,
            reserve: tokio::sync::Mutex::new(Reserve::default()),
        }
    }
}

/// Waits, at most `wait`, for a slot to call `handle`'s provider: one from
/// this process's limiter, then (on Postgres) a token from the provider's
/// shared bucket. False when none came in time.
pub async fn slot(app: &App, handle: &ProviderHandle, wait: Duration) -> Result<bool, StoreError> {
    let deadline = Instant::now() + wait;
    if tokio::time::timeout_at(deadline, handle.limiter.until_ready())
        .await
        .is_err()
    {
        return Ok(false);
    }
    let bucket = app.global_rate.bucket(handle);
    let Ok(mut reserve) = tokio::time::timeout_at(deadline, bucket.reserve.lock()).await else {
        return Ok(false);
    };
    loop {
        if reserve.tokens > 0 && reserve.until.is_some_and(|u| Instant::now() < u) {
            reserve.tokens -= 1;
            return Ok(true);
        }
        // Bounded like the rest of the wait: a slow database is no slot.
        let Ok(take) = tokio::time::timeout_at(
            deadline,
            app.db
                .take_rate_tokens(&handle.name, &bucket.gcra, bucket.want),
        )
        .await
        else {
            return Ok(false);
        };
        let Some(take) = take? else {
            // SQLite: this process's limiter is the limit.
            return Ok(true);
        };
        if take.granted > 0 {
            reserve.tokens = take.granted - 1;
            reserve.until = Some(Instant::now() + bucket.gcra.span(take.granted));
            return Ok(true);
        }
        let pause = bucket.gcra.ready_in(take.tat_us, take.now_us);
        if Instant::now() + pause > deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
    }
}
