//! Vonage in the registry: its keys, its description, its adapter and its
//! delivery receipts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Vonage, VonageAuth, VonageConfig};
use crate::domain::Channel;
use crate::providers::capability::ReceiptCapability;
use crate::providers::registry::{Adapter, KeyError, Kind, KindConfig, ReadSecret};

/// `kind = "vonage"`.
pub const KIND: Kind = Kind {
    name: "vonage",
    parse,
};

fn parse(
    table: toml::Table,
    base: &Path,
    read_secret: ReadSecret<'_>,
) -> Result<Arc<dyn KindConfig>, KeyError> {
    Ok(Arc::new(VonageConfig::from_table_with(
        table,
        base,
        read_secret,
    )?))
}

impl KindConfig for VonageConfig {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn channels(&self) -> &'static [Channel] {
        &[Channel::Sms]
    }

    fn describe(&self) -> String {
        format!(
            "{} key {} from {}, prices in {}{}{}",
            self.base_url,
            self.api_key,
            self.from,
            self.currency,
            match self.auth {
                VonageAuth::ApiSecret(_) => "",
                VonageAuth::Signed => ", signed requests",
            },
            match (&self.signature, &self.callback_url) {
                (Some(s), Some(_)) => format!(", signed receipts ({})", s.method.as_str()),
                (None, Some(_)) => ", unsigned receipts".to_owned(),
                _ => String::new(),
            }
        )
    }

    fn build(&self, timeout: Duration) -> Result<Adapter, String> {
        Ok(Adapter::sends(Arc::new(Vonage::new(
            self.clone(),
            timeout,
        )?)))
    }

    fn receipts(&self) -> Option<&dyn ReceiptCapability> {
        Some(self)
    }
}
