//! The suppression list: do not pay twice for a dead number.
//!
//! When a provider's permanent error says the recipient does not exist,
//! blacklisted the sender or unsubscribed (each adapter marks its own codes:
//! `Provider::recipient_gone`), the recipient is suppressed for that
//! channel. Later sends to it, OTPs too, are refused at intake (422,
//! `rule = "suppressed"`, naming the reason and the delivery that caused
//! it), so an auth service can ask for another channel. Ops list and lift
//! suppressions (`tuma suppressions`); they lapse after
//! `suppression.expire_after`, since numbers are recycled. CLI sends are
//! refused the same way (a CSV send counts such rows as refused), unless
//! `--ignore-suppression` says ops know better. Replays are refused too,
//! forced or not (`replay.rs`), unless ops ignore the suppression, which the
//! replay records (`deliveries.replay_note`).

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::app::App;
use crate::domain::{Channel, Recipient};
use crate::refusal::IntakeError;
use crate::store::{Delivery, StoreError, Suppression};

/// The rule a refusal names.
pub const RULE: &str = "suppressed";

/// Suppressions made after this are in force at `now`.
pub fn in_force_since(app: &App, now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::from_std(app.config.spend.suppression_expire_after)
        .unwrap_or(chrono::Duration::MAX)
}

/// The suppression in force now for `recipient` on `channel`, if any.
pub async fn in_force(
    app: &App,
    channel: Channel,
    recipient: &str,
) -> Result<Option<Suppression>, StoreError> {
    let now = app.clock.now();
    app.db
        .suppression(channel, recipient, in_force_since(app, now))
        .await
}

/// Why a replay to a suppressed recipient is refused: the reason and since
/// when. It names no delivery, since the one that caused it may be another
/// client's.
pub fn replay_refusal(s: &Suppression) -> String {
    format!(
        "the recipient is suppressed since {}: {} (provider {} code {}); a replay would be \
         spent on it again: replay with --ignore-suppression (the API's and console's \
         ignore_suppression) if ops know better, or lift it (tuma suppressions remove)",
        s.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        s.reason,
        s.provider,
        s.error_code.as_deref().unwrap_or("none"),
    )
}

/// The note a replay sent past `s` carries: who asked, and what was ignored.
pub fn ignored_note(s: &Suppression, actor: &str) -> String {
    format!(
        "suppression ignored by {actor}: the recipient was suppressed since {}: {} (provider {} code {})",
        s.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        s.reason,
        s.provider,
        s.error_code.as_deref().unwrap_or("none"),
    )
}

/// Refuses a send to a suppressed recipient (nothing is written).
pub async fn check(app: &App, recipient: &Recipient) -> Result<(), IntakeError> {
    let Some(s) = in_force(app, recipient.channel(), recipient.as_str()).await? else {
        return Ok(());
    };
    Err(IntakeError::Refused {
        rule: RULE,
        field: "to",
        reason: format!(
            "this recipient is suppressed since {}: {} (delivery {}, provider code {}); \
             use another channel, or ops may lift it (tuma suppressions remove)",
            s.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            s.reason,
            s.delivery_id,
            s.error_code.as_deref().unwrap_or("none"),
        ),
    })
}

/// Suppresses the recipient of `delivery`, which failed permanently through
/// `provider` with `code` for `reason`.
pub async fn record(
    app: &App,
    delivery: &Delivery,
    provider: &str,
    code: Option<&str>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    app.db
        .suppress(&Suppression {
            channel: delivery.channel.as_str().to_owned(),
            recipient: delivery.row.recipient.clone(),
            reason: reason.to_owned(),
            delivery_id: delivery.row.id.clone(),
            provider: provider.to_owned(),
            error_code: code.map(str::to_owned),
            created_at: now,
        })
        .await?;
    // The delivery names the recipient; the log line does not.
    warn!(provider, reason, "recipient suppressed");
    Ok(())
}

/// Deletes lapsed suppressions (run by the sweeper).
pub async fn sweep(app: &App, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let purged = app.db.purge_suppressions(in_force_since(app, now)).await?;
    if purged > 0 {
        info!(purged, "suppressions lapsed");
    }
    Ok(purged)
}
