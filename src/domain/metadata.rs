//! Client `metadata`: a JSON object, bounded where it is parsed (API.md, Conventions) so that
//! what is stored and returned stays within 16,384 canonical bytes (a number may print longer
//! than it was sent, `1e14` as `100000000000000`, but never without bound) and reads back as
//! the same value in every language.
//!
//! Why each bound: a JSON number is a few bytes in and can be 100 KB out of `jsonb` (`1e100000`)
//! or fail inside the transaction (`1e200000`), so numbers are limited to what an IEEE double
//! holds exactly (15 significant digits) in a range that never prints in exponent form, and
//! they are stored in their RFC 8785 form. Members, depth and the canonical size are capped so
//! that every stored entry, replay and ledger page stays small.

use serde_json::{Map, Number, Value};

use super::jcs;

/// Most members of the metadata object itself.
pub const METADATA_MEMBERS_MAX: usize = 50;
/// Deepest nesting: the metadata object is level 1, and every object or array inside it adds one.
pub const METADATA_DEPTH_MAX: usize = 5;
/// Largest size of the metadata in canonical form (RFC 8785).
pub const METADATA_CANONICAL_BYTES_MAX: usize = 16_384;
/// Most significant digits of a number (an IEEE double holds 15 decimal digits exactly).
pub const METADATA_NUMBER_DIGITS_MAX: usize = 15;
/// Non-zero numbers need `10^-6 <= |x| < 10^15`: the exponents of their leading digit.
const LEADING_EXPONENT_MIN: i64 = -6;
const LEADING_EXPONENT_MAX: i64 = 14;

/// Why metadata was rejected; 400 `validation_failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata must have at most {METADATA_MEMBERS_MAX} members, not {0}")]
    TooManyMembers(usize),
    #[error("metadata must be at most {METADATA_DEPTH_MAX} levels deep (arrays count as levels)")]
    TooDeep,
    #[error(
        "metadata must be at most {METADATA_CANONICAL_BYTES_MAX} bytes in canonical form, not {0}"
    )]
    TooLarge(usize),
    #[error(
        "metadata number {0} must be finite, have at most {METADATA_NUMBER_DIGITS_MAX} significant digits, and be 0 or of absolute value from 0.000001 up to but excluding 10^15"
    )]
    Number(String),
    #[error("metadata must not contain NUL characters")]
    Nul,
}

/// Metadata that passed every bound: always a JSON object, its numbers in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata(Value);

impl Default for Metadata {
    fn default() -> Self {
        Self(Value::Object(Map::new()))
    }
}

impl Metadata {
    /// Absent (or `null`) is the empty object.
    pub fn parse(map: Option<Map<String, Value>>) -> Result<Self, MetadataError> {
        let map = map.unwrap_or_default();
        if map.len() > METADATA_MEMBERS_MAX {
            return Err(MetadataError::TooManyMembers(map.len()));
        }
        let mut value = Value::Object(map);
        normalize(&mut value, 1)?;
        let canonical =
            jcs::canonicalize(&value).map_err(|not_finite| MetadataError::Number(not_finite.0))?;
        if canonical.len() > METADATA_CANONICAL_BYTES_MAX {
            return Err(MetadataError::TooLarge(canonical.len()));
        }
        Ok(Self(value))
    }

    pub fn into_value(self) -> Value {
        self.0
    }
}

/// Checks depth, NULs and numbers, and rewrites each number in its RFC 8785 form.
fn normalize(value: &mut Value, level: usize) -> Result<(), MetadataError> {
    match value {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::String(text) => no_nul(text),
        Value::Number(number) => {
            *number = canonical_number(number)?;
            Ok(())
        }
        Value::Array(items) => {
            if level > METADATA_DEPTH_MAX {
                return Err(MetadataError::TooDeep);
            }
            items
                .iter_mut()
                .try_for_each(|item| normalize(item, level + 1))
        }
        Value::Object(map) => {
            if level > METADATA_DEPTH_MAX {
                return Err(MetadataError::TooDeep);
            }
            map.iter_mut().try_for_each(|(name, member)| {
                no_nul(name)?;
                normalize(member, level + 1)
            })
        }
    }
}

fn no_nul(text: &str) -> Result<(), MetadataError> {
    if text.contains('\0') {
        Err(MetadataError::Nul)
    } else {
        Ok(())
    }
}

/// A JSON number within the bounds, rewritten as RFC 8785 writes it (`1.50` → `1.5`,
/// `1E2` → `100`). The bounds are checked on the literal's decimal digits, before any
/// conversion, so `1e100000` costs nothing to refuse.
fn canonical_number(number: &Number) -> Result<Number, MetadataError> {
    let literal = number.to_string();
    let refuse = || MetadataError::Number(abbreviate(&literal));
    let decimal = DecimalLiteral::parse(&literal).ok_or_else(refuse)?;
    if let Some((digits, leading_exponent)) = decimal.significant()
        && (digits > METADATA_NUMBER_DIGITS_MAX
            || !(LEADING_EXPONENT_MIN..=LEADING_EXPONENT_MAX).contains(&leading_exponent))
    {
        return Err(refuse());
    }
    let double: f64 = literal.parse().map_err(|_| refuse())?;
    let text = jcs::ecmascript_number(double).ok_or_else(refuse)?;
    text.parse().map_err(|_| refuse())
}

/// A refused literal in an error message, cut short: a 60 KB number is not echoed back.
fn abbreviate(literal: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 40;
    if literal.len() <= SHOWN_CHARS_MAX {
        literal.to_owned()
    } else {
        format!("{}…", &literal[..SHOWN_CHARS_MAX])
    }
}

/// A JSON number literal split into its decimal digits and exponent: `-12.50e3` is digits
/// `1250`, exponent `3 - 2 = 1`.
struct DecimalLiteral<'a> {
    integer: &'a str,
    fraction: &'a str,
    exponent: i64,
}

impl<'a> DecimalLiteral<'a> {
    fn parse(literal: &'a str) -> Option<Self> {
        let unsigned = literal.strip_prefix('-').unwrap_or(literal);
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
            None => (unsigned, None),
        };
        let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if integer.is_empty() || !is_digits(integer) || !is_digits(fraction) {
            return None;
        }
        // An exponent too large for i64 is far outside the bounds either way; saturate.
        let exponent: i64 = match exponent {
            None => 0,
            Some(text) => {
                let (negative, magnitude) = match text.as_bytes().first() {
                    Some(b'-') => (true, &text[1..]),
                    Some(b'+') => (false, &text[1..]),
                    _ => (false, text),
                };
                if magnitude.is_empty() || !is_digits(magnitude) {
                    return None;
                }
                let value = magnitude.parse::<i64>().unwrap_or(i64::MAX / 2);
                if negative { -value } else { value }
            }
        };
        let fraction_len = i64::try_from(fraction.len()).ok()?;
        Some(Self {
            integer,
            fraction,
            exponent: exponent.saturating_sub(fraction_len),
        })
    }

    /// For a non-zero value: how many significant digits it has and the decimal exponent of
    /// its leading digit (`0.00123` → 3 digits, exponent -3). `None` for zero.
    fn significant(&self) -> Option<(usize, i64)> {
        let all = format!("{}{}", self.integer, self.fraction);
        let trimmed_leading = all.trim_start_matches('0');
        if trimmed_leading.is_empty() {
            return None;
        }
        let significant = trimmed_leading.trim_end_matches('0');
        let trailing_zeros = i64::try_from(trimmed_leading.len() - significant.len()).ok()?;
        let count = i64::try_from(significant.len()).ok()?;
        // value = significant × 10^(exponent + trailing_zeros)
        let leading = self
            .exponent
            .saturating_add(trailing_zeros)
            .saturating_add(count - 1);
        Some((significant.len(), leading))
    }
}

fn is_digits(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Value, MetadataError> {
        Metadata::parse(value.as_object().cloned()).map(Metadata::into_value)
    }

    fn parse_text(text: &str) -> Result<String, MetadataError> {
        let value: Value = serde_json::from_str(text).unwrap();
        parse(value).map(|v| v.to_string())
    }

    #[test]
    fn absent_metadata_is_the_empty_object() {
        assert_eq!(Metadata::parse(None).unwrap().into_value(), json!({}));
    }

    #[test]
    fn numbers_within_the_bounds_are_stored_canonically() {
        assert_eq!(parse_text(r#"{"n":1.50}"#).unwrap(), r#"{"n":1.5}"#);
        assert_eq!(parse_text(r#"{"n":1E2}"#).unwrap(), r#"{"n":100}"#);
        assert_eq!(parse_text(r#"{"n":-0}"#).unwrap(), r#"{"n":0}"#);
        assert_eq!(parse_text(r#"{"n":0e999999}"#).unwrap(), r#"{"n":0}"#);
        assert_eq!(
            parse_text(r#"{"n":0.000001}"#).unwrap(),
            r#"{"n":0.000001}"#
        );
        assert_eq!(
            parse_text(r#"{"n":999999999999999}"#).unwrap(),
            r#"{"n":999999999999999}"#
        );
        assert_eq!(
            parse_text(r#"{"n":123456789012345000000e-6}"#).unwrap(),
            r#"{"n":123456789012345}"#
        );
    }

    #[test]
    fn numbers_outside_the_bounds_are_refused() {
        for text in [
            "1e100000",
            "1e200000",
            "-1e15",
            "1000000000000000",
            "0.0000009",
            "1e-7",
            "1234567890123456",
            "1.234567890123456",
            "1e99999999999999999999999",
            "1e-99999999999999999999999",
        ] {
            let body = format!(r#"{{"n":{text}}}"#);
            assert!(
                matches!(parse_text(&body), Err(MetadataError::Number(_))),
                "{text} must be refused"
            );
        }
    }

    #[test]
    fn members_depth_and_size_are_bounded() {
        let members: Map<String, Value> = (0..50).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(Metadata::parse(Some(members.clone())).is_ok());
        let mut too_many = members;
        too_many.insert("one-more".into(), json!(1));
        assert_eq!(
            Metadata::parse(Some(too_many)),
            Err(MetadataError::TooManyMembers(51))
        );

        // Level 1 is the metadata itself; five levels are fine, six are not.
        assert!(parse(json!({"a": {"b": [{"c": [1]}]}})).is_ok());
        assert_eq!(
            parse(json!({"a": {"b": [{"c": [[1]]}]}})),
            Err(MetadataError::TooDeep)
        );
        assert_eq!(
            parse(json!({"a": {"b": [{"c": {"d": {}}}]}})),
            Err(MetadataError::TooDeep)
        );

        // {"s":"…"} is 8 bytes around the string.
        assert!(parse(json!({"s": "x".repeat(METADATA_CANONICAL_BYTES_MAX - 8)})).is_ok());
        assert_eq!(
            parse(json!({"s": "x".repeat(METADATA_CANONICAL_BYTES_MAX - 7)})),
            Err(MetadataError::TooLarge(METADATA_CANONICAL_BYTES_MAX + 1))
        );
    }

    #[test]
    fn nul_is_refused_anywhere() {
        assert!(parse(json!({"a": [1, {"b": "ok"}]})).is_ok());
        assert_eq!(
            parse(json!({"a": [1, {"b": "n\u{0}l"}]})),
            Err(MetadataError::Nul)
        );
        assert_eq!(parse(json!({"k\u{0}": 1})), Err(MetadataError::Nul));
    }

    #[test]
    fn a_refused_number_is_not_echoed_whole() {
        let huge = format!(r#"{{"n":{}}}"#, "9".repeat(5000));
        let message = parse_text(&huge).unwrap_err().to_string();
        assert!(message.len() < 300, "{message}");
    }
}
