//! Price reconciliation: some providers say a message's price only later, so
//! the worker asks each provider that can fetch a sent message's status and
//! price (its [`StatusFetch`](crate::providers::capability::StatusFetch)
//! capability) about each of its deliveries still without an actual price
//! `receipts.reconcile_after` after it was sent, and records the price (exact
//! decimal) and the billed segments. The same fetch brings a delivery whose
//! receipt never came up to date: a final fetched status is recorded as a
//! receipt, under the same rules as a callback.
//!
//! Every fetch takes a slot of the provider's rate limiter (shared with its
//! sends). A 404 (unknown message) gives up on that delivery; a 429 or any
//! transient error stops this round for the provider, to try again next
//! round; past `receipts.give_up_after` since sending, tuma gives up.

use std::sync::Arc;

use tracing::{info, warn};

use crate::app::App;
use crate::providers::SendError;
use crate::store::{NewReceipt, StoreError};

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Deliveries whose actual price was recorded.
    pub priced: u64,
    /// Deliveries whose status a fetch settled.
    pub settled: u64,
    /// Deliveries given up (unknown to the provider, or past the horizon).
    pub given_up: u64,
    /// Rounds cut short by a 429 or another transient error.
    pub deferred: u64,
}

/// How many deliveries one round fetches per provider.
const BATCH: i64 = 100;

/// Runs one round over every provider that can fetch a message's status.
pub async fn reconcile(app: &App) -> Result<ReconcileReport, StoreError> {
    let mut report = ReconcileReport::default();
    let cfg = app.config.receipts;
    let now = app.clock.now();
    let ago = |d: std::time::Duration| {
        now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
    };
    let give_up_before = ago(cfg.give_up_after);
    for p in &app.config.providers {
        let (Some(fetch), Some(handle)) = (
            app.providers.status_fetch(&p.name),
            app.providers.get(&p.name),
        ) else {
            continue;
        };
        for d in app
            .db
            .unpriced(&p.name, ago(cfg.reconcile_after), BATCH)
            .await?
        {
            if d.sent_at < give_up_before {
                app.db
                    .give_up_price(
                        &d.id,
                        &format!("no price from {} within receipts.give_up_after", p.name),
                        now,
                    )
                    .await?;
                report.given_up += 1;
                continue;
            }
            handle.limiter.until_ready().await;
            match fetch
                .fetch_status(&p.name, &d.provider_message_id, now)
                .await
            {
                Ok(fetched) => {
                    if let Some(receipt) = fetched.receipt
                        && d.status == "sent"
                        && record(app, &receipt).await?
                    {
                        report.settled += 1;
                    }
                    if let Some(price) = fetched.price {
                        let crossed = app
                            .db
                            .record_actual_price(
                                &d.id,
                                d.attempts,
                                price,
                                fetched.segments,
                                &app.config.spend.terms(),
                                now,
                            )
                            .await?;
                        crate::spend::log_crossings(&crossed);
                        report.priced += 1;
                    }
                }
                Err(SendError::Permanent { message, .. }) => {
                    warn!(delivery = %d.id, provider = %p.name, error = %message, "the provider cannot say this message's price; giving up");
                    app.db
                        .give_up_price(&d.id, &format!("gave up: {message}"), now)
                        .await?;
                    report.given_up += 1;
                }
                Err(SendError::Transient { message, .. } | SendError::Unknown { message, .. }) => {
                    info!(provider = %p.name, error = %message, "price reconciliation deferred");
                    report.deferred += 1;
                    break;
                }
            }
        }
    }
    Ok(report)
}

async fn record(app: &App, receipt: &NewReceipt) -> Result<bool, StoreError> {
    Ok(matches!(
        app.db.record_receipt(receipt).await?,
        crate::store::ReceiptOutcome::Recorded { changed: true, .. }
    ))
}

/// Runs a round every `receipts.reconcile_interval`, logging failures.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.config.receipts.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match reconcile(&app).await {
            Ok(r) if r.priced + r.settled + r.given_up > 0 => {
                info!(
                    priced = r.priced,
                    settled = r.settled,
                    given_up = r.given_up,
                    "price reconciliation"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "price reconciliation failed; will try again"),
        }
    }
}
