//! Request bodies: `application/json` only, at most `api.max_body_bytes`,
//! parsed strictly (unknown fields refused) with errors that name the field
//! and never repeat a value (it could be an OTP code); and the
//! `Idempotency-Key` with the keyed hash of the request it stands for.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::auth::{Caller, hex, hmac_sha256};
use super::error::ApiError;
use crate::intake::{MULTI_LINE, control_character};

/// Longest Idempotency-Key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A parsed body and its canonical form (sorted keys, no whitespace).
pub struct Parsed<T> {
    /// The request.
    pub value: T,
    /// The body re-serialised canonically, for the request hash.
    pub canonical: String,
}

/// Reads and parses a JSON body.
pub async fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
) -> Result<Parsed<T>, ApiError> {
    from_value(read_json(headers, body, max_bytes).await?)
}

/// Reads a JSON body of at most `max_bytes`, sent as `application/json`,
/// without checking its shape.
pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
) -> Result<Value, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::WrongContentType);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_bytes) {
        return Err(ApiError::TooLarge(max_bytes));
    }
    let bytes = axum::body::to_bytes(body, max_bytes)
        .await
        .map_err(|_| ApiError::TooLarge(max_bytes))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // Syntax messages give a position, never the content.
        ApiError::MalformedJson(e.to_string())
    })
}

/// Checks and parses a JSON value as [`parse_json`] does a body: an object,
/// no control characters, no unknown fields, errors naming the field.
pub fn from_value<T: DeserializeOwned>(raw: Value) -> Result<Parsed<T>, ApiError> {
    if !raw.is_object() {
        return Err(ApiError::InvalidField {
            field: "(body)".into(),
            reason: "must be a JSON object".into(),
        });
    }
    check_text(&raw, "")?;
    let canonical = canonical(&raw);
    let value = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        field_error(&path, &message)
    })?;
    Ok(Parsed { value, canonical })
}

/// Refuses a control character in any string or field name of the body,
/// naming where (`vars.name`, `filter.provider`) and the character's code
/// point, never the text. Line breaks and tabs are allowed only in the values
/// of `vars`, template variables that may span lines.
fn check_text(value: &Value, path: &str) -> Result<(), ApiError> {
    let here = |path: &str| {
        if path.is_empty() {
            "(body)".to_owned()
        } else {
            path.to_owned()
        }
    };
    match value {
        Value::String(text) => {
            let multi_line = path.starts_with("vars.") && !path["vars.".len()..].contains('.');
            let allowed: &[char] = if multi_line { &MULTI_LINE } else { &[] };
            match control_character(text, allowed) {
                Some(c) if multi_line => Err(ApiError::InvalidField {
                    field: here(path),
                    reason: format!(
                        "must not contain control characters other than line breaks and tabs (found {c})"
                    ),
                }),
                Some(c) => Err(ApiError::InvalidField {
                    field: here(path),
                    reason: format!("must not contain control characters (found {c})"),
                }),
                None => Ok(()),
            }
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_text(v, &format!("{}[{i}]", here(path)))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if let Some(c) = control_character(k, &[]) {
                return Err(ApiError::InvalidField {
                    field: here(path),
                    reason: format!("a field name must not contain control characters (found {c})"),
                });
            }
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            check_text(v, &child)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// A field name as a person can read it in an error: an empty one is
/// written `""`.
pub fn field_name(name: &str) -> String {
    if name.is_empty() {
        "\"\"".to_owned()
    } else {
        name.to_owned()
    }
}

/// Turns serde's complaint into a field error that repeats no value.
fn field_error(path: &str, message: &str) -> ApiError {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        // The path already ends with the unknown field's name.
        let field = if path == "." || path.is_empty() {
            field_name(name)
        } else if name.is_empty() {
            // The path ends with the empty name: `filter.` becomes `filter.""`.
            format!("{}.{}", path.trim_end_matches('.'), field_name(name))
        } else {
            path.to_owned()
        };
        return ApiError::UnknownField { field };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return ApiError::InvalidField {
            field: name.to_owned(),
            reason: "is required".into(),
        };
    }
    let field = if path == "." || path.is_empty() {
        "(body)".to_owned()
    } else {
        path.to_owned()
    };
    // "invalid type: string \"abc\", expected u64": keep only what was expected.
    let reason = match message.split_once(", expected ") {
        Some((_, expected)) => format!("has the wrong type or value: expected {expected}"),
        None if field == "(body)" => "must be a JSON object".to_owned(),
        None => "has the wrong type or value".to_owned(),
    };
    ApiError::InvalidField { field, reason }
}

/// JSON with object keys sorted at every level, without whitespace.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_sorted(value, &mut out);
    out
}

fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_sorted(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The `Idempotency-Key` header, if sent; checked for length and characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |reason: &str| ApiError::InvalidField {
        field: "Idempotency-Key".into(),
        reason: reason.into(),
    };
    let key = value
        .to_str()
        .map_err(|_| bad("must be visible ASCII"))?
        .trim();
    // `to_str` lets a tab through.
    if control_character(key, &[]).is_some() {
        return Err(bad("must be visible ASCII"));
    }
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad("must be 1 to 255 characters"));
    }
    Ok(Some(key.to_owned()))
}

/// The hash that identifies a request behind an Idempotency-Key: HMAC-SHA256
/// keyed with the caller's API key over the route and the canonical body.
/// Keyed, so the stored hash of a body holding a short OTP code cannot be
/// brute-forced back into the code without the API key.
pub fn request_hash(caller: &Caller, route: &str, canonical: &str) -> String {
    let message = format!("{route}\n{canonical}");
    hex(&hmac_sha256(
        caller.secret.expose_secret().as_bytes(),
        message.as_bytes(),
    ))
}
