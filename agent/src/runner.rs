//! Running batch jobs in their own cgroups with CPU and memory limits.
//!
//! Each job gets `<batch root>/<job id>` with a CFS quota of `cpu_cores` (low
//! shares, so online work wins any contention below the quota) and a hard memory
//! limit. The process runs as the spec's uid/gid (default `nobody`, never root
//! unless asked), with no shell unless the spec asks, and its stdout and stderr
//! go to size-capped files. Every cgroup access goes through [`Cgroups`] (the
//! host's hierarchies under the injected roots, or an in-memory fake in tests).

use crate::cgroups::{CgroupError, Cgroups, JobLimits};
use crate::containerd::{Containerd, ImageError, ImageRef, Launch};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

/// The uid/gid jobs run as when the spec names none.
pub const NOBODY: u32 = 65_534;
/// A job's PATH unless its spec sets one.
const JOB_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Run in this image through containerd; `None`: a process on the host.
    #[serde(default)]
    pub image: Option<ImageRef>,
    /// Device cgroup rules denied to the job (the node's GPUs that are not its).
    #[serde(default)]
    pub deny_devices: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("job `{id}`: {field} = {value}: {why}")]
    Spec { id: String, field: &'static str, value: String, why: &'static str },
    #[error("job `{id}`: cgroup {path}: {message}")]
    Cgroup { id: String, path: String, message: String },
    #[error("job `{id}`: {error}")]
    CgroupIo { id: String, error: CgroupError },
    #[error("job `{id}`: cannot start `{program}`: {source}")]
    Spawn {
        id: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("job `{id}`: {source}")]
    Image {
        id: String,
        #[source]
        source: ImageError,
    },
    #[error("job `{id}`: log file {path}: {source}")]
    Log {
        id: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// Whether starting again later may succeed (an image's registry or
    /// containerd that is down); the rest are in the spec or on this node.
    pub fn transient(&self) -> bool {
        matches!(self, RunError::Image { source, .. } if source.transient())
    }
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

impl Exit {
    /// How `r` ended: its code or signal, and its cgroup's accounting.
    fn of(r: &Running, code: Option<i32>, signal: Option<i32>, usage: &crate::cgroups::JobUsage) -> Exit {
        Exit {
            code,
            signal,
            oom_killed: usage.oom_killed,
            cpu_seconds: usage.cpu_seconds,
            peak_memory_bytes: usage.peak_memory_bytes,
            wall_seconds: r.started.elapsed().as_secs_f64(),
        }
    }
}

/// A started job.
#[derive(Debug)]
pub struct Running {
    pub id: String,
    pub pid: u32,
    /// Path of the job's cgroup relative to the hierarchy root.
    pub cgroup_path: PathBuf,
    /// Set when this process started it (and must reap it); `None` when adopted.
    child: Option<Child>,
    /// With a shim: where it writes the job's exit status.
    status_file: Option<PathBuf>,
    started: Instant,
    loggers: Vec<std::thread::JoinHandle<()>>,
    /// An image job: its container (named by the job id) in containerd.
    container: bool,
    /// How long the node took to pull the job's image, when it had to.
    pub pulled: Option<std::time::Duration>,
}

impl Running {
    /// The process the runner spares when it kills a job's processes, so it
    /// can record how the job ended: the shim of a process job; none for an
    /// image job (containerd's shim is outside the job's cgroup).
    pub fn shim(&self) -> Option<u32> {
        (!self.container).then_some(self.pid)
    }

    pub fn is_image(&self) -> bool {
        self.container
    }
}

/// Image jobs' containerd client, on a runtime of its own: the runner is called
/// from blocking threads and from async code alike, and blocks on it either way.
#[derive(Debug)]
pub struct Images {
    ctd: Containerd,
    rt: Option<tokio::runtime::Runtime>,
}

impl Images {
    pub fn new(
        socket: PathBuf,
        logger: PathBuf,
        credentials: Option<PathBuf>,
        insecure: Vec<String>,
        batch_root: &Path,
    ) -> Result<Images, ImageError> {
        let down =
            |e: std::io::Error| ImageError::Containerd { socket: socket.display().to_string(), message: e.to_string() };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("containerd")
            .enable_all()
            .build()
            .map_err(down)?;
        let ctd = {
            let _in = rt.enter();
            Containerd::new(socket, logger, credentials, insecure, batch_root)?
        };
        Ok(Images { ctd, rt: Some(rt) })
    }

    /// Run `f` on the client's runtime and wait for it.
    fn call<T, F>(&self, f: impl FnOnce(Containerd) -> F) -> Option<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let fut = f(self.ctd.clone());
        self.rt.as_ref()?.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }

    fn stopped(&self) -> ImageError {
        ImageError::Containerd { socket: String::new(), message: "the agent's containerd client stopped".into() }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts and watches jobs under one batch root (e.g. `greenfill/batch`).
#[derive(Debug)]
pub struct Runner {
    root: PathBuf,
    cgroups: Arc<dyn Cgroups>,
    /// Start jobs through `<shim> shim` so they outlive this process (see [`shim_main`]).
    shim: Option<PathBuf>,
    /// Run image jobs through this containerd.
    images: Option<Images>,
}

/// What the shim's exit status file holds.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct ShimStatus {
    code: Option<i32>,
    signal: Option<i32>,
}

const SHIM_SPEC_ENV: &str = "GREENFILL_SHIM_SPEC";

fn status_path(spec: &JobSpec) -> PathBuf {
    spec.log_dir.join(format!("{}.status.json", spec.id))
}

fn job_command(spec: &JobSpec) -> Command {
    let mut cmd = if spec.shell {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(spec.argv.join(" "));
        c
    } else {
        let mut c = Command::new(&spec.argv[0]);
        c.args(&spec.argv[1..]);
        c
    };
    as_the_job(&mut cmd, spec, Stdio::null());
    cmd
}

/// What every process of a job starts with: only its own environment (and a
/// PATH), its uid and gid (never root by default), its working directory, and
/// piped stdout and stderr.
fn as_the_job(cmd: &mut Command, spec: &JobSpec, stdin: Stdio) {
    cmd.env_clear()
        .env("PATH", JOB_PATH)
        .envs(spec.env.iter().cloned())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .uid(spec.uid.unwrap_or(NOBODY))
        .gid(spec.gid.unwrap_or(NOBODY));
    if let Some(d) = &spec.cwd {
        cmd.current_dir(d);
    }
}

/// The job behind a gate, for runs without the shim: a shell waits for a line on
/// its stdin, sent once it is in the job's cgroup, then becomes the job (`exec`).
/// Without it a job that forks at once could leave children outside its cgroup,
/// beyond its limits and the guard (the qos benchmark found two spinners so).
/// A program that cannot be found is refused here, before anything starts.
fn gated_command(spec: &JobSpec) -> std::io::Result<Command> {
    let mut argv: Vec<String> =
        if spec.shell { vec!["/bin/sh".into(), "-c".into(), spec.argv.join(" ")] } else { spec.argv.clone() };
    let path = spec.env.iter().rev().find(|(k, _)| k == "PATH").map_or(JOB_PATH, |(_, v)| v.as_str());
    argv[0] = resolve(&argv[0], path)?.display().to_string();
    let mut gated = Command::new("/bin/sh");
    gated.arg("-c").arg("read -r _ && exec \"$@\"").arg("greenfill-gate").args(&argv);
    as_the_job(&mut gated, spec, Stdio::piped());
    Ok(gated)
}

/// `program` as an executable file, found on `path` when it names no directory.
fn resolve(program: &str, path: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if runnable(&p) { Ok(p) } else { Err(std::io::Error::from(std::io::ErrorKind::NotFound)) };
    }
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| runnable(p))
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
}

fn spawn_loggers(spec: &JobSpec, child: &mut Child) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut loggers = Vec::new();
    for (ext, stream) in [
        ("out", child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
        ("err", child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
    ] {
        let file = std::fs::File::create(spec.log_dir.join(format!("{}.{ext}", spec.id)))?;
        if let Some(s) = stream {
            let cap = spec.log_cap_bytes;
            loggers.push(std::thread::spawn(move || copy_capped(s, file, cap)));
        }
    }
    Ok(loggers)
}

/// The shim (`greenfill-agent shim`): the job's parent, in the job's cgroup. It
/// waits for the agent's go (a byte on stdin, sent once the shim is in the
/// cgroup), runs the job with capped logs, and writes the exit status to a file
/// atomically. The agent may die and restart meanwhile: the job runs on, and the
/// new agent re-adopts it from its cgroup, shim pid and status file. Returns the
/// shim's exit code.
pub fn shim_main() -> i32 {
    let Some(spec) = std::env::var(SHIM_SPEC_ENV).ok().and_then(|s| serde_json::from_str::<JobSpec>(&s).ok()) else {
        eprintln!("shim: no job spec in {SHIM_SPEC_ENV}");
        return 2;
    };
    let mut go = [0u8; 1];
    if std::io::stdin().read_exact(&mut go).is_err() {
        eprintln!("shim: the agent went away before the job started");
        return 3;
    }
    let (code, signal) = match job_command(&spec).spawn() {
        Ok(mut child) => {
            let loggers = spawn_loggers(&spec, &mut child).unwrap_or_default();
            let status = child.wait().ok();
            for l in loggers {
                let _ = l.join();
            }
            (status.and_then(|s| s.code()), status.and_then(|s| s.signal()))
        }
        Err(e) => {
            let _ = std::fs::write(
                spec.log_dir.join(format!("{}.err", spec.id)),
                format!("cannot start {:?}: {e}\n", spec.argv[0]),
            );
            (Some(127), None)
        }
    };
    let path = status_path(&spec);
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(&ShimStatus { code, signal }).unwrap_or_default();
    let ok = std::fs::write(&tmp, body)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if ok.is_err() { 4 } else { 0 }
}

pub(crate) fn copy_capped(mut from: impl Read, mut to: std::fs::File, cap: u64) {
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
    /// Jobs go under `root` (relative to each hierarchy) of `cgroups`.
    pub fn new(root: impl Into<PathBuf>, cgroups: Arc<dyn Cgroups>) -> Runner {
        Runner { root: root.into(), cgroups, shim: None, images: None }
    }

    /// Run image jobs through containerd.
    #[must_use]
    pub fn with_images(mut self, images: Images) -> Runner {
        self.images = Some(images);
        self
    }

    /// Start jobs through `exe shim` (normally the agent's own binary), so they
    /// survive an agent restart and can be re-adopted.
    #[must_use]
    pub fn with_shim(mut self, exe: PathBuf) -> Runner {
        self.shim = Some(exe);
        self
    }

    /// What every job must be before anything is made for it.
    fn check(spec: &JobSpec) -> Result<(), RunError> {
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
        if spec.argv.is_empty() && spec.image.is_none() {
            return Err(bad("argv", "[]".into(), "needs a program"));
        }
        if !(spec.cpu_cores.is_finite() && spec.cpu_cores > 0.0) {
            return Err(bad("cpu_cores", spec.cpu_cores.to_string(), "must be > 0"));
        }
        if spec.memory_bytes == 0 {
            return Err(bad("memory_bytes", "0".into(), "must be > 0"));
        }
        Ok(())
    }

    /// The job's cgroup `rel` with its limits, and its log directory.
    fn make_cgroup(&self, spec: &JobSpec, rel: &Path) -> Result<(), RunError> {
        // Under cgroup v1 a child's quota may not exceed its parent's: while the
        // guard holds the batch root below this job's limit, the job starts at the
        // root's quota, and the guard gives it its own back when the cap rises.
        let root_quota = self.cgroups.quota_bounded_by_children().then(|| self.cgroups.cpu_quota(&self.root)).flatten();
        let cpu_cores = root_quota.map_or(spec.cpu_cores, |q| spec.cpu_cores.min(q));
        let limits = JobLimits { cpu_cores, memory_bytes: spec.memory_bytes, deny_devices: spec.deny_devices.clone() };
        if let Err(error) = self.cgroups.create_job(rel, &limits) {
            let _ = self.cgroups.remove(rel);
            return Err(RunError::CgroupIo { id: spec.id.clone(), error });
        }
        std::fs::create_dir_all(&spec.log_dir).map_err(|source| {
            let _ = self.cgroups.remove(rel);
            RunError::Log { id: spec.id.clone(), path: spec.log_dir.display().to_string(), source }
        })
    }

    pub fn start(&self, spec: &JobSpec) -> Result<Running, RunError> {
        Self::check(spec)?;
        let rel = self.root.join(&spec.id);
        if let Some(image) = &spec.image {
            return self.start_image(spec, image, rel);
        }
        let cg_err =
            |message: String| RunError::Cgroup { id: spec.id.clone(), path: rel.display().to_string(), message };
        let io_err = |error| RunError::CgroupIo { id: spec.id.clone(), error };
        // The command first: a program that cannot be found leaves nothing behind.
        let mut cmd = match &self.shim {
            Some(exe) => {
                let _ = std::fs::remove_file(status_path(spec));
                let mut c = Command::new(exe);
                c.arg("shim")
                    .env_clear()
                    .env(SHIM_SPEC_ENV, serde_json::to_string(spec).unwrap_or_default())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    // Its own process group: a terminal's Ctrl-C to the agent does not reach it.
                    .process_group(0);
                c
            }
            None => gated_command(spec).map_err(|source| RunError::Spawn {
                id: spec.id.clone(),
                program: spec.argv[0].clone(),
                source,
            })?,
        };
        self.make_cgroup(spec, &rel)?;
        let log_err = |source| RunError::Log { id: spec.id.clone(), path: spec.log_dir.display().to_string(), source };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                let _ = self.cgroups.remove(&rel);
                let program = self.shim.as_ref().map_or_else(|| spec.argv[0].clone(), |e| e.display().to_string());
                return Err(RunError::Spawn { id: spec.id.clone(), program, source });
            }
        };
        if let Err(e) = self.cgroups.add_process(&rel, child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = self.cgroups.remove(&rel);
            return Err(io_err(e));
        }
        // In the cgroup now: let the shim (or the gate) start the job. Its stdin
        // closes after the go, so the job reads an empty stdin.
        let go = child.stdin.take().map(|mut i| i.write_all(b"g\n"));
        if !matches!(go, Some(Ok(()))) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = self.cgroups.remove(&rel);
            return Err(cg_err("the job's gate did not take the go signal".into()));
        }
        let loggers =
            if self.shim.is_some() { Vec::new() } else { spawn_loggers(spec, &mut child).map_err(log_err)? };
        Ok(Running {
            id: spec.id.clone(),
            pid: child.id(),
            cgroup_path: rel,
            child: Some(child),
            status_file: self.shim.as_ref().map(|_| status_path(spec)),
            started: Instant::now(),
            loggers,
            container: false,
            pulled: None,
        })
    }

    /// An image job: its cgroup as a process job's, then the container in it
    /// (pulled first as its policy says). A failure leaves nothing behind.
    fn start_image(&self, spec: &JobSpec, image: &ImageRef, rel: PathBuf) -> Result<Running, RunError> {
        let image_err = |source| RunError::Image { id: spec.id.clone(), source };
        let images = self.images.as_ref().ok_or_else(|| {
            image_err(ImageError::Image {
                image: image.reference.clone(),
                message: "this agent runs no image jobs (start it with --containerd-socket)".into(),
            })
        })?;
        self.make_cgroup(spec, &rel)?;
        let launch = Launch {
            id: spec.id.clone(),
            image: image.clone(),
            argv: spec.argv.clone(),
            shell: spec.shell,
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            uid: spec.uid.unwrap_or(NOBODY),
            gid: spec.gid.unwrap_or(NOBODY),
            cgroup: rel.clone(),
            log_dir: spec.log_dir.clone(),
            log_cap_bytes: spec.log_cap_bytes,
        };
        let started =
            images.call(|ctd| async move { ctd.start(&launch).await }).unwrap_or_else(|| Err(images.stopped()));
        match started {
            Ok(s) => Ok(Running {
                id: spec.id.clone(),
                pid: s.pid,
                cgroup_path: rel,
                child: None,
                status_file: None,
                started: Instant::now(),
                loggers: Vec::new(),
                container: true,
                pulled: s.pulled,
            }),
            Err(e) => {
                let _ = self.cgroups.remove(&rel);
                // Every reason names the image, a containerd that is down too.
                let e = match e {
                    ImageError::Containerd { socket, message } => ImageError::Unreachable {
                        image: image.reference.clone(),
                        message: format!("containerd at {socket}: {message}"),
                    },
                    e => e,
                };
                Err(image_err(e))
            }
        }
    }

    /// An image job of an earlier run of the agent, found in containerd by its
    /// label: re-adopted if it has a task (running, or exited with a status to
    /// collect); a container without one is removed (nothing to adopt).
    pub fn adopt_container(&self, id: &str) -> Option<Running> {
        let images = self.images.as_ref()?;
        let found = images.call(|ctd| async move { ctd.jobs().await }).and_then(Result::ok)?;
        let job = found.into_iter().find(|f| f.attempt == id)?;
        let Some(pid) = job.pid else {
            let id = id.to_owned();
            images.call(|ctd| async move { ctd.remove(&id).await });
            return None;
        };
        Some(Running {
            id: id.to_owned(),
            pid,
            cgroup_path: self.root.join(id),
            child: None,
            status_file: None,
            started: Instant::now(),
            loggers: Vec::new(),
            container: true,
            pulled: None,
        })
    }

    /// The images this node holds for image jobs (empty without containerd).
    pub fn images_present(&self) -> Vec<String> {
        let Some(images) = self.images.as_ref() else { return Vec::new() };
        images.call(|ctd| async move { ctd.images().await }).and_then(Result::ok).unwrap_or_default()
    }

    /// Image job containers of this batch root that are not in `known`
    /// (attempt ids): removed with their tasks and snapshots. Returns their ids.
    pub fn sweep_containers(&self, known: &[String]) -> Vec<String> {
        let Some(images) = self.images.as_ref() else { return Vec::new() };
        let found = images.call(|ctd| async move { ctd.jobs().await }).and_then(Result::ok).unwrap_or_default();
        let stray: Vec<String> = found.into_iter().map(|f| f.attempt).filter(|a| !known.contains(a)).collect();
        for id in &stray {
            let id = id.clone();
            images.call(|ctd| async move { ctd.remove(&id).await });
        }
        stray
    }

    /// A job started by an earlier run of the agent, through the shim: its id,
    /// the shim's pid, and its log directory. `None` if it is gone without a
    /// status (nothing to adopt).
    pub fn adopt(&self, id: &str, pid: u32, log_dir: &Path) -> Option<Running> {
        let rel = self.root.join(id);
        let status_file = log_dir.join(format!("{id}.status.json"));
        let alive = self.cgroups.contains(&rel, pid);
        if !alive && !status_file.exists() {
            return None;
        }
        Some(Running {
            id: id.to_owned(),
            pid,
            cgroup_path: rel,
            child: None,
            status_file: Some(status_file),
            started: Instant::now(),
            loggers: Vec::new(),
            container: false,
            pulled: None,
        })
    }

    /// CPU time of the job's cgroup so far, seconds.
    pub fn cpu_seconds(&self, r: &Running) -> Option<f64> {
        self.cgroups.usage(&r.cgroup_path).cpu_seconds
    }

    /// Wait for the job to end, then report and remove its cgroup.
    pub fn wait(&self, mut r: Running) -> Exit {
        if r.container {
            return self.wait_image(&r);
        }
        let status = match r.child.as_mut() {
            Some(c) => c.wait().ok(),
            None => {
                // Adopted: not our child; the shim is gone once its pid leaves the cgroup.
                while self.cgroups.contains(&r.cgroup_path, r.pid) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                None
            }
        };
        for l in r.loggers.drain(..) {
            let _ = l.join();
        }
        let exit = self.exit(&r, status);
        // An adopted job's shim leaves the cgroup's list a moment after it is
        // seen gone (a zombie not yet reaped by its new parent): retry briefly.
        let mut removed = self.cgroups.remove(&r.cgroup_path);
        for _ in 0..20 {
            if removed.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            removed = self.cgroups.remove(&r.cgroup_path);
        }
        if let Err(e) = removed {
            tracing::warn!(job = %r.id, error = %e, "cannot remove the job's cgroup");
        }
        if let Some(f) = &r.status_file {
            let _ = std::fs::remove_file(f);
        }
        exit
    }

    /// An image job's end: containerd's exit status (128 + n for signal n, as
    /// containerd reports it), the cgroup's accounting read before runc removes
    /// the cgroup with the task, then the task, container and snapshot deleted.
    fn wait_image(&self, r: &Running) -> Exit {
        let id = r.id.clone();
        let status = self.images.as_ref().and_then(|i| i.call(|ctd| async move { ctd.wait(&id).await }));
        let status = match status {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                tracing::warn!(job = %r.id, error = %e, "cannot collect the image job's exit status");
                None
            }
            None => None,
        };
        let usage = self.cgroups.usage(&r.cgroup_path);
        if let Some(images) = &self.images {
            let id = r.id.clone();
            images.call(|ctd| async move { ctd.remove(&id).await });
        }
        let _ = self.cgroups.remove(&r.cgroup_path);
        let (code, signal) = match status {
            Some(s @ 129..=159) => (None, i32::try_from(s - 128).ok()),
            Some(s) => (i32::try_from(s).ok(), None),
            None => (None, None),
        };
        Exit::of(r, code, signal, &usage)
    }

    /// Kill the job (SIGKILL) and everything in its cgroup, then report.
    pub fn kill(&self, mut r: Running) -> Exit {
        self.signal_cgroup(&r.cgroup_path, nix::sys::signal::Signal::SIGKILL);
        if let Some(c) = r.child.as_mut() {
            let _ = c.kill();
        }
        self.wait(r)
    }

    fn exit(&self, r: &Running, status: Option<std::process::ExitStatus>) -> Exit {
        // Through the shim, the job's own status is in its file (the shim's exit
        // code only says whether it wrote it).
        let (code, signal) = match &r.status_file {
            Some(f) => std::fs::read(f)
                .ok()
                .and_then(|b| serde_json::from_slice::<ShimStatus>(&b).ok())
                .map_or((None, status.and_then(|s| s.signal())), |s| (s.code, s.signal)),
            None => (status.and_then(|s| s.code()), status.and_then(|s| s.signal())),
        };
        Exit::of(r, code, signal, &self.cgroups.usage(&r.cgroup_path))
    }

    /// Send `sig` to every process in the job cgroup `rel` (relative to each
    /// hierarchy); returns how many were signalled. Works for jobs this process
    /// did not start (a previous agent run's).
    pub fn signal_cgroup(&self, rel: &Path, sig: nix::sys::signal::Signal) -> usize {
        self.signal_cgroup_except(rel, sig, None)
    }

    /// [`Runner::signal_cgroup`], sparing `except` (the shim, so it can record
    /// how the job ended).
    pub fn signal_cgroup_except(&self, rel: &Path, sig: nix::sys::signal::Signal, except: Option<u32>) -> usize {
        self.cgroups
            .processes(rel)
            .into_iter()
            .filter(|p| *p > 1 && Some(*p) != except)
            .filter_map(|p| i32::try_from(p).ok())
            .filter(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig).is_ok())
            .count()
    }

    /// SIGKILL the job's processes but not its shim, so the shim records how the
    /// job ended and exits; if the shim is still there after 2 s, everything goes.
    /// An image job has no shim in its cgroup (`None`): all of it is killed, and
    /// containerd records the end.
    pub fn kill_job(&self, rel: &Path, shim: Option<u32>) -> usize {
        let n = self.signal_cgroup_except(rel, nix::sys::signal::Signal::SIGKILL, shim);
        for _ in 0..100 {
            let gone = match shim {
                Some(pid) => !self.cgroups.contains(rel, pid),
                None => self.cgroups.processes(rel).is_empty(),
            };
            if gone {
                return n;
            }
            self.signal_cgroup_except(rel, nix::sys::signal::Signal::SIGKILL, shim);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        n + self.kill_cgroup(rel)
    }

    /// SIGKILL everything in the job cgroup `rel`, wait briefly for it to empty,
    /// and remove it. Returns how many processes were killed.
    pub fn kill_cgroup(&self, rel: &Path) -> usize {
        let n = self.signal_cgroup(rel, nix::sys::signal::Signal::SIGKILL);
        for _ in 0..50 {
            if self.signal_cgroup(rel, nix::sys::signal::Signal::SIGKILL) == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Err(e) = self.cgroups.remove(rel) {
            tracing::warn!(error = %e, "cannot remove a job's cgroup");
        }
        n
    }

    /// Job cgroups under the batch root that are not in `known` (a state dir
    /// that was wiped or lost, a job started by another agent): their processes
    /// are killed and the cgroups removed, so nothing runs that no scheduler
    /// knows of. Returns each orphan and how many processes it held.
    pub fn sweep_orphans(&self, known: &[PathBuf]) -> Vec<(PathBuf, usize)> {
        self.cgroups
            .children(&self.root)
            .into_iter()
            .filter(|c| !known.contains(c))
            .map(|c| {
                let killed = self.kill_cgroup(&c);
                (c, killed)
            })
            .collect()
    }

    /// The batch root, relative to each hierarchy.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Put the whole batch subtree under the kernel's idle priority, on the
    /// batch root's top cgroup (the one that meets online services as a sibling):
    /// `greenfill` for `greenfill/batch`. Under a Kubernetes root (`kubepods…`)
    /// the top is online's own, so the batch root itself is marked, which ranks it
    /// below its siblings there only. Returns the cgroup and what was written.
    pub fn prioritise(&self) -> Result<(PathBuf, &'static str), CgroupError> {
        let top: PathBuf = match self.root.components().next() {
            Some(c) if !c.as_os_str().to_string_lossy().starts_with("kubepods") => PathBuf::from(c.as_os_str()),
            _ => self.root.clone(),
        };
        let what = self.cgroups.prioritise_idle(&top)?;
        Ok((top, what))
    }

    /// Remove the batch root's own cgroups and their empty parents up to the
    /// hierarchy roots; cgroups still holding jobs are left alone.
    pub fn remove_root(&self) {
        let mut dir = self.root.clone();
        while self.cgroups.remove(&dir).is_ok() {
            match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => dir = p.to_owned(),
                _ => break,
            }
        }
    }
}
