//! `GET /openapi.json`: the API described as OpenAPI 3.1. A test walks every
//! path and method in it against the real router.

use axum::Json;
use serde_json::{Value, json};

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

fn errors(codes: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    codes
        .iter()
        .map(|(code, what)| ((*code).to_owned(), problem(what)))
        .collect()
}

fn send_responses() -> Value {
    let mut r = errors(&[
        ("400", "Malformed JSON"),
        ("401", "Missing or invalid API key"),
        ("403", "The key lacks the `send` scope"),
        (
            "409",
            "The first request with this Idempotency-Key is still being processed",
        ),
        ("413", "Body over api.max_body_bytes"),
        ("415", "Content-Type is not application/json"),
        (
            "422",
            "A field is invalid or unknown, a sending rule refused it, or the Idempotency-Key was used with another body",
        ),
        ("429", "Per-recipient OTP limit reached; see Retry-After"),
        ("503", "Database unavailable"),
    ]);
    r.insert(
        "202".into(),
        json!({
            "description": "Accepted (or, for a repeated Idempotency-Key, the original response)",
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Receipt" } } }
        }),
    );
    Value::Object(r)
}

/// The document.
pub fn document() -> Value {
    let idempotency = json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Kept 24 h per API key: the same key and body return the original response; another body gets 422.",
        "schema": { "type": "string", "maxLength": 255 }
    });
    let read_errors = errors(&[
        ("401", "Missing or invalid API key"),
        ("403", "The key lacks the `read` scope"),
        ("503", "Database unavailable"),
    ]);
    let mut get_one = read_errors.clone();
    get_one.insert("404".into(), problem("No delivery has this id"));
    get_one.insert("200".into(), json!({
        "description": "The delivery with its attempts",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Delivery" } } }
    }));
    let mut list = read_errors;
    list.insert(
        "422".into(),
        problem("A query parameter is invalid or unknown"),
    );
    list.insert("200".into(), json!({
        "description": "A page of deliveries, newest first",
        "content": { "application/json": { "schema": {
            "type": "object", "required": ["items", "next_cursor"],
            "properties": {
                "items": { "type": "array", "items": { "$ref": "#/components/schemas/Delivery" } },
                "next_cursor": { "type": ["string", "null"], "description": "Pass as `cursor` for the next page; null on the last" }
            }
        } } }
    }));
    let query = |name: &str, schema: Value, description: &str| {
        json!({
            "name": name, "in": "query", "required": false, "schema": schema, "description": description
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tuma",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable OTP and notification delivery over SMS and email."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Problem": {
                    "type": "object", "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": { "type": "string", "format": "uri" },
                        "title": { "type": "string" },
                        "status": { "type": "integer" },
                        "detail": { "type": "string" },
                        "field": { "type": "string", "description": "The request field at fault" },
                        "rule": { "type": "string", "description": "The configuration rule that refused the send" }
                    }
                },
                "Receipt": {
                    "type": "object", "required": ["id", "status"],
                    "properties": {
                        "id": { "type": "string" },
                        "status": { "type": "string", "enum": ["pending"] },
                        "expires_at": { "type": "string", "format": "date-time", "description": "OTP only" }
                    }
                },
                "OtpRequest": {
                    "type": "object", "required": ["to", "code"], "additionalProperties": false,
                    "properties": {
                        "to": { "type": "string", "description": "E.164 phone number (or national, in otp.default_region) or email address" },
                        "code": { "type": "string", "pattern": "^[0-9]{4,10}$" },
                        "channel": { "type": "string", "enum": ["sms", "email"], "description": "Inferred from `to` when absent" },
                        "locale": { "type": "string", "examples": ["en", "sw"] },
                        "ttl_seconds": { "type": "integer", "minimum": 30, "maximum": 86400 },
                        "purpose": { "type": "string", "examples": ["login"], "description": "Recorded in logs" }
                    }
                },
                "NotificationRequest": {
                    "type": "object", "required": ["to", "template"], "additionalProperties": false,
                    "properties": {
                        "to": { "type": "string" },
                        "template": { "type": "string" },
                        "locale": { "type": "string" },
                        "vars": { "type": "object" },
                        "send_at": { "type": "string", "format": "date-time" }
                    }
                },
                "Delivery": {
                    "type": "object",
                    "required": ["id", "kind", "channel", "recipient", "status", "created_at"],
                    "properties": {
                        "id": { "type": "string" },
                        "kind": { "type": "string", "enum": ["otp", "notification"] },
                        "channel": { "type": "string", "enum": ["sms", "email"] },
                        "recipient": { "type": "string" },
                        "status": { "type": "string", "enum": ["pending", "sending", "sent", "delivered", "undelivered", "failed", "expired"] },
                        "display_status": { "type": "string", "description": "`no receipt` for a delivery sent longer than receipts.no_receipt_after ago without a final receipt; else the status" },
                        "delivered_at": { "type": ["string", "null"], "format": "date-time" },
                        "receipts": { "type": "array", "items": { "type": "object" }, "description": "GET /v1/deliveries/{id} only: every receipt, in arrival order" },
                        "template": { "type": "string" },
                        "locale": { "type": "string" },
                        "subject": { "type": ["string", "null"] },
                        "body": { "type": "string", "description": "The message with any OTP code shown as ******" },
                        "provider": { "type": ["string", "null"] },
                        "provider_message_id": { "type": ["string", "null"] },
                        "cost": { "type": ["object", "null"] },
                        "segments": { "type": ["integer", "null"] },
                        "attempt_count": { "type": "integer" },
                        "attempts": { "type": "array", "items": { "type": "object" }, "description": "GET /v1/deliveries/{id} only" },
                        "created_at": { "type": "string", "format": "date-time" },
                        "expires_at": { "type": ["string", "null"], "format": "date-time" }
                    }
                }
            }
        },
        "paths": {
            "/v1/otp": { "post": {
                "summary": "Send a one-time code",
                "security": [{ "bearer": [] }],
                "parameters": [idempotency],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OtpRequest" } } } },
                "responses": send_responses()
            } },
            "/v1/notifications": { "post": {
                "summary": "Send a templated notification",
                "security": [{ "bearer": [] }],
                "parameters": [idempotency],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/NotificationRequest" } } } },
                "responses": send_responses()
            } },
            "/v1/deliveries": { "get": {
                "summary": "List deliveries, newest first",
                "security": [{ "bearer": [] }],
                "parameters": [
                    query("status", json!({ "type": "string" }), "Only this status"),
                    query("channel", json!({ "type": "string", "enum": ["sms", "email"] }), "Only this channel"),
                    query("provider", json!({ "type": "string" }), "Only this provider"),
                    query("since", json!({ "type": "string", "format": "date-time" }), "Created at or after"),
                    query("limit", json!({ "type": "integer", "minimum": 1, "maximum": 200, "default": 50 }), "Page size"),
                    query("cursor", json!({ "type": "string" }), "`next_cursor` of the previous page")
                ],
                "responses": Value::Object(list)
            } },
            "/v1/deliveries/{id}": { "get": {
                "summary": "One delivery with its attempts",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": Value::Object(get_one)
            } },
            "/v1/callbacks/twilio": { "post": {
                "summary": "Twilio status callback (form-encoded; authenticated by X-Twilio-Signature, not an API key)",
                "responses": { "200": { "description": "Recorded, or a message tuma does not know" }, "403": problem("Missing or wrong signature") }
            } },
            "/v1/callbacks/africastalking/{secret}": { "post": {
                "summary": "Africa's Talking delivery report (form-encoded; authenticated by the URL secret)",
                "parameters": [{ "name": "secret", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "Recorded, or a message tuma does not know" }, "404": problem("Wrong secret") }
            } },
            "/v1/deliveries/{id}/replay": { "post": {
                "summary": "Replay a failed, undelivered or expired delivery as a new one (scope ops)",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "requestBody": { "required": false, "content": { "application/json": { "schema": {
                    "type": "object", "additionalProperties": false,
                    "properties": { "force": { "type": "boolean" }, "dry_run": { "type": "boolean" } }
                } } } },
                "responses": {
                    "200": { "description": "What was replayed and what was refused, with reasons" },
                    "401": problem("No valid key"), "403": problem("The key lacks the ops scope"),
                    "404": problem("No such delivery"), "422": problem("A field is wrong"),
                    "503": problem("Database unavailable")
                }
            } },
            "/v1/replays": { "post": {
                "summary": "Replay every delivery matching a filter, or show the plan (scope ops)",
                "security": [{ "bearer": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "additionalProperties": false,
                    "properties": {
                        "dry_run": { "type": "boolean" },
                        "filter": { "type": "object", "additionalProperties": false, "properties": {
                            "status": { "type": "string", "enum": ["failed", "undelivered", "expired"] },
                            "since": { "type": "string", "format": "date-time" },
                            "channel": { "type": "string", "enum": ["sms", "email"] },
                            "provider": { "type": "string" },
                            "error_code": { "type": "string" },
                            "force": { "type": "boolean" },
                            "limit": { "type": "integer", "minimum": 1 }
                        } }
                    }
                } } } },
                "responses": {
                    "200": { "description": "What was replayed and what was refused, with reasons" },
                    "400": problem("Malformed JSON"), "401": problem("No valid key"),
                    "403": problem("The key lacks the ops scope"), "415": problem("Not JSON"),
                    "422": problem("A field is wrong"), "503": problem("Database unavailable")
                }
            } },
            "/v1/reports/costs": { "get": {
                "summary": "SMS and email costs per group and currency, exact (scope reports)",
                "security": [{ "bearer": [] }],
                "parameters": [
                    query("since", json!({ "type": "string" }), "A period ending now, e.g. 30d (the default)"),
                    query("from", json!({ "type": "string", "format": "date" }), "First day (UTC, included)"),
                    query("to", json!({ "type": "string", "format": "date" }), "Last day (UTC, excluded)"),
                    query("by", json!({ "type": "string" }), "Groupings: day|week|month,provider,country,template,channel"),
                    query("receipt_horizon", json!({ "type": "string" }), "How long a sent message waits for a receipt before it counts as no receipt"),
                    query("format", json!({ "type": "string", "enum": ["json", "csv"] }), "csv answers text/csv with a header row")
                ],
                "responses": {
                    "200": { "description": "The report", "content": { "application/json": {}, "text/csv": {} } },
                    "401": problem("No valid key"), "403": problem("The key lacks the reports scope"),
                    "422": problem("A parameter is wrong"), "503": problem("Database unavailable")
                }
            } },
            "/healthz": { "get": {
                "summary": "The process is up",
                "responses": { "200": { "description": "Up" } }
            } },
            "/readyz": { "get": {
                "summary": "The database answers and takes writes",
                "responses": { "200": { "description": "Ready" }, "503": problem("Database unavailable") }
            } },
            "/metrics": { "get": {
                "summary": "Prometheus metrics (needs an `ops` key when api.metrics_need_key is set)",
                "responses": { "200": { "description": "Prometheus text format", "content": { "text/plain": {} } } }
            } },
            "/openapi.json": { "get": {
                "summary": "This document",
                "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": {} } } }
            } }
        }
    })
}

/// `GET /openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document())
}
