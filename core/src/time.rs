//! Timestamps and durations as users write them.

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// Parse a timestamp into unix seconds. Accepts RFC 3339 (`2022-01-01T00:00:00Z`),
/// the same with a space and/or a `+00:00`/`+0000` offset, without a zone (taken as
/// UTC), date-only (`2022-01-01`), and plain unix seconds (or milliseconds when the
/// number is too large to be seconds).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i64>() {
        // Seconds until the year 5138; beyond that it must be milliseconds.
        return Some(if n.abs() >= 100_000_000_000 { n / 1000 } else { n });
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    const ZONED: [&str; 4] =
        ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M%:z"];
    for f in ZONED {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.timestamp());
        }
    }
    let naive = s.strip_suffix('Z').or_else(|| s.strip_suffix(" UTC")).unwrap_or(s);
    const NAIVE: [&str; 5] =
        ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%d.%m.%Y %H:%M"];
    for f in NAIVE {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, f) {
            return Some(t.and_utc().timestamp());
        }
    }
    NaiveDate::parse_from_str(naive, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
}

/// Format unix seconds as RFC 3339 UTC (`2022-01-01T00:00:00Z`).
pub fn format_timestamp(t: i64) -> String {
    DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Parse a duration such as `300`, `300s`, `250ms`, `5m`, `1.5h`, `7d` into seconds.
/// A bare number is seconds. Negative, non-finite and empty inputs are refused.
pub fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        let v: f64 = ms.trim().parse().ok()?;
        return (v.is_finite() && v >= 0.0).then_some(v / 1000.0);
    }
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1.0),
        (i, 'm') => (&s[..i], 60.0),
        (i, 'h') => (&s[..i], 3600.0),
        (i, 'd') => (&s[..i], 86_400.0),
        (i, 'w') => (&s[..i], 604_800.0),
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * mult)
}

/// Parse a duration that must be a whole, positive number of seconds (a step).
pub fn parse_step(s: &str) -> Option<i64> {
    let v = parse_duration(s)?;
    #[allow(clippy::cast_possible_truncation, reason = "checked to be a whole number in range")]
    (v >= 1.0 && v.fract() == 0.0 && v < 1e12).then_some(v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_forms_the_data_uses() {
        let t = 1_640_995_200; // 2022-01-01T00:00:00Z
        for s in [
            "2022-01-01 00:00:00+00:00",
            "2022-01-01T00:00:00Z",
            "2022-01-01T01:00:00+01:00",
            "2022-01-01 00:00:00",
            "2022-01-01T00:00",
            "2022-01-01",
            "1640995200",
            "1640995200000",
            "01.01.2022 00:00",
        ] {
            assert_eq!(parse_timestamp(s), Some(t), "{s}");
        }
        for s in ["", "yesterday", "2022-13-01", "2022-01-01 25:00:00"] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
        assert_eq!(format_timestamp(t), "2022-01-01T00:00:00Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Some(300.0));
        assert_eq!(parse_duration("5m"), Some(300.0));
        assert_eq!(parse_duration("1.5h"), Some(5400.0));
        assert_eq!(parse_duration("7d"), Some(604_800.0));
        assert_eq!(parse_duration("-5m"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_step("5m"), Some(300));
        assert_eq!(parse_step("0.5s"), None);
        assert_eq!(parse_step("0"), None);
    }
}
