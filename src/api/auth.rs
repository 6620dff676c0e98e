//! API keys: `Authorization: Bearer <key>`. A key is shown once at creation
//! and stored only as its SHA-256; every request looks it up (no cache), so
//! a revoked key stops working at once.

use std::fmt;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::ApiState;
use super::error::ApiError;
use crate::store::ApiKeyRow;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// POST /v1/otp and /v1/notifications.
    Send,
    /// GET /v1/deliveries.
    Read,
    /// Operations: `/metrics` when `api.metrics_need_key` is set.
    Ops,
    /// Reports (cost and volume exports; reserved for the reporting endpoints).
    Reports,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Send, Scope::Read, Scope::Ops, Scope::Reports];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Ops => "ops",
            Scope::Reports => "reports",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!("unknown scope `{s}` (expected one of: send, read, ops, reports)")
            })
    }
}

/// A new random key: `tuma_` and 43 URL-safe characters (256 bits).
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "tuma_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of a key, in hex: all that is stored.
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

pub use crate::digest::{hex, hmac_sha256};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's row.
    pub key: ApiKeyRow,
    /// The key itself, kept for the request only: it keys the request hash
    /// of an Idempotency-Key, so a stored hash cannot be brute-forced back
    /// into an OTP code.
    pub secret: secrecy::SecretString,
}

impl Caller {
    /// Fails with 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.scopes.split(',').any(|s| s == scope.as_str()) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope.as_str()))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Caller, ApiError> {
        authenticate(state, &parts.headers).await
    }
}

/// The caller whose live key is in `Authorization: Bearer`; 401 otherwise.
pub async fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let hash = hash_key(presented);
    let key = state
        .within_timeout(state.app.batcher.live_api_key(&hash))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let now = state.app.clock.now();
    // A rotated-out key works until its grace ends.
    if key.expires_at.is_some_and(|until| until <= now) {
        return Err(ApiError::Unauthorized);
    }
    if key
        .last_used_at
        .is_none_or(|at| now - at >= chrono::Duration::minutes(1))
        && let Err(e) = state.app.db.touch_api_key(key.id, now).await
    {
        warn!(error = %e, "could not note an API key's use");
    }
    Ok(Caller {
        key,
        secret: secrecy::SecretString::from(presented.to_owned()),
    })
}
