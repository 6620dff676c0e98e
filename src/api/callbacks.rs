//! Delivery receipts from providers: `POST /v1/callbacks/twilio` and
//! `POST /v1/callbacks/africastalking/{secret}`.
//!
//! Providers cannot send an API key: Twilio's callbacks are authenticated by
//! `X-Twilio-Signature` (HMAC-SHA1 with the account's auth token over the
//! configured `status_callback_url` and the sorted form fields), Africa's
//! Talking's reports by a long secret in the URL path. Either check fails
//! before anything is read from or written to the database. A receipt for a
//! message tuma does not know is answered 200 (so the provider stops
//! retrying), logged and counted.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::ApiState;
use super::error::ApiError;
use crate::config::ProviderKind;
use crate::providers::twilio::TwilioAuth;
use crate::providers::twilio::receipt::verify;
use crate::receipts::{MissingField, from_africastalking, from_twilio};
use crate::store::{NewReceipt, ReceiptOutcome};

/// The form fields of a callback body, in the order sent.
async fn form_fields(state: &ApiState, body: Body) -> Result<Vec<(String, String)>, ApiError> {
    let max = state.app.config.api.max_body_bytes;
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| ApiError::TooLarge(max))?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

fn malformed(state: &ApiState, kind: &'static str, e: &MissingField) -> ApiError {
    state.metrics.count_callback(kind, "malformed");
    ApiError::InvalidField {
        field: e.0.to_owned(),
        reason: "is required in a delivery receipt".to_owned(),
    }
}

/// Stores a receipt, counts and logs what it did; always 200 once authenticated.
async fn record(
    state: &ApiState,
    kind: &'static str,
    receipt: NewReceipt,
) -> Result<Response, ApiError> {
    let outcome = state
        .within_timeout(state.app.db.record_receipt(&receipt))
        .await?;
    match outcome {
        ReceiptOutcome::UnknownMessage => {
            state.metrics.count_callback(kind, "unknown_message");
            warn!(
                provider = %receipt.provider,
                provider_message_id = %receipt.provider_message_id,
                status = %receipt.status,
                "receipt for a message no delivery has; ignored"
            );
        }
        ReceiptOutcome::Recorded {
            delivery_id,
            changed,
        } => {
            state
                .metrics
                .count_callback(kind, if changed { "applied" } else { "unchanged" });
            info!(
                delivery = %delivery_id,
                provider = %receipt.provider,
                status = %receipt.status,
                changed,
                "receipt recorded"
            );
        }
    }
    Ok(StatusCode::OK.into_response())
}

/// `POST /v1/callbacks/twilio`: a Twilio status callback.
pub async fn twilio(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let fields = form_fields(&state, body).await?;
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    // The Twilio provider whose auth token signed this callback.
    let provider = signature.and_then(|signature| {
        state
            .app
            .config
            .providers
            .iter()
            .find_map(|p| match &p.kind {
                ProviderKind::Twilio(c) => match (&c.auth, &c.status_callback_url) {
                    (TwilioAuth::AuthToken(token), Some(url))
                        if verify(token.expose_secret(), url, &fields, signature) =>
                    {
                        Some(p.name.clone())
                    }
                    _ => None,
                },
                _ => None,
            })
    });
    let Some(provider) = provider else {
        state.metrics.count_callback("twilio", "bad_signature");
        warn!(
            signed = signature.is_some(),
            "Twilio callback refused: missing or wrong X-Twilio-Signature"
        );
        return Err(ApiError::BadSignature);
    };
    let receipt = from_twilio(&provider, &fields, state.app.clock.now())
        .map_err(|e| malformed(&state, "twilio", &e))?;
    record(&state, "twilio", receipt).await
}

/// Whether `given` is `secret`, in constant time (both are hashed first, so
/// not even the length leaks).
fn same_secret(given: &str, secret: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(secret.as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// `POST /v1/callbacks/africastalking/{secret}`: an Africa's Talking delivery report.
pub async fn africastalking(
    State(state): State<ApiState>,
    Path(secret): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let mut provider = None;
    for p in &state.app.config.providers {
        if let ProviderKind::AfricasTalking(c) = &p.kind
            && let Some(expected) = &c.callback_secret
            && same_secret(&secret, expected.expose_secret())
            && provider.is_none()
        {
            provider = Some(p.name.clone());
        }
    }
    let Some(provider) = provider else {
        state
            .metrics
            .count_callback("africastalking", "wrong_secret");
        warn!("Africa's Talking report refused: wrong URL secret");
        return Err(ApiError::NotFound(
            "no delivery-report URL has this secret".into(),
        ));
    };
    let fields = form_fields(&state, body).await?;
    let receipt = from_africastalking(&provider, &fields, state.app.clock.now())
        .map_err(|e| malformed(&state, "africastalking", &e))?;
    record(&state, "africastalking", receipt).await
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
    }
}
