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

/// A PSI trigger (kernel 5.2+, `Documentation/accounting/psi.rst`): the kernel
/// wakes a poller when tasks of the cgroups stalled on CPU for `stall` within
/// any `window`. Reacts within the window, where `avg10` lags by seconds.
#[derive(Debug)]
pub struct PsiTrigger {
    files: Vec<(std::path::PathBuf, std::fs::File)>,
    window: std::time::Duration,
}

/// The kernel's smallest trigger window.
pub const MIN_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);
/// Without `CAP_SYS_RESOURCE` the kernel takes only windows that are multiples
/// of 2 s (Linux 6.5+); a container often lacks it (this machine does).
pub const UNPRIVILEGED_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

impl PsiTrigger {
    /// A `some` trigger on each of `files` (`cpu.pressure`): stalled `share`
    /// (0–1) of `window`. If the kernel refuses the window (EINVAL: not
    /// privileged), the 2 s window with the same share. An error names the
    /// file: an old kernel, or a cgroup that has none.
    pub fn open(files: &[std::path::PathBuf], share: f64, window: std::time::Duration) -> std::io::Result<PsiTrigger> {
        let window = window.max(MIN_WINDOW);
        match PsiTrigger::open_window(files, share, window) {
            Err(e) if e.raw_os_error() == Some(22) && window < UNPRIVILEGED_WINDOW => {
                PsiTrigger::open_window(files, share, UNPRIVILEGED_WINDOW)
            }
            r => r,
        }
    }

    fn open_window(
        files: &[std::path::PathBuf],
        share: f64,
        window: std::time::Duration,
    ) -> std::io::Result<PsiTrigger> {
        use std::io::Write as _;
        let stall = window.mul_f64(share.clamp(0.01, 1.0));
        // The kernel reads a NUL-terminated string (it overwrites the last byte).
        let spec = format!("some {} {}\0", stall.as_micros(), window.as_micros());
        let mut out = Vec::new();
        for path in files {
            let named = |e: std::io::Error| {
                std::io::Error::new(
                    e.kind(),
                    format!("{} (writing {:?}): {e}", path.display(), spec.trim_end_matches('\0')),
                )
            };
            let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(named)?;
            // Keep the errno for the caller's retry.
            if let Err(e) = f.write_all(spec.as_bytes()) {
                return Err(match e.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => named(e),
                });
            }
            out.push((path.clone(), f));
        }
        Ok(PsiTrigger { files: out, window })
    }

    /// The window the kernel took.
    pub fn window(&self) -> std::time::Duration {
        self.window
    }

    /// Wait up to `timeout`; true if a trigger fired.
    pub fn wait(&self, timeout: std::time::Duration) -> std::io::Result<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd as _;
        let mut fds: Vec<PollFd<'_>> =
            self.files.iter().map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLPRI)).collect();
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let n = poll(&mut fds, PollTimeout::from(ms)).map_err(std::io::Error::from)?;
        if fds.iter().any(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLERR))) {
            return Err(std::io::Error::other("a PSI trigger's cgroup went away (POLLERR)"));
        }
        Ok(n > 0)
    }
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
