//! Delivery receipts from providers: `POST /v1/callbacks/{provider}` for
//! providers that sign their receipts and `POST /v1/callbacks/{provider}/{secret}`
//! for those authenticated by a secret in the URL. Both paths also take
//! `GET`, for providers whose dashboards can send receipts that way: the
//! query string is then the fields, handed to the same capability as a
//! form-encoded body would be.
//!
//! `{provider}` is a configured provider's name or, when no provider has
//! that name, a kind: every provider of that kind is tried (so a kind's
//! fixed path, set once in a provider's dashboard, keeps working whatever
//! the providers are called). Providers cannot send an API key: each kind's
//! receipt capability checks its signature or URL secret, and a failed check
//! answers before anything is read from or written to the database. A
//! receipt for a message tuma does not know is answered 200 (so the provider
//! stops retrying), logged and counted.

use axum::body::Body;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};

use super::ApiState;
use super::error::ApiError;
use crate::providers::capability::{
    ReceiptAuth, ReceiptCapability, ReceiptRefusal, ReceiptRequest, VerifiedReceipt,
};
use crate::store::ReceiptOutcome;

/// A provider that takes receipts on this path: its name, its kind (the
/// metrics' label) and its capability.
struct Candidate<'a> {
    name: &'a str,
    kind: &'static str,
    receipts: &'a dyn ReceiptCapability,
}

/// The providers `target` names (by name, else by kind) whose receipts
/// authenticate as `auth`.
fn candidates<'a>(state: &'a ApiState, target: &str, auth: ReceiptAuth) -> Vec<Candidate<'a>> {
    let providers = &state.app.config.providers;
    let by_name = providers.iter().any(|p| p.name == target);
    providers
        .iter()
        .filter(|p| {
            if by_name {
                p.name == target
            } else {
                p.kind.as_str() == target
            }
        })
        .filter_map(|p| {
            let receipts = p.kind.config().receipts()?;
            (receipts.auth() == auth).then_some(Candidate {
                name: &p.name,
                kind: p.kind.as_str(),
                receipts,
            })
        })
        .collect()
}

/// The body, at most `api.max_body_bytes`.
async fn body_bytes(state: &ApiState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let max = state.app.config.api.max_body_bytes;
    axum::body::to_bytes(body, max)
        .await
        .map_err(|_| ApiError::TooLarge(max))
}

/// No configured provider (by that name, or of that kind) takes receipts
/// authenticated this way.
fn no_provider(target: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no provider named `{}`, nor of that kind, takes receipts on this path",
        crate::domain::provider_text::clean_to(
            target,
            &crate::domain::provider_text::Secrets::none(),
            64
        )
    ))
}

/// What a refusal answers, counted under the provider's kind.
fn refused(state: &ApiState, kind: &'static str, refusal: ReceiptRefusal) -> ApiError {
    match refusal {
        ReceiptRefusal::BadSignature { detail, log } => {
            state.metrics.count_callback(kind, "bad_signature");
            warn!("{log}");
            ApiError::BadSignature(detail)
        }
        ReceiptRefusal::Malformed(e) => {
            state.metrics.count_callback(kind, "malformed");
            ApiError::InvalidField {
                field: e.0.to_owned(),
                reason: "is required in a delivery receipt".to_owned(),
            }
        }
    }
}

/// Stores a receipt (and the price it reports), counts and logs what it
/// did; always 200 once authenticated.
async fn record(
    state: &ApiState,
    kind: &'static str,
    verified: VerifiedReceipt,
) -> Result<Response, ApiError> {
    let receipt = &verified.receipt;
    let outcome = state
        .within_timeout(state.app.db.record_receipt(receipt))
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
            if let Some(price) = verified.price {
                let terms = state.app.config.spend.terms();
                let crossed = state
                    .within_timeout(state.app.db.record_receipt_price(
                        &receipt.provider,
                        &receipt.provider_message_id,
                        price,
                        &terms,
                        receipt.received_at,
                    ))
                    .await?;
                crate::spend::log_crossings(&crossed.unwrap_or_default());
            }
            if let (true, Some(reason)) = (changed, verified.recipient_gone) {
                suppress(state, &delivery_id, receipt, reason).await?;
            }
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

/// Suppresses the recipient of the delivery a receipt just moved to
/// `undelivered`, whose error says the number is gone.
async fn suppress(
    state: &ApiState,
    delivery_id: &str,
    receipt: &crate::store::NewReceipt,
    reason: &'static str,
) -> Result<(), ApiError> {
    let Some(delivery) = state
        .within_timeout(state.app.db.delivery(delivery_id))
        .await?
    else {
        return Ok(());
    };
    state
        .within_timeout(crate::suppression::record(
            &state.app,
            &delivery,
            &receipt.provider,
            receipt.error_code.as_deref(),
            reason,
            receipt.received_at,
        ))
        .await?;
    Ok(())
}

/// `POST /v1/callbacks/{provider}`: a signed receipt. Every provider the
/// path names is tried; the first whose signature matches takes it.
pub async fn signed(
    State(state): State<ApiState>,
    Path(target): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if candidates(&state, &target, ReceiptAuth::Signature).is_empty() {
        return Err(no_provider(&target));
    }
    let body = body_bytes(&state, body).await?;
    signed_receipt(&state, &target, &uri, &headers, &body).await
}

/// `GET /v1/callbacks/{provider}?…`: a signed receipt whose fields are the
/// query string.
pub async fn signed_by_query(
    State(state): State<ApiState>,
    Path(target): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let fields = uri.query().unwrap_or_default().as_bytes().to_vec();
    signed_receipt(&state, &target, &uri, &headers, &fields).await
}

/// The signed receipt `fields` (a form, JSON, or a query string) for the
/// providers `target` names.
async fn signed_receipt(
    state: &ApiState,
    target: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    fields: &[u8],
) -> Result<Response, ApiError> {
    let candidates = candidates(state, target, ReceiptAuth::Signature);
    let Some(first) = candidates.first() else {
        return Err(no_provider(target));
    };
    let url = uri.to_string();
    let received_at = state.app.clock.now();
    let mut refusal = None;
    for c in &candidates {
        let request = ReceiptRequest {
            provider: c.name,
            headers,
            url: &url,
            body: fields,
            received_at,
        };
        match c.receipts.receive(&request) {
            Ok(verified) => return record(state, c.kind, verified).await,
            Err(ReceiptRefusal::Malformed(e)) => {
                return Err(refused(state, c.kind, ReceiptRefusal::Malformed(e)));
            }
            Err(bad) => {
                refusal.get_or_insert(bad);
            }
        }
    }
    let refusal = refusal.unwrap_or_else(|| ReceiptRefusal::BadSignature {
        detail: "the signature is missing or does not match".to_owned(),
        log: "receipt refused: missing or wrong signature".to_owned(),
    });
    Err(refused(state, first.kind, refusal))
}

/// `POST /v1/callbacks/{provider}/{secret}`: a receipt authenticated by the
/// secret in its URL. A wrong secret is a path that does not exist (404).
pub async fn by_secret(
    State(state): State<ApiState>,
    Path((target, secret)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let owner = secret_owner(&state, &target, &secret)?;
    let body = body_bytes(&state, body).await?;
    secret_receipt(&state, &owner, &uri, &secret, &headers, &body).await
}

/// `GET /v1/callbacks/{provider}/{secret}?…`: a receipt authenticated by the
/// secret in its URL, whose fields are the query string.
pub async fn by_secret_by_query(
    State(state): State<ApiState>,
    Path((target, secret)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let owner = secret_owner(&state, &target, &secret)?;
    let fields = uri.query().unwrap_or_default().as_bytes().to_vec();
    secret_receipt(&state, &owner, &uri, &secret, &headers, &fields).await
}

/// The provider `target` names whose URL secret is `secret`; checked before
/// anything else is read.
fn secret_owner<'a>(
    state: &'a ApiState,
    target: &str,
    secret: &str,
) -> Result<Candidate<'a>, ApiError> {
    let mut candidates = candidates(state, target, ReceiptAuth::UrlSecret);
    let Some(first_kind) = candidates.first().map(|c| c.kind) else {
        return Err(no_provider(target));
    };
    let Some(at) = candidates
        .iter()
        .position(|c| c.receipts.owns_secret(secret))
    else {
        state.metrics.count_callback(first_kind, "wrong_secret");
        warn!(
            kind = first_kind,
            "delivery report refused: wrong URL secret"
        );
        return Err(ApiError::NotFound(
            "no delivery-report URL has this secret".into(),
        ));
    };
    Ok(candidates.swap_remove(at))
}

/// The receipt `fields` for the provider whose URL secret matched.
async fn secret_receipt(
    state: &ApiState,
    owner: &Candidate<'_>,
    uri: &axum::http::Uri,
    secret: &str,
    headers: &HeaderMap,
    fields: &[u8],
) -> Result<Response, ApiError> {
    // The secret never reaches a log or the receipt.
    let url = uri.path().replace(secret, "****");
    let request = ReceiptRequest {
        provider: owner.name,
        headers,
        url: &url,
        body: fields,
        received_at: state.app.clock.now(),
    };
    match owner.receipts.receive(&request) {
        Ok(verified) => record(state, owner.kind, verified).await,
        Err(refusal) => Err(refused(state, owner.kind, refusal)),
    }
}
