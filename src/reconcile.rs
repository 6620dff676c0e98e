//! Price reconciliation: Twilio says a message's price only later, so the
//! worker fetches (`GET …/Messages/{sid}.json`) each Twilio delivery still
//! without an actual price `receipts.reconcile_after` after it was sent, and
//! records the price's absolute value (exact decimal, in `price_unit`) and the
//! billed segments. The same fetch brings a delivery whose callback never came
//! up to date: a final fetched status is recorded as a receipt, under the same
//! rules as a callback.
//!
//! Every fetch takes a slot of the provider's rate limiter (shared with its
//! sends). A 404 (unknown message) gives up on that delivery; a 429 or any
//! transient error stops this round for the provider, to try again next
//! round; past `receipts.give_up_after` since sending, tuma gives up.

use std::sync::Arc;

use serde_json::json;
use tracing::{info, warn};

use crate::app::App;
use crate::config::ProviderKind;
use crate::providers::SendError;
use crate::receipts::twilio_verdict;
use crate::store::{NewReceipt, ReceiptVerdict, StoreError};

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Deliveries whose actual price was recorded.
    pub priced: u64,
    /// Deliveries whose status a fetch settled.
    pub settled: u64,
    /// Deliveries given up (unknown to Twilio, or past the horizon).
    pub given_up: u64,
    /// Rounds cut short by a 429 or another transient error.
    pub deferred: u64,
}

/// How many deliveries one round fetches per provider.
const BATCH: i64 = 100;

/// Runs one round over every Twilio provider.
pub async fn reconcile(app: &App) -> Result<ReconcileReport, StoreError> {
    let mut report = ReconcileReport::default();
    let cfg = app.config.receipts;
    let now = app.clock.now();
    let ago = |d: std::time::Duration| {
        now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
    };
    let give_up_before = ago(cfg.give_up_after);
    for p in &app.config.providers {
        if !matches!(p.kind, ProviderKind::Twilio(_)) {
            continue;
        }
        let (Some(twilio), Some(handle)) =
            (app.providers.twilio(&p.name), app.providers.get(&p.name))
        else {
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
                        "no price from Twilio within receipts.give_up_after",
                        now,
                    )
                    .await?;
                report.given_up += 1;
                continue;
            }
            handle.limiter.until_ready().await;
            match twilio.fetch_message(&d.provider_message_id).await {
                Ok(msg) => {
                    let verdict = twilio_verdict(&msg.status);
                    if d.status == "sent" && verdict != ReceiptVerdict::InProgress {
                        let error_code = msg.error_code.map(|c| c.to_string());
                        let mut fields = vec![
                            ("MessageSid".to_owned(), msg.sid.clone()),
                            ("MessageStatus".to_owned(), msg.status.clone()),
                        ];
                        if let Some(code) = &error_code {
                            fields.push(("ErrorCode".to_owned(), code.clone()));
                        }
                        let mut receipt = crate::receipts::from_twilio(&p.name, &fields, now)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        receipt.fields = json!({
                            "source": "fetch",
                            "sid": msg.sid,
                            "status": msg.status,
                            "error_code": msg.error_code,
                        });
                        if record(app, &receipt).await? {
                            report.settled += 1;
                        }
                    }
                    if let Some(price) = msg.price {
                        app.db
                            .record_actual_price(&d.id, d.attempts, price, msg.num_segments, now)
                            .await?;
                        report.priced += 1;
                    }
                }
                Err(SendError::Permanent { message, .. }) => {
                    warn!(delivery = %d.id, error = %message, "Twilio cannot say this message's price; giving up");
                    app.db
                        .give_up_price(&d.id, &format!("gave up: {message}"), now)
                        .await?;
                    report.given_up += 1;
                }
                Err(SendError::Transient { message, .. }) => {
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
