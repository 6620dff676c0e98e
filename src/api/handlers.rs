//! The endpoints. Sends go through intake; reads through the store.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tracing::info;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::body::{field_name, idempotency_key, parse_json, request_hash};
use super::error::ApiError;
use crate::delivery_view::{DeliveryView, VarValue};
use crate::domain::{Channel, DeliveryStatus};
use crate::intake::{
    ApiOrigin, Deadline, Enqueued, IdempotencyKey, IntakeError, NotificationRequest, OtpRequest,
    control_character,
};
use crate::store::{Delivery, PageFilter};

/// Default page size of `GET /v1/deliveries`.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size of `GET /v1/deliveries`.
pub const MAX_LIMIT: i64 = 200;

/// `POST /v1/otp`: a one-time code to send. No `Debug`: it holds the code.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to": "+254711000001", "code": "482913", "purpose": "login"}))]
pub struct OtpBody {
    /// An E.164 number (or a national one in otp.default_region) or an email address.
    #[schema(example = "+254711000001")]
    to: String,
    /// The code, 4 to 10 digits. Never stored readable, never shown.
    #[schema(pattern = "^[0-9]{4,10}$", example = "482913")]
    code: String,
    /// Inferred from `to` when absent.
    #[schema(value_type = Option<Channel>)]
    channel: Option<String>,
    /// Template locale; otherwise the default.
    #[schema(example = "en")]
    locale: Option<String>,
    /// How long the code may still be sent: 30 to 86400 (otp.ttl when absent).
    #[schema(minimum = 30, maximum = 86400)]
    ttl_seconds: Option<u64>,
    /// What the code is for, recorded in the log line of the send.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "login")]
    purpose: Option<String>,
}

/// Refuses a `purpose` that is not 1 to 64 letters, digits, `_` or `-`.
pub(crate) fn check_purpose(purpose: Option<&str>) -> Result<(), ApiError> {
    if let Some(p) = purpose
        && (p.is_empty()
            || p.len() > crate::intake::MAX_PURPOSE_CHARS
            || !p
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
    {
        return Err(invalid(
            "purpose",
            "must be 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    Ok(())
}

/// Who sent a request, for intake (and the delivery's webhooks).
pub(crate) fn origin(caller: &Caller, purpose: Option<&str>) -> ApiOrigin {
    ApiOrigin {
        key_name: caller.key.name.clone(),
        purpose: purpose.map(str::to_owned),
    }
}

/// `POST /v1/notifications`: a templated message to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to": "amina@example.org", "template": "welcome", "vars": {"name": "Amina"}}))]
pub struct NotificationBody {
    /// An E.164 number (or a national one in otp.default_region) or an email address.
    pub(crate) to: String,
    /// A template (a folder under templates/).
    #[schema(example = "welcome")]
    pub(crate) template: String,
    /// Template locale; otherwise the default.
    pub(crate) locale: Option<String>,
    /// Template variables: text, numbers or booleans (`code` is reserved).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, VarValue>)]
    pub(crate) vars: Map<String, Value>,
    /// RFC 3339: the first attempt waits until then.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub(crate) send_at: Option<String>,
    /// Its own deadline, from now: a duration of 30s to 30d (`90s`, `10m`,
    /// `1h 30m`, `7d`). Past it the notification is `expired`, never sent
    /// late. Not with `expires_at`; with `send_at`, it must fall after it.
    #[schema(example = "1h")]
    pub(crate) ttl: Option<String>,
    /// Its own deadline as an RFC 3339 time, 30 s to 30 days from now. Past
    /// it the notification is `expired`, never sent late. Not with `ttl`;
    /// with `send_at`, it must fall after it.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub(crate) expires_at: Option<String>,
    /// What the notification is for: carried in its webhooks.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "welcome")]
    pub(crate) purpose: Option<String>,
}

/// A notification's `ttl` or `expires_at`, read (their bounds are intake's).
pub(crate) fn deadline(
    ttl: Option<&str>,
    expires_at: Option<&str>,
) -> Result<Option<Deadline>, ApiError> {
    match (ttl, expires_at) {
        (Some(_), Some(_)) => Err(invalid("expires_at", "give ttl or expires_at, not both")),
        (Some(ttl), None) => crate::config::parse_duration(ttl)
            .map(|d| Some(Deadline::Ttl(d)))
            .map_err(|e| invalid("ttl", e)),
        (None, Some(at)) => DateTime::parse_from_rfc3339(at)
            .map(|t| Some(Deadline::At(t.with_timezone(&Utc))))
            .map_err(|e| invalid("expires_at", format!("is not an RFC 3339 time: {e}"))),
        (None, None) => Ok(None),
    }
}

/// A send's answer (202).
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// The new delivery's id; `Location` is `/v1/deliveries/{id}`.
    #[schema(example = "019ac1f2-6c1e-7a53-9d7e-2b1f3c4d5e6f")]
    pub id: String,
    /// Always `pending`.
    #[schema(value_type = String, pattern = "^pending$")]
    pub status: String,
    /// When it stops being sent: an OTP's TTL ends, or a notification's own
    /// deadline (`ttl`, `expires_at`) falls; absent for a notification
    /// without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A page of deliveries, newest first.
#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    /// The deliveries.
    pub items: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// The Idempotency-Key of a send, bound to the caller and this request.
fn idempotency(
    caller: &Caller,
    headers: &HeaderMap,
    route: &str,
    canonical: &str,
) -> Result<Option<IdempotencyKey>, ApiError> {
    Ok(idempotency_key(headers)?.map(|key| IdempotencyKey {
        api_key_id: caller.key.id,
        key,
        request_hash: request_hash(caller, route, canonical),
        response_status: StatusCode::ACCEPTED.as_u16(),
    }))
}

/// A send's response: the new receipt, or the saved one of an earlier
/// request with the same Idempotency-Key.
fn accepted(outcome: Enqueued) -> Response {
    match outcome {
        Enqueued::Created { id, receipt, .. } => {
            let mut response = (StatusCode::ACCEPTED, Json(receipt)).into_response();
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/deliveries/{id}")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Enqueued::Replayed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            // The original answer's Location too: it names the delivery the
            // saved body holds.
            let location = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().map(|id| format!("/v1/deliveries/{id}")))
                .and_then(|l| HeaderValue::from_str(&l).ok());
            let mut response = (status, body).into_response();
            let headers = response.headers_mut();
            if let Some(location) = location {
                headers.insert(header::LOCATION, location);
            }
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
    }
}

/// `POST /v1/otp`: a one-time code.
#[utoipa::path(
    post,
    path = "/v1/otp",
    operation_id = "sendOtp",
    tag = "sending",
    summary = "Send a one-time code",
    description = "Scope `send`. The code is sealed at rest, never logged or shown, and never sent after its TTL.",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Up to 255 characters. Kept 24 h per API key: the same key and body return the original response (with `Idempotent-Replayed: true`); another body gets 422."),
    ),
    request_body = OtpBody,
    responses((status = 202, description = "Accepted; or, for a repeated Idempotency-Key, the original answer",
        body = Accepted,
        headers(("Location" = String, description = "/v1/deliveries/{id}")),
        example = json!({"id": "019ac1f2-6c1e-7a53-9d7e-2b1f3c4d5e6f", "status": "pending", "expires_at": "2026-11-29T10:05:00+00:00"})))
)]
pub async fn post_otp(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Send)?;
    let parsed = parse_json::<OtpBody>(&headers, body, state.app.config.api.max_body_bytes).await?;
    let idem = idempotency(&caller, &headers, "/v1/otp", &parsed.canonical)?;
    let b = parsed.value;
    let channel = b
        .channel
        .map(|c| c.parse::<Channel>().map_err(|e| invalid("channel", e)))
        .transpose()?;
    check_purpose(b.purpose.as_deref())?;
    let req = OtpRequest {
        to: b.to,
        code: b.code,
        channel,
        locale: b.locale,
        ttl: b.ttl_seconds.map(Duration::from_secs),
    };
    let outcome = state
        .within_timeout(async {
            state
                .app
                .enqueue_otp_from_api(req, origin(&caller, b.purpose.as_deref()), idem)
                .await
                .map_err(|e| match e {
                    // The request names it `ttl_seconds`; intake calls it `ttl`.
                    IntakeError::Invalid { field, reason } if field == "ttl" => {
                        IntakeError::Invalid {
                            field: "ttl_seconds".into(),
                            reason,
                        }
                    }
                    e => e,
                })
        })
        .await?;
    if let Enqueued::Created { id, channel, .. } = &outcome {
        info!(
            delivery = %id,
            channel = %channel,
            purpose = b.purpose.as_deref().unwrap_or("-"),
            key = %caller.key.name,
            "OTP accepted"
        );
    }
    Ok(accepted(outcome))
}

/// `POST /v1/notifications`: a templated message.
#[utoipa::path(
    post,
    path = "/v1/notifications",
    operation_id = "sendNotification",
    tag = "sending",
    summary = "Send a templated notification",
    description = "Scope `send`. Rendered at once, so an unknown template or a missing variable is refused here. With its own deadline (`ttl` or `expires_at`) it is `expired`, never sent, once the deadline has passed; the answer then carries `expires_at`.",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Up to 255 characters. Kept 24 h per API key: the same key and body return the original response (with `Idempotent-Replayed: true`); another body gets 422."),
    ),
    request_body = NotificationBody,
    responses((status = 202, description = "Accepted; or, for a repeated Idempotency-Key, the original answer",
        body = Accepted,
        headers(("Location" = String, description = "/v1/deliveries/{id}")),
        example = json!({"id": "019ac1f2-6c1e-7a53-9d7e-2b1f3c4d5e6f", "status": "pending"})))
)]
pub async fn post_notification(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Send)?;
    let parsed =
        parse_json::<NotificationBody>(&headers, body, state.app.config.api.max_body_bytes).await?;
    let idem = idempotency(&caller, &headers, "/v1/notifications", &parsed.canonical)?;
    let b = parsed.value;
    check_purpose(b.purpose.as_deref())?;
    let send_at = b
        .send_at
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| invalid("send_at", format!("is not an RFC 3339 time: {e}")))
        })
        .transpose()?;
    let expires = deadline(b.ttl.as_deref(), b.expires_at.as_deref())?;
    let req = NotificationRequest {
        to: b.to,
        template: b.template,
        locale: b.locale,
        vars: b.vars,
        send_at,
        expires,
    };
    let outcome = state
        .within_timeout(state.app.enqueue_notification_from_api(
            req,
            origin(&caller, b.purpose.as_deref()),
            idem,
        ))
        .await?;
    if let Enqueued::Created {
        id,
        channel,
        template,
        ..
    } = &outcome
    {
        info!(
            delivery = %id,
            channel = %channel,
            template = %template,
            key = %caller.key.name,
            "notification accepted"
        );
    }
    Ok(accepted(outcome))
}

/// Refuses a query parameter whose name or value holds a control character
/// (naming it, never repeating the text).
pub fn check_params(params: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (name, value) in params {
        if let Some(c) = control_character(name, &[]) {
            return Err(invalid(
                "(query)",
                format!("a parameter name must not contain control characters (found {c})"),
            ));
        }
        if let Some(c) = control_character(value, &[]) {
            return Err(invalid(
                name,
                format!("must not contain control characters (found {c})"),
            ));
        }
    }
    Ok(())
}

/// No delivery can have an id holding a control character: 404 without
/// asking the database (Postgres refuses a NUL) or repeating the id.
pub fn check_path_id(id: &str) -> Result<(), ApiError> {
    match control_character(id, &[]) {
        Some(_) => Err(ApiError::NotFound(
            "no delivery has this id (it has a control character)".into(),
        )),
        None => Ok(()),
    }
}

/// `GET /v1/deliveries/{id}`: one delivery with its attempts.
#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    operation_id = "getDelivery",
    tag = "deliveries",
    summary = "One delivery with its attempts, receipts, cost and replays",
    description = "Scope `read`.",
    params(("id" = String, Path, description = "The delivery id")),
    responses((status = 200, description = "The delivery", body = DeliveryView))
)]
pub async fn get_delivery(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    check_path_id(&id)?;
    let view = state
        .within_timeout(DeliveryView::load(
            &state.app.db,
            &id,
            state.app.clock.now(),
            state.app.config.receipts.no_receipt_after,
        ))
        .await?;
    match view {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::NotFound(format!("no delivery has id `{id}`"))),
    }
}

const LIST_PARAMS: [&str; 8] = [
    "recipient",
    "status",
    "channel",
    "provider",
    "error_code",
    "since",
    "limit",
    "cursor",
];

/// `since`: an RFC 3339 time, or a length back from `now` as the CLI takes
/// it (`2h`, up to 3650 days).
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let back = crate::config::parse_duration_in(
        s,
        Duration::from_secs(1),
        Duration::from_secs(3650 * 24 * 3600),
    )
    .map_err(|e| format!("is neither an RFC 3339 time nor a length such as 2h: {e}"))?;
    chrono::Duration::from_std(back)
        .map(|d| now - d)
        .map_err(|e| e.to_string())
}

/// A recipient to search for, read as intake reads a send's `to`.
pub fn normalise_recipient(
    to: &str,
    region: crate::domain::phone::Region,
) -> Result<String, String> {
    crate::domain::Recipient::parse(to, region)
        .map(|r| r.as_str().to_owned())
        .map_err(|e| e.to_string())
}

fn encode_cursor(d: &Delivery) -> String {
    let raw = format!("{}|{}", d.row.created_at.to_rfc3339(), d.row.id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (at, id) = raw.split_once('|')?;
    if control_character(id, &[]).is_some() {
        return None;
    }
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    Some((at, id.to_owned()))
}

/// `GET /v1/deliveries`: newest first, keyset-paginated by `cursor`.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    operation_id = "listDeliveries",
    tag = "deliveries",
    summary = "Deliveries, newest first, a page at a time",
    description = "Scope `read`. Each item is the same shape as `GET /v1/deliveries/{id}`.",
    params(
        ("recipient" = Option<String>, Query, description = "Only those to this recipient, read as a send's `to` is (a national number in otp.default_region; an email address in any case)", example = "+254711000001"),
        ("status" = Option<DeliveryStatus>, Query, description = "Only this status"),
        ("channel" = Option<Channel>, Query, description = "Only this channel"),
        ("provider" = Option<String>, Query, description = "Only those whose latest attempt went to this provider"),
        ("error_code" = Option<String>, Query, description = "Only those whose latest attempt ended with this provider error code", example = "21211"),
        ("since" = Option<String>, Query, description = "Created within this long (`2h`, `30m`, `7d`) or at or after this RFC 3339 time", example = "2h"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "A page", body = DeliveryPage))
)]
pub async fn list_deliveries(
    State(state): State<ApiState>,
    caller: Caller,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    check_params(&params)?;
    if let Some(unknown) = params.keys().find(|k| !LIST_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::UnknownField {
            field: field_name(unknown),
        });
    }
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let now = state.app.clock.now();
    let filter = PageFilter {
        recipient: get("recipient")
            .map(|r| {
                normalise_recipient(r, state.app.config.otp.default_region)
                    .map_err(|e| invalid("recipient", e))
            })
            .transpose()?,
        error_code: get("error_code").map(str::to_owned),
        status: get("status")
            .map(|s| {
                s.parse::<DeliveryStatus>()
                    .map_err(|e| invalid("status", e))
            })
            .transpose()?,
        channel: get("channel")
            .map(|c| c.parse::<Channel>().map_err(|e| invalid("channel", e)))
            .transpose()?,
        provider: get("provider").map(str::to_owned),
        since: get("since")
            .map(|s| parse_since(s, now).map_err(|e| invalid("since", e)))
            .transpose()?,
        after: get("cursor")
            .map(|c| {
                decode_cursor(c).ok_or_else(|| invalid("cursor", "is not a cursor this API gave"))
            })
            .transpose()?,
        limit: match get("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    )
                })?,
        },
    };
    // One more than asked, to know whether there is a next page.
    let mut page = state
        .within_timeout(state.app.db.delivery_page(&PageFilter {
            limit: filter.limit + 1,
            ..filter.clone()
        }))
        .await?;
    let more = page.len() > usize::try_from(filter.limit).unwrap_or(usize::MAX);
    page.truncate(usize::try_from(filter.limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        page.last().map(encode_cursor)
    } else {
        None
    };
    let items = state
        .within_timeout(DeliveryView::many(
            &state.app.db,
            &page,
            state.app.clock.now(),
            state.app.config.receipts.no_receipt_after,
        ))
        .await?;
    Ok(Json(DeliveryPage { items, next_cursor }).into_response())
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "getHealth",
    tag = "operations",
    summary = "The process is up",
    responses((status = 200, description = "Up", body = super::openapi::Health, example = json!({"status": "ok"}))),
    security(())
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers and takes writes; else 503.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "getReady",
    tag = "operations",
    summary = "The database answers and takes writes",
    responses((status = 200, description = "Ready", body = super::openapi::Health, example = json!({"status": "ready", "database": "sqlite"}))),
    security(())
)]
pub async fn readyz(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    state
        .within_timeout(state.app.db.ready())
        .await
        .map_err(|e| match e {
            ApiError::Internal(cause) => ApiError::Unavailable(cause),
            other => other,
        })?;
    Ok(Json(
        json!({ "status": "ready", "database": state.app.db.backend_name() }),
    ))
}

/// Any path the API does not have.
pub async fn no_route() -> ApiError {
    ApiError::NotFound("no route matches this path".into())
}

/// A known path with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
