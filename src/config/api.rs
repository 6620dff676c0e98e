//! `[api]`: the HTTP API's limits and abuse guards.

use super::*;

/// Checks `[api]`.
pub(super) fn check(a: RawApi, cx: &Cx) -> Result<ApiConfig, ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    let key = "api.otp_per_recipient";
    let otp_per_recipient = match a.otp_per_recipient {
        // Absent is the default limit; only "off" switches it off.
        toml::Value::String(s) if s.trim() == "off" => None,
        toml::Value::String(s) => {
            return Err(err(
                key,
                format!(
                    "`{s}` is not a limit: write {{ max = 5, per = \"15m\" }}, or \"off\" for no limit"
                ),
            ));
        }
        value => {
            let l = RawLimit::deserialize(value).map_err(|e| {
                let (k, reason) = table_error(&e);
                err(&format!("{key}.{k}").replace(".(provider)", ""), reason)
            })?;
            let per = parse_duration_in(&l.per, secs(1), secs(30 * DAY))
                .map_err(|e| err("api.otp_per_recipient.per", e))?;
            if l.max == 0 {
                return Err(err(
                    "api.otp_per_recipient.max",
                    "must be at least 1 (write otp_per_recipient = \"off\" for no limit)".into(),
                ));
            }
            if per.is_zero() {
                return Err(err(
                    "api.otp_per_recipient.per",
                    "must be longer than zero".into(),
                ));
            }
            Some(RecipientLimit { max: l.max, per })
        }
    };
    for (i, prefix) in a.sms_prefix_allowlist.iter().enumerate() {
        if !is_e164_prefix(prefix) {
            return Err(err(
                &format!("api.sms_prefix_allowlist[{i}]"),
                format!("`{prefix}` is not an E.164 prefix such as \"+254\""),
            ));
        }
    }
    count_in(a.max_body_bytes, 256, 16 * 1024 * 1024).map_err(|e| err("api.max_body_bytes", e))?;
    let request_timeout = parse_duration_in(&a.request_timeout, millis(10), secs(600))
        .map_err(|e| err("api.request_timeout", e))?;
    let (ms, hour) = (millis(100), secs(3600));
    let header_read_timeout = parse_duration_in(&a.header_read_timeout, ms, hour)
        .map_err(|e| err("api.header_read_timeout", e))?;
    let body_read_timeout = parse_duration_in(&a.body_read_timeout, ms, hour)
        .map_err(|e| err("api.body_read_timeout", e))?;
    let idle_timeout =
        parse_duration_in(&a.idle_timeout, ms, hour).map_err(|e| err("api.idle_timeout", e))?;
    count_in(a.max_connections, 1, 1_000_000).map_err(|e| err("api.max_connections", e))?;
    count_in(a.max_header_bytes, 1024, 1024 * 1024).map_err(|e| err("api.max_header_bytes", e))?;
    Ok(ApiConfig {
        otp_per_recipient,
        sms_prefix_allowlist: a.sms_prefix_allowlist,
        allow_premium_rate: a.allow_premium_rate,
        max_body_bytes: a.max_body_bytes,
        request_timeout,
        metrics_need_key: a.metrics_need_key,
        header_read_timeout,
        body_read_timeout,
        idle_timeout,
        max_connections: a.max_connections,
        max_header_bytes: a.max_header_bytes,
    })
}
