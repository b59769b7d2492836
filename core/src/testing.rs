//! For tests that need what a machine may lack (root, python3, the research-only
//! data in `../shared/data`): off CI they say why and do not run; under CI (the
//! `CI` variable set, as CI runs `.ci/run`) they fail, because CI's machine is
//! meant to have what they need, and a test that passes without running is a
//! defect.

/// `true` under CI: `CI` is set to anything but `""`, `0` or `false`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The test cannot run here, for `reason`: print it (off CI) or fail (under CI).
/// The caller returns right after.
pub fn cannot_run(test: &str, reason: &str) {
    assert!(!under_ci(), "{test}: {reason}; CI must run this test, so it fails instead of passing without running");
    eprintln!("SKIP {test}: {reason}");
}

/// Whether this process runs as root (uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").ok().is_some_and(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)) == Some("0")
    })
}
