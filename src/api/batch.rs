//! `POST /v1/notifications/batch`: up to [`MAX_BATCH_ITEMS`] notification
//! sends in one request and one transaction. Each item is checked as
//! `POST /v1/notifications` checks one and answered on its own: its id, or
//! its problem naming the item and field. A refused item writes nothing and
//! does not stop the others.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::info;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::body::{MAX_IDEMPOTENCY_KEY, canonical, from_value, read_json, request_hash};
use super::error::ApiError;
use super::handlers::{check_purpose, deadline, origin};
use crate::delivery_view::VarValue;
use crate::intake::{Enqueued, IdempotencyKey, NotificationRequest, control_character};

/// The most items one batch takes.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// The largest batch body: `api.max_body_bytes` when that is larger.
pub const MAX_BATCH_BODY_BYTES: usize = 1024 * 1024;

/// One item of a batch: a notification as `POST /v1/notifications` takes
/// it, and its own idempotency key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to": "+254711000001", "template": "welcome", "vars": {"name": "Amina"},
    "idempotency_key": "signup-8812"}))]
pub struct BatchItem {
    /// An E.164 number (or a national one in otp.default_region) or an email address.
    to: String,
    /// A template (a folder under templates/).
    #[schema(example = "welcome")]
    template: String,
    /// Template locale; otherwise the default.
    locale: Option<String>,
    /// Template variables: text, numbers or booleans (`code` is reserved).
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeMap<String, VarValue>)]
    vars: Map<String, Value>,
    /// RFC 3339: the first attempt waits until then.
    #[schema(value_type = Option<String>, format = DateTime)]
    send_at: Option<String>,
    /// Its own deadline, from now: a duration of 30s to 30d (`90s`, `10m`,
    /// `1h 30m`, `7d`). Past it the notification is `expired`, never sent
    /// late. Not with `expires_at`; with `send_at`, it must fall after it.
    #[schema(example = "1h")]
    ttl: Option<String>,
    /// Its own deadline as an RFC 3339 time, 30 s to 30 days from now. Past
    /// it the notification is `expired`, never sent late. Not with `ttl`;
    /// with `send_at`, it must fall after it.
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    /// What the notification is for: carried in its webhooks.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "welcome")]
    purpose: Option<String>,
    /// This item's Idempotency-Key (up to 255 characters), kept 24 h per API
    /// key. It is the same key as the `Idempotency-Key` header of
    /// `POST /v1/notifications`: the same key and item again answer the
    /// original id (`replayed: true`) and write nothing; another body gets
    /// the item a 422.
    #[schema(example = "signup-8812")]
    idempotency_key: Option<String>,
}

/// The body of `POST /v1/notifications/batch`.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "describes the body, which is read item by item so each item gets its own problem"
)]
pub struct Batch {
    /// 1 to 1,000 notifications.
    #[schema(min_items = 1, max_items = 1000)]
    items: Vec<BatchItem>,
}

/// One item's answer.
#[derive(Serialize, ToSchema)]
pub struct BatchItemResult {
    /// The item's position in `items`, from 0.
    #[schema(minimum = 0)]
    pub index: usize,
    /// Accepted: the new delivery's id (`/v1/deliveries/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "019ac1f2-6c1e-7a53-9d7e-2b1f3c4d5e6f")]
    pub id: Option<String>,
    /// Accepted: `pending`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^pending$")]
    pub status: Option<String>,
    /// Accepted with its own deadline (`ttl`, `expires_at`): when it falls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The item repeated an earlier send with its `idempotency_key`: `id`
    /// is that send's, and nothing was written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// Refused: why, as the single route would answer it, with `field`
    /// naming the item (`items[3].to`). Nothing was written for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::openapi::Problem>)]
    pub problem: Option<Value>,
}

/// What `POST /v1/notifications/batch` answers.
#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    /// Items accepted now or earlier (replayed).
    #[schema(minimum = 0)]
    pub accepted: usize,
    /// Items refused.
    #[schema(minimum = 0)]
    pub refused: usize,
    /// One answer per item, in the order of `items`.
    pub items: Vec<BatchItemResult>,
}

/// The `expires_at` of a send's answer (`intake::receipt`), if it has one.
fn expiry(receipt: &Value) -> Option<DateTime<Utc>> {
    let at = receipt.get("expires_at")?.as_str()?;
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The problem of a refused item, its field named within the batch.
fn item_problem(index: usize, e: &ApiError) -> Value {
    let mut problem = e.problem();
    let field = match problem.get("field").and_then(Value::as_str) {
        Some(field) => format!("items[{index}].{field}"),
        None => format!("items[{index}]"),
    };
    problem["field"] = Value::from(field);
    problem
}

/// An item's idempotency key, checked as the header is.
fn item_key(key: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    let bad = |reason: &str| ApiError::InvalidField {
        field: "idempotency_key".into(),
        reason: reason.into(),
    };
    let key = key.trim();
    if control_character(key, &[]).is_some() || !key.is_ascii() {
        return Err(bad("must be visible ASCII"));
    }
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad("must be 1 to 255 characters"));
    }
    Ok(Some(key.to_owned()))
}

/// An item read as a send: its request, purpose and idempotency key.
fn read_item(
    caller: &Caller,
    raw: Value,
) -> Result<(NotificationRequest, Option<String>, Option<IdempotencyKey>), ApiError> {
    // The key is not part of the request it stands for: an item and a
    // single send of the same body with the same key are the same request.
    let mut request = raw.clone();
    if let Some(fields) = request.as_object_mut() {
        fields.remove("idempotency_key");
    }
    let b = from_value::<BatchItem>(raw)?.value;
    let idempotency = item_key(b.idempotency_key.as_deref())?.map(|key| IdempotencyKey {
        api_key_id: caller.key.id,
        key,
        request_hash: request_hash(caller, "/v1/notifications", &canonical(&request)),
        response_status: axum::http::StatusCode::ACCEPTED.as_u16(),
    });
    check_purpose(b.purpose.as_deref())?;
    let send_at = b
        .send_at
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::InvalidField {
                    field: "send_at".into(),
                    reason: format!("is not an RFC 3339 time: {e}"),
                })
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
    Ok((req, b.purpose, idempotency))
}

/// `POST /v1/notifications/batch`.
#[utoipa::path(
    post,
    path = "/v1/notifications/batch",
    operation_id = "sendNotificationBatch",
    tag = "sending",
    summary = "Send up to 1,000 templated notifications in one request",
    description = "Scope `send`. Each item is what `POST /v1/notifications` takes, plus its own \
        `idempotency_key` (the batch takes no `Idempotency-Key` header). Every item is checked \
        as a single send is (recipient, template, variables, the SMS prefix allowlist, the \
        suppression list, the pumping guards) and the accepted ones are written in one \
        transaction. Each item is answered on its own, in order: its id, or its problem with \
        `field` naming the item (`items[3].to`); nothing is written for a refused item and it \
        does not stop the others. The answer is 200 whatever the items' fates; `accepted` and \
        `refused` count them. The body may be up to 1 MiB (or api.max_body_bytes when larger).",
    request_body = Batch,
    responses((status = 200, description = "Each item's answer", body = BatchResult,
        example = json!({"accepted": 1, "refused": 1, "items": [
            {"index": 0, "id": "019ac1f2-6c1e-7a53-9d7e-2b1f3c4d5e6f", "status": "pending"},
            {"index": 1, "problem": {"type": "https://tuma.dev/problems/invalid-field",
                "title": "A field is invalid", "status": 422, "field": "items[1].to",
                "detail": "not a phone number or an email address"}}]})))
)]
pub async fn post_batch(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BatchResult>, ApiError> {
    caller.require(Scope::Send)?;
    let limit = MAX_BATCH_BODY_BYTES.max(state.app.config.api.max_body_bytes);
    let raw = read_json(&headers, body, limit).await?;
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::InvalidField {
            field: "Idempotency-Key".into(),
            reason: "a batch takes an `idempotency_key` in each item, not one for the whole".into(),
        });
    }
    let Value::Object(mut outer) = raw else {
        return Err(ApiError::InvalidField {
            field: "(body)".into(),
            reason: "must be a JSON object with `items`".into(),
        });
    };
    let items = match outer.remove("items") {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::InvalidField {
                field: "items".into(),
                reason: "must be a list of notifications".into(),
            });
        }
        None => {
            return Err(ApiError::InvalidField {
                field: "items".into(),
                reason: "is required".into(),
            });
        }
    };
    if let Some(unknown) = outer.keys().next() {
        return Err(ApiError::UnknownField {
            field: super::body::field_name(unknown),
        });
    }
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::InvalidField {
            field: "items".into(),
            reason: format!(
                "holds {} items; a batch takes 1 to {MAX_BATCH_ITEMS} (send more as several batches)",
                items.len()
            ),
        });
    }
    let count = items.len();
    let mut answers: Vec<Option<BatchItemResult>> = Vec::with_capacity(count);
    let mut sends = Vec::new();
    let mut positions = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match read_item(&caller, item) {
            Ok((req, purpose, idempotency)) => {
                answers.push(None);
                positions.push(index);
                sends.push((req, origin(&caller, purpose.as_deref()), idempotency));
            }
            Err(e) => answers.push(Some(BatchItemResult {
                index,
                id: None,
                status: None,
                expires_at: None,
                replayed: false,
                problem: Some(item_problem(index, &e)),
            })),
        }
    }
    if !sends.is_empty() {
        let outcomes = state
            .within_timeout(state.app.enqueue_notifications_from_api(sends))
            .await?;
        for (index, outcome) in positions.into_iter().zip(outcomes) {
            let answer = match outcome {
                Ok(Enqueued::Created { id, receipt, .. }) => BatchItemResult {
                    index,
                    id: Some(id),
                    status: Some("pending".into()),
                    expires_at: expiry(&receipt),
                    replayed: false,
                    problem: None,
                },
                Ok(Enqueued::Replayed { body, .. }) => {
                    let saved: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    BatchItemResult {
                        index,
                        id: saved["id"].as_str().map(str::to_owned),
                        status: Some("pending".into()),
                        expires_at: expiry(&saved),
                        replayed: true,
                        problem: None,
                    }
                }
                Err(e) => {
                    let e = ApiError::from(e);
                    if let Some(rule) = e.rule() {
                        state.metrics.count_refusal(rule);
                    }
                    BatchItemResult {
                        index,
                        id: None,
                        status: None,
                        expires_at: None,
                        replayed: false,
                        problem: Some(item_problem(index, &e)),
                    }
                }
            };
            if let Some(slot) = answers.get_mut(index) {
                *slot = Some(answer);
            }
        }
    }
    let items: Vec<BatchItemResult> = answers.into_iter().flatten().collect();
    if items.len() != count {
        return Err(ApiError::Internal("a batch item got no answer".into()));
    }
    let refused = items.iter().filter(|i| i.problem.is_some()).count();
    info!(
        key = %caller.key.name,
        items = count,
        refused,
        "notification batch accepted"
    );
    Ok(Json(BatchResult {
        accepted: count - refused,
        refused,
        items,
    }))
}
