//! The local guard: protects online services within a second, with no scheduler.
//!
//! - Kernel priority first: the batch subtree runs at `cpu.idle = 1` where the
//!   kernel has it (the daemon sets it and tells the guard).
//! - CPU suppress (Koordinator's formula): batch may use at most
//!   `threshold × cpus − online`, never less than `floor`; a rise is limited to
//!   `step_up` cores per tick, a cut is immediate. Written as the batch root's CFS
//!   quota (cgroup v1 `cpu.cfs_quota_us`, or v2 `cpu.max`), which caps every job
//!   below it. By default ([`Suppress::Auto`]) only where batch lacks idle
//!   priority: on top of it the formula made online latency worse (measured).
//! - Interference: when the CPU pressure (PSI `some avg10`) of an online cgroup
//!   passes `psi_threshold`, the cap is halved each tick until it falls back; a
//!   PSI trigger on those cgroups halves it within its window (500 ms), between
//!   ticks ([`Guard::pressure_event`]).
//! - Memory: above `memory_high` of the node's memory, batch jobs are evicted
//!   (lowest priority, then largest) until the node is projected under
//!   `memory_low`; the scheduler requeues them.
//! - A cap from the scheduler (SuppressBatch) applies on top while valid.
//!
//! Every action is logged with its formula and numbers, and counted.

use crate::cgroups::{Cgroups, HostCgroups};
use crate::telemetry::{CgroupLayout, Sample, detect, parse_pressure};
pub use greenfill_core::guard::Suppress;
use greenfill_core::guard::{CapAction, CpuCapDecision, CpuCapInput, CpuCapPolicy};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Share of the node's CPUs that online + batch may use together; 1 − the
    /// scheduler's `planning.cpu_margin`, so the guard and the plan agree.
    pub threshold: f64,
    /// Batch is never capped below this many cores (jobs keep making progress).
    pub floor_cores: f64,
    /// Largest rise of the cap per tick, cores.
    pub step_up_cores: f64,
    /// When the usage formula caps batch.
    pub suppress: Suppress,
    /// Online cgroups (relative to the hierarchy) whose CPU pressure is watched.
    pub online_cgroups: Vec<PathBuf>,
    /// PSI `some avg10` (%) above which batch is cut further.
    pub psi_threshold: f64,
    pub memory_high: f64,
    pub memory_low: f64,
    /// Off = measure and log only.
    pub enforce: bool,
}

impl Default for GuardConfig {
    fn default() -> GuardConfig {
        GuardConfig {
            threshold: 0.9,
            floor_cores: 0.1,
            step_up_cores: 0.5,
            suppress: Suppress::Auto,
            online_cgroups: vec![PathBuf::from("kubepods.slice"), PathBuf::from("kubepods")],
            psi_threshold: 20.0,
            memory_high: 0.90,
            memory_low: 0.80,
            enforce: true,
        }
    }
}

/// A running batch job as the guard sees it.
#[derive(Debug, Clone)]
pub struct GuardJob {
    pub attempt: String,
    pub cgroup: PathBuf,
    pub priority: i32,
    /// The job's own CPU limit, cores (0 = unknown: a state file from before it
    /// was kept).
    pub cpu_cores: f64,
}

#[derive(Debug)]
pub struct Guard {
    cfg: GuardConfig,
    /// Where online cgroups' pressure is read.
    layout: CgroupLayout,
    /// The batch root's quota and the jobs' memory.
    cgroups: Arc<dyn Cgroups>,
    batch_root: PathBuf,
    /// The cap in force, cores (`None` before the first tick).
    limit: Option<f64>,
    scheduler: Option<(f64, Instant)>,
    /// The last tick's input, for a pressure event between ticks.
    last_input: Option<CpuCapInput>,
    /// The batch subtree runs at the kernel's idle priority (`cpu.idle = 1`).
    idle_priority: bool,
    /// Counters of actions, for metrics and tests.
    pub cuts: u64,
    pub raises: u64,
    pub psi_cuts: u64,
    pub evictions: u64,
    /// Quota writes the kernel refused.
    pub write_errors: u64,
}

impl Guard {
    /// A guard on the host's cgroups under `cgroup_root`.
    pub fn new(cfg: GuardConfig, cgroup_root: &Path, batch_root: &Path) -> Guard {
        // The guard reads no processes: the default proc root is never used.
        let host = Arc::new(HostCgroups::new(cgroup_root, &crate::Roots::default().proc));
        Guard::with_cgroups(cfg, cgroup_root, batch_root, host)
    }

    /// A guard writing the batch root's quota through `cgroups`.
    pub fn with_cgroups(cfg: GuardConfig, cgroup_root: &Path, batch_root: &Path, cgroups: Arc<dyn Cgroups>) -> Guard {
        Guard {
            cfg,
            layout: detect(cgroup_root),
            cgroups,
            batch_root: batch_root.to_owned(),
            limit: None,
            scheduler: None,
            last_input: None,
            idle_priority: false,
            cuts: 0,
            raises: 0,
            psi_cuts: 0,
            evictions: 0,
            write_errors: 0,
        }
    }

    pub fn limit(&self) -> Option<f64> {
        self.limit
    }

    /// Whether the batch subtree got the kernel's idle priority (what
    /// [`crate::runner::Runner::prioritise`] wrote); with [`Suppress::Auto`] it
    /// turns the usage formula off.
    pub fn set_idle_priority(&mut self, idle: bool) {
        self.idle_priority = idle;
    }

    /// The online cgroups' `cpu.pressure` files (cgroup v2, or the unified
    /// hierarchy beside v1 controllers), for a PSI trigger.
    pub fn pressure_files(&self) -> Vec<PathBuf> {
        let Some(v2) = self.layout.v2.as_ref() else { return vec![] };
        self.cfg.online_cgroups.iter().map(|c| v2.join(c).join("cpu.pressure")).filter(|p| p.exists()).collect()
    }

    /// A cap from the scheduler, valid for `valid`.
    pub fn scheduler_cap(&mut self, cores: f64, valid: Duration, reason: &str) {
        tracing::info!(cores, valid_s = valid.as_secs(), reason, "scheduler caps batch CPU");
        self.scheduler = Some((cores.max(0.0), Instant::now() + valid));
    }

    /// The quota in force on the batch root, cores (`None` = unlimited or unreadable).
    pub fn applied_quota(&self) -> Option<f64> {
        self.cgroups.cpu_quota(&self.batch_root)
    }

    /// Highest CPU pressure among the online cgroups, % of time some task
    /// stalled in the last 10 s. `None` when no online cgroup's is readable:
    /// node-wide PSI (`/proc/pressure/cpu`) counts batch waiting on itself, so it
    /// never cuts batch (measured here: 31–33 % during a plain build).
    fn online_pressure(&self) -> Option<f64> {
        let v2 = self.layout.v2.as_ref();
        self.cfg
            .online_cgroups
            .iter()
            .filter_map(|c| v2.and_then(|r| std::fs::read_to_string(r.join(c).join("cpu.pressure")).ok()))
            .filter_map(|t| parse_pressure(&t))
            .map(|p| p.some_avg10)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    }

    /// The shared policy ([`greenfill_core::guard`]) with this guard's settings.
    pub fn policy(&self) -> CpuCapPolicy {
        let c = &self.cfg;
        CpuCapPolicy {
            threshold: c.threshold,
            quota_loop: c.suppress.quota_loop(self.idle_priority),
            floor_cores: c.floor_cores,
            step_up_cores: c.step_up_cores,
            psi_threshold: c.psi_threshold,
        }
    }

    /// One tick: recompute and apply the CPU cap; return the jobs to evict
    /// (attempt, reason) if memory is over the high watermark.
    pub fn step(&mut self, s: &Sample, jobs: &[GuardJob]) -> Vec<(String, String)> {
        let Some(cpus) = s.node.cpus else { return vec![] };
        let Some(node) = s.node.cpu_cores_used else { return vec![] };
        let batch = s.workloads.cpu_cores.unwrap_or(0.0);
        #[allow(clippy::cast_precision_loss, reason = "cpu counts")]
        let input = CpuCapInput {
            cpus: cpus as f64,
            online: (node - batch).max(0.0),
            online_psi: self.online_pressure(),
            scheduler_cap: self.scheduler_cap_now(),
            ticks: 1.0,
            pressure_event: false,
        };
        self.decide_and_apply(&input, jobs);
        self.last_input = Some(input);
        self.memory(s, jobs)
    }

    /// A PSI trigger on an online cgroup fired: halve the cap now, between
    /// ticks, from the last tick's measurement.
    pub fn pressure_event(&mut self, jobs: &[GuardJob]) {
        let Some(last) = self.last_input else { return };
        let input = CpuCapInput { pressure_event: true, scheduler_cap: self.scheduler_cap_now(), ticks: 0.0, ..last };
        self.decide_and_apply(&input, jobs);
    }

    fn scheduler_cap_now(&mut self) -> Option<f64> {
        match self.scheduler {
            Some((cap, until)) if Instant::now() < until => Some(cap),
            Some(_) => {
                self.scheduler = None;
                None
            }
            None => None,
        }
    }

    fn decide_and_apply(&mut self, input: &CpuCapInput, jobs: &[GuardJob]) {
        let d = self.policy().decide(self.limit, input);
        self.count(&d);
        if self.cfg.enforce
            && self.limit.is_none_or(|old| (old - d.cap).abs() > 1e-3)
            && let Err(e) = self.apply_cap(d.cap, jobs)
        {
            // Named with the file and the value; counted; the next tick retries
            // (the cap in memory stays the old one, so it is written again).
            self.write_errors += 1;
            metrics::counter!("greenfill_guard_write_errors_total").increment(1);
            tracing::warn!(error = %e, cap = d.cap, "the kernel refused the batch root's CPU quota");
            metrics::gauge!("greenfill_guard_batch_cpu_limit_cores").set(self.limit.unwrap_or(d.cap));
            return;
        }
        self.limit = Some(d.cap);
        metrics::gauge!("greenfill_guard_batch_cpu_limit_cores").set(d.cap);
    }

    /// Write `cap` as the batch root's quota. Where a parent's quota may not go
    /// below a child's (cgroup v1: the kernel answers EINVAL), each job's own
    /// quota is held at `min(its limit, cap)`: lowered before the root when the
    /// cap falls, restored after it when the cap rises.
    fn apply_cap(&self, cap: f64, jobs: &[GuardJob]) -> Result<(), crate::cgroups::CgroupError> {
        if !self.cgroups.quota_bounded_by_children() {
            return self.cgroups.set_cpu_quota(&self.batch_root, cap);
        }
        let children = || -> Result<(), crate::cgroups::CgroupError> {
            for j in jobs {
                let own =
                    if j.cpu_cores > 0.0 { j.cpu_cores } else { self.cgroups.cpu_quota(&j.cgroup).unwrap_or(cap) };
                self.cgroups.set_cpu_quota(&j.cgroup, own.min(cap))?;
            }
            Ok(())
        };
        if self.limit.is_none_or(|old| cap < old) {
            children()?;
            self.cgroups.set_cpu_quota(&self.batch_root, cap)
        } else {
            self.cgroups.set_cpu_quota(&self.batch_root, cap)?;
            children()
        }
    }

    /// Count and log a decision.
    fn count(&mut self, d: &CpuCapDecision) {
        let old = self.limit.unwrap_or(d.cap);
        if d.psi_cut {
            self.psi_cuts += 1;
            metrics::counter!("greenfill_guard_actions_total", "action" => "psi_cut").increment(1);
        }
        match d.action {
            CapAction::Raise => {
                self.raises += 1;
                metrics::counter!("greenfill_guard_actions_total", "action" => "raise").increment(1);
                tracing::debug!(old, new = d.cap, "batch CPU raised: {}", d.reason);
            }
            CapAction::Cut => {
                self.cuts += 1;
                metrics::counter!("greenfill_guard_actions_total", "action" => "cut").increment(1);
                // Small cuts track noise in online use; large ones are news.
                if old - d.cap > 0.25 {
                    tracing::info!(old, new = d.cap, "batch CPU cut: {}", d.reason);
                } else {
                    tracing::debug!(old, new = d.cap, "batch CPU cut: {}", d.reason);
                }
            }
            CapAction::Set | CapAction::Hold => {}
        }
    }

    fn memory(&mut self, s: &Sample, jobs: &[GuardJob]) -> Vec<(String, String)> {
        let (Some(total), Some(used)) = (s.node.memory_total_bytes, s.node.memory_used_bytes) else { return vec![] };
        #[allow(clippy::cast_precision_loss, reason = "bytes")]
        let (total, mut used) = (total as f64, used as f64);
        let c = &self.cfg;
        if total <= 0.0 || used / total <= c.memory_high {
            return vec![];
        }
        let mut sized: Vec<(i32, f64, &GuardJob)> = jobs
            .iter()
            .map(|j| {
                #[allow(clippy::cast_precision_loss, reason = "bytes")]
                let m = self.cgroups.usage(&j.cgroup).memory_bytes.unwrap_or(0) as f64;
                (j.priority, m, j)
            })
            .collect();
        // Lowest priority first, then largest.
        sized.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut out = Vec::new();
        for (_, mem, j) in sized {
            if used / total <= c.memory_low {
                break;
            }
            let why = format!(
                "node memory {:.1}% > high {:.0}%: evicting {} ({:.0} MiB) toward low {:.0}%",
                used / total * 100.0,
                c.memory_high * 100.0,
                j.attempt,
                mem / 1048576.0,
                c.memory_low * 100.0
            );
            tracing::warn!("{why}");
            used -= mem;
            self.evictions += 1;
            metrics::counter!("greenfill_guard_actions_total", "action" => "evict").increment(1);
            out.push((j.attempt.clone(), why));
        }
        out
    }
}
