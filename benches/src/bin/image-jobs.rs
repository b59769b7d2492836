//! Image jobs beside process jobs on this machine (issue 18), with a real
//! containerd and registry on loopback (`greenfill_benches::testbed`):
//!
//! - **start latency**: the agent's runner starting `/bin/true` as a process
//!   job, as an image job with the image present, and with it absent (every
//!   image, blob and snapshot of namespace `greenfill` forgotten first), from the
//!   call to the job running, and to its exit collected and cleaned up;
//! - **agent overhead**: the real `greenfill-agent run` (with a scheduler) while
//!   N image jobs run, beside N process jobs, over the same window: the agent's
//!   CPU and RSS, and the memory of what each kind runs beside each job
//!   (containerd's shim and the logger for an image job; greenfill's shim for a
//!   process job).
//!
//! `cargo run --release -p greenfill-benches --bin image-jobs -- --jobs 20`
//! (root; `scripts/setup.sh` installs containerd and the registry tools).

use anyhow::{Context, Result, bail};
use clap::Parser;
use greenfill_agent::cgroups::{Cgroups, HostCgroups};
use greenfill_agent::containerd::{ImageRef, Pull};
use greenfill_agent::runner::{Images, JobSpec, Runner};
use greenfill_benches::testbed::{Proc, World, free_port};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "Image jobs beside process jobs: start latency and agent overhead")]
struct Args {
    /// Starts of each kind (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Jobs of each kind running while the agent's overhead is measured.
    #[arg(long, default_value_t = 20)]
    jobs: usize,
    /// Seconds over which the agent's CPU is measured.
    #[arg(long, default_value_t = 30.0)]
    window: f64,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Start {
    kind: &'static str,
    /// Median ms from `Runner::start` to the job running.
    start_ms: f64,
    /// Median ms from `Runner::start` to its exit collected and its cgroup (and
    /// container) removed.
    to_exit_ms: f64,
    runs: usize,
}

#[derive(Debug, Serialize)]
struct Overhead {
    kind: &'static str,
    jobs: usize,
    agent_cpu_percent: f64,
    agent_rss_mib: f64,
    /// Summed RSS of what runs beside the jobs (shims, loggers), MiB.
    beside_rss_mib: f64,
    beside_processes: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe dir")?.join(name);
    if !p.exists() {
        bail!("{} not built: cargo build --release --workspace", p.display());
    }
    Ok(p)
}

fn starts(world: &World, repeats: usize) -> Result<Vec<Start>> {
    let root = PathBuf::from(format!("greenfill-bench-img-{}/batch", std::process::id()));
    let cgroups: Arc<dyn Cgroups> = Arc::new(HostCgroups::new(Path::new("/sys/fs/cgroup"), Path::new("/proc")));
    let agent = sibling("greenfill-agent")?;
    let registry = format!("127.0.0.1:{}", world.open_port);
    let images = Images::new(world.socket.clone(), agent.clone(), None, vec![registry], &root)?;
    let runner = Runner::new(&root, cgroups).with_shim(agent).with_images(images);
    let logs = tempfile::tempdir()?;
    let image = ImageRef { reference: world.image(world.open_port), pull: Pull::IfNotPresent, credential: None };
    let spec = |id: String, image: Option<ImageRef>| JobSpec {
        id,
        argv: vec!["/bin/true".into()],
        shell: false,
        env: vec![],
        cwd: None,
        cpu_cores: 0.5,
        memory_bytes: 64 << 20,
        uid: None,
        gid: None,
        log_dir: logs.path().to_owned(),
        log_cap_bytes: 1 << 20,
        image,
        deny_devices: Vec::new(),
    };
    let mut out = Vec::new();
    for (kind, img) in [("process", None), ("image present", Some(&image)), ("image absent", Some(&image))] {
        let (mut start, mut exit) = (Vec::new(), Vec::new());
        // A warm-up run each (and the image pulled once for "present").
        for i in 0..=repeats {
            if kind == "image absent" {
                world.forget_images();
            }
            let s = spec(format!("{}-{i}", kind.replace(' ', "-")), img.cloned());
            let t0 = Instant::now();
            let r = runner.start(&s).with_context(|| format!("{kind} start"))?;
            let t1 = t0.elapsed();
            let e = runner.wait(r);
            let t2 = t0.elapsed();
            if e.code != Some(0) {
                bail!("{kind}: /bin/true ended {e:?}");
            }
            if i > 0 {
                start.push(t1.as_secs_f64() * 1e3);
                exit.push(t2.as_secs_f64() * 1e3);
            }
        }
        out.push(Start { kind, start_ms: median(start), to_exit_ms: median(exit), runs: repeats });
    }
    runner.remove_root();
    Ok(out)
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Pids whose command line contains every one of `words`.
fn pids_with(words: &[&str]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            words.iter().all(|w| cmd.contains(w))
        })
        .collect()
}

/// A scheduler and an agent (release binaries) for the overhead run.
struct Daemons {
    dir: tempfile::TempDir,
    port: u16,
    agent: Proc,
    _scheduler: Proc,
    root: String,
}

impl Daemons {
    fn start(world: &World) -> Result<Daemons> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let root = format!("greenfill-bench-imgd-{}", std::process::id());
        for h in ["cpu,cpuacct", "cpu", "cpuacct", "memory", "unified"] {
            let base = Path::new("/sys/fs/cgroup").join(h);
            if base.is_dir() {
                std::fs::create_dir_all(base.join(&root).join("online"))?;
            }
        }
        let cfg = dir.path().join("scheduler.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\ninsecure_local = true\ndata_dir = \"{}\"\n\
                 [planning]\ninterval = \"1s\"\nmin_gap = \"200ms\"\nslot = \"1m\"\nhorizon = \"2h\"\n",
                dir.path().join("data").display()
            ),
        )?;
        let quiet = |name: &str| std::fs::File::create(dir.path().join(name));
        let scheduler = Command::new(sibling("greenfill-scheduler")?)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(quiet("scheduler.log")?)
            .spawn()?;
        let scheduler = Proc(scheduler);
        greenfill_benches::testbed::wait_for("the scheduler", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let agent = Command::new(sibling("greenfill-agent")?)
            .args(["run", "--server", &format!("http://127.0.0.1:{port}"), "--node-name", "bench"])
            .args(["--batch-root", &format!("{root}/batch"), "--online-cgroup", &format!("{root}/online")])
            .arg("--state-dir")
            .arg(dir.path().join("agent"))
            .arg("--lock-dir")
            .arg(dir.path().join("lock"))
            .arg("--containerd-socket")
            .arg(&world.socket)
            .args(["--insecure-registry", &format!("127.0.0.1:{}", world.open_port)])
            .stdout(Stdio::null())
            .stderr(quiet("agent.log")?)
            .spawn()?;
        Ok(Daemons { dir, port, agent: Proc(agent), _scheduler: scheduler, root })
    }

    fn greenfill(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(sibling("greenfill")?)
            .args(&args[..1])
            .args(["--server", &format!("http://127.0.0.1:{}", self.port)])
            .args(&args[1..])
            .output()?;
        if !out.status.success() {
            bail!("greenfill {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    fn states(&self) -> Result<Vec<(String, String)>> {
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&self.greenfill(&["jobs", "--json"])?)?;
        Ok(jobs
            .iter()
            .map(|j| (j["id"].as_str().unwrap_or("").into(), j["state"].as_str().unwrap_or("").into()))
            .collect())
    }

    fn wait(&self, what: &str, done: impl Fn(&[(String, String)]) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(s) = self.states()
                && done(&s)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; see {}", self.dir.path().display());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Run `n` jobs of one kind, measure over `window`, then cancel them.
    fn measure(
        &self,
        kind: &'static str,
        image: Option<&str>,
        socket: &Path,
        n: usize,
        window: f64,
    ) -> Result<Overhead> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let mut args = vec!["submit", "--cpu", "0.05", "--memory", "16Mi", "--duration", "10m"];
            if let Some(i) = image {
                args.extend(["--image", i]);
            }
            args.extend(["--", "/bin/sleep", "600"]);
            ids.push(self.greenfill(&args)?.trim().to_owned());
        }
        let running = |s: &[(String, String)]| ids.iter().all(|id| s.iter().any(|(i, st)| i == id && st == "running"));
        self.wait(&format!("{n} {kind} jobs running"), running)?;
        std::thread::sleep(Duration::from_secs(2));
        let pid = self.agent.0.id();
        let c0 = cpu_seconds(pid).context("agent cpu")?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(window));
        let c1 = cpu_seconds(pid).context("agent cpu")?;
        // Only this run's: other containerds' shims, other agents' loggers and shims are not counted.
        let beside: Vec<u32> = if image.is_some() {
            let mut p = pids_with(&["containerd-shim-runc-v2", &socket.display().to_string()]);
            p.extend(pids_with(&["greenfill-log", &self.dir.path().display().to_string()]));
            p
        } else {
            let ours = format!(":/{}/batch/", self.root);
            pids_with(&["greenfill-agent", "shim"])
                .into_iter()
                .filter(|p| std::fs::read_to_string(format!("/proc/{p}/cgroup")).is_ok_and(|c| c.contains(&ours)))
                .collect()
        };
        let out = Overhead {
            kind,
            jobs: n,
            agent_cpu_percent: 100.0 * (c1 - c0) / t0.elapsed().as_secs_f64(),
            agent_rss_mib: rss_mib(pid),
            beside_rss_mib: beside.iter().map(|p| rss_mib(*p)).sum(),
            beside_processes: beside.len(),
        };
        for id in &ids {
            self.greenfill(&["cancel", id])?;
        }
        let gone = |s: &[(String, String)]| ids.iter().all(|id| s.iter().any(|(i, st)| i == id && st == "cancelled"));
        self.wait(&format!("{n} {kind} jobs cancelled"), gone)?;
        Ok(out)
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let _ = self.agent.0.kill();
        let _ = self.agent.0.wait();
        for h in [
            "cpu,cpuacct",
            "cpu",
            "cpuacct",
            "memory",
            "unified",
            "pids",
            "blkio",
            "freezer",
            "devices",
            "cpuset",
            "systemd",
        ] {
            let base = Path::new("/sys/fs/cgroup").join(h).join(&self.root);
            for sub in ["batch", "online", ""] {
                let _ = std::fs::remove_dir(base.join(sub));
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(why) = greenfill_benches::testbed::missing() {
        bail!("{why}");
    }
    eprintln!("image-jobs: starting containerd and registries, building the image");
    let world = World::start();
    eprintln!("image-jobs: start latency, {} runs of each kind", args.repeats);
    let starts = starts(&world, args.repeats)?;
    eprintln!("image-jobs: agent overhead with {} jobs of each kind over {} s", args.jobs, args.window);
    let daemons = Daemons::start(&world)?;
    let image = world.image(world.open_port);
    let overhead = vec![
        daemons.measure("image", Some(&image), &world.socket, args.jobs, args.window)?,
        daemons.measure("process", None, &world.socket, args.jobs, args.window)?,
    ];
    drop(daemons);
    if args.json {
        println!("{}", serde_json::json!({"starts": starts, "overhead": overhead}));
    } else {
        println!("{:<14} {:>10} {:>12}", "start", "start ms", "to exit ms");
        for s in &starts {
            println!("{:<14} {:>10.1} {:>12.1}", s.kind, s.start_ms, s.to_exit_ms);
        }
        println!(
            "\n{:<8} {:>5} {:>10} {:>10} {:>12} {:>10}",
            "jobs", "n", "agent cpu%", "agent MiB", "beside MiB", "beside n"
        );
        for o in &overhead {
            println!(
                "{:<8} {:>5} {:>10.3} {:>10.1} {:>12.1} {:>10}",
                o.kind, o.jobs, o.agent_cpu_percent, o.agent_rss_mib, o.beside_rss_mib, o.beside_processes
            );
        }
    }
    Ok(())
}
