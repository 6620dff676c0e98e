//! Circuit breakers shared by every process on one database.
//!
//! Each process keeps its breaker per provider (`providers::Breaker`): its
//! own consecutive failures open it. When one opens, this process writes
//! the provider's `open_until` to `provider_circuits`; every process reads
//! the open circuits every [`REFRESH`] and holds its own breaker open as
//! long. So one process's evidence routes all of them around the provider
//! within a refresh, and a process that starts meanwhile skips it from its
//! first send ([`SharedCircuits::start`] reads once before it returns).
//! The same table serves both backends: several processes may share a
//! SQLite file too, and a row written only when a circuit opens costs
//! nothing on the send path.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::app::App;
use crate::clock::Clock;
use crate::providers::{ProviderHandle, Providers};
use crate::store::{Db, StoreError};

/// How often open circuits are read.
pub const REFRESH: Duration = Duration::from_millis(500);

/// The longest a send waits to share the circuit it opened.
const SHARE_WAIT: Duration = Duration::from_secs(1);

/// The task that reads shared circuits into this process's breakers.
#[derive(Debug, Default)]
pub struct SharedCircuits {
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SharedCircuits {
    /// Starts reading shared circuits into `providers`' breakers, every
    /// [`REFRESH`], on the current Tokio runtime.
    pub fn start(db: Db, providers: Providers, clock: Arc<dyn Clock>) -> SharedCircuits {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = refresh(&db, &providers, clock.now()).await {
                    warn!(error = %e, "could not read shared circuits; will try again");
                }
            }
        });
        SharedCircuits {
            task: Mutex::new(Some(task)),
        }
    }

    /// Stops the task.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

/// Holds open every breaker whose circuit another process opened.
pub async fn refresh(db: &Db, providers: &Providers, now: DateTime<Utc>) -> Result<(), StoreError> {
    for circuit in db.open_shared_circuits(now).await? {
        if let Some(handle) = providers.get(&circuit.provider) {
            handle.breaker.hold_open_until(circuit.open_until);
        }
    }
    Ok(())
}

/// This process's breaker for `handle` opened at `now`: tell the others.
pub async fn opened(app: &App, handle: &ProviderHandle, now: DateTime<Utc>) {
    let Some(until) = handle.breaker.peek_open_until(now) else {
        return;
    };
    // The dispatcher waits for this before it records the call: never long.
    let shared = tokio::time::timeout(
        SHARE_WAIT,
        app.db
            .open_shared_circuit(&handle.name, until, &app.instance, now),
    )
    .await;
    match shared {
        Ok(Ok(())) => info!(provider = %handle.name, %until, "circuit shared with every process"),
        Ok(Err(e)) => warn!(provider = %handle.name, error = %e, "could not share an open circuit"),
        Err(_) => warn!(provider = %handle.name, "could not share an open circuit in time"),
    }
}
