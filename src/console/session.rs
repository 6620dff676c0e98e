//! Signing in: an API key opens a server-side session. Its id is 32 random
//! bytes held only by the browser (cookie `HttpOnly; SameSite=Strict;
//! Path=/console`, `Secure` unless tuma accepted the connection on a loopback
//! address); the store keeps its SHA-256. A session lasts at most
//! [`SESSION_LIFETIME`], ends after [`SESSION_IDLE`] unused, and ends with
//! its key (revoked, or past a rotation's grace). Every state-changing form
//! carries a CSRF token derived from the session id (HMAC), so it is bound
//! to the session and never stored. Failed sign-ins are counted per client
//! address and logged without the key.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::view::{ConsoleError, field, read_form, render, within};
use crate::api::ApiState;
use crate::api::auth::{Scope, hash_key, hex, hmac_sha256};
use crate::api::server::ConnAddrs;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "tuma_console";
/// A session ends this long after sign-in, however busy.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Failed sign-ins allowed per client address per [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The signed-in user of a request: a live session and its key.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the session id, as stored.
    id_hash: String,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// The key's name: replays are recorded with it.
    pub key_name: String,
    scopes: Vec<Scope>,
}

/// What the page layout needs of a session (navigation by scope).
#[derive(Debug, Serialize)]
pub struct Nav {
    pub csrf: String,
    pub key_name: String,
    pub read: bool,
    pub ops: bool,
    pub reports: bool,
    /// The page shown (its nav link is marked).
    pub page: &'static str,
}

impl Session {
    /// Whether the key has `scope`.
    pub fn can(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ConsoleError> {
        if self.can(scope) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(scope.as_str()))
        }
    }

    /// 403 unless `form` carries this session's CSRF token.
    pub fn check_csrf(&self, form: &[(String, String)]) -> Result<(), ConsoleError> {
        let given = field(form, "csrf").unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }

    /// The layout's view of this session on `page`.
    pub fn nav(&self, page: &'static str) -> Nav {
        Nav {
            csrf: self.csrf.clone(),
            key_name: self.key_name.clone(),
            read: self.can(Scope::Read),
            ops: self.can(Scope::Ops),
            reports: self.can(Scope::Reports),
            page,
        }
    }
}

/// The first page a key's scopes open.
fn home(scopes: &[Scope]) -> &'static str {
    if scopes.contains(&Scope::Read) || scopes.contains(&Scope::Ops) {
        "/console"
    } else {
        "/console/costs"
    }
}

fn parse_scopes(text: &str) -> Vec<Scope> {
    text.split(',').filter_map(|s| s.parse().ok()).collect()
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

fn csrf_for(session_id: &str) -> String {
    hex(&hmac_sha256(session_id.as_bytes(), b"tuma console csrf"))
}

impl FromRequestParts<ApiState> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Session, ConsoleError> {
        let id = cookie_value(&parts.headers).ok_or(ConsoleError::SignIn)?;
        let id_hash = hash_key(&id);
        let db = &state.app.db;
        let stored = within(state, db.console_session(&id_hash))
            .await?
            .ok_or(ConsoleError::SignIn)?;
        let now = state.app.clock.now();
        let idle = chrono::Duration::from_std(SESSION_IDLE).unwrap_or(chrono::Duration::MAX);
        let ended = stored.expires_at <= now
            || now - stored.last_seen_at >= idle
            || stored.key_revoked_at.is_some()
            || stored.key_expires_at.is_some_and(|until| until <= now);
        if ended {
            within(state, db.end_console_session(&id_hash)).await?;
            return Err(ConsoleError::SignIn);
        }
        within(state, db.touch_console_session(&id_hash, now)).await?;
        Ok(Session {
            csrf: csrf_for(&id),
            id_hash,
            key_name: stored.key_name,
            scopes: parse_scopes(&stored.scopes),
        })
    }
}

/// Failed sign-ins per (listening address, client address).
/// Where a sign-in comes from: the address it reached, and the client's.
type Client = (SocketAddr, IpAddr);
/// Failures per client: since when, how many.
type Failures = Mutex<HashMap<Client, (Instant, u32)>>;

fn failures() -> &'static Failures {
    static FAILURES: OnceLock<Failures> = OnceLock::new();
    FAILURES.get_or_init(|| Mutex::new(HashMap::new()))
}

fn limited(client: Option<Client>) -> bool {
    let (Some(client), Ok(mut map)) = (client, failures().lock()) else {
        return false;
    };
    map.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
    map.get(&client).is_some_and(|(_, n)| *n >= MAX_FAILURES)
}

fn note_failure(client: Option<Client>) {
    if let (Some(client), Ok(mut map)) = (client, failures().lock()) {
        let entry = map.entry(client).or_insert((Instant::now(), 0));
        entry.1 += 1;
    }
}

/// `GET /console/sign-in`.
pub async fn sign_in_page() -> Result<Response, ConsoleError> {
    render("sign_in.html", minijinja::context! { error => "" })
}

fn sign_in_refused(message: &str) -> Result<Response, ConsoleError> {
    let mut page = render("sign_in.html", minijinja::context! { error => message })?;
    *page.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
    Ok(page)
}

/// `POST /console/sign-in` with `key`: opens a session.
pub async fn sign_in(
    State(state): State<ApiState>,
    extensions: Extensions,
    body: Body,
) -> Result<Response, ConsoleError> {
    let addrs = extensions.get::<ConnAddrs>().copied();
    let client = addrs.map(|a| (a.local, a.peer.ip()));
    if limited(client) {
        warn!(client = ?addrs.map(|a| a.peer.ip()), "console sign-in refused: too many failures");
        return Err(ConsoleError::TooManyAttempts);
    }
    let form = read_form(body).await?;
    let Some(key) = field(&form, "key") else {
        return sign_in_refused("key: paste an API key");
    };
    let now = state.app.clock.now();
    let found = within(&state, state.app.batcher.live_api_key(&hash_key(key)))
        .await?
        .filter(|k| k.expires_at.is_none_or(|until| until > now));
    let Some(row) = found else {
        note_failure(client);
        // Never the key: only where the attempt came from.
        warn!(client = ?addrs.map(|a| a.peer.ip()), "console sign-in failed: unknown, revoked or expired key");
        return sign_in_refused("that key is unknown, revoked or expired");
    };
    let scopes = parse_scopes(&row.scopes);
    if !scopes
        .iter()
        .any(|s| matches!(s, Scope::Read | Scope::Ops | Scope::Reports))
    {
        return sign_in_refused("that key has none of the console's scopes (read, ops, reports)");
    }
    let idle = chrono::Duration::from_std(SESSION_IDLE).unwrap_or(chrono::Duration::MAX);
    let lifetime = chrono::Duration::from_std(SESSION_LIFETIME).unwrap_or(chrono::Duration::MAX);
    within(&state, state.app.db.purge_console_sessions(now, now - idle)).await?;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    within(
        &state,
        state
            .app
            .db
            .create_console_session(&hash_key(&id), row.id, now, now + lifetime),
    )
    .await?;
    info!(key = %row.name, "console sign-in");
    let secure = addrs.is_none_or(|a| !a.local.ip().is_loopback());
    let cookie = format!(
        "{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/console; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to(home(&scopes)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ConsoleError::Internal(e.to_string()))?,
    );
    Ok(response)
}

/// `POST /console/sign-out`: ends the session and clears the cookie.
pub async fn sign_out(
    State(state): State<ApiState>,
    session: Session,
    body: Body,
) -> Result<Response, ConsoleError> {
    let form = read_form(body).await?;
    session.check_csrf(&form)?;
    within(&state, state.app.db.end_console_session(&session.id_hash)).await?;
    info!(key = %session.key_name, "console sign-out");
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "tuma_console=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0",
        ),
    );
    Ok(response)
}
