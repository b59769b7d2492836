//! `greenfill-agent`: runs on every node.

use anyhow::Result;
use clap::{Parser, Subcommand};
use greenfill_agent::guard::{GuardConfig, Suppress};
use greenfill_agent::telemetry::LinearPowerModel;
use greenfill_agent::{Roots, Sampler, daemon};
use greenfill_runtime::Failure;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "greenfill-agent", version, about = "greenfill's node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node daemon: connect to the scheduler, run its jobs in cgroups,
    /// send telemetry, and guard online services locally (also while the
    /// scheduler is away).
    Run(Box<RunArgs>),
    /// (internal) The parent of one job, started by the agent in the job's cgroup.
    #[command(hide = true)]
    Shim,
    /// (internal) An image job's logger, started by containerd's shim (its
    /// logging-binary protocol): `<cap>,<log dir>`.
    #[command(hide = true, name = "greenfill-log")]
    GreenfillLog { arg: String },
    /// Print telemetry samples of this machine: node CPU and memory, pressure, the
    /// cgroup version(s) found, and power with its source (rapl or model).
    Sample {
        /// One sample (taken over --interval) and exit.
        #[arg(long)]
        once: bool,
        /// Time between samples; rates (CPU, power) are over this interval.
        #[arg(long, default_value = "1s", value_parser = interval)]
        interval: Duration,
        /// JSON, one object per sample.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        machine: MachineArgs,
        /// Also read every child cgroup of this parent (relative to the cgroup
        /// root, e.g. kubepods.slice) and report their totals.
        #[arg(long)]
        watch: Option<PathBuf>,
    },
    /// List this node's GPUs through NVML: index, UUID, model, memory, load,
    /// power and its limit range, and the processes on each. With
    /// `--check-cap`, set each GPU's power limit to its minimum, read it back and
    /// restore it (needs root; what `benches/gpu-check.sh` runs). Exits 0 with
    /// "no GPU" where there is none.
    Gpus {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        check_cap: bool,
    },
}

/// Where the machine's files are (host mounts in a DaemonSet, fixtures in tests)
/// and the power model used where no sensor exists.
#[derive(Debug, clap::Args)]
struct MachineArgs {
    #[arg(long, default_value = "/proc", env = "GREENFILL_PROC_ROOT")]
    proc_root: PathBuf,
    #[arg(long, default_value = "/sys/fs/cgroup", env = "GREENFILL_CGROUP_ROOT")]
    cgroup_root: PathBuf,
    #[arg(long, default_value = "/sys/class/powercap", env = "GREENFILL_POWERCAP_ROOT")]
    powercap_root: PathBuf,
    /// Power model where no sensor exists: watts per CPU at idle and at full load.
    #[arg(long, default_value_t = 0.74)]
    idle_w_per_cpu: f64,
    #[arg(long, default_value_t = 3.5)]
    max_w_per_cpu: f64,
}

impl MachineArgs {
    fn roots(&self) -> Roots {
        Roots { proc: self.proc_root.clone(), cgroup: self.cgroup_root.clone(), powercap: self.powercap_root.clone() }
    }

    fn model(&self) -> LinearPowerModel {
        LinearPowerModel { idle_w_per_cpu: self.idle_w_per_cpu, max_w_per_cpu: self.max_w_per_cpu }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The scheduler, e.g. http://127.0.0.1:7070; replicas comma-separated (the
    /// agent follows the leader among them).
    #[arg(long, env = "GREENFILL_SERVER", default_value = "http://127.0.0.1:7070")]
    server: String,
    /// PEM CA certificate to trust for an https:// scheduler.
    #[arg(long, env = "GREENFILL_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Agent bearer token (not a user token).
    #[arg(long, env = "GREENFILL_AGENT_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the token, read again at every connection: a Kubernetes
    /// projected service-account token (audience `greenfill`), which the kubelet
    /// rotates, proves which node this pod is on.
    #[arg(long, env = "GREENFILL_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// This node's name (in Kubernetes: the downward API's spec.nodeName).
    #[arg(long, env = "GREENFILL_NODE_NAME")]
    node_name: Option<String>,
    #[arg(long, env = "GREENFILL_POOL", default_value = "default")]
    pool: String,
    #[arg(long, env = "GREENFILL_ZONE", default_value = "")]
    zone: String,
    /// Sequence numbers, unacknowledged events, running jobs and job logs.
    #[arg(long, env = "GREENFILL_STATE_DIR", default_value = "/var/lib/greenfill-agent")]
    state_dir: PathBuf,
    /// greenfill's batch cgroup, relative to each hierarchy. One agent per batch
    /// root on a machine: a second is refused at start (a lock in --lock-dir).
    #[arg(long, default_value = "greenfill/batch")]
    batch_root: PathBuf,
    /// Where the agent locks its batch root against a second agent on this
    /// machine.
    #[arg(long, default_value = "/run/greenfill")]
    lock_dir: PathBuf,
    /// Telemetry and guard interval: seconds, or a number with ms/s/m/h, e.g.
    /// 500ms, 1s, 1m (between 1 ms and 1 h).
    #[arg(long, default_value = "1s", value_parser = interval)]
    interval: Duration,
    #[command(flatten)]
    machine: MachineArgs,
    /// Each job's stdout and stderr are kept up to this size: bytes, or K/M/G/T,
    /// every unit binary (16M = 16 × 2^20 bytes).
    #[arg(long, default_value = "16M", value_parser = size)]
    log_cap_bytes: u64,
    /// Share of the node's CPUs online and batch may use together. The default is
    /// 1 − the scheduler's default `planning.cpu_margin` (0.1): the scheduler plans
    /// batch up to that share of the forecast upper bound, and the guard cuts batch
    /// only when online rises past it. A lower value (Koordinator uses 0.65) throttles
    /// work the plan counted on; keep the two in step.
    #[arg(long, default_value_t = 0.9)]
    cpu_threshold: f64,
    /// When that share caps batch: `auto` only where batch lacks the kernel's
    /// idle priority (`cpu.idle`, Linux 5.15+; with it every online task preempts
    /// batch at once, and a quota on top only left CPUs idle and raised online
    /// latency in greenfill's measurements), `always`, or `never` (only online
    /// pressure and the scheduler cut batch).
    #[arg(long, default_value = "auto", value_parser = suppress)]
    cpu_suppress: Suppress,
    /// Online cgroups whose CPU pressure is watched (repeatable).
    #[arg(long = "online-cgroup")]
    online_cgroups: Vec<PathBuf>,
    /// CPU pressure (PSI some avg10, %) of online cgroups that halves the batch cap.
    #[arg(long, default_value_t = 20.0)]
    psi_threshold: f64,
    /// Memory share above which batch jobs are evicted, and the share to evict down to.
    #[arg(long, default_value_t = 0.90)]
    memory_high: f64,
    #[arg(long, default_value_t = 0.80)]
    memory_low: f64,
    /// Prometheus /metrics address, e.g. 0.0.0.0:9471.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// What the scheduler's `agent` power driver makes this node run to sleep
    /// (`sh -c`): it should return when the machine wakes (a suspend does;
    /// `poweroff` never returns), and the agent registers again.
    #[arg(long, default_value = "systemctl suspend")]
    power_down_command: String,
    /// containerd's socket, for jobs with an image (`greenfill submit --image`).
    /// Jobs go in containerd namespace `greenfill`; without containerd there,
    /// image jobs fail to start, naming the socket, and process jobs run on.
    #[arg(long, env = "GREENFILL_CONTAINERD_SOCKET", default_value = greenfill_agent::containerd::DEFAULT_SOCKET)]
    containerd_socket: PathBuf,
    /// A directory of registry credentials: a file per credential name (what a
    /// job's `--registry-credential` names), holding `user:password`. Never logged.
    #[arg(long, env = "GREENFILL_REGISTRY_CREDENTIALS")]
    registry_credentials: Option<PathBuf>,
    /// A registry (`host:port`) to pull from over plain HTTP, not HTTPS
    /// (repeatable; for a registry on loopback or a trusted network).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// GPU guard: online processes' SM share (%) on a GPU that batch holds at or
    /// above which batch there is capped to the card's minimum power limit.
    #[arg(long, default_value_t = 10)]
    gpu_online_sm_pct: u32,
    /// GPU guard: online processes' share of a GPU's memory that caps batch there.
    #[arg(long, default_value_t = 0.05)]
    gpu_online_memory: f64,
    /// GPU guard: ticks still pressed at the minimum limit before batch on that
    /// GPU is evicted (and requeued by the scheduler).
    #[arg(long, default_value_t = 3)]
    gpu_stop_after: u32,
    /// GPU guard: calm ticks before the power limit goes back.
    #[arg(long, default_value_t = 2)]
    gpu_restore_after: u32,
    /// Per-model GPU power curves (TOML) for jobs with `--gpu-power auto`:
    /// `[[model]] model = "A100"` and `points = [{ limit_w = 200, throughput = 0.9 }, …]`.
    #[arg(long, env = "GREENFILL_GPU_CURVES")]
    gpu_curves: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn suppress(s: &str) -> Result<Suppress, String> {
    Suppress::parse(s).ok_or_else(|| format!("`{s}` is not one of auto, always, never"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "localhost".into(), |h| h.trim().to_owned())
}

fn run(a: RunArgs) -> Result<(), Failure<anyhow::Error>> {
    greenfill_runtime::init_logging(a.log_json);
    let (cfg, metrics_listen) = configure(a).map_err(Failure::Start)?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| Failure::Start(e.into()))?;
    rt.block_on(async move {
        if let Some(addr) = metrics_listen {
            greenfill_runtime::metrics::serve(addr, daemon::METRICS, None)
                .await
                .map_err(|e| Failure::Start(anyhow::anyhow!("--metrics-listen {addr}: {e}")))?;
        }
        let agent = daemon::Agent::new(cfg).map_err(Failure::Start)?;
        greenfill_runtime::cancel_on_signal(agent.shutdown_token()).map_err(|e| Failure::Start(e.into()))?;
        agent.run().await.map_err(Failure::Serving)
    })
}

/// The daemon's config from the flags, checked.
fn configure(a: RunArgs) -> Result<(daemon::Config, Option<std::net::SocketAddr>)> {
    if !(a.cpu_threshold > 0.0 && a.cpu_threshold <= 1.0) {
        anyhow::bail!("--cpu-threshold {}: need 0 < threshold <= 1", a.cpu_threshold);
    }
    if !(a.memory_low > 0.0 && a.memory_low < a.memory_high && a.memory_high <= 1.0) {
        anyhow::bail!("--memory-low {} / --memory-high {}: need 0 < low < high <= 1", a.memory_low, a.memory_high);
    }
    let mut guard = GuardConfig {
        threshold: a.cpu_threshold,
        suppress: a.cpu_suppress,
        psi_threshold: a.psi_threshold,
        memory_high: a.memory_high,
        memory_low: a.memory_low,
        ..GuardConfig::default()
    };
    if !a.online_cgroups.is_empty() {
        guard.online_cgroups = a.online_cgroups;
    }
    if !(a.gpu_online_memory > 0.0 && a.gpu_online_memory <= 1.0) {
        anyhow::bail!("--gpu-online-memory {}: need 0 < share <= 1", a.gpu_online_memory);
    }
    let gpu = greenfill_agent::gpu::GpuPolicy {
        online_sm_pct: a.gpu_online_sm_pct,
        online_memory_share: a.gpu_online_memory,
        stop_after: a.gpu_stop_after,
        restore_after: a.gpu_restore_after.max(1),
        enforce: true,
    };
    let gpu_curves = match &a.gpu_curves {
        Some(p) => greenfill_agent::gpu::Curves::load(p).map_err(|e| anyhow::anyhow!(e))?,
        None => greenfill_agent::gpu::Curves::default(),
    };
    let cfg = daemon::Config {
        server: a.server,
        ca_cert: a.ca_cert,
        token: a.token,
        token_file: a.token_file,
        node_name: a.node_name.unwrap_or_else(hostname),
        pool: a.pool,
        zone: a.zone,
        state_dir: a.state_dir,
        lock_dir: a.lock_dir,
        batch_root: a.batch_root,
        roots: a.machine.roots(),
        interval: a.interval,
        model: a.machine.model(),
        log_cap_bytes: a.log_cap_bytes,
        guard,
        shim: Some(std::env::current_exe()?),
        power_down: a.power_down_command,
        containerd: Some(daemon::ContainerdConfig {
            socket: a.containerd_socket,
            credentials: a.registry_credentials,
            insecure_registries: a.insecure_registries,
        }),
        gpu,
        gpu_curves,
    };
    Ok((cfg, a.metrics_listen))
}

fn size(s: &str) -> Result<u64, String> {
    greenfill_core::units::parse_bytes(s)
        .ok_or_else(|| format!("`{s}` is not a size: {}", greenfill_core::units::BYTES_HELP))
}

fn interval(s: &str) -> Result<Duration, String> {
    match greenfill_core::time::parse_duration(s) {
        Some(v) if (0.001..=3600.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("`{s}` is not an interval between 1ms and 1h (e.g. 1s, 500ms, 1m)")),
    }
}

fn main() {
    let cli = Cli::parse();
    // The one exit site of each command: 1 when it could not start (flags, state
    // dir, port), 70 when the daemon stopped itself (its state could not be saved).
    match cli.command {
        Command::Run(a) => {
            if let Err(failed) = run(*a) {
                greenfill_runtime::exit(failed);
            }
        }
        Command::Shim => std::process::exit(greenfill_agent::runner::shim_main()),
        Command::GreenfillLog { arg } => std::process::exit(greenfill_agent::containerd::log_main(&arg)),
        Command::Gpus { json, check_cap } => {
            if let Err(e) = gpus(json, check_cap) {
                eprintln!("greenfill-agent: {e:#}");
                std::process::exit(1);
            }
        }
        Command::Sample { once, interval, json, machine, watch } => {
            // No logging is set up for `sample`: its error goes to stderr as is.
            if let Err(e) = sample(once, interval, json, &machine, watch) {
                eprintln!("greenfill-agent: {e:#}");
                std::process::exit(1);
            }
        }
    }
}

/// One GPU's power-limit round trip: set to the minimum, read back, restored.
#[derive(Debug, serde::Serialize)]
struct CapCheck {
    index: u32,
    original_w: f64,
    set_w: f64,
    read_back_w: f64,
    restored_w: f64,
}

fn gpus(json: bool, check_cap: bool) -> Result<()> {
    use greenfill_agent::telemetry::Gpus;
    let g = Gpus::open();
    let Some(devices) = g.devices() else {
        println!("no GPU: {}", g.absent_reason);
        return Ok(());
    };
    let mut checks = Vec::new();
    if check_cap {
        let src = g.source().ok_or_else(|| anyhow::anyhow!("no GPU source"))?;
        let read = |i: u32| -> Result<f64> {
            let d = g.devices().unwrap_or_default();
            d.iter().find(|d| d.index == i).map(|d| d.power_limit_w).ok_or_else(|| anyhow::anyhow!("GPU {i} vanished"))
        };
        for d in &devices {
            src.set_power_limit(d.index, d.power_limit_min_w)?;
            let read_back_w = read(d.index)?;
            src.set_power_limit(d.index, d.power_limit_w)?;
            checks.push(CapCheck {
                index: d.index,
                original_w: d.power_limit_w,
                set_w: d.power_limit_min_w,
                read_back_w,
                restored_w: read(d.index)?,
            });
        }
    }
    if json {
        println!("{}", serde_json::json!({ "gpus": devices, "cap_checks": checks }));
        return Ok(());
    }
    for d in &devices {
        println!(
            "GPU {} {} {}: {:.0}/{:.0} MiB, {} % busy, {:.1} W (limit {:.0} W in {:.0}-{:.0}), energy {}, {} process(es)",
            d.index,
            d.uuid,
            d.model,
            d.memory_used_bytes as f64 / 1048576.0,
            d.memory_total_bytes as f64 / 1048576.0,
            d.utilisation_pct,
            d.power_w,
            d.power_limit_w,
            d.power_limit_min_w,
            d.power_limit_max_w,
            d.energy_j.map_or_else(|| "n/a".into(), |j| format!("{j:.0} J")),
            d.processes.len()
        );
    }
    for c in &checks {
        println!(
            "GPU {} cap: {:.0} W -> set {:.0} W, read back {:.0} W, restored {:.0} W",
            c.index, c.original_w, c.set_w, c.read_back_w, c.restored_w
        );
    }
    Ok(())
}

fn sample(once: bool, interval: Duration, json: bool, machine: &MachineArgs, watch: Option<PathBuf>) -> Result<()> {
    let mut sampler = Sampler::new(machine.roots(), machine.model());
    if let Some(w) = watch {
        sampler.watch(w);
    }
    sampler.sample();
    loop {
        std::thread::sleep(interval);
        let s = sampler.sample();
        if json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            let n = &s.node;
            let gib =
                |b: Option<u64>| b.map_or_else(|| "?".into(), |b| format!("{:.2}", b as f64 / f64::from(1u32 << 30)));
            println!(
                "cpu {} of {} cores | mem {} of {} GiB | cgroup {:?} | power {}",
                n.cpu_cores_used.map_or_else(|| "?".into(), |c| format!("{c:.2}")),
                n.cpus.map_or_else(|| "?".into(), |c| c.to_string()),
                gib(n.memory_used_bytes),
                gib(n.memory_total_bytes),
                s.cgroup.version,
                s.power
                    .iter()
                    .map(|p| format!("{} {:.1} W ({:?})", p.component, p.watts, p.source))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if once {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{interval, size};
    use std::time::Duration;

    #[test]
    fn flags_take_the_shared_duration_and_size_grammar() {
        assert_eq!(interval("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(interval("2"), Ok(Duration::from_secs(2)));
        assert!(interval("2h").unwrap_err().contains("between 1ms and 1h"));
        assert!(interval("0").is_err());
        assert_eq!(size("16M"), Ok(16 << 20));
        assert_eq!(size("1000"), Ok(1000));
        assert!(size("16 megs").unwrap_err().contains("binary"));
    }
}
