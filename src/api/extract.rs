//! Reading requests strictly: the body (size, media type, JSON shape), the idempotency key,
//! query strings. Every failure here is a 4xx problem document and nothing is stored.

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use crate::domain::IdempotencyKey;

/// Request bodies larger than this are refused with 413 (API.md, Conventions).
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// A JSON body parsed into `T`, plus its canonical form for the idempotency fingerprint.
pub struct JsonBody<T> {
    pub value: T,
    pub canonical: Vec<u8>,
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// Reads at most [`BODY_BYTES_MAX`] bytes and parses them. `T` should deny unknown fields;
    /// serde's derive already refuses duplicate fields and numbers where strings belong.
    pub async fn read(request: &HttpRequest, payload: web::Payload) -> Result<Self, ApiError> {
        require_json_content_type(request)?;
        let bytes = read_limited(request, payload).await?;
        let value: T = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Validation(format!("invalid request body: {e}")))?;
        let tree: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Validation(format!("invalid request body: {e}")))?;
        let canonical = canonical_json(&tree);
        Ok(Self { value, canonical })
    }
}

fn require_json_content_type(request: &HttpRequest) -> Result<(), ApiError> {
    let essence = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

async fn read_limited(
    request: &HttpRequest,
    mut payload: web::Payload,
) -> Result<Vec<u8>, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > BODY_BYTES_MAX as u64) {
        return Err(ApiError::PayloadTooLarge(BODY_BYTES_MAX));
    }
    let mut body = Vec::with_capacity(declared.map_or(1024, |len| len as usize));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::Validation(format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > BODY_BYTES_MAX {
            return Err(ApiError::PayloadTooLarge(BODY_BYTES_MAX));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Members sorted by key at every level, no whitespace: two requests that differ only in
/// member order or spacing get the same fingerprint.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (key, member)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(&Value::String(key.clone()), out);
                    out.push(b':');
                    write(member, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
        }
    }
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

/// The `Idempotency-Key` header: 400 `idempotency_key_missing` or `idempotency_key_invalid`.
pub fn idempotency_key(request: &HttpRequest) -> Result<IdempotencyKey, ApiError> {
    let mut values = request.headers().get_all("idempotency-key");
    let value = values.next().ok_or(ApiError::IdempotencyKeyMissing)?;
    if values.next().is_some() {
        return Err(ApiError::IdempotencyKeyInvalid(
            "send exactly one Idempotency-Key header".into(),
        ));
    }
    IdempotencyKey::parse(value.as_bytes())
        .map_err(|e| ApiError::IdempotencyKeyInvalid(e.to_string()))
}

/// Parses a query string into `T`, answering 400 `validation_failed` on error.
pub fn query<T: DeserializeOwned>(request: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::Validation(format!("invalid query string: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_members_at_every_level() {
        let a = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 1}], "c": "é"}});
        let text = String::from_utf8(canonical_json(&a)).unwrap();
        assert_eq!(text, r#"{"a":{"c":"é","z":[1,{"x":1,"y":2}]},"b":1}"#);
    }
}
