//! Running batch jobs in their own cgroups with CPU and memory limits.
//!
//! Each job gets `<batch root>/<job id>` with a CFS quota of `cpu_cores` (low
//! shares, so online work wins any contention below the quota) and a hard memory
//! limit. The process runs as the spec's uid/gid (default `nobody`, never root
//! unless asked), with no shell unless the spec asks, and its stdout and stderr
//! go to size-capped files. cgroups-rs creates the cgroups and writes the limits;
//! statistics are read with this crate's own readers (REFERENCE §4).

use crate::telemetry::{CgroupLayout, cgroup_stats, detect};
use cgroups_rs::CgroupPid;
use cgroups_rs::fs::cgroup_builder::CgroupBuilder;
use cgroups_rs::fs::{Cgroup, hierarchies};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// The uid/gid jobs run as when the spec names none.
pub const NOBODY: u32 = 65_534;
const PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub id: String,
    /// argv; `argv[0]` is found on PATH.
    pub argv: Vec<String>,
    /// Run `argv` joined by spaces through `/bin/sh -c`.
    pub shell: bool,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub cpu_cores: f64,
    pub memory_bytes: u64,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// stdout and stderr go to `<log_dir>/<id>.{out,err}`, at most `log_cap_bytes` each.
    pub log_dir: PathBuf,
    pub log_cap_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("job `{id}`: {field} = {value}: {why}")]
    Spec { id: String, field: &'static str, value: String, why: &'static str },
    #[error("job `{id}`: cgroup {path}: {message}")]
    Cgroup { id: String, path: String, message: String },
    #[error("job `{id}`: cannot start `{program}`: {source}")]
    Spawn {
        id: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("job `{id}`: log file {path}: {source}")]
    Log {
        id: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the job's cgroup.
    pub oom_killed: bool,
    pub cpu_seconds: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    pub wall_seconds: f64,
}

/// A started job.
#[derive(Debug)]
pub struct Running {
    pub id: String,
    pub pid: u32,
    /// Path of the job's cgroup relative to the hierarchy root.
    pub cgroup_path: PathBuf,
    child: Child,
    cgroup: Cgroup,
    started: Instant,
    loggers: Vec<std::thread::JoinHandle<()>>,
}

/// Starts and watches jobs under one batch root (e.g. `greenfill/batch`).
#[derive(Debug)]
pub struct Runner {
    root: PathBuf,
    cgroup_root: PathBuf,
    layout: CgroupLayout,
}

fn copy_capped(mut from: impl Read, mut to: std::fs::File, cap: u64) {
    let mut buf = [0u8; 8192];
    let mut written = 0u64;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if written < cap {
            let take = usize::try_from((cap - written).min(n as u64)).unwrap_or(n);
            if to.write_all(&buf[..take]).is_err() {
                break;
            }
            written += take as u64;
        }
        // Past the cap the rest is read and dropped, so the job never blocks on a
        // full pipe.
    }
}

impl Runner {
    /// Jobs go under `root` (relative to each hierarchy); `cgroup_root` is where
    /// the cgroup tree is mounted (normally `/sys/fs/cgroup`), for reading stats.
    pub fn new(root: impl Into<PathBuf>, cgroup_root: &Path) -> Runner {
        Runner { root: root.into(), cgroup_root: cgroup_root.to_owned(), layout: detect(cgroup_root) }
    }

    pub fn start(&self, spec: &JobSpec) -> Result<Running, RunError> {
        let bad = |field, value: String, why| RunError::Spec { id: spec.id.clone(), field, value, why };
        if spec.id.is_empty()
            || !spec.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || spec.id.starts_with('.')
        {
            return Err(bad(
                "id",
                format!("{:?}", spec.id),
                "letters, digits, '-', '_' and '.' only (it names a cgroup)",
            ));
        }
        if spec.argv.is_empty() {
            return Err(bad("argv", "[]".into(), "needs a program"));
        }
        if !(spec.cpu_cores.is_finite() && spec.cpu_cores > 0.0) {
            return Err(bad("cpu_cores", spec.cpu_cores.to_string(), "must be > 0"));
        }
        if spec.memory_bytes == 0 {
            return Err(bad("memory_bytes", "0".into(), "must be > 0"));
        }
        let rel = self.root.join(&spec.id);
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss, reason = "quota is a few seconds of µs")]
        let quota = ((spec.cpu_cores * PERIOD_US as f64).round() as i64).max(1000);
        let cg_err =
            |message: String| RunError::Cgroup { id: spec.id.clone(), path: rel.display().to_string(), message };
        let cgroup = CgroupBuilder::new(&rel.to_string_lossy())
            .set_specified_controllers(vec!["cpu".into(), "cpuacct".into(), "memory".into()])
            .cpu()
            .shares(2)
            .period(PERIOD_US)
            .quota(quota)
            .done()
            .memory()
            .memory_hard_limit(i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX))
            .done()
            .build(hierarchies::auto())
            .map_err(|e| cg_err(e.to_string()))?;
        std::fs::create_dir_all(&spec.log_dir).map_err(|source| RunError::Log {
            id: spec.id.clone(),
            path: spec.log_dir.display().to_string(),
            source,
        })?;
        let mut cmd = if spec.shell {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(spec.argv.join(" "));
            c
        } else {
            let mut c = Command::new(&spec.argv[0]);
            c.args(&spec.argv[1..]);
            c
        };
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(spec.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .uid(spec.uid.unwrap_or(NOBODY))
            .gid(spec.gid.unwrap_or(NOBODY));
        if let Some(d) = &spec.cwd {
            cmd.current_dir(d);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                let _ = cgroup.delete();
                return Err(RunError::Spawn { id: spec.id.clone(), program: spec.argv[0].clone(), source });
            }
        };
        if let Err(e) = cgroup.add_task_by_tgid(CgroupPid::from(u64::from(child.id()))) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = cgroup.delete();
            return Err(cg_err(format!("adding pid {}: {e}", child.id())));
        }
        let mut loggers = Vec::new();
        for (ext, stream) in [
            ("out", child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
            ("err", child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
        ] {
            let path = spec.log_dir.join(format!("{}.{ext}", spec.id));
            let file = std::fs::File::create(&path).map_err(|source| RunError::Log {
                id: spec.id.clone(),
                path: path.display().to_string(),
                source,
            })?;
            if let Some(s) = stream {
                let cap = spec.log_cap_bytes;
                loggers.push(std::thread::spawn(move || copy_capped(s, file, cap)));
            }
        }
        Ok(Running {
            id: spec.id.clone(),
            pid: child.id(),
            cgroup_path: rel,
            child,
            cgroup,
            started: Instant::now(),
            loggers,
        })
    }

    /// CPU time of the job's cgroup so far, seconds.
    pub fn cpu_seconds(&self, r: &Running) -> Option<f64> {
        #[allow(clippy::cast_precision_loss, reason = "ns of CPU time fit an f64 well enough")]
        cgroup_stats(&self.layout, &r.cgroup_path).cpu_usage_ns.map(|ns| ns as f64 / 1e9)
    }

    /// Wait for the job to end, then report and remove its cgroup.
    pub fn wait(&self, mut r: Running) -> Exit {
        let status = r.child.wait().ok();
        for l in r.loggers.drain(..) {
            let _ = l.join();
        }
        let exit = self.exit(&r, status);
        let _ = r.cgroup.delete();
        exit
    }

    /// Kill the job (SIGKILL) and everything in its cgroup, then report.
    pub fn kill(&self, mut r: Running) -> Exit {
        let _ = r.cgroup.kill();
        let _ = r.child.kill();
        self.wait_after_kill(&mut r)
    }

    fn wait_after_kill(&self, r: &mut Running) -> Exit {
        let status = r.child.wait().ok();
        for l in r.loggers.drain(..) {
            let _ = l.join();
        }
        let exit = self.exit(r, status);
        let _ = r.cgroup.delete();
        exit
    }

    fn exit(&self, r: &Running, status: Option<std::process::ExitStatus>) -> Exit {
        let stats = cgroup_stats(&self.layout, &r.cgroup_path);
        let mem_dir = match (&self.layout.v1_memory, &self.layout.v2) {
            (Some(m), _) if !self.layout.v2_controllers.iter().any(|c| c == "memory") => {
                Some((m.join(&r.cgroup_path), "memory.oom_control", "memory.max_usage_in_bytes"))
            }
            (_, Some(v2)) => Some((v2.join(&r.cgroup_path), "memory.events", "memory.peak")),
            _ => None,
        };
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let oom_killed = mem_dir
            .as_ref()
            .and_then(|(d, events, _)| read(d.join(events)))
            .and_then(|t| crate::telemetry::keyed_value(&t, "oom_kill"))
            .is_some_and(|n| n > 0);
        let peak_memory_bytes =
            mem_dir.as_ref().and_then(|(d, _, peak)| read(d.join(peak))).and_then(|t| t.trim().parse().ok());
        #[allow(clippy::cast_precision_loss, reason = "ns of CPU time fit an f64 well enough")]
        Exit {
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            oom_killed,
            cpu_seconds: stats.cpu_usage_ns.map(|ns| ns as f64 / 1e9),
            peak_memory_bytes,
            wall_seconds: r.started.elapsed().as_secs_f64(),
        }
    }

    /// Send `sig` to every process in the job cgroup `rel` (relative to each
    /// hierarchy); returns how many were signalled. Works for jobs this process
    /// did not start (a previous agent run's).
    pub fn signal_cgroup(&self, rel: &Path, sig: nix::sys::signal::Signal) -> usize {
        let mut pids: Vec<i32> = Vec::new();
        let bases = [&self.layout.v1_cpu, &self.layout.v1_cpuacct, &self.layout.v1_memory, &self.layout.v2];
        for base in bases.into_iter().flatten() {
            if let Ok(t) = std::fs::read_to_string(base.join(rel).join("cgroup.procs")) {
                pids.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids.iter().filter(|p| **p > 1 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(**p), sig).is_ok()).count()
    }

    /// SIGKILL everything in the job cgroup `rel`, wait briefly for it to empty,
    /// and remove it. Returns how many processes were killed.
    pub fn kill_cgroup(&self, rel: &Path) -> usize {
        let n = self.signal_cgroup(rel, nix::sys::signal::Signal::SIGKILL);
        let bases = [&self.layout.v1_cpu, &self.layout.v1_cpuacct, &self.layout.v1_memory, &self.layout.v2];
        for _ in 0..50 {
            if self.signal_cgroup(rel, nix::sys::signal::Signal::SIGKILL) == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for base in bases.into_iter().flatten() {
            let _ = std::fs::remove_dir(base.join(rel));
        }
        n
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Remove the batch root's own cgroups (and empty parents up to the hierarchy
    /// root) in every hierarchy; cgroups still holding jobs are left alone.
    pub fn remove_root(&self) {
        let bases = [&self.layout.v1_cpu, &self.layout.v1_cpuacct, &self.layout.v1_memory, &self.layout.v2];
        for base in bases.into_iter().flatten() {
            let mut dir = self.root.clone();
            loop {
                if std::fs::remove_dir(base.join(&dir)).is_err() {
                    break;
                }
                match dir.parent() {
                    Some(p) if !p.as_os_str().is_empty() => dir = p.to_owned(),
                    _ => break,
                }
            }
        }
    }
}
