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
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::info;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::body::{idempotency_key, parse_json, request_hash};
use super::error::ApiError;
use crate::domain::{Channel, DeliveryStatus};
use crate::intake::{Enqueued, IdempotencyKey, NotificationRequest, OtpRequest};
use crate::store::{AttemptRow, Delivery, PageFilter, ReceiptRow};

/// Default page size of `GET /v1/deliveries`.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size of `GET /v1/deliveries`.
pub const MAX_LIMIT: i64 = 200;

/// `POST /v1/otp`. No `Debug`: it holds the code.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtpBody {
    to: String,
    code: String,
    channel: Option<String>,
    locale: Option<String>,
    ttl_seconds: Option<u64>,
    purpose: Option<String>,
}

/// `POST /v1/notifications`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationBody {
    to: String,
    template: String,
    locale: Option<String>,
    #[serde(default)]
    vars: Map<String, Value>,
    send_at: Option<String>,
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
            let mut response = (status, body).into_response();
            let headers = response.headers_mut();
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
    if let Some(p) = &b.purpose
        && (p.is_empty()
            || p.len() > 64
            || !p
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
    {
        return Err(invalid(
            "purpose",
            "must be 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    let req = OtpRequest {
        to: b.to,
        code: b.code,
        channel,
        locale: b.locale,
        ttl: b.ttl_seconds.map(Duration::from_secs),
    };
    let outcome = state
        .within_timeout(state.app.enqueue_otp_from_api(req, idem))
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
    let send_at = b
        .send_at
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| invalid("send_at", format!("is not an RFC 3339 time: {e}")))
        })
        .transpose()?;
    let req = NotificationRequest {
        to: b.to,
        template: b.template,
        locale: b.locale,
        vars: b.vars,
        send_at,
    };
    let outcome = state
        .within_timeout(state.app.enqueue_notification_from_api(req, idem))
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

/// A delivery as the API shows it. Bodies are stored with the OTP code
/// redacted and the code itself is never read, so it cannot appear here.
///
/// `display_status` is `no receipt` for a delivery `sent` longer than
/// `no_receipt_after` before `now` without a final receipt, else the status.
pub fn delivery_json(d: &Delivery, now: DateTime<Utc>, no_receipt_after: Duration) -> Value {
    let r = &d.row;
    json!({
        "id": r.id,
        "kind": r.kind,
        "channel": r.channel,
        "recipient": r.recipient,
        "status": r.status,
        "display_status": d.display_status(now, no_receipt_after),
        "template": r.template,
        "locale": r.locale,
        "subject": r.subject,
        "body": r.body,
        "provider": r.provider,
        "provider_message_id": r.provider_message_id,
        "cost": d.cost.map(|c| json!({
            "amount": c.to_decimal_string(),
            "currency": c.currency.as_str(),
            "estimate": r.cost_is_estimate.unwrap_or(false),
        })),
        "price_reconciled_at": r.reconciled_at,
        "price_note": r.reconcile_note,
        "segments": r.segments,
        "encoding": r.encoding,
        "attempt_count": r.attempts,
        "max_attempts": r.max_attempts,
        "last_error": r.last_error,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "sent_at": r.sent_at,
        "delivered_at": r.delivered_at,
        "expires_at": r.expires_at,
        "next_attempt_at": r.next_attempt_at,
    })
}

/// A receipt as the API shows it: the provider's fields as they came.
pub fn receipt_json(r: &ReceiptRow) -> Value {
    json!({
        "attempt": r.attempt,
        "provider": r.provider,
        "provider_message_id": r.provider_message_id,
        "status": r.status,
        "error_code": r.error_code,
        "error": r.error,
        "applied": r.applied,
        "fields": serde_json::from_str::<Value>(&r.fields).unwrap_or(Value::Null),
        "received_at": r.received_at,
    })
}

fn attempt_json(a: &AttemptRow) -> Value {
    json!({
        "attempt": a.attempt,
        "provider": a.provider,
        "reason": a.reason,
        "started_at": a.started_at,
        "finished_at": a.finished_at,
        "outcome": a.outcome,
        "provider_message_id": a.provider_message_id,
        "provider_status": a.provider_status,
        "error_code": a.error_code,
        "error": a.error,
        "cost_micros": a.cost_micros,
        "currency": a.currency,
        "segments": a.segments,
        "latency_ms": a.latency_ms,
    })
}

/// `GET /v1/deliveries/{id}`: one delivery with its attempts.
pub async fn get_delivery(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let db = &state.app.db;
    let found = state
        .within_timeout(async {
            match db.delivery(&id).await? {
                Some(d) => Ok::<_, crate::store::StoreError>(Some((
                    d,
                    db.attempts(&id).await?,
                    db.receipts(&id).await?,
                ))),
                None => Ok(None),
            }
        })
        .await?;
    let Some((d, attempts, receipts)) = found else {
        return Err(ApiError::NotFound(format!("no delivery has id `{id}`")));
    };
    let mut v = delivery_json(
        &d,
        state.app.clock.now(),
        state.app.config.receipts.no_receipt_after,
    );
    v["attempts"] = Value::Array(attempts.iter().map(attempt_json).collect());
    v["receipts"] = Value::Array(receipts.iter().map(receipt_json).collect());
    Ok(Json(v).into_response())
}

const LIST_PARAMS: [&str; 6] = ["status", "channel", "provider", "since", "limit", "cursor"];

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
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    Some((at, id.to_owned()))
}

/// `GET /v1/deliveries`: newest first, keyset-paginated by `cursor`.
pub async fn list_deliveries(
    State(state): State<ApiState>,
    caller: Caller,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    if let Some(unknown) = params.keys().find(|k| !LIST_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::UnknownField {
            field: unknown.clone(),
        });
    }
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let filter = PageFilter {
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
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| invalid("since", format!("is not an RFC 3339 time: {e}")))
            })
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
    let now = state.app.clock.now();
    let more = page.len() > usize::try_from(filter.limit).unwrap_or(usize::MAX);
    page.truncate(usize::try_from(filter.limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        page.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(json!({
        "items": page
            .iter()
            .map(|d| delivery_json(d, now, state.app.config.receipts.no_receipt_after))
            .collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    }))
    .into_response())
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers and takes writes; else 503.
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
