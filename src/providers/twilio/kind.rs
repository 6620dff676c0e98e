//! Twilio in the registry: its keys, its description, its adapter, its
//! signed status callbacks, its message fetch and its message lookup.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::json;

use super::receipt::{from_twilio, twilio_verdict, verify};
use super::{Twilio, TwilioAuth, TwilioConfig};
use crate::domain::Channel;
use crate::domain::receipt::ReceiptVerdict;
use crate::providers::SendError;
use crate::providers::capability::{
    FetchedStatus, ReceiptAuth, ReceiptCapability, ReceiptRefusal, ReceiptRequest, StatusFetch,
    VerifiedReceipt, form_fields,
};
use crate::providers::registry::{Adapter, KeyError, Kind, KindConfig, ReadSecret};

/// `kind = "twilio"`.
pub const KIND: Kind = Kind {
    name: "twilio",
    parse,
};

fn parse(
    table: toml::Table,
    base: &Path,
    read_secret: ReadSecret<'_>,
) -> Result<Arc<dyn KindConfig>, KeyError> {
    Ok(Arc::new(TwilioConfig::from_table_with_env(
        table,
        base,
        read_secret,
    )?))
}

impl KindConfig for TwilioConfig {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn channels(&self) -> &'static [Channel] {
        &[Channel::Sms]
    }

    fn describe(&self) -> String {
        format!(
            "{} account {}{}",
            self.base_url,
            self.account_sid,
            if self.status_callback_url.is_some() {
                ", status callbacks on"
            } else {
                ""
            }
        )
    }

    fn build(&self, timeout: Duration) -> Result<Adapter, String> {
        let twilio = Arc::new(Twilio::new(self.clone(), timeout)?);
        Ok(Adapter {
            provider: twilio.clone(),
            status: Some(twilio.clone()),
            lookup: Some(twilio),
        })
    }

    fn receipts(&self) -> Option<&dyn ReceiptCapability> {
        Some(self)
    }
}

impl ReceiptCapability for TwilioConfig {
    fn auth(&self) -> ReceiptAuth {
        ReceiptAuth::Signature
    }

    /// `X-Twilio-Signature`: HMAC-SHA1 with the account's auth token over
    /// the configured `status_callback_url` and the sorted form fields. A
    /// provider using an API key cannot check it and refuses every callback.
    fn receive(&self, request: &ReceiptRequest<'_>) -> Result<VerifiedReceipt, ReceiptRefusal> {
        let fields = form_fields(request.body);
        let signature = request
            .headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok());
        let signed = match (&self.auth, &self.status_callback_url, signature) {
            (TwilioAuth::AuthToken(token), Some(url), Some(signature)) => {
                verify(token.expose_secret(), url, &fields, signature)
            }
            _ => false,
        };
        if !signed {
            return Err(ReceiptRefusal::BadSignature {
                detail: "the X-Twilio-Signature header is missing or does not match".to_owned(),
                log: format!(
                    "Twilio callback refused: missing or wrong X-Twilio-Signature (signed: {})",
                    signature.is_some()
                ),
            });
        }
        from_twilio(request.provider, &fields, request.received_at)
            .map(VerifiedReceipt::without_price)
            .map_err(ReceiptRefusal::Malformed)
    }
}

#[async_trait]
impl StatusFetch for Twilio {
    /// `GET …/Messages/{sid}.json`: the price's absolute value and the billed
    /// segments, and a final status as a receipt.
    async fn fetch_status(
        &self,
        provider: &str,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<FetchedStatus, SendError> {
        let msg = self.fetch_message(message_id).await?;
        let receipt = if twilio_verdict(&msg.status) == ReceiptVerdict::InProgress {
            None
        } else {
            let error_code = msg.error_code.map(|c| c.to_string());
            let mut fields = vec![
                ("MessageSid".to_owned(), msg.sid.clone()),
                ("MessageStatus".to_owned(), msg.status.clone()),
            ];
            if let Some(code) = &error_code {
                fields.push(("ErrorCode".to_owned(), code.clone()));
            }
            let mut receipt = from_twilio(provider, &fields, now)
                .map_err(|e| SendError::permanent(e.to_string()))?;
            receipt.fields = json!({
                "source": "fetch",
                "sid": msg.sid,
                "status": msg.status,
                "error_code": msg.error_code,
            });
            Some(receipt)
        };
        Ok(FetchedStatus {
            receipt,
            price: msg.price,
            segments: msg.num_segments,
        })
    }
}
