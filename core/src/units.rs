//! The one grammar for sizes in bytes, used by every input: job traces, `greenfill
//! submit --memory`, the agent's flags, config files.
//!
//! A size is a number (fractions allowed) with an optional unit. **Every unit is
//! binary**: `K`, `M`, `G`, `T` with or without `i` and `B`, any case, so `2G` =
//! `2Gi` = `2GiB` = `2g` = 2 × 2³⁰ bytes, as Slurm's `--mem` and Docker's
//! `--memory` read them. There is no decimal form: write plain bytes for one
//! (`2000000000`). Kubernetes' decimal `2G` is therefore 7 % less than greenfill's.

/// Bytes in `s`, or `None` when it is not a size (or is negative, or past u64).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.trim().parse().ok()?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.strip_suffix('B').unwrap_or(&unit);
    let unit = unit.strip_suffix('I').unwrap_or(unit);
    let power = match unit {
        "" => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        _ => return None,
    };
    let bytes = v * 1024f64.powi(power);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "range-checked")]
    (v.is_finite() && (0.0..1.8e19).contains(&bytes)).then_some(bytes.round() as u64)
}

/// What `--help` says of sizes.
pub const BYTES_HELP: &str = "bytes, or K/M/G/T (all binary: 2G = 2Gi = 2GiB = 2 × 2^30 bytes)";

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn every_unit_is_binary() {
        for (text, bytes) in [
            ("0", 0),
            ("512", 512),
            ("1K", 1024),
            ("1.5k", 1536),
            ("2G", 2 << 30),
            ("2Gi", 2 << 30),
            ("2GiB", 2 << 30),
            ("2gb", 2 << 30),
            (" 4 MiB ", 4 << 20),
            ("1T", 1 << 40),
        ] {
            assert_eq!(parse_bytes(text), Some(bytes), "{text}");
        }
        for bad in ["", "G", "-1G", "2X", "2GiBs", "nan", "inf", "1e30"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }
}
