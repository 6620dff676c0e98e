//! Registering and removing endpoints: one path for the CLI and the API.

use chrono::{DateTime, Utc};

use super::target::Policy;
use super::{EventType, generate_secret, stored_events};
use crate::store::{Db, EndpointRow, StoreError};

/// Why an endpoint was not registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// A field is wrong; nothing was written.
    #[error("{field}: {reason}")]
    Invalid {
        /// `key`, `url` or `events`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The database failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An endpoint to register.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    /// The API key (by name) whose deliveries' events it hears.
    pub key: String,
    /// Where events go.
    pub url: String,
    /// What it hears; all of [`EventType::ALL`] means every event the key
    /// may hear (`budget.threshold` only for a key with the `ops` scope).
    pub events: Vec<EventType>,
    /// Whether payloads carry the recipient unmasked.
    pub with_recipient: bool,
}

/// The longest endpoint URL.
pub const MAX_URL_CHARS: usize = 2048;

/// Checks and records an endpoint; the returned row holds its secret,
/// which is shown to the caller this once.
pub async fn add_endpoint(
    db: &Db,
    policy: &Policy,
    new: NewEndpoint,
    now: DateTime<Utc>,
) -> Result<EndpointRow, RegisterError> {
    let invalid = |field, reason: String| RegisterError::Invalid { field, reason };
    if let Some(c) = crate::intake::control_character(&new.key, &[]) {
        return Err(invalid(
            "key",
            format!("must not contain control characters (found {c})"),
        ));
    }
    let Some(scopes) = db.live_api_key_scopes(&new.key, now).await? else {
        return Err(invalid(
            "key",
            format!("no live API key is named `{}`", new.key),
        ));
    };
    let mut events = new.events;
    let ops = scopes.split(',').any(|s| s.trim() == "ops");
    if !ops && events.iter().any(|e| e.for_ops()) {
        if events.len() == EventType::ALL.len() {
            // "All" is every event the key may hear.
            events.retain(|e| !e.for_ops());
        } else {
            let named: Vec<&str> = events
                .iter()
                .filter(|e| e.for_ops())
                .map(|e| e.as_str())
                .collect();
            return Err(invalid(
                "events",
                format!(
                    "{} goes only to endpoints of keys with the ops scope; `{}` has {scopes}",
                    named.join(", "),
                    new.key
                ),
            ));
        }
    }
    if new.url.chars().count() > MAX_URL_CHARS {
        return Err(invalid(
            "url",
            format!("is longer than {MAX_URL_CHARS} characters"),
        ));
    }
    if let Some(c) = crate::intake::control_character(&new.url, &[]) {
        return Err(invalid(
            "url",
            format!("must not contain control characters (found {c})"),
        ));
    }
    let url = policy
        .check_url_resolved(&new.url)
        .await
        .map_err(|e| invalid("url", e.0))?;
    if events.is_empty() {
        return Err(invalid("events", "name at least one event".into()));
    }
    let row = EndpointRow {
        id: format!("wh_{}", ulid::Ulid::generate().to_string().to_lowercase()),
        api_key_name: new.key,
        url: url.to_string(),
        secret: generate_secret(),
        events: stored_events(&events),
        with_recipient: new.with_recipient,
        created_at: now,
        failing_since: None,
        disabled_at: None,
        disabled_reason: None,
    };
    db.create_webhook_endpoint(&row).await?;
    Ok(row)
}
