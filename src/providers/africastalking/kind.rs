//! Africa's Talking in the registry: its keys, its description, its adapter
//! and its delivery reports, authenticated by a secret in the URL.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::receipt::from_africastalking;
use super::{AfricasTalking, AfricasTalkingConfig};
use crate::domain::Channel;
use crate::providers::capability::{
    ReceiptAuth, ReceiptCapability, ReceiptRefusal, ReceiptRequest, VerifiedReceipt, form_fields,
    same_secret,
};
use crate::providers::registry::{Adapter, KeyError, Kind, KindConfig, ReadSecret};

/// `kind = "africastalking"`.
pub const KIND: Kind = Kind {
    name: "africastalking",
    parse,
};

fn parse(
    table: toml::Table,
    base: &Path,
    read_secret: ReadSecret<'_>,
) -> Result<Arc<dyn KindConfig>, KeyError> {
    Ok(Arc::new(AfricasTalkingConfig::from_table_with(
        table,
        base,
        read_secret,
    )?))
}

impl KindConfig for AfricasTalkingConfig {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn channels(&self) -> &'static [Channel] {
        &[Channel::Sms]
    }

    fn describe(&self) -> String {
        format!(
            "{} as {}{}",
            self.base_url,
            self.username,
            self.sender_id
                .as_deref()
                .map(|s| format!(", sender id {s}"))
                .unwrap_or_default()
        )
    }

    fn build(&self, timeout: Duration) -> Result<Adapter, String> {
        Ok(Adapter::sends(Arc::new(AfricasTalking::new(
            self.clone(),
            timeout,
        )?)))
    }

    fn receipts(&self) -> Option<&dyn ReceiptCapability> {
        Some(self)
    }
}

impl ReceiptCapability for AfricasTalkingConfig {
    fn auth(&self) -> ReceiptAuth {
        ReceiptAuth::UrlSecret
    }

    /// Without `callback_secret_env` every report is refused.
    fn owns_secret(&self, secret: &str) -> bool {
        self.callback_secret
            .as_ref()
            .is_some_and(|expected| same_secret(secret, expected.expose_secret()))
    }

    fn receive(&self, request: &ReceiptRequest<'_>) -> Result<VerifiedReceipt, ReceiptRefusal> {
        let fields = form_fields(request.body);
        from_africastalking(request.provider, &fields, request.received_at)
            .map(VerifiedReceipt::without_price)
            .map_err(ReceiptRefusal::Malformed)
    }
}
