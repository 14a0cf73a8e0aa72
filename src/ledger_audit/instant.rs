//! Instants given by finance clients (`as_of`, `from`, `to`): RFC 3339, compared with the
//! microsecond timestamps Postgres keeps.
//!
//! An entry's `created_at` is a whole number of microseconds, so a bound with a finer fraction
//! is rounded the way that keeps each comparison exact: `created_at <= as_of` holds exactly when
//! `created_at <= floor(as_of)`, and `from <= created_at` / `created_at < to` exactly when the
//! bound is rounded up. Instants outside the years 0000–9999 UTC (reachable only through an
//! offset at the very ends, e.g. `9999-12-31T23:59:59-01:00`) are clamped into them: RFC 3339
//! cannot write them, and no entry lies outside them.

use chrono::{DateTime, NaiveDate, Utc};

/// Why a parameter is not an RFC 3339 instant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name} must be an RFC 3339 date-time with an offset, e.g. 2026-12-01T00:00:00Z or \
     2026-12-01T01:00:00%2B01:00 (percent-encode '+' in a query string)"
)]
pub struct NotAnInstant {
    pub name: &'static str,
}

/// An instant from a request, with its sub-microsecond part kept so it can be rounded either
/// way (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(DateTime<Utc>);

impl Instant {
    /// Parses `date-time` of RFC 3339 §5.6: `T` (or `t`) between date and time, seconds with any
    /// fraction, and `Z` or `±hh:mm`. chrono also takes a space for the `T`, which the RFC only
    /// mentions as a readability option; it is refused here, as JSON Schema's `date-time` does.
    pub fn parse(name: &'static str, text: &str) -> Result<Self, NotAnInstant> {
        if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(NotAnInstant { name });
        }
        DateTime::parse_from_rfc3339(text)
            .map(|at| Self(at.with_timezone(&Utc)))
            .map_err(|_| NotAnInstant { name })
    }

    /// The latest whole microsecond at or before this instant (for `created_at <= as_of`).
    pub fn floor_micros(self) -> DateTime<Utc> {
        clamp(DateTime::from_timestamp_micros(self.0.timestamp_micros()))
    }

    /// The earliest whole microsecond at or after this instant (for `from <= created_at` and
    /// `created_at < to`).
    pub fn ceil_micros(self) -> DateTime<Utc> {
        let floor = self.0.timestamp_micros();
        let exact = DateTime::from_timestamp_micros(floor)
            .is_some_and(|at| at == self.0 && self.0.timestamp_subsec_nanos() < 1_000_000_000);
        let micros = if exact {
            floor
        } else {
            floor.saturating_add(1)
        };
        clamp(DateTime::from_timestamp_micros(micros))
    }
}

/// 0000-01-01T00:00:00.000000Z, the earliest instant RFC 3339 can write.
fn earliest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(0, 1, 1)
        .and_then(|day| day.and_hms_micro_opt(0, 0, 0, 0))
        .map(|at| at.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// 9999-12-31T23:59:59.999999Z, the latest instant RFC 3339 can write.
fn latest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|day| day.and_hms_micro_opt(23, 59, 59, 999_999))
        .map(|at| at.and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn clamp(at: Option<DateTime<Utc>>) -> DateTime<Utc> {
    match at {
        Some(at) => at.clamp(earliest(), latest()),
        // Only a value beyond chrono's own range, which RFC 3339 input cannot reach.
        None => latest(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::representation::render_timestamp;

    fn parse(text: &str) -> Instant {
        Instant::parse("as_of", text).unwrap()
    }

    #[test]
    fn rfc3339_date_times_parse_to_utc() {
        let at = parse("2026-12-01T01:00:00+01:00");
        assert_eq!(
            render_timestamp(at.floor_micros()),
            "2026-12-01T00:00:00.000000Z"
        );
        assert_eq!(parse("2026-12-01t00:00:00z"), parse("2026-12-01T00:00:00Z"));
        assert_eq!(
            parse("2026-12-01T00:00:00.5-00:30"),
            parse("2026-12-01T00:30:00.500Z")
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for text in [
            "",
            "junk",
            "2026-12-01",
            "2026-12-01T00:00:00",
            "2026-12-01 00:00:00Z",
            "2026-12-01T00:00:00+0100",
            "2026-12-01T00:00:00 01:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2024-01-01T12:99:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T00:00:00+24:00",
            "2026-12-01T00:00:00.Z",
            "2026-12-01T00:00:00Zjunk",
            "1764547200",
        ] {
            assert_eq!(
                Instant::parse("from", text),
                Err(NotAnInstant { name: "from" }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn sub_microsecond_bounds_round_the_exact_way() {
        let at = parse("2026-12-01T00:00:00.0000015Z");
        assert_eq!(
            render_timestamp(at.floor_micros()),
            "2026-12-01T00:00:00.000001Z"
        );
        assert_eq!(
            render_timestamp(at.ceil_micros()),
            "2026-12-01T00:00:00.000002Z"
        );
        let whole = parse("2026-12-01T00:00:00.000001Z");
        assert_eq!(whole.floor_micros(), whole.ceil_micros());
        // Before 1970 too (negative timestamps round toward the past, not toward zero).
        let old = parse("1969-12-31T23:59:59.9999995Z");
        assert_eq!(
            render_timestamp(old.floor_micros()),
            "1969-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            render_timestamp(old.ceil_micros()),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn instants_beyond_rfc3339_years_are_clamped() {
        assert_eq!(
            render_timestamp(parse("9999-12-31T23:59:59-23:59").floor_micros()),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            render_timestamp(parse("0000-01-01T00:00:00+23:59").ceil_micros()),
            "0000-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            render_timestamp(parse("0001-01-01T00:00:00+23:59").floor_micros()),
            "0000-12-31T00:01:00.000000Z"
        );
    }

    #[test]
    fn a_leap_second_is_the_end_of_its_minute() {
        let leap = parse("2016-12-31T23:59:60.5Z");
        assert!(leap.floor_micros() >= parse("2016-12-31T23:59:59.999999Z").floor_micros());
        assert!(leap.floor_micros() <= parse("2017-01-01T00:00:00.5Z").floor_micros());
    }
}
