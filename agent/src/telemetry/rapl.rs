//! CPU (and DRAM) energy from the powercap RAPL tree. Each zone's `energy_uj` is a
//! counter that wraps at its own `max_energy_range_uj`; packages are summed with
//! DRAM zones but never with their own `core`/`uncore` subzones, which they contain.

use super::power::{PowerReading, PowerSource};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RaplZone {
    pub name: String,
    pub path: PathBuf,
    pub max_range_uj: u64,
    prev_uj: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Rapl {
    pub zones: Vec<RaplZone>,
}

/// A zone drawing more than this is a counter reset, not power.
const IMPLAUSIBLE_W: f64 = 5000.0;

/// Energy between two readings of a counter that wraps at `max_range`; `None` when
/// it went backwards with no range to wrap at.
pub fn unwrap_delta(prev: u64, now: u64, max_range: u64) -> Option<u64> {
    if now >= prev {
        Some(now - prev)
    } else if max_range > prev {
        Some(max_range - prev + now)
    } else {
        None
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

impl Rapl {
    /// Zones under `powercap` (normally `/sys/class/powercap`): top-level
    /// `intel-rapl:N` packages and their `dram` subzones. None is an empty list
    /// (most VMs), not an error.
    pub fn discover(powercap: &Path) -> Rapl {
        let mut zones = Vec::new();
        let Ok(entries) = std::fs::read_dir(powercap) else { return Rapl::default() };
        let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        names.sort();
        for dir in names.iter().filter(|n| n.starts_with("intel-rapl:")) {
            let depth = dir.matches(':').count();
            let path = powercap.join(dir);
            let Some(name) = std::fs::read_to_string(path.join("name")).ok().map(|s| s.trim().to_owned()) else {
                continue;
            };
            let counted = (depth == 1 && name != "psys") || (depth == 2 && name == "dram");
            if !counted || !path.join("energy_uj").exists() {
                continue;
            }
            let max_range_uj = read_u64(&path.join("max_energy_range_uj")).unwrap_or(0);
            zones.push(RaplZone { name: format!("{name} ({dir})"), path, max_range_uj, prev_uj: None });
        }
        Rapl { zones }
    }

    /// Zones found.
    pub fn zones(&self) -> &[RaplZone] {
        &self.zones
    }

    /// Read every zone and return its power over the `dt` seconds since the last
    /// read. A zone that cannot be read, or whose counter reset, is left out of this
    /// sample. The first read returns nothing (no previous value).
    pub fn read(&mut self, dt: Option<f64>) -> Vec<PowerReading> {
        let mut out = Vec::new();
        for z in &mut self.zones {
            let now = read_u64(&z.path.join("energy_uj"));
            if let (Some(prev), Some(now), Some(dt)) = (z.prev_uj, now, dt)
                && dt > 0.0
                && let Some(d) = unwrap_delta(prev, now, z.max_range_uj)
            {
                #[allow(clippy::cast_precision_loss, reason = "µJ deltas over a second are far below 2^52")]
                let watts = d as f64 / 1e6 / dt;
                if watts < IMPLAUSIBLE_W {
                    out.push(PowerReading { component: z.name.clone(), source: PowerSource::Rapl, watts });
                }
            }
            z.prev_uj = now;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_wrap_at_the_zone_range() {
        assert_eq!(unwrap_delta(100, 250, 1000), Some(150));
        assert_eq!(unwrap_delta(900, 50, 1000), Some(150));
        assert_eq!(unwrap_delta(900, 50, 0), None);
        assert_eq!(unwrap_delta(262_143_328_850 - 10, 5, 262_143_328_850), Some(15));
    }
}
