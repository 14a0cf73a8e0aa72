//! Reading requests strictly: the body (size, media type, JSON shape), the idempotency key,
//! query strings. Every failure here is a 4xx problem document and nothing is stored.

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::error::ApiError;
use crate::config::{ServerSettings, ms};
use crate::domain::IdempotencyKey;

/// Request bodies larger than this are refused with 413 (API.md, Conventions).
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// A JSON body parsed into `T`, plus its canonical form for the idempotency fingerprint.
pub struct JsonBody<T> {
    pub value: T,
    pub canonical: Vec<u8>,
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// Reads at most [`BODY_BYTES_MAX`] bytes within `server.body_read_timeout_ms` and parses
    /// them. `T` should deny unknown fields; serde's derive already refuses duplicate fields and
    /// numbers where strings belong.
    pub async fn read(
        request: &HttpRequest,
        payload: web::Payload,
        server: &ServerSettings,
    ) -> Result<Self, ApiError> {
        require_json_content_type(request)?;
        let timeout = ms(server.body_read_timeout_ms);
        let bytes = tokio::time::timeout(timeout, read_limited(request, payload))
            .await
            .map_err(|_| ApiError::RequestTimeout(server.body_read_timeout_ms))??;
        Self::parse(&bytes)
    }

    /// Parses a body already read (and bounded). An empty body is `{}` (a void or a full
    /// capture needs no fields).
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}".as_slice()
        } else {
            bytes
        };
        let invalid =
            |e: serde_json::Error| ApiError::Validation(format!("invalid request body: {e}"));
        // First the whole tree, refusing duplicate keys at any depth (serde's derive only
        // catches them among a struct's own fields; inside `metadata` the last would win).
        serde_json::from_slice::<NoDuplicateKeys>(bytes).map_err(invalid)?;
        let tree: Value = serde_json::from_slice(bytes).map_err(invalid)?;
        // serde's derive also reads a struct from an array of its fields in order
        // (`["12.50","EUR",null,null,null]`); a body is a JSON object (API.md, Conventions).
        if !tree.is_object() {
            return Err(ApiError::Validation(
                "invalid request body: expected a JSON object".into(),
            ));
        }
        let value: T = serde_json::from_slice(bytes).map_err(invalid)?;
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

/// Proof that a JSON document never repeats a key in any object. Values are walked, not kept:
/// the tree itself is parsed by serde_json (with `arbitrary_precision`, so numbers keep their
/// exact text and two different bodies never share a fingerprint).
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_unit<E>(self) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicateKeys, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }

    // (An `arbitrary_precision` number arrives as a one-member map; it passes as one.)
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicateKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<NoDuplicateKeys>()?;
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(NoDuplicateKeys)
    }
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
    fn duplicate_keys_are_refused_at_any_depth() {
        let check = |text: &str| serde_json::from_slice::<NoDuplicateKeys>(text.as_bytes()).is_ok();
        assert!(!check(r#"{"a":1,"a":2}"#));
        assert!(!check(r#"{"m":{"k":1,"k":2}}"#));
        assert!(!check(r#"[{"k":1},{"k":[{"x":1,"x":1}]}]"#));
        assert!(check(
            r#"{"a":{"b":[1,2.5,"x",null,true,123456789012345678901234567890]}}"#
        ));
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let canonical = |text: &str| canonical_json(&serde_json::from_str(text).unwrap());
        assert_ne!(
            canonical(r#"{"n":123456789012345678901}"#),
            canonical(r#"{"n":123456789012345678902}"#)
        );
        assert_eq!(
            canonical(r#"{"n": 123456789012345678901, "f": 0.10000000000000000001}"#),
            br#"{"f":0.10000000000000000001,"n":123456789012345678901}"#.to_vec()
        );
    }

    #[test]
    fn canonical_json_sorts_members_at_every_level() {
        let a = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 1}], "c": "é"}});
        let text = String::from_utf8(canonical_json(&a)).unwrap();
        assert_eq!(text, r#"{"a":{"c":"é","z":[1,{"x":1,"y":2}]},"b":1}"#);
    }
}
