//! Every write and read of the agent's own cgroups (the jobs' and the batch
//! root's) goes through [`Cgroups`]: [`HostCgroups`] works on the hierarchies
//! found under the injected cgroup root and reads processes under the injected
//! `/proc`; [`FakeCgroups`] keeps everything in memory, so the runner's and the
//! guard's logic run in tests without root. Errors name the operation, the file
//! and the value (youki's `WrappedIoError` habit).
//!
//! Layout written for a job (`rel` under each hierarchy that binds the
//! controller): cgroup v1 `cpu.shares = 2`, `cpu.cfs_period_us`,
//! `cpu.cfs_quota_us`, `memory.limit_in_bytes`; cgroup v2 `cpu.weight = 1`,
//! `cpu.max`, `memory.max`, and `cpu.idle = 1` where the kernel has it, after
//! enabling the controllers in every ancestor's `cgroup.subtree_control`.

use crate::telemetry::{CgroupLayout, cgroup_stats, detect, keyed_value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The CFS period every quota is written with, µs.
pub const PERIOD_US: u64 = 100_000;

/// A job cgroup's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLimits {
    pub cpu_cores: f64,
    pub memory_bytes: u64,
    /// Device cgroup (v1) rules written to the job's `devices.deny`, e.g.
    /// `c 195:1 rwm`: the GPUs that are not the job's.
    pub deny_devices: Vec<String>,
}

/// What a job's cgroup measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JobUsage {
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    /// The kernel's OOM killer killed a process of the group.
    pub oom_killed: bool,
}

/// A cgroup file operation that failed: which, where, with what value.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}{}: {source}", path.display(), value.as_ref().map_or_else(String::new, |v| format!(" (value {v:?})")))]
pub struct CgroupError {
    pub op: &'static str,
    pub path: PathBuf,
    pub value: Option<String>,
    /// In the message already, so not a `#[source]` (a chain would say it twice).
    pub source: std::io::Error,
}

/// The agent's access to its cgroups. `rel` is a path relative to each
/// hierarchy's root, e.g. `greenfill/batch/<attempt>`.
pub trait Cgroups: Send + Sync + std::fmt::Debug {
    /// Create `rel`, with no limits of its own, in every hierarchy in use.
    fn create(&self, rel: &Path) -> Result<(), CgroupError>;
    /// Create the job cgroup `rel` with `limits` in every hierarchy in use.
    fn create_job(&self, rel: &Path, limits: &JobLimits) -> Result<(), CgroupError>;
    /// Move process `pid` into `rel`.
    fn add_process(&self, rel: &Path, pid: u32) -> Result<(), CgroupError>;
    /// Every process in `rel`.
    fn processes(&self, rel: &Path) -> Vec<u32>;
    /// The child cgroups of `rel` in any hierarchy in use (relative paths).
    fn children(&self, rel: &Path) -> Vec<PathBuf>;
    /// `pid` is alive (not a zombie) and a member of `rel`: a reused pid is not.
    fn contains(&self, rel: &Path, pid: u32) -> bool;
    /// Remove `rel` where it is empty; an error names the first that stayed.
    fn remove(&self, rel: &Path) -> Result<(), CgroupError>;
    fn usage(&self, rel: &Path) -> JobUsage;
    /// Cap `rel`'s CPU at `cores` (CFS quota over [`PERIOD_US`]).
    fn set_cpu_quota(&self, rel: &Path, cores: f64) -> Result<(), CgroupError>;
    /// The CPU quota in force on `rel`, cores; `None` = unlimited or unreadable.
    fn cpu_quota(&self, rel: &Path) -> Option<f64>;
    /// A parent's CPU quota may not go below a child's (cgroup v1's rule).
    fn quota_bounded_by_children(&self) -> bool;
    /// Give `rel` the kernel's lowest CPU priority against its siblings:
    /// `cpu.idle = 1` where the kernel has it (5.15+, v1 or v2: minimal weight,
    /// and any non-idle task preempts an idle one at wake-up), else the minimal
    /// weight (v1 `cpu.shares = 2`, v2 `cpu.weight = 1`). Returns what it wrote.
    fn prioritise_idle(&self, rel: &Path) -> Result<&'static str, CgroupError>;
}

/// What [`Cgroups::prioritise_idle`] returns when it set the kernel's idle
/// priority (rather than a minimal weight).
pub const IDLE_PRIORITY: &str = "cpu.idle = 1";

/// A quota in µs per [`PERIOD_US`] for `cores`, at least 1 ms.
pub fn quota_us(cores: f64) -> u64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "bounded positive quota"
    )]
    let q = ((cores.max(0.0) * PERIOD_US as f64).round() as u64).max(1000);
    q
}

/// The host's cgroups, under an injected root.
#[derive(Debug, Clone)]
pub struct HostCgroups {
    layout: CgroupLayout,
    proc_root: PathBuf,
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError {
        op: "create",
        path: dir.to_owned(),
        value: None,
        source,
    })
}

fn write(path: PathBuf, value: String, op: &'static str) -> Result<(), CgroupError> {
    std::fs::write(&path, &value).map_err(|source| CgroupError { op, path, value: Some(value), source })
}

impl HostCgroups {
    /// Detect the hierarchies under `cgroup_root`; processes are read under `proc_root`.
    pub fn new(cgroup_root: &Path, proc_root: &Path) -> HostCgroups {
        HostCgroups { layout: detect(cgroup_root), proc_root: proc_root.to_owned() }
    }

    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    fn v2_has(&self, controller: &str) -> bool {
        self.layout.v2_controllers.iter().any(|c| c == controller)
    }

    /// Where the CPU controller is: the v2 tree when it binds `cpu`, else v1's.
    fn cpu_base(&self) -> Option<(&Path, bool)> {
        match (&self.layout.v1_cpu, &self.layout.v2) {
            (Some(v1), _) if !self.v2_has("cpu") => Some((v1.as_path(), false)),
            (_, Some(v2)) if self.v2_has("cpu") => Some((v2.as_path(), true)),
            _ => None,
        }
    }

    fn memory_base(&self) -> Option<(&Path, bool)> {
        match (&self.layout.v1_memory, &self.layout.v2) {
            (Some(v1), _) if !self.v2_has("memory") => Some((v1.as_path(), false)),
            (_, Some(v2)) if self.v2_has("memory") => Some((v2.as_path(), true)),
            _ => None,
        }
    }

    /// Every hierarchy directory a job lives in (v1 controllers, and the v2 tree
    /// when it binds cpu or memory), without duplicates.
    fn bases(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        let v1 = [&self.layout.v1_cpu, &self.layout.v1_cpuacct, &self.layout.v1_memory];
        for p in v1.into_iter().flatten() {
            if !out.contains(&p.as_path()) {
                out.push(p);
            }
        }
        if let Some(v2) = &self.layout.v2
            && (self.v2_has("cpu") || self.v2_has("memory"))
        {
            out.push(v2);
        }
        out
    }

    /// cgroup v2: let `rel`'s controllers be used, by enabling them in every
    /// ancestor's `cgroup.subtree_control` (the job's own cgroup holds processes,
    /// so it enables nothing).
    fn enable_v2_controllers(&self, v2: &Path, rel: &Path) -> Result<(), CgroupError> {
        let wanted: Vec<&str> = ["cpu", "memory"].into_iter().filter(|c| self.v2_has(c)).collect();
        let mut dir = v2.to_owned();
        for part in rel.components() {
            let control = dir.join("cgroup.subtree_control");
            let on = std::fs::read_to_string(&control).unwrap_or_default();
            let missing: Vec<String> =
                wanted.iter().filter(|c| !on.split_whitespace().any(|x| x == **c)).map(|c| format!("+{c}")).collect();
            if !missing.is_empty() {
                write(control, missing.join(" "), "enable controllers in")?;
            }
            dir.push(part);
        }
        Ok(())
    }
}

impl Cgroups for HostCgroups {
    fn create(&self, rel: &Path) -> Result<(), CgroupError> {
        for base in self.bases() {
            let dir = base.join(rel);
            mkdir(&dir)?;
            if let Some(v2) = &self.layout.v2
                && base == v2.as_path()
            {
                self.enable_v2_controllers(v2, rel)?;
            }
        }
        Ok(())
    }

    fn create_job(&self, rel: &Path, limits: &JobLimits) -> Result<(), CgroupError> {
        self.create(rel)?;
        if let Some((base, v2)) = self.cpu_base() {
            let dir = base.join(rel);
            let quota = quota_us(limits.cpu_cores);
            if v2 {
                write(dir.join("cpu.weight"), "1".into(), "write")?;
                write(dir.join("cpu.max"), format!("{quota} {PERIOD_US}"), "write")?;
                // SCHED_IDLE for the whole group where the kernel has it (5.15+).
                if dir.join("cpu.idle").exists() {
                    write(dir.join("cpu.idle"), "1".into(), "write")?;
                }
            } else {
                write(dir.join("cpu.shares"), "2".into(), "write")?;
                write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string(), "write")?;
                write(dir.join("cpu.cfs_quota_us"), quota.to_string(), "write")?;
            }
        }
        if let Some((base, v2)) = self.memory_base() {
            let file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
            write(base.join(rel).join(file), limits.memory_bytes.to_string(), "write")?;
        }
        if !limits.deny_devices.is_empty() {
            match &self.layout.v1_devices {
                Some(base) => {
                    let dir = base.join(rel);
                    mkdir(&dir)?;
                    for rule in &limits.deny_devices {
                        write(dir.join("devices.deny"), rule.clone(), "write")?;
                    }
                }
                None => tracing::warn!(
                    cgroup = %rel.display(),
                    "no cgroup v1 devices controller: other GPUs are hidden from the job by CUDA_VISIBLE_DEVICES only"
                ),
            }
        }
        Ok(())
    }

    fn add_process(&self, rel: &Path, pid: u32) -> Result<(), CgroupError> {
        for base in self.bases() {
            write(base.join(rel).join("cgroup.procs"), pid.to_string(), "add a process to")?;
        }
        // The devices hierarchy holds only jobs that have device rules.
        if let Some(dir) = self.layout.v1_devices.as_ref().map(|d| d.join(rel)).filter(|d| d.is_dir()) {
            write(dir.join("cgroup.procs"), pid.to_string(), "add a process to")?;
        }
        Ok(())
    }

    fn processes(&self, rel: &Path) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .bases()
            .into_iter()
            .filter_map(|b| std::fs::read_to_string(b.join(rel).join("cgroup.procs")).ok())
            .flat_map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn children(&self, rel: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .bases()
            .into_iter()
            .filter_map(|b| std::fs::read_dir(b.join(rel)).ok())
            .flat_map(|d| d.filter_map(Result::ok).filter(|e| e.path().is_dir()).map(|e| rel.join(e.file_name())))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn contains(&self, rel: &Path, pid: u32) -> bool {
        let proc = self.proc_root.join(pid.to_string());
        let Ok(text) = std::fs::read_to_string(proc.join("cgroup")) else { return false };
        let want = format!("/{}", rel.display());
        let zombie = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')))
            .unwrap_or(true);
        // In a DaemonSet the agent's own cgroup namespace shows host paths with a
        // leading `/..`; strip it.
        !zombie && text.lines().any(|l| l.rsplit(':').next().is_some_and(|p| p.trim_start_matches("/..") == want))
    }

    fn remove(&self, rel: &Path) -> Result<(), CgroupError> {
        let mut first = None;
        let devices = self.layout.v1_devices.as_deref().filter(|d| d.join(rel).is_dir());
        for base in self.bases().into_iter().chain(devices) {
            let dir = base.join(rel);
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    first.get_or_insert(CgroupError { op: "remove", path: dir, value: None, source });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn usage(&self, rel: &Path) -> JobUsage {
        let stats = cgroup_stats(&self.layout, rel);
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let (events, peak) = match self.memory_base() {
            Some((base, false)) => {
                let d = base.join(rel);
                (read(d.join("memory.oom_control")), read(d.join("memory.max_usage_in_bytes")))
            }
            Some((base, true)) => {
                let d = base.join(rel);
                (read(d.join("memory.events")), read(d.join("memory.peak")))
            }
            None => (None, None),
        };
        #[allow(clippy::cast_precision_loss, reason = "ns of CPU time fit an f64 well enough")]
        JobUsage {
            cpu_seconds: stats.cpu_usage_ns.map(|ns| ns as f64 / 1e9),
            memory_bytes: stats.memory_bytes,
            peak_memory_bytes: peak.and_then(|t| t.trim().parse().ok()),
            oom_killed: events.and_then(|t| keyed_value(&t, "oom_kill")).is_some_and(|n| n > 0),
        }
    }

    fn set_cpu_quota(&self, rel: &Path, cores: f64) -> Result<(), CgroupError> {
        let Some((base, v2)) = self.cpu_base() else { return Ok(()) };
        let dir = base.join(rel);
        mkdir(&dir)?;
        let quota = quota_us(cores);
        if v2 {
            write(dir.join("cpu.max"), format!("{quota} {PERIOD_US}"), "write")
        } else {
            // v1 needs the period set (it is per cgroup) before the quota.
            write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string(), "write")?;
            write(dir.join("cpu.cfs_quota_us"), quota.to_string(), "write")
        }
    }

    fn quota_bounded_by_children(&self) -> bool {
        self.cpu_base().is_some_and(|(_, v2)| !v2)
    }

    fn prioritise_idle(&self, rel: &Path) -> Result<&'static str, CgroupError> {
        let Some((base, v2)) = self.cpu_base() else { return Ok("nothing (no cpu controller)") };
        let dir = base.join(rel);
        mkdir(&dir)?;
        if dir.join("cpu.idle").exists() {
            write(dir.join("cpu.idle"), "1".into(), "write")?;
            Ok(IDLE_PRIORITY)
        } else if v2 {
            write(dir.join("cpu.weight"), "1".into(), "write")?;
            Ok("cpu.weight = 1")
        } else {
            write(dir.join("cpu.shares"), "2".into(), "write")?;
            Ok("cpu.shares = 2")
        }
    }

    fn cpu_quota(&self, rel: &Path) -> Option<f64> {
        let (base, v2) = self.cpu_base()?;
        let dir = base.join(rel);
        #[allow(clippy::cast_precision_loss, reason = "quota in µs")]
        if v2 {
            let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
            let mut it = text.split_whitespace();
            let quota: u64 = it.next()?.parse().ok()?;
            let period: u64 = it.next()?.parse().ok()?;
            Some(quota as f64 / period as f64)
        } else {
            let quota: i64 = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?.trim().parse().ok()?;
            let period: u64 = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?.trim().parse().ok()?;
            (quota >= 0).then(|| quota as f64 / period as f64)
        }
    }
}

/// One cgroup of [`FakeCgroups`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeGroup {
    pub limits: Option<JobLimits>,
    pub processes: Vec<u32>,
    pub cpu_quota: Option<f64>,
    pub idle: bool,
    pub usage: JobUsage,
}

/// In-memory cgroups for tests: records what the agent asked for; `fail_writes`
/// makes every write fail as the kernel would (EINVAL) with the path named.
/// Processes are real (tests run them): a member is alive while `kill(pid, 0)`
/// succeeds.
#[derive(Debug, Default)]
pub struct FakeCgroups {
    pub groups: Mutex<BTreeMap<PathBuf, FakeGroup>>,
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// Refuse a parent quota below a child's, as cgroup v1 does.
    pub v1_quota_rule: bool,
}

impl FakeCgroups {
    fn groups(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, FakeGroup>> {
        self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check(&self, rel: &Path, file: &str, value: String) -> Result<(), CgroupError> {
        if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(CgroupError {
                op: "write",
                path: Path::new("/fake").join(rel).join(file),
                value: Some(value),
                source: std::io::Error::from_raw_os_error(22),
            });
        }
        Ok(())
    }

    /// A copy of the group `rel`, if it exists.
    pub fn group(&self, rel: &Path) -> Option<FakeGroup> {
        self.groups().get(rel).cloned()
    }
}

/// A process exists (a zombie not yet reaped still counts: the fake reads no
/// `/proc`).
fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|raw| nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None).is_ok())
}

impl Cgroups for FakeCgroups {
    fn create(&self, rel: &Path) -> Result<(), CgroupError> {
        self.groups().entry(rel.to_owned()).or_default();
        Ok(())
    }

    fn create_job(&self, rel: &Path, limits: &JobLimits) -> Result<(), CgroupError> {
        self.check(rel, "cpu.max", quota_us(limits.cpu_cores).to_string())?;
        let mut g = self.groups();
        let group = g.entry(rel.to_owned()).or_default();
        group.limits = Some(limits.clone());
        group.cpu_quota = Some(limits.cpu_cores);
        Ok(())
    }

    fn add_process(&self, rel: &Path, pid: u32) -> Result<(), CgroupError> {
        self.check(rel, "cgroup.procs", pid.to_string())?;
        self.groups().entry(rel.to_owned()).or_default().processes.push(pid);
        Ok(())
    }

    fn children(&self, rel: &Path) -> Vec<PathBuf> {
        self.groups().keys().filter(|k| k.parent() == Some(rel)).cloned().collect()
    }

    fn processes(&self, rel: &Path) -> Vec<u32> {
        let mut g = self.groups();
        let Some(group) = g.get_mut(rel) else { return Vec::new() };
        group.processes.retain(|p| alive(*p));
        group.processes.clone()
    }

    fn contains(&self, rel: &Path, pid: u32) -> bool {
        self.processes(rel).contains(&pid)
    }

    fn remove(&self, rel: &Path) -> Result<(), CgroupError> {
        let mut g = self.groups();
        if g.get(rel).is_some_and(|x| x.processes.iter().any(|p| alive(*p))) {
            return Err(CgroupError {
                op: "remove",
                path: Path::new("/fake").join(rel),
                value: None,
                source: std::io::Error::from_raw_os_error(16),
            });
        }
        g.remove(rel);
        Ok(())
    }

    fn usage(&self, rel: &Path) -> JobUsage {
        self.groups().get(rel).map(|g| g.usage).unwrap_or_default()
    }

    fn set_cpu_quota(&self, rel: &Path, cores: f64) -> Result<(), CgroupError> {
        self.check(rel, "cpu.max", format!("{} {PERIOD_US}", quota_us(cores)))?;
        let mut g = self.groups();
        let parent = rel.parent().and_then(|p| g.get(p)).and_then(|p| p.cpu_quota);
        let child_above =
            g.iter().any(|(k, v)| k.parent() == Some(rel) && v.cpu_quota.is_some_and(|q| q > cores + 1e-9));
        if self.v1_quota_rule && (parent.is_some_and(|p| cores > p + 1e-9) || child_above) {
            return Err(CgroupError {
                op: "write",
                path: Path::new("/fake").join(rel).join("cpu.cfs_quota_us"),
                value: Some(quota_us(cores).to_string()),
                source: std::io::Error::from_raw_os_error(22),
            });
        }
        g.entry(rel.to_owned()).or_default().cpu_quota = Some(cores);
        Ok(())
    }

    fn cpu_quota(&self, rel: &Path) -> Option<f64> {
        self.groups().get(rel).and_then(|g| g.cpu_quota)
    }

    fn quota_bounded_by_children(&self) -> bool {
        self.v1_quota_rule
    }

    fn prioritise_idle(&self, rel: &Path) -> Result<&'static str, CgroupError> {
        self.check(rel, "cpu.idle", "1".into())?;
        self.groups().entry(rel.to_owned()).or_default().idle = true;
        Ok(IDLE_PRIORITY)
    }
}
