//! Cost estimates where a provider does not say what a message cost: the
//! `[[price]]` table of providers.toml, longest prefix first, times segments.

use crate::config::PriceConfig;
use crate::domain::money::Money;

/// The price table.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    prices: Vec<PriceConfig>,
}

impl Pricing {
    /// Builds the table from validated entries.
    pub fn new(prices: Vec<PriceConfig>) -> Pricing {
        Pricing { prices }
    }

    /// The estimated cost of `segments` segments to `to` (E.164) through
    /// `provider`: the longest matching prefix's rate times segments. `None`
    /// when no entry matches (or the product would overflow).
    pub fn estimate(&self, provider: &str, to: &str, segments: u32) -> Option<Money> {
        self.prices
            .iter()
            .filter(|p| p.provider == provider && to.starts_with(&p.prefix))
            .max_by_key(|p| p.prefix.len())
            .and_then(|p| p.per_segment.checked_mul(segments).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(provider: &str, prefix: &str, amount: &str, currency: &str) -> PriceConfig {
        PriceConfig {
            provider: provider.into(),
            prefix: prefix.into(),
            per_segment: Money::parse(amount, currency).unwrap(),
        }
    }

    #[test]
    fn the_longest_prefix_of_the_provider_sets_the_rate() {
        let p = Pricing::new(vec![
            price("twilio", "+1", "0.0079", "USD"),
            price("twilio", "+254", "0.2", "USD"),
            price("twilio", "+2547", "0.1500", "USD"),
            price("africastalking", "+2547", "0.80", "KES"),
        ]);
        let cost = p.estimate("twilio", "+254711000001", 2).unwrap();
        assert_eq!(cost.micros, 300_000);
        assert_eq!(cost.currency.as_str(), "USD");
        assert_eq!(
            p.estimate("twilio", "+14155552671", 1).unwrap().micros,
            7_900
        );
        assert_eq!(
            p.estimate("africastalking", "+254711000001", 3)
                .unwrap()
                .to_decimal_string(),
            "2.40"
        );
        assert!(p.estimate("twilio", "+447700900000", 1).is_none());
        assert!(p.estimate("outbox", "+254711000001", 1).is_none());
    }
}
