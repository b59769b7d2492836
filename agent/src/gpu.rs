//! GPUs on the node: which GPUs a batch job gets, the GPU guard, and the power
//! limits the agent sets (recorded before each change, restored after).
//!
//! - **Assignment** ([`choose`]): a job gets GPUs no other batch job holds and no
//!   online process uses, the emptiest first; by UUID in `CUDA_VISIBLE_DEVICES`
//!   and `NVIDIA_VISIBLE_DEVICES`, and the other GPUs' device nodes denied in its
//!   device cgroup (v1).
//! - **Guard** ([`GpuGuard::step`]): an online process on a GPU that batch holds,
//!   past the policy's SM share or memory share, gets the GPU's power limit set to
//!   its minimum at once; still past it `stop_after` ticks later, the batch jobs on
//!   that GPU are evicted (the scheduler requeues them). The limit goes back after
//!   `restore_after` calm ticks, or as soon as no batch job holds the GPU.
//! - **Records** ([`Limits`]): every limit the agent changes is written to
//!   `gpu-limits.json` (fsynced) before the change, keyed by UUID, with the limit
//!   it replaced. An agent that starts restores every recorded limit first, so a
//!   crash mid-cap leaves no GPU capped.

use crate::telemetry::{GpuDevice, GpuError, GpuProcess, GpuSource, check_limit};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// When an online process on a shared GPU "needs it".
#[derive(Debug, Clone)]
pub struct GpuPolicy {
    /// Online processes' SM share (%) on a GPU at or above which batch is capped.
    pub online_sm_pct: u32,
    /// Online processes' memory, as a share of the GPU's, at or above which batch is capped.
    pub online_memory_share: f64,
    /// Ticks under pressure at the minimum limit before batch on the GPU is evicted.
    pub stop_after: u32,
    /// Calm ticks before the limit goes back.
    pub restore_after: u32,
    /// Off = measure and log only.
    pub enforce: bool,
}

impl Default for GpuPolicy {
    fn default() -> GpuPolicy {
        GpuPolicy { online_sm_pct: 10, online_memory_share: 0.05, stop_after: 3, restore_after: 2, enforce: true }
    }
}

/// Whether a process belongs to a batch job: its cgroup lies under the batch root.
pub fn in_batch(proc_root: &Path, batch_root: &Path, pid: u32) -> bool {
    let root = format!("/{}/", batch_root.display());
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
        .is_ok_and(|s| s.lines().any(|l| l.split(':').nth(2).is_some_and(|p| p.contains(&root))))
}

/// Online (not batch) processes on `d`.
fn online<'a>(d: &'a GpuDevice, is_batch: &dyn Fn(u32) -> bool) -> Vec<&'a GpuProcess> {
    d.processes.iter().filter(|p| !is_batch(p.pid)).collect()
}

/// What a job asks of the node's GPUs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuAsk {
    pub count: u32,
    /// Only GPUs whose model contains this (empty = any).
    pub model: String,
    /// Only GPUs with at least this much memory, bytes (0 = any).
    pub memory_bytes: u64,
}

/// `ask.count` GPUs for a job: none that `taken` (other batch jobs) holds, none
/// an online process uses, of the model and memory asked; the least used
/// memory first. The error says what is short and why.
pub fn choose<'a>(
    devices: &'a [GpuDevice],
    ask: &GpuAsk,
    taken: &BTreeSet<u32>,
    is_batch: &dyn Fn(u32) -> bool,
) -> Result<Vec<&'a GpuDevice>, String> {
    let mut why = Vec::new();
    let mut free: Vec<&GpuDevice> = devices
        .iter()
        .filter(|d| {
            let reason = if taken.contains(&d.index) {
                Some("held by a batch job".to_owned())
            } else if let Some(p) = online(d, is_batch).first() {
                Some(format!("used by online pid {}", p.pid))
            } else if !ask.model.is_empty() && !d.model.contains(&ask.model) {
                Some(format!("model {:?}", d.model))
            } else if d.memory_total_bytes < ask.memory_bytes {
                Some(format!("{} MiB", d.memory_total_bytes >> 20))
            } else {
                None
            };
            if let Some(r) = &reason {
                why.push(format!("GPU {}: {r}", d.index));
            }
            reason.is_none()
        })
        .collect();
    if free.len() < ask.count as usize {
        let of = if devices.is_empty() { "the node has no GPU".to_owned() } else { why.join("; ") };
        return Err(format!("asks for {} GPU(s), {} free here ({of})", ask.count, free.len()));
    }
    free.sort_by_key(|d| (d.memory_used_bytes, d.index));
    free.truncate(ask.count as usize);
    free.sort_by_key(|d| d.index);
    Ok(free)
}

/// A recorded limit change on one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub index: u32,
    /// The limit before the agent changed anything: what a restore sets.
    pub original_w: f64,
    /// The guard holds the GPU at its minimum.
    #[serde(default)]
    pub guard: bool,
    /// A job's own limit (`gpu_power`): its attempt and watts.
    #[serde(default)]
    pub job: Option<(String, f64)>,
}

/// Every limit the agent changed, by GPU UUID, in a file written before each change.
#[derive(Debug)]
pub struct Limits {
    path: PathBuf,
    pub entries: BTreeMap<String, Recorded>,
}

impl Limits {
    /// The records in `state_dir`, empty when there are none.
    pub fn load(state_dir: &Path) -> Result<Limits, String> {
        let path = state_dir.join("gpu-limits.json");
        let entries = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Limits { path, entries })
    }

    fn save(&self) -> std::io::Result<()> {
        crate::write_json_atomic(&self.path, &self.entries)
    }
}

/// Errors of a limit change: the record could not be written (nothing was
/// changed), or the card refused.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("cannot record the GPU limit change in {path}: {source}")]
    Record { path: String, source: std::io::Error },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// A batch job's GPUs, as the guard sees them.
#[derive(Debug, Clone)]
pub struct GpuJob {
    pub attempt: String,
    pub gpus: Vec<u32>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Ticks {
    pressured: u32,
    calm: u32,
}

/// The GPU guard and the keeper of the limits the agent sets.
#[derive(Debug)]
pub struct GpuGuard {
    policy: GpuPolicy,
    source: Arc<dyn GpuSource>,
    limits: Limits,
    ticks: BTreeMap<u32, Ticks>,
    pub counts: GuardCounts,
}

/// What the GPU guard did, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuardCounts {
    pub caps: u64,
    pub restores: u64,
    pub evictions: u64,
}

impl GpuGuard {
    /// A guard over `source`, with the records in `limits`; call
    /// [`GpuGuard::restore_all`] before the first job.
    pub fn new(policy: GpuPolicy, source: Arc<dyn GpuSource>, limits: Limits) -> GpuGuard {
        GpuGuard { policy, source, limits, ticks: BTreeMap::new(), counts: GuardCounts::default() }
    }

    pub fn recorded(&self) -> &BTreeMap<String, Recorded> {
        &self.limits.entries
    }

    fn record(&mut self, uuid: &str, entry: Option<Recorded>) -> Result<(), LimitError> {
        match entry {
            Some(e) => self.limits.entries.insert(uuid.to_owned(), e),
            None => self.limits.entries.remove(uuid),
        };
        self.limits.save().map_err(|source| LimitError::Record { path: self.limits.path.display().to_string(), source })
    }

    /// Set every recorded GPU back to the limit it had before the agent changed
    /// it (a previous run's caps, after a crash). Returns how many were restored.
    pub fn restore_all(&mut self) -> usize {
        let devices = self.source.devices().unwrap_or_default();
        let mut n = 0;
        for (uuid, r) in self.limits.entries.clone() {
            let Some(d) = devices.iter().find(|d| d.uuid == uuid) else {
                tracing::warn!(%uuid, "a recorded GPU limit for a GPU no longer here: dropped");
                let _ = self.record(&uuid, None);
                continue;
            };
            match self.source.set_power_limit(d.index, r.original_w) {
                Ok(()) => {
                    tracing::info!(gpu = d.index, %uuid, watts = r.original_w, "GPU power limit restored from a previous run");
                    let _ = self.record(&uuid, None);
                    n += 1;
                }
                Err(e) => tracing::error!(gpu = d.index, error = %e, "cannot restore a GPU power limit"),
            }
        }
        n
    }

    /// Set a job's own power limit on its GPUs, after checking it against each
    /// card's range (the error names the GPU, the value and the range).
    pub fn set_job_limit(&mut self, attempt: &str, gpus: &[&GpuDevice], watts: f64) -> Result<(), LimitError> {
        for d in gpus {
            check_limit(d, watts)?;
        }
        for d in gpus {
            let prev = self.limits.entries.get(&d.uuid).cloned();
            let original_w = prev.as_ref().map_or(d.power_limit_w, |r| r.original_w);
            let guard = prev.is_some_and(|r| r.guard);
            self.record(
                &d.uuid,
                Some(Recorded { index: d.index, original_w, guard, job: Some((attempt.into(), watts)) }),
            )?;
            if !guard {
                self.source.set_power_limit(d.index, watts)?;
            }
        }
        Ok(())
    }

    /// A job ended: its own limits go back (unless the guard holds the GPU, which restores later).
    pub fn job_ended(&mut self, attempt: &str) {
        let mine: Vec<(String, Recorded)> = self
            .limits
            .entries
            .iter()
            .filter(|(_, r)| r.job.as_ref().is_some_and(|(a, _)| a == attempt))
            .map(|(u, r)| (u.clone(), r.clone()))
            .collect();
        for (uuid, mut r) in mine {
            r.job = None;
            if r.guard {
                let _ = self.record(&uuid, Some(r));
            } else if self.source.set_power_limit(r.index, r.original_w).map_err(log_limit).is_ok() {
                let _ = self.record(&uuid, None);
            }
        }
    }

    /// One tick over the GPUs' readings: cap, evict or restore. Returns the
    /// jobs to evict, with why.
    pub fn step(
        &mut self,
        devices: &[GpuDevice],
        jobs: &[GpuJob],
        is_batch: &dyn Fn(u32) -> bool,
    ) -> Vec<(String, String)> {
        let mut evict = Vec::new();
        for d in devices {
            let on: Vec<&GpuJob> = jobs.iter().filter(|j| j.gpus.contains(&d.index)).collect();
            let pressure = self.pressure(d, is_batch);
            let capped = self.limits.entries.get(&d.uuid).is_some_and(|r| r.guard);
            let t = self.ticks.entry(d.index).or_default();
            match (&pressure, on.is_empty()) {
                (Some(why), false) => {
                    t.calm = 0;
                    t.pressured += 1;
                    if !capped {
                        self.cap(d, why);
                    } else if t.pressured > self.policy.stop_after && self.policy.enforce {
                        tracing::warn!(gpu = d.index, %why, jobs = on.len(), "GPU guard: still pressed at the minimum limit; evicting batch");
                        self.counts.evictions += on.len() as u64;
                        evict.extend(on.iter().map(|j| (j.attempt.clone(), format!("GPU {}: {why}", d.index))));
                        t.pressured = 0;
                    }
                }
                _ if capped => {
                    t.pressured = 0;
                    t.calm += 1;
                    if t.calm >= self.policy.restore_after || on.is_empty() {
                        self.uncap(d);
                    }
                }
                _ => *t = Ticks::default(),
            }
        }
        evict
    }

    /// Why online processes on `d` need it, if they do.
    fn pressure(&self, d: &GpuDevice, is_batch: &dyn Fn(u32) -> bool) -> Option<String> {
        let on = online(d, is_batch);
        if on.is_empty() {
            return None;
        }
        let sm: u32 = on.iter().filter_map(|p| p.sm_util_pct).sum();
        let mem: u64 = on.iter().map(|p| p.memory_bytes).sum();
        #[allow(clippy::cast_precision_loss, reason = "bytes to a share")]
        let share = if d.memory_total_bytes == 0 { 0.0 } else { mem as f64 / d.memory_total_bytes as f64 };
        (sm >= self.policy.online_sm_pct || share >= self.policy.online_memory_share).then(|| {
            let pids: Vec<String> = on.iter().map(|p| p.pid.to_string()).collect();
            format!("online pid {} uses {sm} % SM and {:.0} % of memory", pids.join(","), share * 100.0)
        })
    }

    fn cap(&mut self, d: &GpuDevice, why: &str) {
        tracing::warn!(gpu = d.index, %why, from_w = d.power_limit_w, to_w = d.power_limit_min_w, enforce = self.policy.enforce, "GPU guard: batch capped to the minimum power limit");
        if !self.policy.enforce {
            return;
        }
        let prev = self.limits.entries.get(&d.uuid).cloned();
        let original_w = prev.as_ref().map_or(d.power_limit_w, |r| r.original_w);
        let job = prev.and_then(|r| r.job);
        let entry = Recorded { index: d.index, original_w, guard: true, job };
        if let Err(e) = self.record(&d.uuid, Some(entry)) {
            tracing::error!(error = %e, "GPU guard: not capping what it cannot record");
            return;
        }
        if self.source.set_power_limit(d.index, d.power_limit_min_w).map_err(log_limit).is_ok() {
            self.counts.caps += 1;
        }
    }

    fn uncap(&mut self, d: &GpuDevice) {
        let Some(mut r) = self.limits.entries.get(&d.uuid).cloned() else { return };
        r.guard = false;
        let to = r.job.as_ref().map_or(r.original_w, |(_, w)| *w);
        tracing::info!(gpu = d.index, to_w = to, "GPU guard: online is calm; power limit restored");
        if self.source.set_power_limit(d.index, to).map_err(log_limit).is_ok() {
            self.counts.restores += 1;
            let keep = r.job.is_some().then_some(r);
            let _ = self.record(&d.uuid, keep);
        }
        self.ticks.remove(&d.index);
    }
}

fn log_limit(e: GpuError) -> GpuError {
    tracing::error!(error = %e, "cannot set a GPU power limit");
    e
}

/// One point of a model's power curve: at this power limit the model does
/// `throughput` of its work rate at the full limit (measured, e.g. with Zeus).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct CurvePoint {
    pub limit_w: f64,
    pub throughput: f64,
}

/// A GPU model's curve; `model` matches a GPU whose NVML name contains it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Curve {
    pub model: String,
    pub points: Vec<CurvePoint>,
}

/// `--gpu-curves`: `[[model]] model = "A100", points = [{ limit_w = 150, throughput = 0.8 }, …]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curves {
    #[serde(default, rename = "model")]
    pub models: Vec<Curve>,
}

impl Curves {
    /// Read and check a curves file; errors name the file, the model and the point.
    pub fn load(path: &Path) -> Result<Curves, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--gpu-curves {}: {e}", path.display()))?;
        let c: Curves = toml::from_str(&text).map_err(|e| format!("--gpu-curves {}: {e}", path.display()))?;
        for (i, m) in c.models.iter().enumerate() {
            if m.points.is_empty() {
                return Err(format!("--gpu-curves {}: model[{i}] ({:?}): no points", path.display(), m.model));
            }
            for (j, p) in m.points.iter().enumerate() {
                if !(p.limit_w > 0.0 && p.throughput > 0.0 && p.throughput <= 1.0) {
                    return Err(format!(
                        "--gpu-curves {}: model[{i}].points[{j}] = {{ limit_w = {}, throughput = {} }}: needs limit_w > 0 and 0 < throughput <= 1",
                        path.display(),
                        p.limit_w,
                        p.throughput
                    ));
                }
            }
        }
        Ok(c)
    }

    pub fn for_model(&self, model: &str) -> Option<&Curve> {
        self.models.iter().find(|c| model.contains(&c.model))
    }
}

/// The power limit that does a job's work with the least energy and still ends
/// in time: energy per unit of work at a point is `limit_w / throughput` (a
/// capped card draws its limit); only points whose slowdown `1 / throughput`
/// fits `slack` (time to the deadline over the expected run time; `None` = no
/// deadline) count, and if none does, the fastest point. Points outside the
/// card's range are an error naming them.
pub fn auto_limit(curve: &Curve, d: &GpuDevice, slack: Option<f64>) -> Result<f64, String> {
    for p in &curve.points {
        check_limit(d, p.limit_w).map_err(|e| format!("curve of {:?}: {e}", curve.model))?;
    }
    let fits = |p: &&CurvePoint| slack.is_none_or(|s| 1.0 / p.throughput <= s);
    let energy = |p: &CurvePoint| p.limit_w / p.throughput;
    let best = curve.points.iter().filter(fits).min_by(|a, b| energy(a).total_cmp(&energy(b)));
    let fastest = || curve.points.iter().max_by(|a, b| a.throughput.total_cmp(&b.throughput));
    best.or_else(fastest).map(|p| p.limit_w).ok_or_else(|| format!("curve of {:?} has no points", curve.model))
}

/// What a job asks of its GPUs' power.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PowerAsk {
    /// The card's own limit.
    Default,
    /// This limit, watts.
    Limit(f64),
    /// The least-energy limit within `slack` (see [`auto_limit`]).
    Auto { slack: Option<f64> },
}

/// A job's GPUs: what it sees, and what its device cgroup denies it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    pub indices: Vec<u32>,
    pub env: Vec<(String, String)>,
    /// Device cgroup rules: every GPU of the node that is not the job's.
    pub deny: Vec<String>,
    /// The power limit set on its GPUs, if one was.
    pub limit_w: Option<f64>,
}

/// Why a job got no GPUs: a message naming what is short; `retryable` when
/// the GPUs are busy (not when the ask cannot be met here).
#[derive(Debug, Clone, PartialEq)]
pub struct GrantError {
    pub message: String,
    pub retryable: bool,
}

/// The node's GPUs as the daemon uses them: the source, the guard, the curves.
#[derive(Debug)]
pub struct NodeGpus {
    pub gpus: crate::telemetry::Gpus,
    guard: Option<std::sync::Mutex<GpuGuard>>,
    curves: Curves,
    proc_root: PathBuf,
    batch_root: PathBuf,
    /// The inventory at start (Register reports it).
    pub inventory: Vec<GpuDevice>,
}

impl NodeGpus {
    /// Open the guard over `gpus` and restore every limit a previous run left
    /// recorded in `state_dir`.
    pub fn open(
        gpus: crate::telemetry::Gpus,
        policy: GpuPolicy,
        curves: Curves,
        state_dir: &Path,
        proc_root: &Path,
        batch_root: &Path,
    ) -> Result<NodeGpus, String> {
        let guard = match gpus.source() {
            Some(src) => {
                let mut g = GpuGuard::new(policy, src.clone(), Limits::load(state_dir)?);
                let n = g.restore_all();
                if n > 0 {
                    tracing::warn!(restored = n, "GPU power limits left by a previous agent run were restored");
                }
                Some(std::sync::Mutex::new(g))
            }
            None => {
                tracing::info!(reason = %gpus.absent_reason, "no GPUs");
                None
            }
        };
        let inventory = gpus.devices().unwrap_or_default();
        Ok(NodeGpus {
            gpus,
            guard,
            curves,
            proc_root: proc_root.to_owned(),
            batch_root: batch_root.to_owned(),
            inventory,
        })
    }

    fn guard(&self) -> Option<std::sync::MutexGuard<'_, GpuGuard>> {
        self.guard.as_ref().map(|g| g.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn is_batch(&self) -> impl Fn(u32) -> bool + '_ {
        |pid| in_batch(&self.proc_root, &self.batch_root, pid)
    }

    /// GPUs for attempt `attempt`, none of `taken`; its power limit set (and recorded).
    pub fn grant(
        &self,
        attempt: &str,
        ask: &GpuAsk,
        power: PowerAsk,
        taken: &BTreeSet<u32>,
    ) -> Result<Grant, GrantError> {
        let fixed = |message: String| GrantError { message, retryable: false };
        let Some(mut guard) = self.guard() else {
            return if ask.count == 0 {
                Ok(Grant::default())
            } else {
                Err(fixed(format!("asks for {} GPU(s): {}", ask.count, self.gpus.absent_reason)))
            };
        };
        let devices = self
            .gpus
            .devices()
            .ok_or_else(|| GrantError { message: "cannot list the node's GPUs".into(), retryable: true })?;
        let is_batch = self.is_batch();
        let chosen = if ask.count == 0 {
            Vec::new()
        } else {
            choose(&devices, ask, taken, &is_batch).map_err(|message| {
                // Busy GPUs free up; a model, memory or count the node lacks does not.
                let fits = devices
                    .iter()
                    .filter(|d| {
                        (ask.model.is_empty() || d.model.contains(&ask.model))
                            && d.memory_total_bytes >= ask.memory_bytes
                    })
                    .count();
                GrantError { message, retryable: fits >= ask.count as usize }
            })?
        };
        let limit_w = match power {
            PowerAsk::Default => None,
            PowerAsk::Limit(w) => Some(w),
            PowerAsk::Auto { slack } => {
                let model = chosen.first().map_or("", |d| d.model.as_str());
                let curve = self.curves.for_model(model).ok_or_else(|| {
                    fixed(format!("gpu_power_auto: no curve for GPU model {model:?} in --gpu-curves"))
                })?;
                let mut w = f64::INFINITY;
                for d in &chosen {
                    w = w.min(auto_limit(curve, d, slack).map_err(fixed)?);
                }
                w.is_finite().then_some(w)
            }
        };
        if let Some(w) = limit_w {
            guard.set_job_limit(attempt, &chosen, w).map_err(|e| fixed(format!("gpu_power_limit_w = {w}: {e}")))?;
        }
        let uuids: Vec<&str> = chosen.iter().map(|d| d.uuid.as_str()).collect();
        let visible = if uuids.is_empty() { "none".to_owned() } else { uuids.join(",") };
        Ok(Grant {
            indices: chosen.iter().map(|d| d.index).collect(),
            env: vec![("CUDA_VISIBLE_DEVICES".into(), uuids.join(",")), ("NVIDIA_VISIBLE_DEVICES".into(), visible)],
            deny: devices
                .iter()
                .filter(|d| !chosen.iter().any(|c| c.index == d.index))
                .map(|d| format!("c 195:{} rwm", d.minor))
                .collect(),
            limit_w,
        })
    }

    /// One guard tick over this sample's GPUs; returns the jobs to evict.
    pub fn step(&self, devices: &[GpuDevice], jobs: &[GpuJob]) -> Vec<(String, String)> {
        let is_batch = self.is_batch();
        self.guard().map(|mut g| g.step(devices, jobs, &is_batch)).unwrap_or_default()
    }

    /// A job ended: its own power limits go back.
    pub fn job_ended(&self, attempt: &str) {
        if let Some(mut g) = self.guard() {
            g.job_ended(attempt);
        }
    }

    /// Caps, restores and evictions so far.
    pub fn counts(&self) -> GuardCounts {
        self.guard().map(|g| g.counts).unwrap_or_default()
    }
}
