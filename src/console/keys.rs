//! API keys (scope `ops`): list, create, rotate, revoke, as `tuma keys`
//! does, and each key's webhook endpoints with their latest attempts. A new
//! key is shown once, on the page that answers its creation (never stored,
//! never shown again: the store keeps its SHA-256); an endpoint's signing
//! secret is never shown.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::session::Session;
use super::view::{ConsoleError, field, read_form, render, when, when_opt, within};
use crate::api::ApiState;
use crate::api::auth::{Scope, generate_key, hash_key};

/// How many of an endpoint's latest attempts the page shows.
const ATTEMPTS_SHOWN: i64 = 10;

/// The longest grace a rotation may give the old key.
const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// `GET /console/keys`.
pub async fn page(
    State(state): State<ApiState>,
    session: Session,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Ops)?;
    let keys = within(&state, state.app.db.api_keys()).await?;
    let mut endpoints = within(&state, state.app.db.webhook_endpoints(None)).await?;
    // By key, each key's oldest first.
    endpoints.sort_by(|a, b| a.api_key_name.cmp(&b.api_key_name));
    let mut hooks = Vec::with_capacity(endpoints.len());
    for e in &endpoints {
        let attempts = within(
            &state,
            state.app.db.endpoint_attempts(&e.id, ATTEMPTS_SHOWN),
        )
        .await?;
        let state_text = match (&e.disabled_at, &e.failing_since) {
            (Some(at), _) => format!(
                "disabled {} ({})",
                when(*at),
                e.disabled_reason.as_deref().unwrap_or("no reason given")
            ),
            (None, Some(since)) => format!("failing since {}", when(*since)),
            (None, None) => "working".to_owned(),
        };
        hooks.push(json!({
            "id": e.id,
            "key": e.api_key_name,
            "url": e.url,
            "events": e.events.trim_matches(',').replace(',', ", "),
            "state": state_text,
            "healthy": e.disabled_at.is_none() && e.failing_since.is_none(),
            "attempts": attempts.iter().map(|a| json!({
                "at": when(a.started_at),
                "event": a.event_type.as_deref().unwrap_or("test"),
                "delivery": a.delivery_id,
                "outcome": a.outcome,
                "code": a.status_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                "latency": a.latency_ms,
                "error": a.error.as_deref().unwrap_or(""),
            })).collect::<Vec<_>>(),
        }));
    }
    let now = state.app.clock.now();
    render(
        "keys.html",
        json!({
            "nav": session.nav("keys"),
            "scopes": Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "keys": keys.iter().map(|k| {
                let live = k.revoked_at.is_none() && k.expires_at.is_none_or(|t| t > now);
                json!({
                    "name": k.name,
                    "scopes": k.scopes.replace(',', ", "),
                    "created": when(k.created_at),
                    "last_used": when_opt(k.last_used_at),
                    "until": when_opt(k.expires_at),
                    "revoked": when_opt(k.revoked_at),
                    "live": live,
                    "rotatable": k.revoked_at.is_none() && k.expires_at.is_none(),
                })
            }).collect::<Vec<_>>(),
            "endpoints": hooks,
        }),
    )
}

/// `POST /console/keys/create` `name`, `scope`…: the key, shown once.
pub async fn create(
    State(state): State<ApiState>,
    session: Session,
    body: Body,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Ops)?;
    let form = read_form(body).await?;
    session.check_csrf(&form)?;
    let name =
        field(&form, "name").ok_or_else(|| ConsoleError::invalid("name", "must not be empty"))?;
    if name.chars().any(char::is_control) || name.len() > 100 {
        return Err(ConsoleError::invalid(
            "name",
            "at most 100 characters, none of them control characters",
        ));
    }
    let mut scopes = form
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConsoleError::invalid("scope", e))?;
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(ConsoleError::invalid("scope", "choose at least one scope"));
    }
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let key = generate_key();
    let now = state.app.clock.now();
    if !within(
        &state,
        state
            .app
            .db
            .create_api_key(name, &hash_key(&key), &scopes.join(","), now),
    )
    .await?
    {
        return Err(ConsoleError::invalid(
            "name",
            format!("a live key is named `{name}`: rotate it, or pick another name"),
        ));
    }
    tracing::info!(key = %name, by = %session.key_name, "API key created in the console");
    render(
        "key_shown.html",
        json!({
            "nav": session.nav("keys"),
            "what": "created",
            "name": name,
            "scopes": scopes.join(", "),
            "key": key,
            "until": "",
        }),
    )
}

/// `POST /console/keys/rotate` `name`, `grace`: the new key, shown once; the
/// old one works until the grace ends.
pub async fn rotate(
    State(state): State<ApiState>,
    session: Session,
    body: Body,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Ops)?;
    let form = read_form(body).await?;
    session.check_csrf(&form)?;
    let name =
        field(&form, "name").ok_or_else(|| ConsoleError::invalid("name", "must not be empty"))?;
    let grace_text = field(&form, "grace").unwrap_or("24h");
    let grace = humantime::parse_duration(grace_text)
        .map_err(|e| ConsoleError::invalid("grace", format!("`{grace_text}`: {e}")))?;
    if grace > MAX_GRACE {
        return Err(ConsoleError::invalid("grace", "at most 30 days"));
    }
    let now = state.app.clock.now();
    let until = now + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
    let key = generate_key();
    let Some(scopes) = within(
        &state,
        state
            .app
            .db
            .rotate_api_key(name, &hash_key(&key), until, now),
    )
    .await?
    else {
        return Err(ConsoleError::invalid(
            "name",
            format!("no live key is named `{name}`"),
        ));
    };
    tracing::info!(key = %name, by = %session.key_name, "API key rotated in the console");
    render(
        "key_shown.html",
        json!({
            "nav": session.nav("keys"),
            "what": "rotated",
            "name": name,
            "scopes": scopes.replace(',', ", "),
            "key": key,
            "until": when(until),
        }),
    )
}

/// `POST /console/keys/revoke` `name`: revoked at once.
pub async fn revoke(
    State(state): State<ApiState>,
    session: Session,
    body: Body,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Ops)?;
    let form = read_form(body).await?;
    session.check_csrf(&form)?;
    let name =
        field(&form, "name").ok_or_else(|| ConsoleError::invalid("name", "must not be empty"))?;
    let now = state.app.clock.now();
    if !within(&state, state.app.db.revoke_api_key(name, now)).await? {
        return Err(ConsoleError::invalid(
            "name",
            format!("no live key is named `{name}`"),
        ));
    }
    tracing::info!(key = %name, by = %session.key_name, "API key revoked in the console");
    Ok(Redirect::to("/console/keys").into_response())
}
