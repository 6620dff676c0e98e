//! `/v1/webhooks`: a calling service's status webhook endpoints, managed by
//! a key with the `ops` scope (as `tuma webhooks` does). The signing secret
//! is in the creation response only.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::info;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::body::parse_json;
use super::error::ApiError;
use crate::store::EndpointRow;
use crate::webhooks::dispatch::{Sender, test_endpoint};
use crate::webhooks::register::{NewEndpoint, RegisterError, add_endpoint};
use crate::webhooks::{EventType, events_of, parse_events};

/// No endpoint id holds a control character: 404 without asking the database.
fn check_path_id(id: &str) -> Result<(), ApiError> {
    match crate::intake::control_character(id, &[]) {
        Some(_) => Err(ApiError::NotFound(
            "no webhook endpoint has this id (it has a control character)".into(),
        )),
        None => Ok(()),
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Invalid { field, reason } => ApiError::InvalidField {
                field: field.to_owned(),
                reason,
            },
            RegisterError::Store(e) => e.into(),
        }
    }
}

/// The body of `POST /v1/webhooks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "auth-service", "url": "https://auth.example.org/hooks/tuma",
    "events": ["delivery.failed", "delivery.delivered"]}))]
pub struct EndpointBody {
    /// The API key (by name) whose deliveries' events the endpoint hears.
    #[schema(example = "auth-service")]
    key: String,
    /// Where events go: https, or http to a loopback address. Addresses
    /// that resolve to private, link-local or metadata ranges are refused
    /// unless `webhooks.allow_ranges` names them.
    #[schema(example = "https://auth.example.org/hooks/tuma")]
    url: String,
    /// The events it hears; all when absent.
    #[schema(schema_with = event_names)]
    events: Option<Vec<String>>,
    /// Payloads carry the recipient unmasked (`+2547******01` otherwise).
    #[serde(default)]
    with_recipient: bool,
}

/// The event names an endpoint may hear, as a JSON Schema array of enums.
fn event_names() -> utoipa::openapi::schema::Array {
    let names: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .enum_values(Some(names)),
        )
        .min_items(Some(1))
        .build()
}

/// A registered endpoint, without its secret.
#[derive(Serialize, ToSchema)]
pub struct Endpoint {
    /// Its id.
    #[schema(example = "wh_01jdx3v8k2m4n6p8q0r2s4t6v8")]
    pub id: String,
    /// The API key (by name) whose deliveries' events it hears.
    #[schema(example = "auth-service")]
    pub key: String,
    /// Where events go.
    pub url: String,
    /// The events it hears.
    #[schema(schema_with = event_names)]
    pub events: Vec<String>,
    /// Whether payloads carry the recipient unmasked.
    pub with_recipient: bool,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// Since when its events have failed (null while they arrive).
    pub failing_since: Option<DateTime<Utc>>,
    /// When it was disabled: it answered 410 Gone, or every attempt failed
    /// for `webhooks.disable_after`.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Why it was disabled, and since when (`the endpoint answered 410 Gone
    /// at …`, `every attempt failed since …`).
    pub disabled_reason: Option<String>,
}

impl From<&EndpointRow> for Endpoint {
    fn from(e: &EndpointRow) -> Endpoint {
        Endpoint {
            id: e.id.clone(),
            key: e.api_key_name.clone(),
            url: e.url.clone(),
            events: events_of(&e.events)
                .into_iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            with_recipient: e.with_recipient,
            created_at: e.created_at,
            failing_since: e.failing_since,
            disabled_at: e.disabled_at,
            disabled_reason: e.disabled_reason.clone(),
        }
    }
}

/// What `GET /v1/webhooks` answers.
#[derive(Serialize, ToSchema)]
pub struct EndpointList {
    /// Every endpoint, oldest first.
    pub endpoints: Vec<Endpoint>,
}

/// A new endpoint with its signing secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedEndpoint {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The Standard Webhooks signing secret (`whsec_` and base64).
    #[schema(pattern = "^whsec_[A-Za-z0-9+/=]+$")]
    pub secret: String,
}

/// What `POST /v1/webhooks/{id}/test` answers: what the endpoint said.
#[derive(Serialize, ToSchema)]
pub struct TestResult {
    /// The test message's `webhook-id`.
    #[schema(example = "msg_5f0c8e2a9b1d4c6e8f0a2b4c6d8e0f1a")]
    pub webhook_id: String,
    /// `delivered` (2xx), `rejected` (another status), `error` (no answer:
    /// connection, TLS, timeout) or `refused` (the address is not allowed).
    pub outcome: TestOutcome,
    /// The HTTP status, when there was one.
    pub status_code: Option<u16>,
    /// From the start of the request to the last byte read.
    #[schema(minimum = 0)]
    pub latency_ms: i64,
    /// What went wrong (never the body or the secret).
    pub error: Option<String>,
}

/// How a webhook attempt ended.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TestOutcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// It answered another status.
    Rejected,
    /// No answer: connection, TLS, timeout.
    Error,
    /// The address is not allowed.
    Refused,
}

/// The body of a status webhook, as the dispatcher sends it (the document's
/// `webhooks` section; `tests/pipeline/webhooks.rs` checks live events
/// against this schema). Never the OTP code, never the message body.
#[derive(Serialize, ToSchema)]
#[allow(
    dead_code,
    reason = "describes the body `webhooks::payload` builds; never built itself"
)]
pub struct DeliveryEvent {
    /// The event.
    #[serde(rename = "type")]
    #[schema(schema_with = event_type)]
    pub kind: String,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// The delivery as it stood when the event was first sent.
    pub data: DeliveryEventData,
}

/// The event names, as a JSON Schema enum.
fn event_type() -> utoipa::openapi::schema::Object {
    let names: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(names))
        .build()
}

/// The delivery an event is about.
#[derive(Serialize, ToSchema)]
#[allow(
    dead_code,
    reason = "describes the body `webhooks::payload` builds; never built itself"
)]
pub struct DeliveryEventData {
    /// The delivery id.
    pub id: String,
    /// `otp` or `notification`.
    pub kind: crate::domain::DeliveryKind,
    /// `sms` or `email`.
    pub channel: crate::domain::Channel,
    /// The status the event reports.
    pub status: crate::domain::DeliveryStatus,
    /// Masked (`+2547******01`, `a***e@example.com`) unless the endpoint
    /// was registered `with_recipient`.
    #[schema(example = "+2547******01")]
    pub recipient: String,
    /// The provider of the latest attempt.
    pub provider: Option<String>,
    /// On `delivery.failed` and `delivery.undelivered`.
    pub error: Option<DeliveryEventError>,
    /// Once sent.
    pub cost: Option<DeliveryEventCost>,
    /// The calling service's `purpose`.
    pub purpose: Option<String>,
    /// Numbers a delivery's events: 1, 2, …
    #[schema(minimum = 1)]
    pub sequence: i64,
    /// When the delivery was created.
    pub created_at: DateTime<Utc>,
    /// When a provider took it.
    pub sent_at: Option<DateTime<Utc>>,
    /// When a receipt said it arrived.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When this event happened.
    pub occurred_at: DateTime<Utc>,
}

/// Why a delivery failed or was not delivered.
#[derive(Serialize, ToSchema)]
#[allow(
    dead_code,
    reason = "describes the body `webhooks::payload` builds; never built itself"
)]
pub struct DeliveryEventError {
    /// `permanent`, `transient`, `unknown` or `not_sent` (the last
    /// attempt's), or `undelivered` (a receipt's).
    pub class: String,
    /// The provider's code.
    pub code: Option<String>,
}

/// What a delivery cost.
#[derive(Serialize, ToSchema)]
#[allow(
    dead_code,
    reason = "describes the body `webhooks::payload` builds; never built itself"
)]
pub struct DeliveryEventCost {
    /// An exact decimal in `currency`.
    #[schema(example = "0.8000")]
    pub amount: String,
    /// ISO 4217.
    #[schema(example = "KES")]
    pub currency: String,
    /// Tuma's estimate, not yet the provider's price.
    pub estimate: bool,
}

/// The document's `webhooks` section (OpenAPI 3.1): what tuma POSTs to a
/// registered endpoint. utoipa has no field for it, so it is built here and
/// added to the serialised document.
pub fn document_webhooks() -> serde_json::Value {
    let header = |name: &str, description: &str| {
        serde_json::json!({
            "name": name, "in": "header", "required": true,
            "description": description, "schema": {"type": "string"}
        })
    };
    serde_json::json!({
        "deliveryStatus": {
            "post": {
                "operationId": "deliveryStatusChanged",
                "tags": ["webhooks"],
                "summary": "A delivery's status changed",
                "description": "POSTed to each endpoint of the key that created the delivery, for \
                    the events it hears, signed by the Standard Webhooks specification: verify \
                    with the endpoint's secret and the official `standardwebhooks` library. At \
                    least once: de-duplicate on `webhook-id`, the same on every retry.",
                "parameters": [
                    header("webhook-id", "The event's id (`msg_…`), the same on every retry"),
                    header("webhook-timestamp", "Unix seconds of this attempt"),
                    header("webhook-signature", "`v1,` and the base64 HMAC-SHA256 of \
                        `{webhook-id}.{webhook-timestamp}.{body}` keyed with the secret"),
                ],
                "requestBody": {
                    "required": true,
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/DeliveryEvent"}
                    }}
                },
                "responses": {
                    "204": {"description": "Taken: any 2xx is success"},
                    "400": {"description": "Refused (a bad signature, say): retried with backoff until webhooks.give_up_after"}
                },
                "security": []
            }
        }
    })
}

/// `GET /v1/webhooks`: every endpoint, without secrets.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "listWebhookEndpoints",
    tag = "webhooks",
    summary = "Every status webhook endpoint, without secrets",
    description = "Scope `ops`.",
    responses((status = 200, description = "The endpoints", body = EndpointList))
)]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<EndpointList>, ApiError> {
    caller.require(Scope::Ops)?;
    let rows = state
        .within_timeout(state.app.db.webhook_endpoints(None))
        .await?;
    Ok(Json(EndpointList {
        endpoints: rows.iter().map(Endpoint::from).collect(),
    }))
}

/// `POST /v1/webhooks`: registers an endpoint; 201 with its secret, shown
/// this once.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    operation_id = "createWebhookEndpoint",
    tag = "webhooks",
    summary = "Register a status webhook endpoint for an API key",
    description = "Scope `ops`. The endpoint hears the events of the deliveries the named key \
        creates, signed by the Standard Webhooks specification (`webhook-id`, \
        `webhook-timestamp`, `webhook-signature`) with the secret in this answer, which is \
        never shown again.",
    request_body = EndpointBody,
    responses((status = 201, description = "Registered; the secret is shown this once",
        body = CreatedEndpoint))
)]
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Ops)?;
    let b = parse_json::<EndpointBody>(&headers, body, state.app.config.api.max_body_bytes)
        .await?
        .value;
    let events = match &b.events {
        None => EventType::ALL.to_vec(),
        Some(list) if list.is_empty() => {
            return Err(ApiError::InvalidField {
                field: "events".into(),
                reason: "name at least one event, or leave `events` out for all".into(),
            });
        }
        Some(list) => {
            parse_events(Some(&list.join(","))).map_err(|reason| ApiError::InvalidField {
                field: "events".into(),
                reason,
            })?
        }
    };
    let new = NewEndpoint {
        key: b.key,
        url: b.url,
        events,
        with_recipient: b.with_recipient,
    };
    let policy = state.app.config.webhooks.policy();
    let now = state.app.clock.now();
    let row = state
        .within_timeout(add_endpoint(&state.app.db, &policy, new, now))
        .await?;
    info!(endpoint = %row.id, key = %row.api_key_name, by = %caller.key.name, "webhook endpoint registered");
    let created = CreatedEndpoint {
        endpoint: Endpoint::from(&row),
        secret: row.secret.clone(),
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `DELETE /v1/webhooks/{id}`: removes an endpoint and its pending events.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    operation_id = "removeWebhookEndpoint",
    tag = "webhooks",
    summary = "Remove a webhook endpoint and the events it has not yet received",
    description = "Scope `ops`.",
    params(("id" = String, Path, description = "The endpoint id")),
    responses((status = 204, description = "Removed"))
)]
pub async fn remove(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Ops)?;
    check_path_id(&id)?;
    if state
        .within_timeout(state.app.db.remove_webhook_endpoint(&id))
        .await?
    {
        info!(endpoint = %id, by = %caller.key.name, "webhook endpoint removed");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!(
            "no webhook endpoint has id `{id}`"
        )))
    }
}

/// `POST /v1/webhooks/{id}/test`: sends a signed `webhook.test` event now
/// and answers what the endpoint said.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/test",
    operation_id = "testWebhookEndpoint",
    tag = "webhooks",
    summary = "Send a signed `webhook.test` event to an endpoint now",
    description = "Scope `ops`. Answers 200 whatever the endpoint said: `outcome` tells.",
    params(("id" = String, Path, description = "The endpoint id")),
    responses((status = 200, description = "What the endpoint said", body = TestResult))
)]
pub async fn test(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TestResult>, ApiError> {
    caller.require(Scope::Ops)?;
    check_path_id(&id)?;
    let db = &state.app.db;
    let endpoint = state
        .within_timeout(db.webhook_endpoint(&id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no webhook endpoint has id `{id}`")))?;
    let sender = Sender::new(&state.app.config.webhooks).map_err(ApiError::Internal)?;
    let (webhook_id, sent) = test_endpoint(db, &sender, &endpoint, state.app.clock.now()).await?;
    let outcome = match sent.outcome {
        "delivered" => TestOutcome::Delivered,
        "rejected" => TestOutcome::Rejected,
        "refused" => TestOutcome::Refused,
        _ => TestOutcome::Error,
    };
    Ok(Json(TestResult {
        webhook_id,
        outcome,
        status_code: sent.status_code,
        latency_ms: sent.latency_ms,
        error: sent.error,
    }))
}

/// The webhook lines of `/metrics`, from figures read at scrape time (so
/// they are right however many processes send): attempts by outcome
/// (`delivered`, `rejected`, `error`, `refused`), the queue's depth and the
/// age of its oldest event, and the endpoints disabled for failing.
pub fn write_metrics(
    w: &mut String,
    f: &crate::store::WebhookFigures,
    now: chrono::DateTime<chrono::Utc>,
) {
    use std::fmt::Write;
    let _ = writeln!(
        w,
        "# HELP tuma_webhook_attempts_total Webhook HTTP attempts, by outcome."
    );
    let _ = writeln!(w, "# TYPE tuma_webhook_attempts_total counter");
    for outcome in ["delivered", "rejected", "error", "refused"] {
        let n = f
            .attempts
            .iter()
            .find(|(o, _)| o == outcome)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            w,
            "tuma_webhook_attempts_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    let _ = writeln!(
        w,
        "# HELP tuma_webhook_queue_depth Webhook events waiting to be sent to enabled endpoints."
    );
    let _ = writeln!(w, "# TYPE tuma_webhook_queue_depth gauge");
    let _ = writeln!(w, "tuma_webhook_queue_depth {}", f.pending);
    let _ = writeln!(
        w,
        "# HELP tuma_webhook_oldest_pending_age_seconds Age of the oldest webhook event waiting (0 when none)."
    );
    let _ = writeln!(w, "# TYPE tuma_webhook_oldest_pending_age_seconds gauge");
    let age = f
        .oldest_pending
        .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    let _ = writeln!(w, "tuma_webhook_oldest_pending_age_seconds {age}");
    let _ = writeln!(
        w,
        "# HELP tuma_webhook_endpoints_disabled Webhook endpoints disabled after failing for webhooks.disable_after."
    );
    let _ = writeln!(w, "# TYPE tuma_webhook_endpoints_disabled gauge");
    let _ = writeln!(
        w,
        "tuma_webhook_endpoints_disabled {}",
        f.disabled_endpoints
    );
}
