//! `[retry]`: the durable backoff.

use super::*;

/// Checks `[retry]`.
pub(super) fn check(r: RawRetry, cx: &Cx) -> Result<RetryConfig, ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    let initial_delay = parse_duration_in(&r.initial_delay, millis(10), secs(HOUR))
        .map_err(|e| err("retry.initial_delay", e))?;
    let max_delay = parse_duration_in(&r.max_delay, millis(10), secs(7 * DAY))
        .map_err(|e| err("retry.max_delay", e))?;
    count_in(r.max_attempts, 1, MAX_ATTEMPTS_CAP).map_err(|e| err("retry.max_attempts", e))?;
    let give_up_after = parse_duration_in(&r.give_up_after, GIVE_UP_AFTER_MIN, GIVE_UP_AFTER_MAX)
        .map_err(|e| err("retry.give_up_after", e))?;
    if max_delay < initial_delay {
        return Err(err(
            "retry.max_delay",
            "must not be shorter than retry.initial_delay".into(),
        ));
    }
    use crate::domain::unknown::AfterUnknown;
    let read = |key: &str, word: &str| AfterUnknown::parse(word).map_err(|e| err(key, e));
    let (after_unknown_otp, after_unknown_notification) = match &r.after_unknown {
        RawAfterUnknown::Defaults => (AfterUnknown::Resend, AfterUnknown::Resolve),
        RawAfterUnknown::Both(word) => {
            let both = read("retry.after_unknown", word)?;
            (both, both)
        }
        RawAfterUnknown::PerKind(k) => (
            match &k.otp {
                Some(w) => read("retry.after_unknown.otp", w)?,
                None => AfterUnknown::Resend,
            },
            match &k.notification {
                Some(w) => read("retry.after_unknown.notification", w)?,
                None => AfterUnknown::Resolve,
            },
        ),
    };
    Ok(RetryConfig {
        max_attempts: r.max_attempts,
        give_up_after,
        initial_delay,
        max_delay,
        jitter: r.jitter,
        after_unknown_otp,
        after_unknown_notification,
    })
}
