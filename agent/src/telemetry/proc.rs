//! `/proc/stat`, `/proc/meminfo`, `/proc/loadavg`, parsed with procfs-core.

use procfs_core::{ExplicitSystemInfo, FromRead, FromReadSI, KernelStats, LoadAverage};
use serde::Serialize;

/// Aggregate CPU ticks and the number of CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CpuTicks {
    pub busy: u64,
    pub total: u64,
    pub cpus: usize,
}

impl CpuTicks {
    /// Cores busy between `prev` and `self`; `None` if a counter went backwards
    /// or no time passed.
    pub fn cores_used_since(&self, prev: &CpuTicks) -> Option<f64> {
        let total = self.total.checked_sub(prev.total).filter(|t| *t > 0)?;
        let busy = self.busy.checked_sub(prev.busy)?;
        #[allow(clippy::cast_precision_loss, reason = "tick deltas and CPU counts are small")]
        let cores = busy as f64 / total as f64 * self.cpus as f64;
        Some(cores.min(self.cpus as f64))
    }
}

/// Parse `/proc/stat`. Busy = all ticks but idle and iowait. The tick rate does not
/// matter (only ratios are used), so none is assumed.
pub fn cpu_ticks(text: &str) -> Option<CpuTicks> {
    let si = ExplicitSystemInfo { boot_time_secs: 0, ticks_per_second: 100, page_size: 4096, is_little_endian: true };
    let k = KernelStats::from_read(text.as_bytes(), &si).ok()?;
    let t = &k.total;
    let idle = t.idle + t.iowait.unwrap_or(0);
    let total = t.user
        + t.nice
        + t.system
        + t.idle
        + [t.iowait, t.irq, t.softirq, t.steal].iter().map(|x| x.unwrap_or(0)).sum::<u64>();
    (!k.cpu_time.is_empty()).then_some(CpuTicks { busy: total.saturating_sub(idle), total, cpus: k.cpu_time.len() })
}

/// `(MemTotal, MemAvailable)` in bytes. Read key by key rather than with
/// procfs-core's `Meminfo`, which refuses the whole file when any of its ~20
/// mandatory fields is missing; only these two matter here.
pub fn meminfo(text: &str) -> Option<(u64, Option<u64>)> {
    let kib = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            let v: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            v.checked_mul(1024)
        })
    };
    Some((kib("MemTotal")?, kib("MemAvailable")))
}

pub(crate) fn loadavg(text: &str) -> Option<[f64; 3]> {
    let l = LoadAverage::from_read(text.as_bytes()).ok()?;
    Some([f64::from(l.one), f64::from(l.five), f64::from(l.fifteen)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 0\nctxt 10\nbtime 1\nprocesses 5\nprocs_running 1\nprocs_blocked 0\n";

    #[test]
    fn ticks_and_cores() {
        let a = cpu_ticks(STAT).unwrap();
        assert_eq!((a.busy, a.total, a.cpus), (150, 1000, 2));
        let b = CpuTicks { busy: 250, total: 1200, cpus: 2 };
        assert_eq!(b.cores_used_since(&a), Some(1.0));
        assert_eq!(a.cores_used_since(&b), None, "backwards");
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn memory() {
        let m = meminfo("MemTotal:       16000 kB\nMemFree:        1000 kB\nMemAvailable:    4000 kB\n").unwrap();
        assert_eq!(m, (16_000 * 1024, Some(4000 * 1024)));
        assert_eq!(loadavg("0.50 0.25 0.125 1/100 42\n"), Some([0.5, 0.25, 0.125]));
    }
}
