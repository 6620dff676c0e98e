//! Every error the API returns, as RFC 9457 `application/problem+json`, in
//! one place. 5xx answers are opaque: the cause is logged, never returned.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::error;

use crate::intake::IntakeError;
use crate::store::StoreError;

/// The base of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://tuma.dev/problems/";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is wrong (422).
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field, as named in the request (`to`, `ttl_seconds`, …).
        field: String,
        /// Why.
        reason: String,
    },
    /// A field the API does not know (422).
    #[error("unknown field {field}")]
    UnknownField {
        /// The field.
        field: String,
    },
    /// The body is not JSON (400).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is over `api.max_body_bytes` (413).
    #[error("body over {0} bytes")]
    TooLarge(usize),
    /// The body is not `application/json` (415).
    #[error("wrong content type")]
    WrongContentType,
    /// An abuse guard refused (422), naming the configuration rule.
    #[error("refused by {rule}: {reason}")]
    Refused {
        /// The rule.
        rule: &'static str,
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Too many OTPs to one recipient (429).
    #[error("rate limited")]
    TooMany {
        /// When to try again.
        retry_after: Duration,
    },
    /// An SMS-pumping guard refused (429), naming its rule.
    #[error("refused by {rule}: {reason}")]
    Throttled {
        /// `country-limit` or `range-burst`.
        rule: &'static str,
        /// Why, naming the prefix or range (never the number).
        reason: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The Idempotency-Key came with a different request (422).
    #[error("idempotency key reused")]
    KeyReused,
    /// The Idempotency-Key's first request is still in flight (409).
    #[error("idempotency key in flight")]
    KeyInFlight,
    /// No key, or not a live one (401).
    #[error("unauthorized")]
    Unauthorized,
    /// A live key without the scope this route needs (403).
    #[error("missing scope {0}")]
    Forbidden(&'static str),
    /// A delivery another key created, which this key may see but not
    /// change (403): only `ops` acts on any key's deliveries.
    #[error("another key's delivery")]
    NotYours,
    /// A provider callback whose signature is missing or wrong (403).
    #[error("bad callback signature")]
    BadSignature(String),
    /// Nothing here (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The route exists, with other methods (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A delivery already handed to a provider, or finished, cannot be
    /// canceled (409); carries its status.
    #[error("not cancelable: {0}")]
    NotCancelable(crate::domain::DeliveryStatus),
    /// The request line and headers are too large, or too many (431).
    #[error("headers too large: {0}")]
    HeadersTooLarge(String),
    /// The body did not arrive within `api.body_read_timeout` (408).
    #[error("body read timeout")]
    BodyTimeout(Duration),
    /// The database is unreachable or too slow (503); the cause is logged.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else (500); the cause is logged, never returned.
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    /// The problem's HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidField { .. }
            | ApiError::UnknownField { .. }
            | ApiError::Refused { .. }
            | ApiError::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::WrongContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooMany { .. } | ApiError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::KeyInFlight | ApiError::NotCancelable(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::NotYours | ApiError::BadSignature(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable last part of the problem `type` URI.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidField { .. } => "invalid-field",
            ApiError::UnknownField { .. } => "unknown-field",
            ApiError::MalformedJson(_) => "malformed-json",
            ApiError::TooLarge(_) => "body-too-large",
            ApiError::WrongContentType => "unsupported-media-type",
            ApiError::Refused { .. } => "refused",
            ApiError::TooMany { .. } | ApiError::Throttled { .. } => "rate-limited",
            ApiError::KeyReused => "idempotency-key-reused",
            ApiError::KeyInFlight => "idempotency-key-in-flight",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) | ApiError::NotYours => "forbidden",
            ApiError::BadSignature(_) => "bad-signature",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::NotCancelable(_) => "not-cancelable",
            ApiError::HeadersTooLarge(_) => "headers-too-large",
            ApiError::BodyTimeout(_) => "body-timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The refusal rule this error counts against in `/metrics`, if any.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            ApiError::Refused { rule, .. } => Some(rule),
            ApiError::TooMany { .. } => Some("api.otp_per_recipient"),
            ApiError::Throttled { rule, .. } => Some(rule),
            _ => None,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::InvalidField { .. } => "A field is invalid",
            ApiError::UnknownField { .. } => "Unknown field",
            ApiError::MalformedJson(_) => "Malformed JSON",
            ApiError::TooLarge(_) => "Request body too large",
            ApiError::WrongContentType => "Unsupported media type",
            ApiError::Refused { .. } => "Refused by a sending rule",
            ApiError::TooMany { .. } => "Too many one-time codes to this recipient",
            ApiError::Throttled { .. } => "Refused by an SMS pumping guard",
            ApiError::KeyReused => "Idempotency-Key reused with a different request",
            ApiError::KeyInFlight => "Idempotency-Key still in use",
            ApiError::Unauthorized => "Missing or invalid API key",
            ApiError::Forbidden(_) => "API key lacks the scope",
            ApiError::NotYours => "Another API key's delivery",
            ApiError::BadSignature(_) => "Missing or wrong callback signature",
            ApiError::NotFound(_) => "Not found",
            ApiError::MethodNotAllowed => "Method not allowed",
            ApiError::NotCancelable(_) => "Too late to cancel",
            ApiError::HeadersTooLarge(_) => "Request headers too large",
            ApiError::BodyTimeout(_) => "Request body too slow",
            ApiError::Unavailable(_) => "Service unavailable",
            ApiError::Internal(_) => "Internal error",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if database_unavailable(&e) {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// Whether `e` says the database is unavailable (going away, restarting,
/// unreachable, out of connections, busy) rather than that tuma asked
/// something wrong: those are 503s with `Retry-After`, never 500s.
pub fn database_unavailable(e: &StoreError) -> bool {
    match e {
        StoreError::Query { source, .. } => sqlx_unavailable(source),
        _ => false,
    }
}

fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                let code = pg.code();
                // 08: connection exceptions; 57P01/02/03: admin or crash
                // shutdown, cannot connect now; 53300: too many connections.
                code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Busy, locked, I/O error, cannot open (primary result codes).
                let code = db
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .unwrap_or_default();
                matches!(code & 0xff, 5 | 6 | 10 | 14)
            } else {
                false
            }
        }
        _ => false,
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Invalid { field, reason } => ApiError::InvalidField {
                field: field.into_owned(),
                reason,
            },
            IntakeError::Refused {
                rule,
                field,
                reason,
            } => ApiError::Refused {
                rule,
                field,
                reason,
            },
            IntakeError::TooMany { retry_after } => ApiError::TooMany { retry_after },
            IntakeError::Throttled {
                rule,
                reason,
                retry_after,
            } => ApiError::Throttled {
                rule,
                reason,
                retry_after,
            },
            IntakeError::KeyReused => ApiError::KeyReused,
            IntakeError::KeyInFlight => ApiError::KeyInFlight,
            IntakeError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    /// The problem+json body: `type`, `title`, `status`, `detail` and, as
    /// the kind has them, `field`, `rule` and `delivery_status`. A server
    /// error's cause is logged here and never put in the body.
    pub fn problem(&self) -> Value {
        let status = self.status();
        let mut body = json!({
            "type": format!("{PROBLEM_BASE}{}", self.kind()),
            "title": self.title(),
            "status": status.as_u16(),
        });
        let detail = match &self {
            ApiError::InvalidField { field, reason } => {
                body["field"] = json!(field);
                reason.clone()
            }
            ApiError::UnknownField { field } => {
                body["field"] = json!(field);
                format!("`{field}` is not a field of this request")
            }
            ApiError::MalformedJson(why) => format!("the body is not valid JSON: {why}"),
            ApiError::TooLarge(max) => format!("the body is larger than {max} bytes"),
            ApiError::WrongContentType => {
                "send the body as Content-Type: application/json".to_owned()
            }
            ApiError::Refused {
                rule,
                field,
                reason,
            } => {
                body["field"] = json!(field);
                body["rule"] = json!(rule);
                reason.clone()
            }
            ApiError::Throttled { rule, reason, .. } => {
                body["rule"] = json!(rule);
                reason.clone()
            }
            ApiError::TooMany { retry_after } => format!(
                "the per-recipient limit (api.otp_per_recipient) is reached; try again in {} s",
                retry_after.as_secs()
            ),
            ApiError::KeyReused => {
                "this Idempotency-Key was first used with a different request; use a new key"
                    .to_owned()
            }
            ApiError::KeyInFlight => {
                "the first request with this Idempotency-Key is still being processed; retry"
                    .to_owned()
            }
            ApiError::Unauthorized => {
                "send a live API key as `Authorization: Bearer <key>`".to_owned()
            }
            ApiError::Forbidden(scope) => format!("this route needs the `{scope}` scope"),
            ApiError::NotYours => "another API key created this delivery: a `send` key acts on \
                                   its own deliveries only, a key with the `ops` scope on any"
                .to_owned(),
            ApiError::BadSignature(detail) => detail.clone(),
            ApiError::NotFound(what) => what.clone(),
            ApiError::MethodNotAllowed => "this route does not take that method".to_owned(),
            ApiError::NotCancelable(status) => {
                body["delivery_status"] = json!(status.as_str());
                format!(
                    "the delivery is {status}: only one no provider has had yet (pending) can be canceled"
                )
            }
            ApiError::HeadersTooLarge(why) => why.clone(),
            ApiError::BodyTimeout(limit) => format!(
                "the body did not arrive within {} (api.body_read_timeout)",
                humantime::format_duration(*limit)
            ),
            ApiError::Unavailable(cause) => {
                error!(cause = %cause, "database unavailable");
                "the database is unavailable; try again shortly".to_owned()
            }
            ApiError::Internal(cause) => {
                error!(cause = %cause, "request failed");
                "an internal error occurred; it has been logged".to_owned()
            }
        };
        body["detail"] = json!(detail);
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.problem();
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::TooMany { retry_after } | ApiError::Throttled { retry_after, .. } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs()),
                );
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response.extensions_mut().insert(Refusal(self.rule()));
        response
    }
}

/// Middleware: an error answered below tuma's handlers (an axum extractor's
/// rejection, say) becomes problem+json too, keeping its status and, except
/// on paths carrying a secret, its text as the detail.
pub async fn problem_for_bare_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let secret_path = super::has_secret(req.uri().path());
    let response = next.run(req).await;
    let status = response.status();
    let problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if problem || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let detail = if secret_path || text.is_empty() {
        "the request could not be read".to_owned()
    } else {
        text.chars().take(300).collect()
    };
    let kind = match status.as_u16() {
        400 => "bad-request",
        _ => "http-error",
    };
    let body = json!({
        "type": format!("{PROBLEM_BASE}{kind}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::from_parts(parts, axum::body::Body::from(body.to_string()));
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// Marks a response with the refusal rule it counts against (for metrics).
#[derive(Debug, Clone, Copy)]
pub struct Refusal(pub Option<&'static str>);

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, Response, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        (
            status,
            Response::from_parts(parts, axum::body::Body::empty()),
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn every_error_is_problem_json_with_a_stable_type() {
        let cases = [
            (ApiError::KeyInFlight, 409, "idempotency-key-in-flight"),
            (ApiError::KeyReused, 422, "idempotency-key-reused"),
            (ApiError::MethodNotAllowed, 405, "method-not-allowed"),
            (ApiError::Forbidden("read"), 403, "forbidden"),
            (ApiError::NotYours, 403, "forbidden"),
            (ApiError::TooLarge(10), 413, "body-too-large"),
            (ApiError::WrongContentType, 415, "unsupported-media-type"),
        ];
        for (e, status, kind) in cases {
            let (got, response, body) = body_of(e).await;
            assert_eq!(got.as_u16(), status);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            assert_eq!(body["type"], format!("{PROBLEM_BASE}{kind}"));
            assert_eq!(body["status"], status);
        }
    }

    #[tokio::test]
    async fn server_errors_never_carry_their_cause() {
        let cause = "database error while recording the delivery: secret detail";
        for e in [
            ApiError::Internal(cause.into()),
            ApiError::Unavailable(cause.into()),
        ] {
            let (status, _, body) = body_of(e).await;
            assert!(status.is_server_error());
            assert!(!body.to_string().contains("secret detail"), "{body}");
        }
    }

    #[test]
    fn intake_refusals_map_to_their_problems() {
        // A notification's `ttl` is its own field (an OTP's is renamed
        // `ttl_seconds` by its handler).
        let e: ApiError = IntakeError::Invalid {
            field: "ttl".into(),
            reason: "out of range".into(),
        }
        .into();
        assert!(matches!(&e, ApiError::InvalidField { field, .. } if field == "ttl"));
        let e: ApiError = IntakeError::KeyInFlight.into();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        let e: ApiError = StoreError::Query {
            doing: "reading",
            source: sqlx::Error::PoolTimedOut,
        }
        .into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let e: ApiError = StoreError::Corrupt("x".into()).into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
