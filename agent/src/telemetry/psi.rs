//! Pressure stall information (`/proc/pressure/*`, `<cgroup>/cpu.pressure`).

use serde::Serialize;

/// Share of time (0–100) in the last 10 s that some / all tasks stalled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pressure {
    pub some_avg10: f64,
    /// Absent for CPU on older kernels.
    pub full_avg10: Option<f64>,
    /// Total stall time, µs, of `some`.
    pub some_total_us: u64,
}

/// Parse `some avg10=… avg60=… avg300=… total=…` (and the `full` line).
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let field = |line: &str, key: &str| line.split_whitespace().find_map(|kv| kv.strip_prefix(key)).map(str::to_owned);
    let some = text.lines().find(|l| l.starts_with("some "))?;
    let full = text.lines().find(|l| l.starts_with("full "));
    let some_avg10: f64 = field(some, "avg10=")?.parse().ok()?;
    let some_total_us: u64 = field(some, "total=")?.parse().ok()?;
    let full_avg10 = full.and_then(|l| field(l, "avg10=")).and_then(|v| v.parse().ok());
    (some_avg10.is_finite() && (0.0..=100.0).contains(&some_avg10)).then_some(Pressure {
        some_avg10,
        full_avg10,
        some_total_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_format() {
        let p = parse_pressure(
            "some avg10=1.50 avg60=0.80 avg300=0.20 total=123456\nfull avg10=0.50 avg60=0.10 avg300=0.00 total=999\n",
        )
        .unwrap();
        assert_eq!(p, Pressure { some_avg10: 1.5, full_avg10: Some(0.5), some_total_us: 123_456 });
        assert_eq!(parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap().full_avg10, None);
        assert_eq!(parse_pressure("some avg10=abc total=1"), None);
        assert_eq!(parse_pressure(""), None);
    }
}
