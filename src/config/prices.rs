//! `[[price]]`: per-segment prices for estimates.

use super::*;

/// Checks `[[price]]`.
pub(super) fn check(
    raw: Vec<RawPrice>,
    providers: &[ProviderConfig],
    cx: &Cx,
) -> Result<Vec<PriceConfig>, ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    let mut prices = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("price[{i}].{k}");
        if !providers.iter().any(|pr| pr.name == p.provider) {
            return Err(err(
                &key("provider"),
                format!("no provider is named `{}`", p.provider),
            ));
        }
        if !is_e164_prefix(&p.prefix) {
            return Err(err(
                &key("prefix"),
                format!("`{}` is not an E.164 prefix such as \"+1\"", p.prefix),
            ));
        }
        let per_segment = Money::parse(&p.per_segment, &p.currency).map_err(|e| {
            let k = if matches!(e, crate::domain::money::MoneyError::InvalidCurrency(_)) {
                "currency"
            } else {
                "per_segment"
            };
            err(&key(k), e.to_string())
        })?;
        if !per_segment.currency.is_active_iso4217() {
            return Err(err(
                &key("currency"),
                format!(
                    "`{}` is not an active ISO 4217 currency code (e.g. KES, USD, NGN)",
                    p.currency
                ),
            ));
        }
        if per_segment.micros < 0 {
            return Err(err(
                &key("per_segment"),
                "a price cannot be negative".into(),
            ));
        }
        prices.push(PriceConfig {
            provider: p.provider,
            prefix: p.prefix,
            per_segment,
        });
    }
    Ok(prices)
}
