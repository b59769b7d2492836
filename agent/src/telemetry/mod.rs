//! One sample of a node.

mod cgroup;
mod power;
mod proc;
pub mod psi;
mod rapl;

mod gpu;
pub use cgroup::{CgroupLayout, CgroupStats, CgroupVersion, cgroup_stats, detect, keyed as keyed_value};
#[cfg(feature = "nvml")]
pub use gpu::Nvml;
pub use gpu::{FakeGpus, GpuDevice, GpuError, GpuPower, GpuProcess, GpuSource, Gpus, check_limit};
pub use power::{LinearPowerModel, PowerReading, PowerSource};
pub use proc::{CpuTicks, cpu_ticks, meminfo};
pub use psi::{Pressure, PsiTrigger, parse_pressure};
pub use rapl::{Rapl, RaplZone, unwrap_delta};

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the host's pseudo-filesystems are mounted.
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: PathBuf,
    pub cgroup: PathBuf,
    pub powercap: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots { proc: "/proc".into(), cgroup: "/sys/fs/cgroup".into(), powercap: "/sys/class/powercap".into() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeSample {
    pub cpus: Option<usize>,
    /// Cores busy over the interval (busy ticks / all ticks × CPUs).
    pub cpu_cores_used: Option<f64>,
    pub memory_total_bytes: Option<u64>,
    /// `MemTotal − MemAvailable`.
    pub memory_used_bytes: Option<u64>,
    pub load: Option<[f64; 3]>,
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
}

/// Totals over the watched workload cgroups (per class, never per process:
/// cardinality is what Kepler's users complain about).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WorkloadSample {
    pub cgroups: usize,
    /// Cgroups whose CPU counter could be read.
    pub readable: usize,
    /// Cores used over the interval, summed.
    pub cpu_cores: Option<f64>,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub interval_s: Option<f64>,
    pub node: NodeSample,
    pub cgroup: CgroupLayout,
    pub power: Vec<PowerReading>,
    /// The watched cgroups (see [`Sampler::watch`]).
    pub workloads: WorkloadSample,
    /// GPUs seen through NVML; `None` when NVML is absent (not zero GPUs).
    pub gpus: Option<usize>,
    /// Why `gpus` is `None`, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus_absent: Option<String>,
    /// Each GPU's inventory and load (empty without GPUs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpu_devices: Vec<GpuDevice>,
}

/// Keeps the previous counters so each sample reports rates over its interval.
#[derive(Debug)]
pub struct Sampler {
    roots: Roots,
    model: LinearPowerModel,
    prev_ticks: Option<CpuTicks>,
    prev_time: Option<Instant>,
    rapl: Rapl,
    layout: CgroupLayout,
    /// Parent (relative to each hierarchy) whose child cgroups are workloads.
    watch: Option<PathBuf>,
    prev_cpu_ns: u64,
    gpus: Gpus,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl Sampler {
    pub fn new(roots: Roots, model: LinearPowerModel) -> Sampler {
        Sampler::with_gpus(roots, model, Gpus::open())
    }

    /// With a given GPU source (tests point NVML at a missing library).
    pub fn with_gpus(roots: Roots, model: LinearPowerModel, gpus: Gpus) -> Sampler {
        let rapl = Rapl::discover(&roots.powercap);
        let layout = detect(&roots.cgroup);
        Sampler { roots, model, prev_ticks: None, prev_time: None, rapl, layout, watch: None, prev_cpu_ns: 0, gpus }
    }

    /// Also read every child cgroup of `parent` (e.g. `kubepods.slice`) each sample.
    pub fn watch(&mut self, parent: impl Into<PathBuf>) {
        self.watch = Some(parent.into());
    }

    fn workloads(&mut self, interval: Option<f64>) -> WorkloadSample {
        let Some(parent) = &self.watch else { return WorkloadSample::default() };
        // Children are listed in whichever hierarchy holds CPU accounting.
        let list_in = self.layout.v1_cpuacct.clone().or_else(|| self.layout.v2.clone()).map(|r| r.join(parent));
        let children: Vec<PathBuf> = list_in
            .and_then(|d| std::fs::read_dir(d).ok())
            .map(|it| {
                it.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).map(|e| parent.join(e.file_name())).collect()
            })
            .unwrap_or_default();
        let mut w = WorkloadSample { cgroups: children.len(), ..WorkloadSample::default() };
        let mut cpu_ns = 0u64;
        for c in &children {
            let s = cgroup_stats(&self.layout, c);
            if let Some(ns) = s.cpu_usage_ns {
                w.readable += 1;
                cpu_ns = cpu_ns.saturating_add(ns);
            }
            w.memory_bytes = w.memory_bytes.saturating_add(s.memory_bytes.unwrap_or(0));
        }
        #[allow(clippy::cast_precision_loss, reason = "ns deltas over a second fit an f64")]
        if let Some(dt) = interval.filter(|d| *d > 0.0)
            && cpu_ns >= self.prev_cpu_ns
        {
            w.cpu_cores = Some((cpu_ns - self.prev_cpu_ns) as f64 / 1e9 / dt);
        }
        self.prev_cpu_ns = cpu_ns;
        w
    }

    /// Read everything once. Rates (CPU, RAPL power) need a previous sample: the
    /// first call reports them as missing.
    pub fn sample(&mut self) -> Sample {
        let now = Instant::now();
        let interval = self.prev_time.map(|t| now.duration_since(t).as_secs_f64());
        let p = &self.roots.proc;
        let ticks = read(&p.join("stat")).and_then(|s| cpu_ticks(&s));
        let cpu_cores_used = match (&self.prev_ticks, &ticks) {
            (Some(a), Some(b)) => b.cores_used_since(a),
            _ => None,
        };
        let (total, avail) =
            read(&p.join("meminfo")).and_then(|s| meminfo(&s)).map_or((None, None), |(t, a)| (Some(t), a));
        let node = NodeSample {
            cpus: ticks.as_ref().map(|t| t.cpus),
            cpu_cores_used,
            memory_total_bytes: total,
            memory_used_bytes: total.zip(avail).map(|(t, a)| t.saturating_sub(a)),
            load: read(&p.join("loadavg")).and_then(|s| proc::loadavg(&s)),
            cpu_pressure: read(&p.join("pressure/cpu")).and_then(|s| parse_pressure(&s)),
            memory_pressure: read(&p.join("pressure/memory")).and_then(|s| parse_pressure(&s)),
            io_pressure: read(&p.join("pressure/io")).and_then(|s| parse_pressure(&s)),
        };
        let mut power = self.rapl.read(interval);
        if power.is_empty()
            && let (Some(used), Some(cpus)) = (cpu_cores_used, node.cpus)
        {
            power.push(self.model.reading(used, cpus));
        }
        self.prev_ticks = ticks;
        self.prev_time = Some(now);
        let workloads = self.workloads(interval);
        let gpu = self.gpus.devices();
        if let Some(g) = &gpu {
            power.extend(g.iter().map(|g| PowerReading {
                component: format!("gpu-{}", g.index),
                source: PowerSource::Nvml,
                watts: g.power_w,
            }));
        }
        Sample {
            interval_s: interval,
            node,
            cgroup: self.layout.clone(),
            power,
            workloads,
            gpus: gpu.as_ref().map(Vec::len),
            gpus_absent: gpu.is_none().then(|| self.gpus.absent_reason.clone()),
            gpu_devices: gpu.unwrap_or_default(),
        }
    }
}

/// CPU and memory of the online workloads' root cgroups (e.g. `kubepods.slice`
/// and `kubepods`), summed: with them, the agent reports online use as what those
/// cgroups use and system use (node − online − batch) apart. Roots that do not
/// exist are skipped; with none, [`OnlineRoots::read`] is `None`.
#[derive(Debug)]
pub struct OnlineRoots {
    layout: CgroupLayout,
    roots: Vec<PathBuf>,
    prev: Option<(u64, Instant)>,
}

impl OnlineRoots {
    pub fn new(cgroup_root: &Path, roots: Vec<PathBuf>) -> OnlineRoots {
        OnlineRoots { layout: detect(cgroup_root), roots, prev: None }
    }

    /// `(cores over the interval since the last read, memory bytes)`; cores are
    /// `None` on the first read or when a counter went backwards.
    pub fn read(&mut self) -> Option<(Option<f64>, u64)> {
        let stats: Vec<CgroupStats> =
            self.roots.iter().map(|r| cgroup_stats(&self.layout, r)).filter(|s| s.cpu_usage_ns.is_some()).collect();
        if stats.is_empty() {
            return None;
        }
        let ns: u64 = stats.iter().filter_map(|s| s.cpu_usage_ns).fold(0, u64::saturating_add);
        let mem: u64 = stats.iter().filter_map(|s| s.memory_bytes).fold(0, u64::saturating_add);
        let now = Instant::now();
        #[allow(clippy::cast_precision_loss, reason = "ns deltas over seconds fit an f64")]
        let cores = self.prev.and_then(|(p, t)| {
            let dt = now.duration_since(t).as_secs_f64();
            (ns >= p && dt > 0.0).then(|| (ns - p) as f64 / 1e9 / dt)
        });
        self.prev = Some((ns, now));
        Some((cores, mem))
    }
}
