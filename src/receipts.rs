//! Delivery receipts, whatever the provider: the fields of a report read as
//! untrusted text. Each provider's folder holds its own status table (what
//! its status words mean) and its signature or URL-secret check.
//!
//! Receipts are untrusted text: ids, status words, codes and reasons are
//! stripped of control characters and capped, and a `Body` field is never kept.
//!
//! A receipt only ever moves a delivery out of `sent` (the store guards it),
//! so late, repeated and out-of-order receipts are recorded and change nothing.

use serde_json::{Map, Value};

use crate::domain::provider_text::{MAX_STATUS_CHARS, Secrets, clean, clean_to};

/// Why a receipt's fields cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the receipt has no `{0}`")]
pub struct MissingField(pub &'static str);

/// A field's value, cleaned and cut to `max` characters.
pub fn field(fields: &[(String, String)], name: &str, max: usize) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| clean_to(v, &Secrets::none(), max))
        .filter(|v| !v.is_empty())
}

/// The fields as a JSON object (the last value of a repeated name wins),
/// each value cleaned; a message `Body` is left out.
pub fn fields_json(fields: &[(String, String)]) -> Value {
    let map: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("body"))
        .map(|(k, v)| {
            let k = clean_to(k, &Secrets::none(), MAX_STATUS_CHARS);
            (k, Value::String(clean(v, &Secrets::none())))
        })
        .collect();
    Value::Object(map)
}
