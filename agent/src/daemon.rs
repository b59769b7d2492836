//! `greenfill-agent run`: the node daemon. One session to the scheduler (see
//! `agent.proto` for the delivery rules), jobs started and stopped on its
//! commands, telemetry every interval, and the local guard.
//!
//! Durability: the agent keeps its sequence numbers, unacknowledged job events and
//! running jobs in `<state_dir>/state.json` (written atomically on every change).
//! A command is acknowledged only after it is applied and recorded; an event is
//! dropped only once the scheduler acknowledges it. Jobs run under a shim (the
//! agent's own binary, `greenfill-agent shim`) that is their parent and records
//! their exit status, so they outlive an agent restart: the next run re-adopts
//! each from its cgroup, shim pid and status file and reports its end as usual.
//! A job that vanished without a status while the agent was down is reported
//! `STOPPED` and requeued: never lost, never running twice at once.

use crate::cgroups::{Cgroups, HostCgroups};
use crate::containerd::{ImageRef, Pull};
use crate::gpu::NodeGpus;
use crate::guard::{Guard, GuardConfig, GuardJob};
use crate::runner::{self, Runner};
use crate::telemetry::{self, LinearPowerModel, Roots, Sampler};
use greenfill_proto::v1 as pb;
use greenfill_runtime::CancellationToken;
use pb::agent_service_client::AgentServiceClient;
use pb::scheduler_message::Body as Cmd;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Config {
    /// `http://host:port` (or `https://` with `ca_cert`); several, comma-separated,
    /// for replicated schedulers: the agent follows the leader among them.
    pub server: String,
    /// PEM CA certificate to trust for an `https://` scheduler.
    pub ca_cert: Option<PathBuf>,
    pub token: Option<String>,
    /// Read at every connection (a rotated Kubernetes token).
    pub token_file: Option<PathBuf>,
    pub node_name: String,
    pub pool: String,
    pub zone: String,
    pub state_dir: PathBuf,
    /// Holds the batch root's lock (one agent per batch root on a machine).
    pub lock_dir: PathBuf,
    /// The batch root, relative to each cgroup hierarchy.
    pub batch_root: PathBuf,
    pub roots: Roots,
    pub interval: Duration,
    pub model: LinearPowerModel,
    pub log_cap_bytes: u64,
    pub guard: GuardConfig,
    /// The shim executable (the agent's own binary); `None` runs jobs directly
    /// (they then die with the agent and are requeued).
    pub shim: Option<PathBuf>,
    /// What a `PowerDown` runs (`sh -c`), e.g. `systemctl suspend`: it returns
    /// when the machine wakes, and the agent registers again.
    pub power_down: String,
    /// Image jobs through this containerd; `None`: image jobs fail to start.
    pub containerd: Option<ContainerdConfig>,
    /// When online processes on a GPU batch holds need it.
    pub gpu: crate::gpu::GpuPolicy,
    /// Per-model power curves for `gpu_power_auto` jobs.
    pub gpu_curves: crate::gpu::Curves,
}

#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    pub socket: PathBuf,
    /// Registry credential files, one per name (`user:password`).
    pub credentials: Option<PathBuf>,
    /// Registries reached over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
}

/// The agent's binary where containerd's shim can start it as the jobs'
/// logger: in the state dir, which a DaemonSet mounts from the host at the same
/// path (the agent's own image is not the host's filesystem). A hard link where
/// the state dir shares the binary's filesystem (bare metal), else a copy, made
/// again only when the binary there differs.
fn host_visible_logger(state_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::env::current_exe()?;
    let dir = state_dir.join("bin");
    std::fs::create_dir_all(&dir)?;
    let dest = dir.join("greenfill-agent");
    let (have, want) = (std::fs::metadata(&dest).ok(), std::fs::metadata(&exe)?);
    let same = have.is_some_and(|h| {
        (h.dev(), h.ino()) == (want.dev(), want.ino())
            || (h.len() == want.len() && std::fs::read(&dest).ok() == std::fs::read(&exe).ok())
    });
    if !same {
        let tmp = dir.join(".greenfill-agent.tmp");
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&exe, &tmp).is_err() {
            std::fs::copy(&exe, &tmp)?;
        }
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(dest)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    /// This agent's id, made once per state dir: the scheduler refuses a
    /// second instance claiming a node whose session is live.
    #[serde(default)]
    instance_id: String,
    last_command_seq: u64,
    event_seq: u64,
    /// `(seq, encoded JobStatus)`, not yet acknowledged.
    unacked: Vec<(u64, Vec<u8>)>,
    /// attempt id → job.
    jobs: BTreeMap<String, LocalJob>,
    /// The highest scheduler lease epoch seen: messages from a lower one come
    /// from a deposed leader and are refused.
    #[serde(default)]
    epoch: u64,
}

/// Where the next session goes.
#[derive(Debug, Default)]
struct Target {
    /// Index into the configured addresses.
    next: usize,
    /// The leader a follower named (tried first, once).
    hint: Option<String>,
}

/// What ended a session: a follower's refusal names the leader.
fn leader_hint(e: &anyhow::Error) -> Option<String> {
    let status = e.downcast_ref::<tonic::Status>()?;
    (status.code() == tonic::Code::Unavailable)
        .then(|| status.metadata().get("greenfill-leader")?.to_str().ok().map(str::to_owned))
        .flatten()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LocalJob {
    job_id: String,
    pid: u32,
    cgroup: PathBuf,
    #[serde(default)]
    priority: i32,
    /// The job's own CPU limit (the guard may hold its quota lower on cgroup v1).
    #[serde(default)]
    cpu_cores: f64,
    /// An image job: `pid` is its container's first process, and its
    /// container in containerd carries the attempt id.
    #[serde(default)]
    image: bool,
    /// The GPUs it holds (indices).
    #[serde(default)]
    gpus: Vec<u32>,
    /// Their energy counters' sum at its start, joules (NVML; `None` without).
    #[serde(default)]
    gpu_energy_start_j: Option<f64>,
}

impl LocalJob {
    /// What a kill spares so the job's end is recorded: a process job's shim;
    /// nothing of an image job (containerd records its end).
    fn shim(&self) -> Option<u32> {
        (!self.image).then_some(self.pid)
    }
}

#[derive(Debug)]
struct Core {
    p: Persisted,
    path: PathBuf,
    out: Option<mpsc::Sender<pb::AgentMessage>>,
    /// attempt id → stop reason, once a stop was asked for.
    stopping: HashMap<String, String>,
    /// Why the agent must stop (its state could not be saved), once it must.
    fatal: Option<String>,
    shutdown: CancellationToken,
    /// A `PowerDown` was applied: its reason, until the command runs.
    power_down: Option<String>,
}

impl Core {
    fn load(dir: &Path) -> anyhow::Result<Core> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("state_dir {}: {e}", dir.display()))?;
        let path = dir.join("state.json");
        let mut p: Persisted = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        let fresh = p.instance_id.is_empty();
        if fresh {
            p.instance_id = format!("{:032x}", rand::random::<u128>());
        }
        let mut core = Core {
            p,
            path,
            out: None,
            stopping: HashMap::new(),
            fatal: None,
            shutdown: CancellationToken::new(),
            power_down: None,
        };
        if fresh {
            core.save();
            if let Some(why) = core.fatal.take() {
                anyhow::bail!("{why}");
            }
        }
        Ok(core)
    }

    /// Write the state atomically (temp file, fsync, rename). A failure here
    /// means promises cannot be kept: nothing more is sent or acknowledged, and
    /// the agent stops (`main` exits non-zero; jobs keep running under their
    /// shims and are re-adopted by the next start).
    fn save(&mut self) {
        if let Err(e) = crate::write_json_atomic(&self.path, &self.p) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot save agent state; stopping");
            self.fatal.get_or_insert_with(|| format!("cannot save {}: {e}", self.path.display()));
            self.out = None;
            self.shutdown.cancel();
        }
    }

    fn emit(&mut self, mut status: pb::JobStatus) {
        self.p.event_seq += 1;
        let seq = self.p.event_seq;
        if status.time.is_none() {
            status.time = Some(now_ts());
        }
        tracing::info!(job = %status.job_id, attempt = %status.attempt_id, phase = ?pb::JobPhase::try_from(status.phase), seq, "job event");
        self.p.unacked.push((seq, status.encode_to_vec()));
        self.save();
        self.send(pb::AgentMessage {
            seq,
            ack: self.p.last_command_seq,
            body: Some(pb::agent_message::Body::JobStatus(status)),
        });
    }

    fn send(&mut self, m: pb::AgentMessage) {
        if self.fatal.is_some() {
            return;
        }
        if let Some(tx) = &self.out
            && tx.try_send(m).is_err()
        {
            // Queue full or connection gone: events stay unacked and are replayed.
            self.out = None;
        }
    }

    fn acked(&mut self, upto: u64) {
        let before = self.p.unacked.len();
        self.p.unacked.retain(|(s, _)| *s > upto);
        if self.p.unacked.len() != before {
            self.save();
        }
    }
}

/// Time to the deadline over the expected run time (how much slower a job may
/// run and still end in time); `None` without a deadline or a duration.
fn slack(spec: &pb::JobSpec) -> Option<f64> {
    let d = spec.expected_duration.as_ref()?;
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    let run = d.seconds as f64 + f64::from(d.nanos) / 1e9;
    let deadline = spec.deadline.as_ref()?;
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    let left = (deadline.seconds - now_ts().seconds) as f64;
    (run > 0.0).then(|| (left / run).max(1.0))
}

fn now_ts() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: i64::try_from(d.as_secs()).unwrap_or(0), nanos: 0 }
}

/// The agent: owns the runner, the state file and the session.
#[derive(Debug, Clone)]
pub struct Agent {
    gpus: Arc<NodeGpus>,
    power_sources: Vec<i32>,
    cfg: Arc<Config>,
    core: Arc<Mutex<Core>>,
    runner: Arc<Runner>,
    guard: Arc<Mutex<Guard>>,
    /// Orphan job cgroups were swept (once, after the first accepted Register).
    swept: Arc<std::sync::atomic::AtomicBool>,
    /// Which scheduler to try next: a follower's leader hint, else the next address.
    target: Arc<Mutex<Target>>,
    /// The batch root's lock, held for the agent's life.
    _lock: Arc<nix::fcntl::Flock<std::fs::File>>,
}

/// One agent per batch root on a machine: another agent's job cgroups would
/// be orphans to this one (`Runner::sweep_orphans`). An exclusive `flock` on a
/// file named after the batch root; a second agent fails to start, naming the
/// batch root, the lock and the pid that holds it.
fn lock_batch_root(dir: &Path, batch_root: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::{Read as _, Seek as _, Write as _};
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("--lock-dir {}: {e}", dir.display()))?;
    let path = dir.join(format!("agent-{}.lock", batch_root.to_string_lossy().replace('/', "%")));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut held = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            anyhow::bail!(
                "another greenfill-agent on this machine (pid {}) already uses --batch-root {} (lock {}): give each \
                 agent its own batch root",
                pid.trim(),
                batch_root.display(),
                path.display()
            );
        }
        Err((_, e)) => anyhow::bail!("locking {}: {e}", path.display()),
    };
    held.set_len(0)?;
    held.rewind()?;
    write!(held, "{}", std::process::id())?;
    Ok(held)
}

/// How often the PSI trigger looks for online cgroups that came or went.
const PRESSURE_RESCAN: Duration = Duration::from_secs(10);

impl Agent {
    pub fn new(cfg: Config) -> anyhow::Result<Agent> {
        let lock = lock_batch_root(&cfg.lock_dir, &cfg.batch_root)?;
        let core = Core::load(&cfg.state_dir)?;
        let cgroups: Arc<dyn Cgroups> = Arc::new(HostCgroups::new(&cfg.roots.cgroup, &cfg.roots.proc));
        let mut runner = Runner::new(&cfg.batch_root, cgroups.clone());
        if let Some(exe) = &cfg.shim {
            runner = runner.with_shim(exe.clone());
        }
        if let Some(c) = &cfg.containerd {
            let logger = host_visible_logger(&cfg.state_dir)
                .map_err(|e| anyhow::anyhow!("state_dir {}: the image jobs' logger: {e}", cfg.state_dir.display()))?;
            let images = runner::Images::new(
                c.socket.clone(),
                logger,
                c.credentials.clone(),
                c.insecure_registries.clone(),
                &cfg.batch_root,
            )?;
            runner = runner.with_images(images);
        }
        let mut guard = Guard::with_cgroups(cfg.guard.clone(), &cfg.roots.cgroup, &cfg.batch_root, cgroups);
        // A kernel priority under batch first; the guard works on top of it.
        match runner.prioritise() {
            Ok((top, what)) => {
                guard.set_idle_priority(what == crate::cgroups::IDLE_PRIORITY);
                let quota_loop = guard.policy().quota_loop;
                tracing::info!(
                    cgroup = %top.display(),
                    quota_loop,
                    "batch gets the kernel's lowest CPU priority: {what}"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot give batch the kernel's lowest CPU priority"),
        }
        // What this node can measure, probed once for Register.
        let gpus = NodeGpus::open(
            telemetry::Gpus::open(),
            cfg.gpu.clone(),
            cfg.gpu_curves.clone(),
            &cfg.state_dir,
            &cfg.roots.proc,
            &cfg.batch_root,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let rapl = !telemetry::Rapl::discover(&cfg.roots.powercap).zones().is_empty();
        let mut power_sources = vec![if rapl { pb::PowerSource::Rapl } else { pb::PowerSource::Model } as i32];
        if !gpus.inventory.is_empty() {
            power_sources.push(pb::PowerSource::Nvml as i32);
        }
        let agent = Agent {
            gpus: Arc::new(gpus),
            power_sources,
            cfg: Arc::new(cfg),
            core: Arc::new(Mutex::new(core)),
            runner: Arc::new(runner),
            guard: Arc::new(Mutex::new(guard)),
            swept: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            target: Arc::new(Mutex::new(Target::default())),
            _lock: Arc::new(lock),
        };
        agent.recover();
        Ok(agent)
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Jobs left by a previous run: re-adopt those still running (or finished
    /// with a status); report the rest `STOPPED` so the scheduler requeues them.
    fn recover(&self) {
        let left: Vec<(String, LocalJob)> = self.core().p.jobs.clone().into_iter().collect();
        let logs = self.cfg.state_dir.join("logs");
        for (attempt, job) in left {
            let adopted = if job.image {
                self.runner.adopt_container(&attempt)
            } else {
                self.cfg.shim.as_ref().and_then(|_| self.runner.adopt(&attempt, job.pid, &logs))
            };
            match adopted {
                Some(running) => {
                    tracing::info!(%attempt, pid = job.pid, "re-adopted a job from the previous agent run");
                    self.watch_exit(running, job.job_id.clone(), attempt.clone());
                }
                None => {
                    let killed = self.runner.kill_cgroup(&job.cgroup);
                    tracing::warn!(%attempt, pid = job.pid, killed, "job of the previous agent run cannot be adopted: reported for requeue");
                    let mut core = self.core();
                    core.p.jobs.remove(&attempt);
                    core.emit(pb::JobStatus {
                        job_id: job.job_id,
                        attempt_id: attempt,
                        phase: pb::JobPhase::Stopped as i32,
                        message: format!("lost while the agent was down ({killed} process(es) stopped)"),
                        ..Default::default()
                    });
                }
            }
        }
        self.core().save();
    }

    /// Job cgroups under the batch root that this agent's state does not know
    /// (a wiped state dir) are stopped and removed. Only once the scheduler has
    /// accepted this agent as the node (a second agent refused for the same
    /// node never touches the first one's jobs), and before any command.
    fn sweep_orphans(&self) {
        let known: Vec<PathBuf> = self.core().p.jobs.values().map(|j| j.cgroup.clone()).collect();
        for (cgroup, killed) in self.runner.sweep_orphans(&known) {
            tracing::warn!(cgroup = %cgroup.display(), killed, "a job cgroup this agent's state does not know: stopped");
        }
        let attempts: Vec<String> = self.core().p.jobs.keys().cloned().collect();
        for id in self.runner.sweep_containers(&attempts) {
            tracing::warn!(container = %id, "a job container this agent's state does not know: removed");
        }
    }

    /// Wait (on a blocking thread) for the job to end and report it.
    fn watch_exit(&self, running: runner::Running, job_id: String, attempt: String) {
        let me = self.clone();
        std::thread::spawn(move || {
            let exit = me.runner.wait(running);
            me.gpus.job_ended(&attempt);
            let mut core = me.core();
            let job = core.p.jobs.remove(&attempt);
            let gpu_energy_j = job.and_then(|j| {
                let end = me.gpu_energy_j(&j.gpus)?;
                Some(end - j.gpu_energy_start_j?).filter(|d| *d >= 0.0)
            });
            let (phase, message) = match core.stopping.remove(&attempt) {
                Some(reason) if reason.starts_with("evicted:") => (pb::JobPhase::Evicted, reason),
                Some(reason) => (pb::JobPhase::Stopped, reason),
                None => (pb::JobPhase::Exited, String::new()),
            };
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "peak memory")]
            core.emit(pb::JobStatus {
                job_id,
                attempt_id: attempt,
                phase: phase as i32,
                exit_code: exit.code,
                signal: exit.signal,
                oom_killed: exit.oom_killed,
                cpu_seconds: exit.cpu_seconds.unwrap_or(0.0),
                peak_memory_bytes: exit.peak_memory_bytes.unwrap_or(0),
                message,
                gpu_energy_j,
                ..Default::default()
            });
        });
    }

    /// The energy counters of GPUs `indices`, summed, joules; `None` without
    /// GPUs or where a card has no counter.
    fn gpu_energy_j(&self, indices: &[u32]) -> Option<f64> {
        if indices.is_empty() {
            return None;
        }
        let devices = self.gpus.gpus.devices()?;
        indices.iter().map(|i| devices.iter().find(|d| d.index == *i)?.energy_j).sum()
    }

    /// Cancel this to stop [`Agent::run`] (SIGTERM does, through `main`).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.core().shutdown.clone()
    }

    /// Run until the shutdown token is cancelled: telemetry and the guard on a
    /// thread, the session with reconnects. Jobs keep running under their shims.
    /// An error says why the agent stopped itself (its state could not be saved).
    pub async fn run(self) -> anyhow::Result<()> {
        let stop = self.shutdown_token();
        let me = self.clone();
        let telemetry = std::thread::Builder::new().name("telemetry".into()).spawn(move || me.telemetry_loop())?;
        let me = self.clone();
        let pressure = std::thread::Builder::new().name("psi-trigger".into()).spawn(move || me.pressure_loop())?;
        let mut backoff = Duration::from_millis(200);
        while !stop.is_cancelled() {
            let started = Instant::now();
            tokio::select! {
                r = self.session() => match r {
                    Ok(()) => tracing::info!("session ended by the scheduler"),
                    Err(e) => {
                        let hint = leader_hint(&e);
                        let mut t = self.target.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if let Some(leader) = hint {
                            tracing::info!(%leader, "a follower answered; going to the leader");
                            t.hint = Some(leader);
                            backoff = Duration::from_millis(50);
                        } else {
                            tracing::warn!(error = %e, "session failed");
                            t.next += 1;
                        }
                    }
                },
                () = stop.cancelled() => break,
            }
            self.core().out = None;
            let power_down = self.core().power_down.take();
            if let Some(reason) = power_down {
                tokio::select! {
                    () = self.power_down(&reason) => {}
                    () = stop.cancelled() => break,
                }
                backoff = Duration::from_millis(200);
                continue;
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(200);
            }
            // Full jitter: a restarted scheduler is not hit by every agent at once.
            let wait = backoff.mul_f64(rand::random::<f64>() * 0.5 + 0.5);
            tracing::info!(wait_ms = wait.as_millis(), "reconnecting");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => break,
            }
            // Bounded low: after a failover every agent must find the new
            // leader within seconds (jitter spreads them).
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.core().out = None;
        let _ = tokio::task::spawn_blocking(move || pressure.join()).await;
        tokio::task::spawn_blocking(move || telemetry.join())
            .await?
            .map_err(|_| anyhow::anyhow!("telemetry thread panicked"))?;
        let jobs = self.core().p.jobs.len();
        match self.core().fatal.clone() {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => {
                tracing::info!(jobs, "agent stopped; running jobs keep running and are re-adopted at the next start");
                Ok(())
            }
        }
    }

    /// Refuse a message from a lower lease epoch than one seen (a deposed
    /// leader's); remember a higher one.
    fn check_epoch(&self, epoch: u64) -> anyhow::Result<()> {
        let mut core = self.core();
        if epoch < core.p.epoch {
            metrics::counter!("greenfill_agent_stale_epoch_refused_total").increment(1);
            anyhow::bail!(
                "refusing a scheduler at lease epoch {epoch}: epoch {} was seen (a deposed leader)",
                core.p.epoch
            );
        }
        if epoch > core.p.epoch {
            core.p.epoch = epoch;
            core.save();
        }
        Ok(())
    }

    fn register(&self, images: Vec<String>) -> pb::Register {
        let cores = std::fs::read_to_string(self.cfg.roots.proc.join("stat"))
            .map(|s| s.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count())
            .unwrap_or(1);
        let mem = std::fs::read_to_string(self.cfg.roots.proc.join("meminfo"))
            .ok()
            .and_then(|s| telemetry::meminfo(&s))
            .map_or(0, |(total, _)| total);
        let layout = telemetry::detect(&self.cfg.roots.cgroup);
        let core = self.core();
        #[allow(clippy::cast_precision_loss, reason = "core counts")]
        pb::Register {
            node_name: self.cfg.node_name.clone(),
            pool: self.cfg.pool.clone(),
            zone: self.cfg.zone.clone(),
            cpu_cores: cores.max(1) as f64,
            memory_bytes: mem,
            gpus: u32::try_from(self.gpus.inventory.len()).unwrap_or(0),
            gpu_devices: self
                .gpus
                .inventory
                .iter()
                .map(|d| pb::GpuInfo {
                    index: d.index,
                    uuid: d.uuid.clone(),
                    model: d.model.clone(),
                    memory_bytes: d.memory_total_bytes,
                    power_limit_min_w: d.power_limit_min_w,
                    power_limit_max_w: d.power_limit_max_w,
                    power_limit_w: d.power_limit_w,
                })
                .collect(),
            power_sources: self.power_sources.clone(),
            cgroup_version: match layout.version {
                telemetry::CgroupVersion::V1 => pb::CgroupVersion::V1,
                telemetry::CgroupVersion::V2 => pb::CgroupVersion::V2,
                telemetry::CgroupVersion::Hybrid => pb::CgroupVersion::Hybrid,
                telemetry::CgroupVersion::None => pb::CgroupVersion::Unspecified,
            } as i32,
            last_command_seq: core.p.last_command_seq,
            running_jobs: core
                .p
                .jobs
                .iter()
                .map(|(a, j)| pb::RunningJob { job_id: j.job_id.clone(), attempt_id: a.clone(), pid: j.pid })
                .collect(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            instance_id: core.p.instance_id.clone(),
            labels: Default::default(),
            images,
        }
    }

    /// The address of the next session: the leader a follower named, else
    /// the configured addresses in turn.
    fn next_server(&self) -> String {
        let servers: Vec<&str> = self.cfg.server.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let mut t = self.target.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = servers.first().copied().unwrap_or("http://127.0.0.1:7070");
        match t.hint.take() {
            // The hint is host:port; keep the configured scheme.
            Some(h) => format!("{}://{h}", first.split_once("://").map_or("http", |(s, _)| s)),
            None => servers.get(t.next % servers.len().max(1)).copied().unwrap_or(first).to_owned(),
        }
    }

    async fn session(&self) -> anyhow::Result<()> {
        let server = self.next_server();
        let mut endpoint = tonic::transport::Endpoint::from_shared(server.clone())?;
        if let Some(ca) = &self.cfg.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("ca_cert {}: {e}", ca.display()))?;
            endpoint = endpoint.tls_config(
                tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            // A frozen scheduler is noticed within ~10 s even on an idle stream.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let token = match &self.cfg.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => self.cfg.token.clone(),
        };
        let mut client = AgentServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            if let Some(t) = &token {
                r.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {t}").parse().map_err(|_| tonic::Status::invalid_argument("token"))?,
                );
            }
            Ok(r)
        });
        let (tx, rx) = mpsc::channel(4096);
        let runner = self.runner.clone();
        let images = tokio::task::spawn_blocking(move || runner.images_present()).await.unwrap_or_default();
        tx.send(pb::AgentMessage {
            seq: 0,
            ack: 0,
            body: Some(pb::agent_message::Body::Register(self.register(images))),
        })
        .await?;
        let mut inbound = client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let first = inbound.message().await?.ok_or_else(|| anyhow::anyhow!("session closed before RegisterAck"))?;
        self.check_epoch(first.epoch)?;
        let Some(Cmd::RegisterAck(ack)) = first.body else { anyhow::bail!("first message was not RegisterAck") };
        {
            let mut core = self.core();
            core.acked(ack.last_event_seq);
            core.out = Some(tx.clone());
            let replay: Vec<(u64, Vec<u8>)> = core.p.unacked.clone();
            tracing::info!(%server, epoch = first.epoch, replay = replay.len(), "connected");
            for (seq, body) in replay {
                let status = pb::JobStatus::decode(body.as_slice())?;
                let ack = core.p.last_command_seq;
                core.send(pb::AgentMessage { seq, ack, body: Some(pb::agent_message::Body::JobStatus(status)) });
            }
        }
        if !self.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.sweep_orphans()).await?;
        }
        while let Some(m) = inbound.message().await? {
            self.check_epoch(m.epoch)?;
            if m.ack > 0 {
                self.core().acked(m.ack);
            }
            let Some(body) = m.body else { continue };
            if m.seq == 0 {
                continue;
            }
            if m.seq <= self.core().p.last_command_seq {
                // Already applied (a resend): acknowledge again.
                let ack = self.core().p.last_command_seq;
                let _ = tx.try_send(pb::AgentMessage { seq: 0, ack, body: None });
                continue;
            }
            let power_down = match body {
                Cmd::PowerDown(p) if p.valid_until.is_some_and(|v| v.seconds < now_ts().seconds) => {
                    tracing::info!(reason = %p.reason, "a power-down past its validity: acknowledged, not run");
                    None
                }
                Cmd::PowerDown(p) => Some(p.reason),
                other => {
                    self.apply(other).await;
                    None
                }
            };
            {
                let mut core = self.core();
                core.p.last_command_seq = m.seq;
                core.save();
                if core.fatal.is_some() {
                    anyhow::bail!("not acknowledging command {}: the agent's state could not be saved", m.seq);
                }
                let _ = tx.try_send(pb::AgentMessage { seq: 0, ack: m.seq, body: None });
                // Saved as applied before it runs: a resend after the wake is
                // acknowledged, never run again.
                core.power_down.clone_from(&power_down);
            }
            if power_down.is_some() {
                // Close the session (after the ack has gone) so the scheduler
                // sees the node go silent.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Run the power-down command; it returns when the machine is up again.
    /// (Its validity was checked by the caller.)
    async fn power_down(&self, reason: &str) {
        tracing::info!(command = %self.cfg.power_down, reason, "powering down at the scheduler's request");
        let status = tokio::process::Command::new("sh")
            .args(["-c", &self.cfg.power_down])
            .stdin(std::process::Stdio::null())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => tracing::info!("up again after the power-down command; registering"),
            Ok(s) => tracing::warn!(status = %s, command = %self.cfg.power_down, "the power-down command failed"),
            Err(e) => {
                tracing::warn!(error = %e, command = %self.cfg.power_down, "the power-down command did not start")
            }
        }
    }

    async fn apply(&self, cmd: Cmd) {
        match cmd {
            Cmd::Run(run) => self.start(run).await,
            Cmd::Stop(stop) => self.stop(stop),
            Cmd::Suppress(s) => {
                let valid = s
                    .valid_for
                    .map_or(Duration::from_secs(60), |d| Duration::from_secs(u64::try_from(d.seconds).unwrap_or(60)));
                self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).scheduler_cap(
                    s.max_batch_cpu_cores,
                    valid,
                    &s.reason,
                );
            }
            Cmd::RegisterAck(_) | Cmd::PowerDown(_) => {}
        }
    }

    async fn start(&self, run: pb::RunJob) {
        let fail = |message: String| pb::JobStatus {
            job_id: run.job_id.clone(),
            attempt_id: run.attempt_id.clone(),
            phase: pb::JobPhase::FailedToStart as i32,
            message,
            ..Default::default()
        };
        let Some(spec) = run.spec.clone() else {
            self.core().emit(fail("RunJob without a spec".into()));
            return;
        };
        let grant = match self.grant_gpus(&run.attempt_id, &spec) {
            Ok(g) => g,
            Err(e) => {
                let mut status = fail(e.message);
                status.retryable = e.retryable;
                self.core().emit(status);
                return;
            }
        };
        let mut env: Vec<(String, String)> = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(grant.env.iter().cloned());
        let rs = runner::JobSpec {
            id: run.attempt_id.clone(),
            argv: spec.command.clone(),
            shell: spec.shell,
            env,
            cwd: (!spec.working_dir.is_empty()).then(|| PathBuf::from(&spec.working_dir)),
            cpu_cores: spec.cpu_cores,
            memory_bytes: spec.memory_bytes,
            uid: spec.run_as_uid,
            gid: spec.run_as_gid,
            log_dir: self.cfg.state_dir.join("logs"),
            log_cap_bytes: self.cfg.log_cap_bytes,
            image: spec.image.as_ref().map(|i| ImageRef {
                reference: i.reference.clone(),
                pull: match pb::PullPolicy::try_from(i.pull_policy) {
                    Ok(pb::PullPolicy::Always) => Pull::Always,
                    Ok(pb::PullPolicy::Never) => Pull::Never,
                    _ => Pull::IfNotPresent,
                },
                credential: (!i.credential.is_empty()).then(|| i.credential.clone()),
            }),
            deny_devices: grant.deny.clone(),
        };
        let runner = self.runner.clone();
        let started = tokio::task::spawn_blocking(move || runner.start(&rs)).await;
        let running = match started {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.gpus.job_ended(&run.attempt_id);
                let mut status = fail(e.to_string());
                status.retryable = e.transient();
                self.core().emit(status);
                return;
            }
            Err(e) => {
                self.gpus.job_ended(&run.attempt_id);
                self.core().emit(fail(format!("start task: {e}")));
                return;
            }
        };
        {
            let mut core = self.core();
            core.p.jobs.insert(
                run.attempt_id.clone(),
                LocalJob {
                    job_id: run.job_id.clone(),
                    pid: running.pid,
                    cgroup: running.cgroup_path.clone(),
                    priority: spec.priority,
                    cpu_cores: spec.cpu_cores,
                    image: running.is_image(),
                    gpus: grant.indices.clone(),
                    gpu_energy_start_j: self.gpu_energy_j(&grant.indices),
                },
            );
            let message = match (&spec.image, running.pulled) {
                (Some(i), Some(p)) => {
                    format!("pid {} in image {} (pulled in {:.1} s)", running.pid, i.reference, p.as_secs_f64())
                }
                (Some(i), None) => format!("pid {} in image {} (present)", running.pid, i.reference),
                (None, _) => format!("pid {}", running.pid),
            };
            let message = match (grant.indices.is_empty(), grant.limit_w) {
                (true, _) => message,
                (false, None) => format!("{message} on GPU {:?}", grant.indices),
                (false, Some(w)) => format!("{message} on GPU {:?} at {w} W", grant.indices),
            };
            core.emit(pb::JobStatus {
                job_id: run.job_id.clone(),
                attempt_id: run.attempt_id.clone(),
                phase: pb::JobPhase::Started as i32,
                message,
                image_pull_seconds: running.pulled.map(|p| p.as_secs_f64()),
                ..Default::default()
            });
        }
        self.watch_exit(running, run.job_id, run.attempt_id);
    }

    /// SIGTERM everything in the job's cgroup, SIGKILL after the grace period.
    fn stop(&self, stop: pb::StopJob) {
        let Some(job) = self.core().p.jobs.get(&stop.attempt_id).cloned() else {
            tracing::info!(attempt = %stop.attempt_id, "stop for a job not running here: nothing to do");
            return;
        };
        self.core().stopping.insert(stop.attempt_id.clone(), stop.reason.clone());
        let grace =
            stop.grace.map_or(Duration::from_secs(10), |g| Duration::from_secs(u64::try_from(g.seconds).unwrap_or(10)));
        let n = self.runner.signal_cgroup_except(&job.cgroup, nix::sys::signal::Signal::SIGTERM, job.shim());
        tracing::info!(attempt = %stop.attempt_id, signalled = n, grace_s = grace.as_secs(), reason = %stop.reason, "stopping job");
        let runner = self.runner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tokio::task::spawn_blocking(move || runner.kill_job(&job.cgroup, job.shim())).await;
        });
    }

    /// Evict (called by the guard): stop now, report EVICTED.
    pub fn evict(&self, attempt: &str, why: &str) {
        let Some(job) = self.core().p.jobs.get(attempt).cloned() else { return };
        self.core().stopping.insert(attempt.to_owned(), format!("evicted: {why}"));
        self.runner.kill_job(&job.cgroup, job.shim());
    }

    /// The job's GPUs (none of another running job's) and their power limit.
    fn grant_gpus(&self, attempt: &str, spec: &pb::JobSpec) -> Result<crate::gpu::Grant, crate::gpu::GrantError> {
        let ask =
            crate::gpu::GpuAsk { count: spec.gpus, model: spec.gpu_model.clone(), memory_bytes: spec.gpu_memory_bytes };
        let power = match (spec.gpu_power_limit_w, spec.gpu_power_auto) {
            (Some(w), _) => crate::gpu::PowerAsk::Limit(w),
            (None, true) => crate::gpu::PowerAsk::Auto { slack: slack(spec) },
            (None, false) => crate::gpu::PowerAsk::Default,
        };
        let taken: std::collections::BTreeSet<u32> =
            self.core().p.jobs.values().flat_map(|j| j.gpus.iter().copied()).collect();
        self.gpus.grant(attempt, &ask, power, &taken)
    }

    fn gpu_jobs(&self) -> Vec<crate::gpu::GpuJob> {
        let core = self.core();
        core.p
            .jobs
            .iter()
            .filter(|(_, j)| !j.gpus.is_empty())
            .map(|(a, j)| crate::gpu::GpuJob { attempt: a.clone(), gpus: j.gpus.clone() })
            .collect()
    }

    fn guard_jobs(&self) -> Vec<GuardJob> {
        let core = self.core();
        core.p
            .jobs
            .iter()
            .map(|(a, j)| GuardJob {
                attempt: a.clone(),
                cgroup: j.cgroup.clone(),
                priority: j.priority,
                cpu_cores: j.cpu_cores,
            })
            .collect()
    }

    /// Sub-second reaction to online CPU pressure: a PSI trigger on the online
    /// cgroups (stalled `psi_threshold` % of a 500 ms window, or of 2 s without
    /// `CAP_SYS_RESOURCE`) cuts batch between the guard's ticks, as soon as that
    /// much stall has accrued. The set of online cgroups is looked at again every
    /// [`PRESSURE_RESCAN`] (pods come and go); none, or a kernel without
    /// triggers, leaves the `avg10` rule of each tick.
    fn pressure_loop(&self) {
        let stop = self.shutdown_token();
        let share = self.cfg.guard.psi_threshold / 100.0;
        let (mut trigger, mut files, mut scanned): (Option<telemetry::PsiTrigger>, Vec<PathBuf>, Option<Instant>) =
            (None, Vec::new(), None);
        while !stop.is_cancelled() {
            if scanned.is_none_or(|t| t.elapsed() > PRESSURE_RESCAN) {
                scanned = Some(Instant::now());
                // At idle priority with `--cpu-suppress auto` there is no quota loop to cut.
                let g = self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let now = if g.policy().quota_loop { g.pressure_files() } else { Vec::new() };
                drop(g);
                if now != files {
                    files = now;
                    trigger = match telemetry::PsiTrigger::open(&files, share, telemetry::psi::MIN_WINDOW) {
                        Ok(t) if !files.is_empty() => {
                            tracing::info!(
                                files = ?files,
                                window_ms = t.window().as_millis(),
                                stalled_pct = share * 100.0,
                                "online CPU pressure trigger armed"
                            );
                            Some(t)
                        }
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(error = %e, "no online CPU pressure trigger; the guard reads avg10 each tick");
                            None
                        }
                    };
                }
            }
            let Some(t) = trigger.as_ref() else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            match t.wait(Duration::from_millis(100)) {
                Ok(true) => {
                    let jobs = self.guard_jobs();
                    self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pressure_event(&jobs);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "online CPU pressure trigger stopped; looking again");
                    (trigger, files) = (None, Vec::new());
                }
            }
        }
    }

    fn telemetry_loop(&self) {
        let stop = self.shutdown_token();
        let mut sampler = Sampler::with_gpus(self.cfg.roots.clone(), self.cfg.model, self.gpus.gpus.clone());
        sampler.watch(&self.cfg.batch_root);
        sampler.sample();
        let mut online = telemetry::OnlineRoots::new(&self.cfg.roots.cgroup, self.cfg.guard.online_cgroups.clone());
        online.read();
        while !stop.is_cancelled() {
            // Short sleeps, so that a stop is seen within 100 ms.
            let until = Instant::now() + self.cfg.interval;
            while Instant::now() < until && !stop.is_cancelled() {
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
            }
            if stop.is_cancelled() {
                break;
            }
            let s = sampler.sample();
            let jobs = self.guard_jobs();
            let evict = self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).step(&s, &jobs);
            for (attempt, why) in evict {
                self.evict(&attempt, &why);
            }
            for (attempt, why) in self.gpus.step(&s.gpu_devices, &self.gpu_jobs()) {
                self.evict(&attempt, &why);
            }
            let g = self.gpus.counts();
            for (action, n) in [("cap", g.caps), ("restore", g.restores), ("evict", g.evictions)] {
                metrics::counter!("greenfill_gpu_guard_actions_total", "action" => action).absolute(n);
            }
            let limit = self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).limit();
            let msg = to_proto(&s, limit, online.read());
            record_metrics(&msg, &self.cfg.roots.proc);
            self.core().send(pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Telemetry(msg)) });
        }
    }
}

/// Every series the agent exports (a test checks the list against the source).
pub const METRICS: &[greenfill_runtime::metrics::Described] = {
    use greenfill_runtime::metrics::{
        Described as D,
        Kind::{Counter as C, Gauge as G},
    };
    &[
        D { name: "greenfill_cpu_cores", kind: G, help: "CPU in use, cores, by class (node, online, batch)." },
        D { name: "greenfill_memory_bytes", kind: G, help: "Memory in use, bytes, by class (node, online, batch)." },
        D { name: "greenfill_power_watts", kind: G, help: "Power by component and source (rapl, nvml, model)." },
        D { name: "greenfill_agent_cpu_seconds", kind: G, help: "CPU time the agent itself has used." },
        D { name: "greenfill_agent_rss_bytes", kind: G, help: "The agent's resident memory." },
        D { name: "greenfill_guard_batch_cpu_limit_cores", kind: G, help: "The guard's CPU cap on batch, cores." },
        D { name: "greenfill_guard_actions_total", kind: C, help: "Guard actions by action (psi_cut, …)." },
        D {
            name: "greenfill_gpu_guard_actions_total",
            kind: C,
            help: "GPU guard actions by action (cap, restore, evict).",
        },
        D {
            name: "greenfill_guard_write_errors_total",
            kind: C,
            help: "Cgroup writes (CPU quota) the kernel refused.",
        },
        D {
            name: "greenfill_agent_stale_epoch_refused_total",
            kind: C,
            help: "Scheduler sessions refused because their lease epoch was older than one seen.",
        },
    ]
};

/// Prometheus series: per node and per workload class (online, batch), never
/// per process or per job; plus the agent's own CPU and memory.
fn record_metrics(m: &pb::TelemetrySample, proc_root: &Path) {
    let set = |name: &'static str, class: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            metrics::gauge!(name, "class" => class).set(v);
        }
    };
    set("greenfill_cpu_cores", "node", m.node_cpu_cores);
    set("greenfill_cpu_cores", "online", m.online_cpu_cores);
    set("greenfill_cpu_cores", "batch", m.batch_cpu_cores);
    #[allow(clippy::cast_precision_loss, reason = "bytes")]
    {
        set("greenfill_memory_bytes", "node", m.node_memory_bytes.map(|b| b as f64));
        set("greenfill_memory_bytes", "online", m.online_memory_bytes.map(|b| b as f64));
        set("greenfill_memory_bytes", "batch", m.batch_memory_bytes.map(|b| b as f64));
    }
    for p in &m.power {
        let source = pb::PowerSource::try_from(p.source).map_or("unknown", |s| match s {
            pb::PowerSource::Rapl => "rapl",
            pb::PowerSource::Nvml => "nvml",
            _ => "model",
        });
        metrics::gauge!("greenfill_power_watts", "component" => p.component.clone(), "source" => source).set(p.watts);
    }
    // The agent's own cost.
    let me = proc_root.join("self");
    if let Some(ticks) = std::fs::read_to_string(me.join("stat")).ok().and_then(|s| {
        let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }) {
        #[allow(clippy::cast_precision_loss, reason = "ticks")]
        metrics::gauge!("greenfill_agent_cpu_seconds").set(ticks as f64 / 100.0);
    }
    if let Some(kb) = std::fs::read_to_string(me.join("status")).ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    }) {
        #[allow(clippy::cast_precision_loss, reason = "bytes")]
        metrics::gauge!("greenfill_agent_rss_bytes").set((kb * 1024) as f64);
    }
}

/// A sample as the scheduler sees it. With online root cgroups (Kubernetes'
/// `kubepods`): online = what they use, system = node − online − batch. Without
/// (bare metal): online = node − batch, system not reported.
fn to_proto(s: &telemetry::Sample, batch_limit: Option<f64>, roots: Option<(Option<f64>, u64)>) -> pb::TelemetrySample {
    let batch = s.workloads.cpu_cores;
    let node = s.node.cpu_cores_used;
    let (online_cpu, online_mem, system) = match roots {
        Some((cpu, mem)) => (cpu, Some(mem), node.zip(cpu).map(|(n, o)| (n - o - batch.unwrap_or(0.0)).max(0.0))),
        None => (
            node.map(|n| (n - batch.unwrap_or(0.0)).max(0.0)),
            s.node.memory_used_bytes.map(|m| m.saturating_sub(s.workloads.memory_bytes)),
            None,
        ),
    };
    let p = |x: &Option<telemetry::Pressure>| {
        x.as_ref().map(|p| pb::Pressure { some_avg10: p.some_avg10, full_avg10: p.full_avg10.unwrap_or(0.0) })
    };
    pb::TelemetrySample {
        time: Some(now_ts()),
        node_cpu_cores: node,
        node_memory_bytes: s.node.memory_used_bytes,
        online_cpu_cores: online_cpu,
        online_memory_bytes: online_mem,
        batch_cpu_cores: batch,
        batch_memory_bytes: Some(s.workloads.memory_bytes),
        system_cpu_cores: system,
        cpu_pressure: p(&s.node.cpu_pressure),
        memory_pressure: p(&s.node.memory_pressure),
        io_pressure: p(&s.node.io_pressure),
        power: s
            .power
            .iter()
            .map(|r| pb::PowerReading {
                component: r.component.clone(),
                source: match r.source {
                    telemetry::PowerSource::Rapl => pb::PowerSource::Rapl,
                    telemetry::PowerSource::Nvml => pb::PowerSource::Nvml,
                    telemetry::PowerSource::Model => pb::PowerSource::Model,
                } as i32,
                watts: r.watts,
            })
            .collect(),
        batch_cpu_limit_cores: batch_limit,
    }
}
