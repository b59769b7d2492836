//! `qos`: a real latency-critical service beside greenfill's batch, on this
//! machine. memcached (Debian's) runs in an "online" cgroup; an open-loop load
//! generator (Poisson arrivals at a fixed rate, latency from each request's
//! *intended* send time, so queueing is not hidden by coordinated omission) drives
//! it at shares of its measured peak; batch CPU work runs through the agent's own
//! runner and guard. Inside each run batch is switched on and off in short
//! segments, so each "on" segment is compared with the "off" one before it on the
//! same machine a moment earlier (paired ratios beat the noise of a shared VM).
//!
//! Conditions: `alone` (no batch), `unprotected` (batch at normal priority, no
//! guard), `priority` (the batch subtree at the kernel's idle priority, no guard),
//! `guard-only` (the guard's quota loop without kernel priority: the layout
//! greenfill shipped before, less its node-wide PSI rule), `formula` (idle
//! priority and the usage formula's quota: `--cpu-suppress always`) and
//! `greenfill` (the agent as it runs: idle priority, the guard with its PSI
//! trigger on the online cgroup, the formula off where idle priority holds).
//!
//! `--repeats` runs the whole sweep again, conditions interleaved, and pools the
//! pairs; each row also shows the spread of the per-repeat ratios.
//!
//! Needs root (cgroups) and memcached. The client's threads run SCHED_FIFO
//! (`chrt -f -p 10` on each thread), so batch cannot delay the client itself;
//! memcached and batch run at the normal policy.

use anyhow::{Context, Result, bail};
use clap::Parser;
use greenfill_agent::cgroups::{Cgroups, HostCgroups};
use greenfill_agent::guard::{Guard, GuardConfig, GuardJob, Suppress};
use greenfill_agent::runner::{JobSpec, Runner, Running};
use greenfill_agent::telemetry::{LinearPowerModel, PsiTrigger, Roots, Sampler};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// memcached beside greenfill's batch: tail latency per condition and load.
#[derive(Debug, Parser)]
struct Args {
    /// Online load levels, % of the server's measured peak.
    #[arg(long, value_delimiter = ',', default_value = "20,40,60")]
    levels: Vec<f64>,
    /// Conditions to run (alone, unprotected, priority, guard-only, formula, greenfill).
    #[arg(long, value_delimiter = ',', default_value = "alone,unprotected,priority,guard-only,formula,greenfill")]
    conditions: Vec<String>,
    /// Sweeps of every level and condition; their pairs are pooled.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// Length of one batch-off or batch-on segment.
    #[arg(long, default_value = "2s", value_parser = duration)]
    segment: Duration,
    /// Off/on pairs per condition and level.
    #[arg(long, default_value_t = 6)]
    pairs: usize,
    /// Client connections (one thread each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// memcached worker threads.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// memcached binary.
    #[arg(long, default_value = "/usr/bin/memcached")]
    memcached: PathBuf,
    /// TCP port for memcached on 127.0.0.1 (0 = a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// A few seconds in all: one level, two conditions, one pair of short
    /// segments (CI runs this to check that the harness runs and measures).
    #[arg(long)]
    smoke: bool,
    /// Print the rows as JSON.
    #[arg(long)]
    json: bool,
    /// Instead of the table: the load-step run (online 20 → 60 → 20 % of peak,
    /// this long each, greenfill's batch on): the worst 100 ms window's p99 after
    /// the step and how long the guard's cap takes to reach the formula's value.
    #[arg(long, value_parser = duration)]
    step: Option<Duration>,
    /// The condition of the load-step run (`formula` shows the formula's
    /// reaction; `alone` the step with no batch, the baseline).
    #[arg(long, default_value = "greenfill")]
    step_condition: String,
    /// The guard's threshold (the agent's `--cpu-threshold`): share of the CPUs
    /// online and batch may use together.
    #[arg(long, default_value_t = 0.9)]
    cpu_threshold: f64,
}

fn duration(s: &str) -> Result<Duration, String> {
    greenfill_core::time::parse_duration(s)
        .filter(|v| *v > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 500ms, 2s)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Alone,
    Unprotected,
    Priority,
    GuardOnly,
    Formula,
    Greenfill,
}

impl Condition {
    fn parse(s: &str) -> Result<Condition> {
        Ok(match s {
            "alone" => Condition::Alone,
            "unprotected" => Condition::Unprotected,
            "priority" => Condition::Priority,
            "guard-only" => Condition::GuardOnly,
            "formula" => Condition::Formula,
            "greenfill" => Condition::Greenfill,
            _ => {
                bail!("--conditions: `{s}` is not one of alone, unprotected, priority, guard-only, formula, greenfill")
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Condition::Alone => "alone",
            Condition::Unprotected => "unprotected",
            Condition::Priority => "priority",
            Condition::GuardOnly => "guard-only",
            Condition::Formula => "formula",
            Condition::Greenfill => "greenfill",
        }
    }

    fn idle_priority(self) -> bool {
        matches!(self, Condition::Priority | Condition::Formula | Condition::Greenfill)
    }

    /// The guard runs, and when its usage formula applies.
    fn guard(self) -> Option<Suppress> {
        match self {
            Condition::GuardOnly | Condition::Formula => Some(Suppress::Always),
            Condition::Greenfill => Some(Suppress::Auto),
            _ => None,
        }
    }
}

/// One condition at one load level.
#[derive(Debug, Serialize)]
struct Row {
    condition: &'static str,
    level_pct: f64,
    target_rate: f64,
    achieved_rate: f64,
    /// Latency with batch on, µs (for `alone`: every segment).
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    /// The same in the batch-off segments of the same run.
    off_p99_us: u64,
    off_p999_us: u64,
    /// Median over pairs (of every repeat) of p99(on) / p99(off before it).
    paired_p99_ratio: f64,
    paired_p999_ratio: f64,
    /// The lowest and highest of the per-repeat medians.
    p99_ratio_range: [f64; 2],
    repeats: usize,
    /// Batch CPU done while on, core-seconds, and its share of the CPU that
    /// online work and the client left idle.
    batch_cpu_s: f64,
    harvested_pct: f64,
    /// (online + client + batch) / CPUs while batch was on.
    machine_util_pct: f64,
    guard_cuts: u64,
    /// Cuts for online CPU pressure (avg10 or the trigger).
    guard_psi_cuts: u64,
    guard_write_errors: u64,
}

/// Set by SIGINT / SIGTERM: the run stops at the next segment and the harness
/// removes what it made (memcached, batch jobs, cgroups) as it does on an error.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A thread that waits for SIGINT or SIGTERM (tokio's handler) and sets
/// [`INTERRUPTED`].
fn on_signals() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let (mut int, mut term) = rt.block_on(async {
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("qos: interrupted; stopping and cleaning up");
        INTERRUPTED.store(true, Ordering::Relaxed);
    });
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted; memcached, the batch jobs and the cgroups are removed");
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("qos: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(mut args: Args) -> Result<()> {
    if !(args.cpu_threshold > 0.0 && args.cpu_threshold <= 1.0) {
        bail!("--cpu-threshold {}: need 0 < threshold <= 1", args.cpu_threshold);
    }
    let mut conditions: Vec<Condition> = args.conditions.iter().map(|c| Condition::parse(c)).collect::<Result<_>>()?;
    if !greenfill_core::testing::is_root() {
        bail!("needs root, to create cgroups for memcached and the batch jobs");
    }
    if !args.memcached.exists() {
        bail!("{} not found: apt-get install memcached (or give --memcached)", args.memcached.display());
    }
    if args.smoke {
        args.levels = vec![20.0];
        args.pairs = 1;
        args.segment = Duration::from_millis(500);
        conditions = vec![Condition::Alone, Condition::Greenfill];
    }
    on_signals()?;
    let mut h = Harness::start(&args)?;
    let peak = h.peak(if args.smoke { Duration::from_millis(500) } else { Duration::from_secs(3) })?;
    eprintln!("memcached peak (closed loop, {} connections): {peak:.0} gets/s", args.connections);
    if let Some(phase) = args.step {
        let row = h.step_run(peak, phase, Condition::parse(&args.step_condition)?)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&row)?);
        } else {
            let formula = match (row.formula_cap, row.seconds_to_formula) {
                (None, _) if row.condition == "alone" => "no batch".to_owned(),
                (None, _) => "no quota loop (idle priority)".to_owned(),
                (Some(f), None) => format!("cap never reached the formula ({f:.2} cores)"),
                (Some(f), Some(t)) => format!("cap at the formula ({f:.2} cores) {t:.1} s after the step"),
            };
            println!(
                "{} step {:.0} → {:.0} → {:.0} %: p99 before {} µs, worst 100 ms window after the step {} µs; \
                 {formula}; pressure cuts {}; caps after the step down: {:?}",
                row.condition,
                row.low_pct,
                row.high_pct,
                row.low_pct,
                row.before_p99_us,
                row.worst_window_p99_us,
                row.psi_cuts,
                row.caps_after.iter().map(|c| (c * 100.0).round() / 100.0).collect::<Vec<_>>()
            );
        }
        return Ok(());
    }
    let cells: Vec<(f64, Condition)> =
        args.levels.iter().flat_map(|&l| conditions.iter().map(move |&c| (l, c))).collect();
    let mut pooled: Vec<Vec<Measured>> = cells.iter().map(|_| Vec::new()).collect();
    for repeat in 0..args.repeats.max(1) {
        for (&(level, c), runs) in cells.iter().zip(&mut pooled) {
            let m = h.measure(&args, c, peak * level / 100.0)?;
            let row = m.row(c, level, peak * level / 100.0, h.cpus, &[]);
            eprintln!(
                "[{}/{}] {:<12} {:>3.0} %  p99 {:>6} µs (off {:>6})  paired p99 ×{:.2} p99.9 ×{:.2}  harvest {:>5.1} %",
                repeat + 1,
                args.repeats.max(1),
                row.condition,
                level,
                row.p99_us,
                row.off_p99_us,
                row.paired_p99_ratio,
                row.paired_p999_ratio,
                row.harvested_pct
            );
            runs.push(m);
        }
    }
    let rows: Vec<Row> = cells
        .iter()
        .zip(&pooled)
        .map(|(&(level, c), runs)| Measured::pool(runs).row(c, level, peak * level / 100.0, h.cpus, runs))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<12} {:>5} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>8} {:>8} {:>6}",
        "condition",
        "load",
        "rate/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "off p99",
        "p99 ×",
        "p99.9 ×",
        "harvest",
        "util",
        "cuts"
    );
    for r in rows {
        println!(
            "{:<12} {:>4.0}% {:>9.0} {:>8} {:>8} {:>8} {:>9} {:>8.2} {:>9.2} {:>7.1}% {:>7.1}% {:>6}",
            r.condition,
            r.level_pct,
            r.achieved_rate,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.off_p99_us,
            r.paired_p99_ratio,
            r.paired_p999_ratio,
            r.harvested_pct,
            r.machine_util_pct,
            r.guard_cuts
        );
    }
    if let Some(u) = rows.iter().find(|r| r.condition == "unprotected")
        && u.paired_p99_ratio < 1.1
    {
        println!(
            "insensitive: unprotected batch raised p99 by less than 10 %; this run shows no interference to protect against"
        );
    }
}

/// memcached, the cgroups and the batch runner; all of it removed on drop.
struct Harness {
    /// The batch subtree's top (`<base>/batch` is the batch root); online is a
    /// sibling of it, as on a real node.
    base: PathBuf,
    online: PathBuf,
    batch: PathBuf,
    cgroups: Arc<HostCgroups>,
    runner: Runner,
    server: Child,
    port: u16,
    cpus: f64,
    connections: usize,
    threshold: f64,
    logs: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        for id in ["qos-a", "qos-b"] {
            self.runner.signal_cgroup(&self.batch.join(id), nix::sys::signal::Signal::SIGCONT);
            self.runner.kill_cgroup(&self.batch.join(id));
        }
        self.runner.remove_root();
        let _ = self.cgroups.remove(&self.online);
        let _ = self.cgroups.remove(&self.base);
        if let Some(v2) = self.cgroups.layout().v2.clone() {
            let _ = std::fs::remove_dir(v2.join(&self.online));
        }
    }
}

fn free_port(asked: u16) -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", asked))
        .with_context(|| format!("port {asked} on 127.0.0.1 is busy (give another with --port)"))?;
    Ok(l.local_addr()?.port())
}

impl Harness {
    fn start(args: &Args) -> Result<Harness> {
        let base = PathBuf::from(format!("greenfill-qos-{}", std::process::id()));
        let cgroups = Arc::new(HostCgroups::new(Path::new("/sys/fs/cgroup"), Path::new("/proc")));
        let port = free_port(args.port)?;
        let online = PathBuf::from(format!("greenfill-qos-{}-online", std::process::id()));
        cgroups.create(&online).context("creating the online cgroup")?;
        let server = Command::new(&args.memcached)
            .args(["-u", "nobody", "-l", "127.0.0.1", "-U", "0", "-m", "64", "-c", "1024"])
            .args(["-p", &port.to_string(), "-t", &args.server_threads.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.memcached.display()))?;
        let batch = base.join("batch");
        let runner = Runner::new(&batch, cgroups.clone());
        #[allow(clippy::cast_precision_loss, reason = "a CPU count")]
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) as f64;
        let logs = tempfile::tempdir()?;
        let (connections, threshold) = (args.connections, args.cpu_threshold);
        let h = Harness { base, online, batch, cgroups, runner, server, port, cpus, connections, threshold, logs };
        h.cgroups.add_process(&h.online, h.server.id()).context("moving memcached into its cgroup")?;
        h.join_unified()?;
        h.wait_ready()?;
        let mut c = Client::connect(h.port)?;
        c.set("k", &[b'x'; 100])?;
        Ok(h)
    }

    /// Beside v1 controllers the unified hierarchy (`/sys/fs/cgroup/unified`)
    /// has no controllers but does account pressure per cgroup: memcached joins
    /// an online cgroup there too, so its `cpu.pressure` (and a PSI trigger) exist,
    /// as they do for systemd's slices on such a node.
    fn join_unified(&self) -> Result<()> {
        let Some(v2) = self.cgroups.layout().v2.clone() else { return Ok(()) };
        let dir = v2.join(&self.online);
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(dir.join("cgroup.procs"), self.server.id().to_string())
            .with_context(|| format!("moving memcached into {}", dir.display()))
    }

    fn wait_ready(&self) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > until {
                bail!("memcached did not listen on 127.0.0.1:{} within 5 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Closed-loop gets/s over `time` with every connection busy.
    fn peak(&self, time: Duration) -> Result<f64> {
        let threads: Vec<_> = (0..self.connections)
            .map(|_| {
                let port = self.port;
                std::thread::spawn(move || -> Result<u64> {
                    let mut c = Client::connect(port)?;
                    let until = Instant::now() + time;
                    let mut n = 0;
                    while Instant::now() < until {
                        c.get("k")?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        let mut total = 0;
        for t in threads {
            total += t.join().map_err(|_| anyhow::anyhow!("a peak thread panicked"))??;
        }
        #[allow(clippy::cast_precision_loss, reason = "a count")]
        Ok(total as f64 / time.as_secs_f64())
    }

    /// Two batch jobs, each allowed the whole machine, each with a spinner per CPU.
    fn start_batch(&self, c: Condition) -> Result<(Vec<Running>, Vec<GuardJob>)> {
        if c.idle_priority() {
            self.runner.prioritise()?;
        } else {
            // Normal priority for the whole batch subtree.
            let top = self.cgroups.layout().v1_cpu.clone().or(self.cgroups.layout().v2.clone());
            if let Some(dir) = top.map(|t| t.join(&self.base)) {
                let _ = std::fs::write(dir.join("cpu.idle"), "0");
                let _ = std::fs::write(dir.join("cpu.shares"), "1024");
            }
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a CPU count")]
        let spinners = vec!["(while :; do :; done) &"; self.cpus as usize].join(" ");
        let (mut running, mut jobs) = (Vec::new(), Vec::new());
        for id in ["qos-a", "qos-b"] {
            let spec = JobSpec {
                id: id.into(),
                argv: vec!["sh".into(), "-c".into(), format!("{spinners} wait")],
                shell: false,
                env: vec![],
                cwd: None,
                cpu_cores: self.cpus,
                memory_bytes: 64 << 20,
                uid: None,
                gid: None,
                log_dir: self.logs.path().to_owned(),
                log_cap_bytes: 4096,
                image: None,
                deny_devices: Vec::new(),
            };
            let r = self.runner.start(&spec)?;
            jobs.push(GuardJob {
                attempt: id.into(),
                cgroup: r.cgroup_path.clone(),
                priority: 0,
                cpu_cores: self.cpus,
            });
            running.push(r);
        }
        Ok((running, jobs))
    }

    /// Kill the jobs and remove the batch root, so the next condition starts
    /// with no quota left by the guard.
    fn stop_batch(&self, running: Vec<Running>) {
        for r in running {
            self.runner.signal_cgroup(&r.cgroup_path, nix::sys::signal::Signal::SIGCONT);
            self.runner.kill(r);
        }
        self.runner.remove_root();
    }

    fn pause_batch(&self, jobs: &[GuardJob], on: bool) {
        let sig = if on { nix::sys::signal::Signal::SIGCONT } else { nix::sys::signal::Signal::SIGSTOP };
        for j in jobs {
            self.runner.signal_cgroup(&j.cgroup, sig);
        }
    }

    fn measure(&mut self, args: &Args, c: Condition, rate: f64) -> Result<Measured> {
        let (running, jobs) = if c == Condition::Alone { (Vec::new(), Vec::new()) } else { self.start_batch(c)? };
        self.pause_batch(&jobs, false);
        let stop_guard = Arc::new(AtomicBool::new(false));
        let guard =
            c.guard().map(|suppress| self.spawn_guard(jobs.clone(), suppress, c.idle_priority(), stop_guard.clone()));
        let segments = 2 * args.pairs;
        let seg = args.segment;
        let t0 = Instant::now() + Duration::from_millis(200);
        let load = {
            let (port, conns) = (self.port, args.connections);
            std::thread::spawn(move || open_loop(port, conns, &vec![rate; segments], t0, seg))
        };
        let mut usage = Vec::with_capacity(segments + 1);
        for k in 0..=segments {
            let at = t0 + seg * u32::try_from(k).unwrap_or(0);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if INTERRUPTED.load(Ordering::Relaxed) {
                break;
            }
            usage.push(self.cpu_now());
            if k < segments {
                self.pause_batch(&jobs, k % 2 == 1);
            }
        }
        let hists = load.join().map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
        stop_guard.store(true, Ordering::Relaxed);
        let run = match guard {
            Some(g) => g.join().map_err(|_| anyhow::anyhow!("the guard thread panicked"))?,
            None => GuardRun::default(),
        };
        self.stop_batch(running);
        check_interrupted()?;
        Ok(Measured::new(c, &hists, &usage, seg, &run))
    }

    /// Online 20 → 60 → 20 % for `phase` each, batch on throughout, the agent as
    /// it runs (priority and guard).
    fn step_run(&mut self, peak: f64, phase: Duration, c: Condition) -> Result<StepRow> {
        let (low, high) = (20.0, 60.0);
        let window = Duration::from_millis(100);
        let per_phase = usize::try_from(phase.as_millis() / window.as_millis()).unwrap_or(50).max(10);
        let mut rates = vec![peak * low / 100.0; per_phase];
        rates.extend(vec![peak * high / 100.0; per_phase]);
        rates.extend(vec![peak * low / 100.0; per_phase]);
        // `alone`: the step with no batch, the baseline for its worst window.
        let (running, jobs) = if c == Condition::Alone { (Vec::new(), Vec::new()) } else { self.start_batch(c)? };
        let stop = Arc::new(AtomicBool::new(false));
        let suppress = c.guard().unwrap_or(Suppress::Never);
        let guard = self.spawn_guard(jobs, suppress, c.idle_priority(), stop.clone());
        // Let the guard settle on the low load first.
        std::thread::sleep(Duration::from_secs(3));
        let t0 = Instant::now() + Duration::from_millis(100);
        let (port, conns) = (self.port, self.connections);
        let load = std::thread::spawn(move || open_loop(port, conns, &rates, t0, window));
        let load = load.join().map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let run = guard.join().map_err(|_| anyhow::anyhow!("the guard thread panicked"))?;
        self.stop_batch(running);
        let up = t0 + window * u32::try_from(per_phase).unwrap_or(0);
        let down = up + window * u32::try_from(per_phase).unwrap_or(0);
        let mut before: Vec<u64> = load.segments[..per_phase].iter().map(|h| h.value_at_quantile(0.99)).collect();
        before.sort_unstable();
        let after_up = &load.segments[per_phase..(per_phase + 20).min(load.segments.len())];
        // The formula at the high load, from the online use the guard measured in its last second there.
        let high_online =
            run.caps.iter().filter(|(t, _, _)| *t > up && *t <= down).map(|c| c.2).next_back().unwrap_or(0.0);
        let formula = suppress
            .quota_loop(c.idle_priority())
            .then(|| (self.threshold * self.cpus - high_online).max(GuardConfig::default().floor_cores));
        let reached = formula.and_then(|formula| {
            run.caps
                .iter()
                .find(|(t, cap, _)| *t > up && *cap <= formula + greenfill_core::guard::DEAD_BAND_CORES)
                .map(|(t, _, _)| t.duration_since(up).as_secs_f64())
        });
        Ok(StepRow {
            condition: c.name(),
            psi_cuts: run.psi_cuts,
            low_pct: low,
            high_pct: high,
            before_p99_us: before.get(before.len() / 2).copied().unwrap_or(0),
            worst_window_p99_us: after_up.iter().map(|h| h.value_at_quantile(0.99)).max().unwrap_or(0),
            seconds_to_formula: reached,
            formula_cap: formula,
            caps_after: run.caps.iter().filter(|(t, _, _)| *t > down).map(|c| c.1).collect(),
        })
    }

    /// The agent's guard on real telemetry, ticking every second, with its PSI
    /// trigger on the online cgroup where the kernel has one (cgroup v2, or
    /// the unified hierarchy beside v1).
    fn spawn_guard(
        &self,
        jobs: Vec<GuardJob>,
        suppress: Suppress,
        idle_priority: bool,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<GuardRun> {
        let cgroups: Arc<dyn Cgroups> = self.cgroups.clone();
        let batch = self.batch.clone();
        let (threshold, online) = (self.threshold, self.online.clone());
        std::thread::spawn(move || {
            let roots =
                Roots { proc: "/proc".into(), cgroup: "/sys/fs/cgroup".into(), powercap: "/nonexistent".into() };
            let mut sampler = Sampler::new(roots, LinearPowerModel { idle_w_per_cpu: 0.74, max_w_per_cpu: 3.5 });
            sampler.watch(&batch);
            sampler.sample();
            let cfg = GuardConfig { threshold, suppress, online_cgroups: vec![online], ..GuardConfig::default() };
            let psi_threshold = cfg.psi_threshold;
            let mut g = Guard::with_cgroups(cfg, Path::new("/sys/fs/cgroup"), &batch, cgroups);
            g.set_idle_priority(idle_priority);
            let g = Arc::new(std::sync::Mutex::new(g));
            let trigger = spawn_trigger(&g, &jobs, psi_threshold, &stop);
            let mut caps = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let sample = sampler.sample();
                let mut g = g.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                g.step(&sample, &jobs);
                let online = sample.node.cpu_cores_used.unwrap_or(0.0) - sample.workloads.cpu_cores.unwrap_or(0.0);
                caps.push((Instant::now(), g.limit().unwrap_or(f64::NAN), online.max(0.0)));
            }
            if let Some(t) = trigger {
                let _ = t.join();
            }
            let g = g.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            GuardRun { cuts: g.cuts, psi_cuts: g.psi_cuts, write_errors: g.write_errors, caps }
        })
    }

    /// CPU seconds so far: (online cgroup, batch root, this process).
    fn cpu_now(&self) -> CpuNow {
        let own = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        });
        #[allow(clippy::cast_precision_loss, reason = "clock ticks")]
        CpuNow {
            online: self.cgroups.usage(&self.online).cpu_seconds.unwrap_or(0.0),
            batch: self.cgroups.usage(&self.batch).cpu_seconds.unwrap_or(0.0),
            client: own.map_or(0.0, |t| t as f64 / 100.0),
        }
    }
}

/// The agent's PSI trigger (its `pressure_loop`): the guard cuts between
/// ticks when the online cgroup stalls `psi_threshold` % of a 500 ms window.
fn spawn_trigger(
    g: &Arc<std::sync::Mutex<Guard>>,
    jobs: &[GuardJob],
    psi_threshold: f64,
    stop: &Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let files = {
        let g = g.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.policy().quota_loop { g.pressure_files() } else { return None }
    };
    let window = greenfill_agent::telemetry::psi::MIN_WINDOW;
    let trigger = match PsiTrigger::open(&files, psi_threshold / 100.0, window) {
        Ok(t) if !files.is_empty() => t,
        Ok(_) => return None,
        Err(e) => {
            eprintln!("qos: no PSI trigger on the online cgroup ({e}); the guard reads avg10 each tick");
            return None;
        }
    };
    let (g, jobs, stop) = (g.clone(), jobs.to_vec(), stop.clone());
    Some(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if trigger.wait(Duration::from_millis(100)).unwrap_or(false) {
                g.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pressure_event(&jobs);
            }
        }
    }))
}

/// What the guard did in a run: its counters and, per tick, (time, cap, online
/// cores it measured).
#[derive(Default)]
struct GuardRun {
    cuts: u64,
    psi_cuts: u64,
    write_errors: u64,
    caps: Vec<(Instant, f64, f64)>,
}

/// The load-step run: online 20 → 60 → 20 % of peak with greenfill's batch on.
#[derive(Debug, Serialize)]
struct StepRow {
    condition: &'static str,
    /// Cuts for online CPU pressure during the run.
    psi_cuts: u64,
    low_pct: f64,
    high_pct: f64,
    /// Median p99 of the 100 ms windows before the step, µs.
    before_p99_us: u64,
    /// The worst 100 ms window's p99 in the 2 s after the step up, µs.
    worst_window_p99_us: u64,
    /// From the step up to the first guard tick whose cap is within the dead
    /// band of the formula's value at the high load (`threshold × cpus − online`);
    /// `None` where the formula is off (greenfill at idle priority) or never reached.
    seconds_to_formula: Option<f64>,
    formula_cap: Option<f64>,
    /// The cap after the step back down (it rises at most 0.5 core a tick).
    caps_after: Vec<f64>,
}

#[derive(Debug, Clone, Copy)]
struct CpuNow {
    online: f64,
    batch: f64,
    client: f64,
}

/// Put the calling thread under SCHED_FIFO (priority 10), so batch cannot delay
/// the client; says so once if it cannot.
fn realtime() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|t| t.to_string_lossy().into_owned()));
    let ok = tid.is_some_and(|tid| {
        Command::new("chrt").args(["-f", "-p", "10", &tid]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
    });
    if !ok && !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!("qos: cannot make the client real-time (chrt); batch may delay the client itself");
    }
}

/// One histogram per segment (even = batch off, odd = on) and the requests done.
struct Load {
    segments: Vec<Histogram<u64>>,
    done: u64,
    elapsed_s: f64,
}

/// Open-loop load: `rates[k]` gets/s (over all connections) in segment `k` of
/// length `seg` from `t0`; one histogram per segment.
fn open_loop(port: u16, conns: usize, rates: &[f64], t0: Instant, seg: Duration) -> Result<Load> {
    let segments = rates.len();
    let end = t0 + seg * u32::try_from(segments).unwrap_or(0);
    let rates: Arc<Vec<f64>> = Arc::new(rates.to_vec());
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let rates = rates.clone();
            std::thread::spawn(move || -> Result<(Vec<Histogram<u64>>, u64)> {
                realtime();
                let mut c = Client::connect(port)?;
                let mut hists: Vec<Histogram<u64>> =
                    (0..segments).map(|_| Histogram::new_with_bounds(1, 10_000_000, 3)).collect::<Result<_, _>>()?;
                let mut rng = Lcg(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
                let mut intended = t0;
                let mut done = 0;
                loop {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a segment index")]
                    let now_k = (intended.duration_since(t0).as_secs_f64() / seg.as_secs_f64()) as usize;
                    #[allow(clippy::cast_precision_loss, reason = "a count")]
                    let per_conn = rates[now_k.min(segments - 1)] / conns as f64;
                    intended += Duration::from_secs_f64(-rng.unit().ln() / per_conn);
                    if intended >= end || INTERRUPTED.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(intended.saturating_duration_since(Instant::now()));
                    c.get("k")?;
                    let latency = Instant::now().duration_since(intended);
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a segment index")]
                    let k = (intended.duration_since(t0).as_secs_f64() / seg.as_secs_f64()) as usize;
                    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, 10_000_000);
                    hists[k.min(segments - 1)].saturating_record(us);
                    done += 1;
                }
                Ok((hists, done))
            })
        })
        .collect();
    let mut segments_out: Vec<Histogram<u64>> =
        (0..segments).map(|_| Histogram::new_with_bounds(1, 10_000_000, 3)).collect::<Result<_, _>>()?;
    let mut done = 0;
    for t in threads {
        let (hists, n) = t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        for (out, h) in segments_out.iter_mut().zip(&hists) {
            out.add(h)?;
        }
        done += n;
    }
    Ok(Load { segments: segments_out, done, elapsed_s: end.duration_since(t0).as_secs_f64() })
}

/// What one or more runs of a condition at a level measured.
struct Measured {
    /// Latency with batch on (for `alone`: every segment) and off.
    on: Histogram<u64>,
    off: Histogram<u64>,
    /// Per pair: p99 and p99.9 on / off.
    ratios_99: Vec<f64>,
    ratios_999: Vec<f64>,
    /// Core-seconds while batch was on: batch, online + client; and seconds on.
    batch_s: f64,
    other_s: f64,
    on_s: f64,
    done: u64,
    elapsed_s: f64,
    cuts: u64,
    psi_cuts: u64,
    write_errors: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000, 3).expect("valid bounds")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl Measured {
    fn new(c: Condition, load: &Load, usage: &[CpuNow], seg: Duration, run: &GuardRun) -> Measured {
        let (mut on, mut off) = (histogram(), histogram());
        for (k, s) in load.segments.iter().enumerate() {
            let _ = if c == Condition::Alone || k % 2 == 1 { on.add(s) } else { off.add(s) };
        }
        let pairs = |q: f64| -> Vec<f64> {
            if c == Condition::Alone {
                return vec![1.0];
            }
            load.segments
                .chunks(2)
                .filter(|p| p.len() == 2 && !p[0].is_empty() && !p[1].is_empty())
                .map(|p| ratio_of(p[1].value_at_quantile(q), p[0].value_at_quantile(q)))
                .collect()
        };
        // CPU while batch was on (odd segments).
        let (mut batch_s, mut other_s, mut on_s) = (0.0, 0.0, 0.0);
        for k in (1..usage.len()).filter(|k| (k - 1) % 2 == 1) {
            let (a, b) = (usage[k - 1], usage[k]);
            batch_s += b.batch - a.batch;
            other_s += (b.online - a.online) + (b.client - a.client);
            on_s += seg.as_secs_f64();
        }
        Measured {
            on,
            off,
            ratios_99: pairs(0.99),
            ratios_999: pairs(0.999),
            batch_s,
            other_s,
            on_s,
            done: load.done,
            elapsed_s: load.elapsed_s,
            cuts: run.cuts,
            psi_cuts: run.psi_cuts,
            write_errors: run.write_errors,
        }
    }

    /// Every run's pairs and CPU together.
    fn pool(runs: &[Measured]) -> Measured {
        let mut out = Measured {
            on: histogram(),
            off: histogram(),
            ratios_99: vec![],
            ratios_999: vec![],
            batch_s: 0.0,
            other_s: 0.0,
            on_s: 0.0,
            done: 0,
            elapsed_s: 0.0,
            cuts: 0,
            psi_cuts: 0,
            write_errors: 0,
        };
        for m in runs {
            let _ = (out.on.add(&m.on), out.off.add(&m.off));
            out.ratios_99.extend(&m.ratios_99);
            out.ratios_999.extend(&m.ratios_999);
            (out.batch_s, out.other_s, out.on_s) =
                (out.batch_s + m.batch_s, out.other_s + m.other_s, out.on_s + m.on_s);
            (out.done, out.elapsed_s) = (out.done + m.done, out.elapsed_s + m.elapsed_s);
            (out.cuts, out.psi_cuts, out.write_errors) =
                (out.cuts + m.cuts, out.psi_cuts + m.psi_cuts, out.write_errors + m.write_errors);
        }
        out
    }

    /// The row; `runs` (the pooled ones, if any) give the spread of the ratio.
    fn row(&self, c: Condition, level: f64, rate: f64, cpus: f64, runs: &[Measured]) -> Row {
        let per_run: Vec<f64> = runs.iter().map(|m| median(m.ratios_99.clone())).collect();
        let p99 = median(self.ratios_99.clone());
        let range = if per_run.is_empty() {
            [p99, p99]
        } else {
            [per_run.iter().copied().fold(f64::INFINITY, f64::min), per_run.iter().copied().fold(0.0, f64::max)]
        };
        let idle = (cpus * self.on_s - self.other_s).max(1e-9);
        let on = self.on_s > 0.0;
        Row {
            condition: c.name(),
            level_pct: level,
            target_rate: rate,
            #[allow(clippy::cast_precision_loss, reason = "a count")]
            achieved_rate: self.done as f64 / self.elapsed_s.max(1e-9),
            p50_us: self.on.value_at_quantile(0.5),
            p99_us: self.on.value_at_quantile(0.99),
            p999_us: self.on.value_at_quantile(0.999),
            off_p99_us: self.off.value_at_quantile(0.99),
            off_p999_us: self.off.value_at_quantile(0.999),
            paired_p99_ratio: p99,
            paired_p999_ratio: median(self.ratios_999.clone()),
            p99_ratio_range: range,
            repeats: runs.len().max(1),
            batch_cpu_s: self.batch_s,
            harvested_pct: if on { 100.0 * self.batch_s / idle } else { 0.0 },
            machine_util_pct: if on { 100.0 * (self.batch_s + self.other_s) / (cpus * self.on_s) } else { 0.0 },
            guard_cuts: self.cuts,
            guard_psi_cuts: self.psi_cuts,
            guard_write_errors: self.write_errors,
        }
    }
}

#[allow(clippy::cast_precision_loss, reason = "latencies in µs")]
fn ratio_of(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

/// A seeded generator for the arrival times (uniform in (0, 1]).
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        #[allow(clippy::cast_precision_loss, reason = "53 bits of a u64")]
        let u = ((self.0 >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        u
    }
}

/// memcached's text protocol, enough for set and get.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> Result<Client> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client { stream, buf: Vec::with_capacity(256) })
    }

    fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        write!(self.stream, "set {key} 0 0 {}\r\n", value.len())?;
        self.stream.write_all(value)?;
        self.stream.write_all(b"\r\n")?;
        self.read_until(b"STORED\r\n")
    }

    fn get(&mut self, key: &str) -> Result<()> {
        write!(self.stream, "get {key}\r\n")?;
        self.read_until(b"END\r\n")
    }

    fn read_until(&mut self, end: &[u8]) -> Result<()> {
        self.buf.clear();
        let mut chunk = [0u8; 512];
        while !self.buf.ends_with(end) {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("memcached closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }
}
