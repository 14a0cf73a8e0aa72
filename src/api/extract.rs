//! Reading requests strictly: the body (size, media type, JSON shape), the idempotency key,
//! query strings. Every failure here is a 4xx problem document and nothing is stored.

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
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
        Self::parse(&bytes)
    }

    /// Parses a body already read (and bounded).
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let invalid =
            |e: serde_json::Error| ApiError::Validation(format!("invalid request body: {e}"));
        // First the whole tree, refusing duplicate keys at any depth (serde's derive only
        // catches them among a struct's own fields; inside `metadata` the last would win).
        let tree = serde_json::from_slice::<StrictValue>(bytes)
            .map_err(invalid)?
            .0;
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

/// A JSON value whose objects never repeat a key.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(StrictValue(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut members = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let StrictValue(value) = map.next_value()?;
            members.insert(key, value);
        }
        Ok(StrictValue(Value::Object(members)))
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
        let parse =
            |text: &str| serde_json::from_slice::<StrictValue>(text.as_bytes()).map(|v| v.0);
        assert!(parse(r#"{"a":1,"a":2}"#).is_err());
        assert!(parse(r#"{"m":{"k":1,"k":2}}"#).is_err());
        assert!(parse(r#"[{"k":1},{"k":[{"x":1,"x":1}]}]"#).is_err());
        assert_eq!(
            parse(r#"{"a":{"b":[1,2.5,"x",null,true]}}"#).unwrap(),
            json!({"a":{"b":[1,2.5,"x",null,true]}})
        );
    }

    #[test]
    fn canonical_json_sorts_members_at_every_level() {
        let a = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 1}], "c": "é"}});
        let text = String::from_utf8(canonical_json(&a)).unwrap();
        assert_eq!(text, r#"{"a":{"c":"é","z":[1,{"x":1,"y":2}]},"b":1}"#);
    }
}
