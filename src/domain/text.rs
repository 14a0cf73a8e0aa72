//! Free-text fields (`owner_ref`, `reference`, `description`).
//!
//! Postgres `text` cannot hold a NUL character, so one would surface as a database
//! error mid-transaction; rejecting it here turns that into a clear 400 before anything runs.

/// Why a text field was rejected; maps to 400 `validation_failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("{field} must be 1 to {max_chars} characters long")]
    Length {
        field: &'static str,
        max_chars: usize,
    },
    #[error("{field} must not contain control characters")]
    Control { field: &'static str },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bounds_and_control_characters() {
        assert!(BoundedText::parse("reference", "booking-1".into(), 255).is_ok());
        assert!(BoundedText::parse("reference", "".into(), 255).is_err());
        assert!(BoundedText::parse("reference", "é".repeat(255), 255).is_ok());
        assert!(BoundedText::parse("reference", "x".repeat(256), 255).is_err());
        assert!(BoundedText::parse("reference", "a\nb".into(), 255).is_err());
        assert!(BoundedText::parse("reference", "a\0b".into(), 255).is_err());
    }
}
