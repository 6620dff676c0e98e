//! `[circuit_breaker]`: when to skip a failing provider for a while.

use super::*;

/// Checks `[circuit_breaker]`.
pub(super) fn check(c: RawCircuitBreaker, cx: &Cx) -> Result<CircuitBreakerConfig, ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    let circuit_breaker = CircuitBreakerConfig {
        failures: count_in(c.failures, 1, 10_000)
            .map_err(|e| err("circuit_breaker.failures", e))?,
        cooldown: parse_duration_in(&c.cooldown, millis(100), secs(DAY))
            .map_err(|e| err("circuit_breaker.cooldown", e))?,
    };
    Ok(circuit_breaker)
}
