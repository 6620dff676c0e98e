//! SMS pumping (toll fraud) defence for API OTPs: a country's hourly limit
//! (`[[country_limit]]`) and number-range bursts (`[range_burst]`), both
//! checked in the transaction that would record the delivery
//! (`store/pumping.rs`), so concurrent requests cannot slip past and a
//! refused one writes nothing. The rules and the defaults' math are in
//! `domain::pumping`. Refusals are 429 with the `rule`, logged with the
//! prefix or range only (never the full number) and counted in
//! `tuma_refusals_total{rule}`.

use tracing::warn;

use crate::app::App;
use crate::domain::Recipient;
use crate::refusal::IntakeError;

/// The SMS-pumping checks an API send of `kind` to `recipient` gets in its
/// insert transaction (OTPs by SMS only).
pub fn guard(
    app: &App,
    kind: crate::domain::DeliveryKind,
    recipient: &Recipient,
) -> Option<crate::store::PumpingGuard> {
    let Recipient::Phone(number) = recipient else {
        return None;
    };
    if kind != crate::domain::DeliveryKind::Otp {
        return None;
    }
    let spend = &app.config.spend;
    let guard = crate::store::PumpingGuard {
        country: spend.country_limit(number.as_str()).cloned(),
        burst: spend.range_burst,
    };
    (guard.country.is_some() || guard.burst.is_some()).then_some(guard)
}

/// A pumping refusal as intake's error, logged with the prefix or range
/// only (never the full number).
pub fn refused(refusal: crate::store::PumpingRefusal) -> IntakeError {
    let reason = match refusal.rule {
        "country-limit" => format!(
            "the hourly one-time-code limit for numbers starting {} is reached ([[country_limit]]); try again in {} s",
            refusal.scope,
            refusal.retry_after.as_secs()
        ),
        _ => format!(
            "one-time codes to the number range {} arrive far above its usual rate (a possible SMS pumping attack); the range is refused for {} s ([range_burst])",
            refusal.scope,
            refusal.retry_after.as_secs()
        ),
    };
    warn!(rule = refusal.rule, scope = %refusal.scope, retry_after_s = refusal.retry_after.as_secs(), "OTP refused by an SMS pumping guard");
    IntakeError::Throttled {
        rule: refusal.rule,
        reason,
        retry_after: refusal.retry_after,
    }
}

/// A number range refused now for a burst, as ops see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefusedRange {
    /// The range (`+23480312`).
    pub range: String,
    /// Refused until then.
    pub until: chrono::DateTime<chrono::Utc>,
    /// Its OTPs over the cool-off and window.
    pub recent: usize,
    /// Its threshold per window, from its baseline.
    pub threshold: u64,
}

/// The ranges refused at `now` for a burst.
pub async fn refused_ranges(
    db: &crate::store::Db,
    config: &crate::config::Config,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<RefusedRange>, crate::store::StoreError> {
    use crate::domain::pumping::{refused_until, threshold};
    let Some(rule) = config.spend.range_burst else {
        return Ok(Vec::new());
    };
    let to =
        |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let since = now - to(rule.cool_off + rule.window);
    let mut out = Vec::new();
    for (range, _) in db
        .busy_ranges(rule.digits, since, i64::from(rule.min_burst))
        .await?
    {
        let (times, baseline) = db
            .range_history(&range, since, now - to(rule.baseline))
            .await?;
        let threshold = threshold(&rule, u64::try_from(baseline).unwrap_or(0));
        if let Some(until) = refused_until(&rule, &times, threshold, now) {
            out.push(RefusedRange {
                range,
                until,
                recent: times.len(),
                threshold,
            });
        }
    }
    Ok(out)
}
