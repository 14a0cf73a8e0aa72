//! RFC 8785 JSON Canonicalization Scheme (JCS): the one byte form of a JSON value that every
//! language can reproduce. UTF-8, no whitespace, object members sorted by the UTF-16 code units
//! of their names, strings escaped as ECMAScript's `JSON.stringify` does, and numbers written
//! as ECMAScript's `Number.prototype.toString` writes an IEEE-754 double.
//!
//! walletd uses it to bound `metadata` (its size is measured in this form) and to store
//! metadata numbers in this form, so that what is stored and returned reads back as the same
//! value everywhere.

use std::cmp::Ordering;

use serde_json::Value;

/// A JSON number that JCS cannot represent (NaN or an infinity; with serde_json's
/// `arbitrary_precision`, a literal such as `1e400` parses to infinity).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("number {0} is not a finite double")]
pub struct NotFinite(pub String);

/// The canonical bytes of `value`.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, NotFinite> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out.into_bytes())
}

fn write_value(value: &Value, out: &mut String) -> Result<(), NotFinite> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => {
            let double = number
                .as_f64()
                .ok_or_else(|| NotFinite(number.to_string()))?;
            out.push_str(&ecmascript_number(double).ok_or_else(|| NotFinite(number.to_string()))?);
        }
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| utf16_order(a.0, b.0));
            out.push('{');
            for (i, (name, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write_value(member, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn utf16_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// `JSON.stringify` of a string: `"` and `\` escaped, U+0000..U+001F as `\b \t \n \f \r` or
/// `\u00xx` (lower-case hex), everything else as its UTF-8 bytes.
fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript `Number.prototype.toString(x)` (ECMA-262, Number::toString), or `None` for a
/// non-finite `x`. Rust's `{:e}` gives the shortest digits that round-trip, which is what the
/// ECMAScript algorithm asks for; only the layout differs.
pub fn ecmascript_number(x: f64) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    if x == 0.0 {
        return Some("0".to_owned()); // -0 too
    }
    let scientific = format!("{:e}", x.abs());
    let (mantissa, exponent) = scientific.split_once('e')?;
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i32 = exponent.parse().ok()?;
    let k = i32::try_from(digits.len()).ok()?;
    // x = 0.d1d2…dk × 10^n
    let n = exponent + 1;
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', usize::try_from(n - k).ok()?));
    } else if 0 < n && n <= 21 {
        let point = usize::try_from(n).ok()?;
        out.push_str(&digits[..point]);
        out.push('.');
        out.push_str(&digits[point..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', usize::try_from(-n).ok()?));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jcs(text: &str) -> String {
        String::from_utf8(canonicalize(&serde_json::from_str(text).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn numbers_follow_ecmascript() {
        // RFC 8785 appendix B and the ECMAScript layout rules.
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (100.0, "100"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (4.5e-7, "4.5e-7"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740992.0, "9007199254740992"),
            (295147905179352830000.0, "295147905179352830000"),
            (0.1 + 0.2, "0.30000000000000004"),
            (333333333.3333333, "333333333.3333333"),
        ];
        for (x, expected) in cases {
            assert_eq!(ecmascript_number(x).unwrap(), expected, "{x:e}");
        }
        assert_eq!(ecmascript_number(f64::NAN), None);
        assert_eq!(ecmascript_number(f64::INFINITY), None);
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        // RFC 8785 section 3.2.3: U+1F600 (UTF-16 0xD83D 0xDE00) sorts before U+E000 (0xE000),
        // although its UTF-8 bytes (F0 …) sort after U+E000's (EE …).
        assert_eq!(
            jcs(r#"{"\uE000":1,"\uD83D\uDE00":2,"a":3,"A":4,"\u0080":5}"#),
            "{\"A\":4,\"a\":3,\"\u{80}\":5,\"\u{1F600}\":2,\"\u{E000}\":1}"
        );
    }

    #[test]
    fn strings_escape_like_json_stringify() {
        assert_eq!(
            jcs(r#"["\u0000\u001f\b\t\n\f\r\"\\/€\u007f"]"#),
            "[\"\\u0000\\u001f\\b\\t\\n\\f\\r\\\"\\\\/€\u{7f}\"]"
        );
    }

    #[test]
    fn whitespace_goes_and_literals_stay() {
        assert_eq!(
            jcs(" { \"b\" : [ true , false , null ] , \"a\" : 1.50 } "),
            r#"{"a":1.5,"b":[true,false,null]}"#
        );
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let huge: Value = serde_json::from_str("1e400").unwrap();
        assert!(canonicalize(&huge).is_err());
    }
}
