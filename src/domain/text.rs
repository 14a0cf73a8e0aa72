//! Free-text fields (`owner_ref`, `reference`, `description`) and `metadata`.
//!
//! Postgres `text` and `jsonb` cannot hold a NUL character, so one would surface as a database
//! error mid-transaction; rejecting it here turns that into a clear 400 before anything runs.

use serde_json::{Map, Value};

/// Why a text field or metadata was rejected; maps to 400 `validation_failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("{field} must be 1 to {max_chars} characters long")]
    Length {
        field: &'static str,
        max_chars: usize,
    },
    #[error("{field} must not contain control characters")]
    Control { field: &'static str },
    #[error("metadata must not contain NUL characters")]
    MetadataNul,
}

/// A non-empty string of bounded length without control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundedText(String);

impl BoundedText {
    pub fn parse(field: &'static str, text: String, max_chars: usize) -> Result<Self, TextError> {
        let chars = text.chars().count();
        if chars == 0 || chars > max_chars {
            return Err(TextError::Length { field, max_chars });
        }
        if text.chars().any(char::is_control) {
            return Err(TextError::Control { field });
        }
        Ok(Self(text))
    }

    /// Parses an optional field: absent (or JSON `null`) stays `None`.
    pub fn parse_optional(
        field: &'static str,
        text: Option<String>,
        max_chars: usize,
    ) -> Result<Option<Self>, TextError> {
        text.map(|t| Self::parse(field, t, max_chars)).transpose()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Client metadata: any JSON object without NUL characters in its keys or strings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metadata(Map<String, Value>);

impl Metadata {
    pub fn parse(map: Option<Map<String, Value>>) -> Result<Self, TextError> {
        let map = map.unwrap_or_default();
        if map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
            return Err(TextError::MetadataNul);
        }
        Ok(Self(map))
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_bounds_and_control_characters() {
        assert!(BoundedText::parse("reference", "booking-1".into(), 255).is_ok());
        assert!(BoundedText::parse("reference", "".into(), 255).is_err());
        assert!(BoundedText::parse("reference", "é".repeat(255), 255).is_ok());
        assert!(BoundedText::parse("reference", "x".repeat(256), 255).is_err());
        assert!(BoundedText::parse("reference", "a\nb".into(), 255).is_err());
        assert!(BoundedText::parse("reference", "a\0b".into(), 255).is_err());
    }

    #[test]
    fn metadata_rejects_nul_anywhere() {
        let object = |v: Value| v.as_object().cloned();
        assert!(Metadata::parse(object(json!({"a": [1, {"b": "ok"}]}))).is_ok());
        assert!(Metadata::parse(object(json!({"a": [1, {"b": "n\u{0}l"}]}))).is_err());
        assert!(Metadata::parse(object(json!({"k\u{0}": 1}))).is_err());
        assert_eq!(Metadata::parse(None).unwrap().into_value(), json!({}));
    }
}
