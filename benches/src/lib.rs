//! Helpers shared by greenfill's benchmark binaries.

pub mod pg;
pub mod testbed;

/// Peak resident set size of this process so far, in MiB (`VmHWM`), if the
/// kernel reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}
