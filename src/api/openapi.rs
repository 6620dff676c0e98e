//! The OpenAPI 3.1 document, generated from the code with `utoipa`: each
//! handler carries its `#[utoipa::path]`, each request and response type its
//! `ToSchema`. `GET /openapi.json` serves it and `tuma openapi` prints it.
//!
//! What the handlers' attributes do not say is added here by [`Complete`],
//! from tables kept beside the code they describe: the problems each
//! operation can answer (every one is a [`Problem`]), the security schemes,
//! `security: []` on public routes, and the servers.

use std::borrow::Cow;

use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder, Server, ServerBuilder,
};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::error::PROBLEM_BASE;

/// The problem `type`s tuma answers, after [`PROBLEM_BASE`], with their status.
pub const PROBLEM_TYPES: [(&str, u16); 23] = [
    ("bad-request", 400),
    ("malformed-json", 400),
    ("unauthorized", 401),
    ("forbidden", 403),
    ("bad-signature", 403),
    ("not-found", 404),
    ("method-not-allowed", 405),
    ("body-timeout", 408),
    ("idempotency-key-in-flight", 409),
    ("not-cancelable", 409),
    ("body-too-large", 413),
    ("unsupported-media-type", 415),
    ("invalid-field", 422),
    ("unknown-field", 422),
    ("refused", 422),
    ("idempotency-key-reused", 422),
    ("rate-limited", 429),
    ("headers-too-large", 431),
    ("internal", 500),
    ("unavailable", 503),
    ("http-error", 400),
    ("http-error", 404),
    ("http-error", 500),
];

/// An RFC 9457 problem: every error tuma answers, as `application/problem+json`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `https://tuma.dev/problems/<kind>`.
    #[serde(rename = "type")]
    #[schema(schema_with = problem_type)]
    pub kind: String,
    /// A short, fixed summary of the kind.
    pub title: String,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong, for a person. Never a secret, never an internal cause.
    pub detail: String,
    /// The request field at fault (`to`, `vars.name`, `filter.provider`, a
    /// query parameter, `Idempotency-Key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The configuration rule that refused the send (`api.sms_prefix_allowlist`,
    /// `otp.number_type`, `notification.number_type`, `suppressed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// With `not-cancelable`: the delivery's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_status: Option<crate::domain::DeliveryStatus>,
}

fn problem_type() -> Schema {
    let mut kinds: Vec<String> = PROBLEM_TYPES
        .iter()
        .map(|(kind, _)| format!("{PROBLEM_BASE}{kind}"))
        .collect();
    kinds.dedup();
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::Custom("uri".into())))
            .enum_values(Some(kinds))
            .build(),
    )
}

/// What `GET /healthz` and `GET /readyz` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    #[schema(example = "ok")]
    pub status: String,
    /// readyz only: `sqlite` or `postgres`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// The OpenAPI document itself (a JSON object).
pub struct OpenApiDocument;

impl PartialSchema for OpenApiDocument {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("An OpenAPI 3.1 document"))
            .into()
    }
}
impl ToSchema for OpenApiDocument {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("OpenApiDocument")
    }
}

/// `POST /v1/callbacks/{provider}`: documented here, since the callback
/// handlers are one per provider and the document shows the generic route.
#[utoipa::path(
    post,
    path = "/v1/callbacks/{provider}",
    operation_id = "receiveSignedCallback",
    tag = "callbacks",
    summary = "A provider's delivery receipt, checked by its signature",
    description = "Form-encoded, as the provider sends it (Twilio: `application/x-www-form-urlencoded` \
        status callbacks checked by `X-Twilio-Signature`, HMAC-SHA1 with the account's auth token \
        over the configured `status_callback_url` and the sorted fields). No API key: the \
        signature is the check. A missing or wrong one changes nothing. A receipt for a message \
        tuma does not know is answered 200, so the provider stops retrying.",
    params(("provider" = String, Path, description = "The provider's name in providers.toml (its kind also matches, for paths configured before names were)", example = "twilio")),
    request_body(content = std::collections::BTreeMap<String, String>,
        content_type = "application/x-www-form-urlencoded",
        description = "The provider's fields"),
    responses((status = 200, description = "Recorded, or a message tuma does not know")),
    security(("providerSignature" = []))
)]
#[allow(
    dead_code,
    reason = "documents a route its handlers serve under concrete paths; never called"
)]
async fn signed_callback() {}

/// `POST /v1/callbacks/{provider}/{secret}`.
#[utoipa::path(
    post,
    path = "/v1/callbacks/{provider}/{secret}",
    operation_id = "receiveSecretUrlCallback",
    tag = "callbacks",
    summary = "A provider's delivery report, checked by the secret in its URL",
    description = "Form-encoded, as the provider sends it (Africa's Talking delivery reports). \
        No API key: the secret (the `callback_secret_env` variable's value, compared in constant \
        time) is the check; a wrong one answers 404 as for a path that does not exist, and logs \
        show the path with the secret masked.",
    params(
        ("provider" = String, Path, description = "The provider's name in providers.toml (its kind also matches, for paths configured before names were)", example = "africastalking"),
        ("secret" = String, Path, description = "The URL secret, 24 characters or more"),
    ),
    request_body(content = std::collections::BTreeMap<String, String>,
        content_type = "application/x-www-form-urlencoded",
        description = "The provider's fields"),
    responses((status = 200, description = "Recorded, or a message tuma does not know")),
    security(())
)]
#[allow(
    dead_code,
    reason = "documents a route its handlers serve under concrete paths; never called"
)]
async fn secret_url_callback() {}

/// `GET /v1/callbacks/{provider}`: a signed receipt sent by GET.
#[utoipa::path(
    get,
    path = "/v1/callbacks/{provider}",
    operation_id = "receiveSignedCallbackByQuery",
    tag = "callbacks",
    summary = "A provider's delivery receipt sent by GET, checked by its signature",
    description = "The same receipt as the POST, its fields in the query string (Vonage \
        delivery receipts when the dashboard's webhook method is GET; with a signature secret \
        set, a valid `sig` and a signed `timestamp` no further than the provider's \
        `receipt_max_age` from now). No API key: the signature is the check. A missing, wrong or \
        stale one changes nothing. A receipt for a message tuma does not know is answered 200.",
    params(
        ("provider" = String, Path, description = "The provider's name in providers.toml (its kind also matches, for paths configured before names were)", example = "vonage"),
        ("fields" = inline(Option<std::collections::BTreeMap<String, String>>), Query, style = Form, explode,
            description = "The provider's fields, one query parameter each"),
    ),
    responses((status = 200, description = "Recorded, or a message tuma does not know")),
    security(("providerSignature" = []))
)]
#[allow(
    dead_code,
    reason = "documents a route its handlers serve under concrete paths; never called"
)]
async fn signed_callback_by_query() {}

/// `GET /v1/callbacks/{provider}/{secret}`.
#[utoipa::path(
    get,
    path = "/v1/callbacks/{provider}/{secret}",
    operation_id = "receiveSecretUrlCallbackByQuery",
    tag = "callbacks",
    summary = "A provider's delivery report sent by GET, checked by the secret in its URL",
    description = "The same report as the POST, its fields in the query string. No API key: \
        the secret is the check; a wrong one answers 404 as for a path that does not exist.",
    params(
        ("provider" = String, Path, description = "The provider's name in providers.toml (its kind also matches, for paths configured before names were)", example = "africastalking"),
        ("secret" = String, Path, description = "The URL secret, 24 characters or more"),
        ("fields" = inline(Option<std::collections::BTreeMap<String, String>>), Query, style = Form, explode,
            description = "The provider's fields, one query parameter each"),
    ),
    responses((status = 200, description = "Recorded, or a message tuma does not know")),
    security(())
)]
#[allow(
    dead_code,
    reason = "documents a route its handlers serve under concrete paths; never called"
)]
async fn secret_url_callback_by_query() {}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "The Prometheus text format. Public unless `api.metrics_need_key` is set; \
        then it needs a key with the `ops` scope.",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain; version=0.0.4",
        body = String, example = "tuma_build_info{version=\"0.1.0\"} 1\n")),
    security((), ("bearer" = ["ops"]))
)]
#[allow(
    dead_code,
    reason = "documents a route its handlers serve under concrete paths; never called"
)]
async fn metrics_doc() {}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "getOpenApi",
    tag = "operations",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = OpenApiDocument)),
    security(())
)]
pub async fn serve() -> Json<Value> {
    Json(document())
}

/// The document's skeleton: every operation and schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tuma",
        description = "Durable one-time codes and notifications over SMS and email. Send with a \
            key of scope `send`, read deliveries with `read`, replay and cancel any with `ops`, \
            read the cost report with `reports`. Every error is `application/problem+json`."
    ),
    paths(
        super::handlers::post_otp,
        super::handlers::post_notification,
        super::batch::post_batch,
        super::handlers::list_deliveries,
        super::handlers::get_delivery,
        super::cancel::cancel_delivery,
        super::ops::replay_one,
        super::ops::replay_many,
        super::ops::costs,
        super::spend::show,
        super::spend::release,
        super::webhooks::list,
        super::webhooks::create,
        super::webhooks::remove,
        super::webhooks::test,
        signed_callback,
        signed_callback_by_query,
        secret_url_callback,
        secret_url_callback_by_query,
        super::handlers::healthz,
        super::handlers::readyz,
        metrics_doc,
        serve,
    ),
    components(schemas(
        Problem,
        crate::delivery_view::DeliveryView,
        crate::domain::DeliveryStatus,
        crate::domain::Channel,
        crate::domain::DeliveryKind,
        crate::delivery_view::DisplayStatus,
        super::webhooks::DeliveryEvent,
    )),
    modifiers(&Complete),
    tags(
        (name = "sending", description = "One-time codes and notifications"),
        (name = "deliveries", description = "What became of each send"),
        (name = "operations", description = "Replays, health, metrics, this document"),
        (name = "reports", description = "Costs for finance"),
        (name = "webhooks", description = "Signed status webhooks for a calling service's deliveries"),
        (name = "callbacks", description = "Delivery receipts from providers (no API key)"),
    )
)]
pub struct ApiDoc;

/// The problems each operation can answer, by status, with what causes them.
fn problems(operation_id: &str) -> Vec<(u16, &'static str)> {
    const AUTH: [(u16, &str); 2] = [
        (
            401,
            "No key, or an unknown, revoked or expired one (`unauthorized`)",
        ),
        (403, "The key lacks the route's scope (`forbidden`)"),
    ];
    const BODY: [(u16, &str); 3] = [
        (400, "The body is not JSON (`malformed-json`)"),
        (
            413,
            "The body is over api.max_body_bytes (`body-too-large`)",
        ),
        (
            415,
            "Not Content-Type: application/json (`unsupported-media-type`)",
        ),
    ];
    const DOWN: (u16, &str) = (
        503,
        "The database is unavailable or slower than api.request_timeout (`unavailable`); see Retry-After",
    );
    let mut list: Vec<(u16, &'static str)> = Vec::new();
    match operation_id {
        "sendOtp" | "sendNotification" => {
            list.extend(AUTH);
            list.extend(BODY);
            list.push((
                409,
                "The first request with this Idempotency-Key is still being processed (`idempotency-key-in-flight`)",
            ));
            list.push((
                422,
                "A field is invalid (`invalid-field`) or unknown (`unknown-field`), a sending rule refused it \
                 (`refused`, naming the `rule`), or the Idempotency-Key came with another body \
                 (`idempotency-key-reused`)",
            ));
            if operation_id == "sendOtp" {
                list.push((
                    429,
                    "api.otp_per_recipient reached (`rate-limited`); see Retry-After",
                ));
            }
            list.push(DOWN);
        }
        "sendNotificationBatch" => {
            list.extend(AUTH);
            list.push((400, "The body is not JSON (`malformed-json`)"));
            list.push((
                413,
                "The body is over 1 MiB, or api.max_body_bytes when larger (`body-too-large`)",
            ));
            list.push((
                415,
                "Not Content-Type: application/json (`unsupported-media-type`)",
            ));
            list.push((
                422,
                "The batch itself is wrong: `items` missing, empty or over 1,000 items, a field \
                 beside it (`unknown-field`), or an `Idempotency-Key` header (`invalid-field`). \
                 A wrong item is answered in `items`, not here.",
            ));
            list.push(DOWN);
        }
        "listDeliveries" => {
            list.extend(AUTH);
            list.push((
                422,
                "A query parameter is invalid (`invalid-field`) or unknown (`unknown-field`)",
            ));
            list.push(DOWN);
        }
        "getDelivery" => {
            list.extend(AUTH);
            list.push((404, "No delivery has this id (`not-found`)"));
            list.push(DOWN);
        }
        "cancelDelivery" => {
            list.push(AUTH[0]);
            list.push((
                403,
                "The key has neither `send` nor `ops` (`forbidden`), or, with `send` and `read`, \
                 another key created the delivery (`forbidden`)",
            ));
            list.push((
                404,
                "No delivery has this id, or another key created it and this one may not read it \
                 (`not-found`)",
            ));
            list.push((
                409,
                "A provider already has it, or it is finished (`not-cancelable`, with `delivery_status`)",
            ));
            list.push(DOWN);
        }
        "replayDelivery" => {
            list.extend(AUTH);
            list.extend(BODY);
            list.push((404, "No delivery has this id (`not-found`)"));
            list.push((
                422,
                "A field is invalid or unknown (`invalid-field`, `unknown-field`)",
            ));
            list.push(DOWN);
        }
        "replayMatching" => {
            list.extend(AUTH);
            list.extend(BODY);
            list.push((
                422,
                "A filter field is invalid or unknown (`invalid-field`, `unknown-field`)",
            ));
            list.push(DOWN);
        }
        "getCostReport" => {
            list.extend(AUTH);
            list.push((
                422,
                "A parameter is invalid or unknown (`invalid-field`, `unknown-field`)",
            ));
            list.push(DOWN);
        }
        "listWebhookEndpoints" | "getBudget" => {
            list.extend(AUTH);
            list.push(DOWN);
        }
        "createWebhookEndpoint" => {
            list.extend(AUTH);
            list.extend(BODY);
            list.push((
                422,
                "A field is invalid (`invalid-field`: no live key of that name, a URL that is not \
                 https or loopback http or resolves to a refused range, an unknown event) or \
                 unknown (`unknown-field`)",
            ));
            list.push(DOWN);
        }
        "removeWebhookEndpoint" | "testWebhookEndpoint" => {
            list.extend(AUTH);
            list.push((404, "No webhook endpoint has this id (`not-found`)"));
            list.push(DOWN);
        }
        "releaseBudget" => {
            list.extend(AUTH);
            list.extend(BODY);
            list.push((
                422,
                "`currency` is not an active ISO 4217 code (`invalid-field`), or a field is \
                 unknown (`unknown-field`)",
            ));
            list.push(DOWN);
        }
        "receiveSignedCallback" => {
            list.push((
                403,
                "The signature is missing, wrong or stale (`bad-signature`); nothing is recorded",
            ));
            list.push((
                404,
                "No provider of this kind takes callbacks (`not-found`)",
            ));
            list.push((
                413,
                "The body is over api.max_body_bytes (`body-too-large`)",
            ));
            list.push((
                422,
                "A field every receipt needs is missing (`invalid-field`)",
            ));
            list.push(DOWN);
        }
        "receiveSignedCallbackByQuery" => {
            list.push((
                403,
                "The signature is missing, wrong or stale (`bad-signature`); nothing is recorded",
            ));
            list.push((
                404,
                "No provider of this kind takes callbacks (`not-found`)",
            ));
            list.push((
                422,
                "A field every receipt needs is missing (`invalid-field`)",
            ));
            list.push(DOWN);
        }
        "receiveSecretUrlCallbackByQuery" => {
            list.push((
                404,
                "A wrong secret, or no such provider (`not-found`); nothing is recorded",
            ));
            list.push((
                422,
                "A field every receipt needs is missing (`invalid-field`)",
            ));
            list.push(DOWN);
        }
        "receiveSecretUrlCallback" => {
            list.push((
                404,
                "A wrong secret, or no such provider (`not-found`); nothing is recorded",
            ));
            list.push((
                413,
                "The body is over api.max_body_bytes (`body-too-large`)",
            ));
            list.push((
                422,
                "A field every receipt needs is missing (`invalid-field`)",
            ));
            list.push(DOWN);
        }
        "getReady" => list.push(DOWN),
        "getMetrics" => {
            list.extend(AUTH);
            list.push(DOWN);
        }
        _ => {}
    }
    list
}

/// Adds what the attributes do not carry: problem responses, security
/// schemes, `security: []` on public routes, servers.
struct Complete;

impl Modify for Complete {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `tuma keys create --name NAME --scope SCOPE`, as \
                         `Authorization: Bearer <key>`. Scopes: send, read, ops, reports.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "providerSignature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Twilio-Signature",
                "A provider's signature of its callback (Twilio: base64 HMAC-SHA1 with the \
                 account's auth token over the callback URL and the sorted form fields)",
            ))),
        );
        doc.servers = Some(servers());
        let problem = ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "Problem",
            ))))
            .build();
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let id = op.operation_id.clone().unwrap_or_default();
                for (status, description) in problems(&id) {
                    op.responses.responses.insert(
                        status.to_string(),
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(description)
                                .content("application/problem+json", problem.clone())
                                .build(),
                        ),
                    );
                }
                // No `security` of its own: it takes a bearer key. Public
                // routes say `security(())` in their attribute.
                if op.security.is_none() {
                    op.security =
                        Some(vec![utoipa::openapi::security::SecurityRequirement::new::<
                            &str,
                            [&str; 0],
                            &str,
                        >("bearer", [])]);
                }
            }
        }
    }
}

fn servers() -> Vec<Server> {
    vec![
        ServerBuilder::new()
            .url("http://127.0.0.1:8080")
            .description(Some("`tuma serve` with its default --listen"))
            .build(),
    ]
}

/// The document as JSON, with its `webhooks` section.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    if let Some(fields) = doc.as_object_mut() {
        fields.insert("webhooks".into(), super::webhooks::document_webhooks());
    }
    doc
}

/// The document as pretty-printed JSON (`tuma openapi`).
pub fn document_text() -> String {
    serde_json::to_string_pretty(&document()).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
