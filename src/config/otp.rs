//! `[otp]`: OTP defaults and the keys codes are sealed with.

use super::*;

/// Checks `[otp]`.
pub(super) fn check(o: RawOtp, cx: &Cx) -> Result<OtpConfig, ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    let otp = OtpConfig {
        // The bounds intake puts on a request's own ttl.
        ttl: parse_duration_in(&o.ttl, secs(30), secs(DAY)).map_err(|e| err("otp.ttl", e))?,
        default_region: o.default_region.parse().map_err(
            |e: crate::domain::phone::PhoneError| err("otp.default_region", e.to_string()),
        )?,
        allow_fixed_line: o.allow_fixed_line,
        allow_satellite: o.allow_satellite,
        key_env: env_name(o.key_env).map_err(|e| err("otp.key_env", e))?,
        previous_key_env: env_name(o.previous_key_env)
            .map_err(|e| err("otp.previous_key_env", e))?,
    };
    if otp.key_env.is_some() && otp.key_env == otp.previous_key_env {
        return Err(err(
            "otp.previous_key_env",
            "names the same variable as otp.key_env; it must hold the key before it".into(),
        ));
    }
    Ok(otp)
}
