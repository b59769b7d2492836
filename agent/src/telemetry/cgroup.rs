//! cgroup v1, v2 and hybrid layouts, detected at run time from the mounted tree,
//! and the statistics greenfill reads for one cgroup. REFERENCE §4 has the files.

use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersion {
    V1,
    V2,
    /// v1 controllers plus a cgroup2 mount (systemd's hybrid mode).
    Hybrid,
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupLayout {
    pub version: CgroupVersion,
    /// The cgroup2 mount, if any.
    pub v2: Option<PathBuf>,
    /// Controllers in the v2 tree (`cgroup.controllers` there).
    pub v2_controllers: Vec<String>,
    pub v1_cpu: Option<PathBuf>,
    pub v1_cpuacct: Option<PathBuf>,
    pub v1_memory: Option<PathBuf>,
    /// The v1 devices controller (GPU jobs' device rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v1_devices: Option<PathBuf>,
}

fn dir_with(root: &Path, names: &[&str], file: &str) -> Option<PathBuf> {
    names.iter().map(|n| root.join(n)).find(|p| p.join(file).exists())
}

/// Look at the tree under `root` (normally `/sys/fs/cgroup`).
pub fn detect(root: &Path) -> CgroupLayout {
    let v2 = [root.to_path_buf(), root.join("unified")].into_iter().find(|p| p.join("cgroup.controllers").exists());
    let v2_controllers = v2
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p.join("cgroup.controllers")).ok())
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let v1_cpu = dir_with(root, &["cpu", "cpu,cpuacct"], "cpu.shares");
    let v1_cpuacct = dir_with(root, &["cpuacct", "cpu,cpuacct", "cpuacct,cpu"], "cpuacct.usage");
    let v1_memory = dir_with(root, &["memory"], "memory.usage_in_bytes");
    let v1_devices = dir_with(root, &["devices"], "devices.deny");
    let v1 = v1_cpu.is_some() || v1_cpuacct.is_some() || v1_memory.is_some();
    let version = match (v1, v2.is_some()) {
        (true, true) => CgroupVersion::Hybrid,
        (true, false) => CgroupVersion::V1,
        (false, true) => CgroupVersion::V2,
        (false, false) => CgroupVersion::None,
    };
    CgroupLayout { version, v2, v2_controllers, v1_cpu, v1_cpuacct, v1_memory, v1_devices }
}

/// What greenfill reads of one cgroup. A field the kernel does not offer, or that
/// could not be read or parsed, is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct CgroupStats {
    /// Cumulative CPU time, ns.
    pub cpu_usage_ns: Option<u64>,
    /// Cumulative throttled time, ns, and number of throttled periods.
    pub throttled_ns: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub cpu_pressure: Option<super::Pressure>,
    pub memory_pressure: Option<super::Pressure>,
}

/// The value of `key` in a flat-keyed file (`key value` per line).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok()).flatten()
    })
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn number(p: &Path) -> Option<u64> {
    read(p)?.trim().parse().ok()
}

/// v1 reports "no limit" as a huge page-aligned number.
fn v1_limit(v: u64) -> Option<u64> {
    (v < (1 << 62)).then_some(v)
}

/// Statistics of the cgroup at `rel` (e.g. `kubepods.slice/…`) under `layout`.
/// Where a controller is bound to v1 its v1 files are read, otherwise the v2 files.
pub fn cgroup_stats(layout: &CgroupLayout, rel: &Path) -> CgroupStats {
    let mut s = CgroupStats::default();
    let in_v2 = |c: &str| layout.v2_controllers.iter().any(|x| x == c);
    let v2dir = layout.v2.as_ref().map(|p| p.join(rel));
    match (&layout.v1_cpuacct, &v2dir) {
        (Some(acct), _) if !in_v2("cpu") => s.cpu_usage_ns = number(&acct.join(rel).join("cpuacct.usage")),
        (_, Some(d)) => {
            if let Some(t) = read(&d.join("cpu.stat")) {
                s.cpu_usage_ns = keyed(&t, "usage_usec").map(|u| u.saturating_mul(1000));
                s.throttled_ns = keyed(&t, "throttled_usec").map(|u| u.saturating_mul(1000));
                s.nr_throttled = keyed(&t, "nr_throttled");
            }
        }
        _ => {}
    }
    if let (Some(cpu), false) = (&layout.v1_cpu, in_v2("cpu"))
        && let Some(t) = read(&cpu.join(rel).join("cpu.stat"))
    {
        s.throttled_ns = keyed(&t, "throttled_time");
        s.nr_throttled = keyed(&t, "nr_throttled");
    }
    match (&layout.v1_memory, &v2dir) {
        (Some(mem), _) if !in_v2("memory") => {
            s.memory_bytes = number(&mem.join(rel).join("memory.usage_in_bytes"));
            s.memory_limit_bytes = number(&mem.join(rel).join("memory.limit_in_bytes")).and_then(v1_limit);
        }
        (_, Some(d)) => {
            s.memory_bytes = number(&d.join("memory.current"));
            s.memory_limit_bytes = read(&d.join("memory.max")).and_then(|v| v.trim().parse().ok());
        }
        _ => {}
    }
    if let Some(d) = &v2dir {
        s.cpu_pressure = read(&d.join("cpu.pressure")).and_then(|t| super::parse_pressure(&t));
        s.memory_pressure = read(&d.join("memory.pressure")).and_then(|t| super::parse_pressure(&t));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files() {
        let t = "usage_usec 5000\nuser_usec 3000\nthrottled_usec 10\nnr_throttled 2\n";
        assert_eq!(keyed(t, "usage_usec"), Some(5000));
        assert_eq!(keyed(t, "nr_throttled"), Some(2));
        assert_eq!(keyed(t, "missing"), None);
        assert_eq!(keyed("usage_usec abc", "usage_usec"), None);
        assert_eq!(v1_limit(9_223_372_036_854_771_712), None);
        assert_eq!(v1_limit(1 << 30), Some(1 << 30));
    }
}
