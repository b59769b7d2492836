//! The local guard: its rules on a fixture cgroup tree, and the real loop on this
//! machine cutting the batch root's quota when online load starts.

use greenfill_agent::guard::{Guard, GuardConfig, GuardJob};
use greenfill_agent::telemetry::{
    CgroupLayout, CgroupVersion, LinearPowerModel, NodeSample, Pressure, Roots, Sample, Sampler, WorkloadSample, detect,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn sample(cpus: usize, node: f64, batch: f64, mem_used_gib: u64, psi: f64) -> Sample {
    Sample {
        interval_s: Some(1.0),
        node: NodeSample {
            cpus: Some(cpus),
            cpu_cores_used: Some(node),
            memory_total_bytes: Some(100 << 30),
            memory_used_bytes: Some(mem_used_gib << 30),
            load: None,
            cpu_pressure: Some(Pressure { some_avg10: psi, full_avg10: None, some_total_us: 0 }),
            memory_pressure: None,
            io_pressure: None,
        },
        cgroup: CgroupLayout {
            version: CgroupVersion::None,
            v2: None,
            v2_controllers: vec![],
            v1_cpu: None,
            v1_cpuacct: None,
            v1_memory: None,
            v1_devices: None,
        },
        power: vec![],
        workloads: WorkloadSample { cpu_cores: Some(batch), ..WorkloadSample::default() },
        gpus: None,
        gpus_absent: None,
        gpu_devices: Vec::new(),
    }
}

/// A v2 tree with the cpu and memory controllers and two batch jobs' memory.
fn v2_tree(dir: &Path) {
    std::fs::write(dir.join("cgroup.controllers"), "cpu memory io\n").unwrap();
    for (job, mib) in [("a", 4096u64), ("b", 8192), ("c", 1024)] {
        let d = dir.join("greenfill/batch").join(job);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("memory.current"), format!("{}\n", mib << 20)).unwrap();
    }
}

fn quota(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("greenfill/batch/cpu.max")).unwrap()
}

#[test]
fn cpu_cap_follows_koordinators_formula_rises_slowly_and_falls_at_once() {
    let dir = tempfile::tempdir().unwrap();
    v2_tree(dir.path());
    let cfg = GuardConfig { threshold: 0.65, online_cgroups: vec![], psi_threshold: 50.0, ..GuardConfig::default() };
    let mut g = Guard::new(cfg, dir.path(), Path::new("greenfill/batch"));
    assert_eq!(detect(dir.path()).version, CgroupVersion::V2);
    // 16 CPUs, node 6 cores busy of which 2 batch: online 4 → 0.65 × 16 − 4 = 6.4.
    g.step(&sample(16, 6.0, 2.0, 10, 0.0), &[]);
    assert!((g.limit().unwrap() - 6.4).abs() < 1e-9);
    assert_eq!(quota(dir.path()), "640000 100000");
    // Online jumps to 9: cut at once to 1.4.
    g.step(&sample(16, 11.0, 2.0, 10, 0.0), &[]);
    assert!((g.limit().unwrap() - 1.4).abs() < 1e-9);
    assert_eq!(quota(dir.path()), "140000 100000");
    // Online falls back to 1: the cap rises by at most 0.5 per tick.
    g.step(&sample(16, 2.0, 1.0, 10, 0.0), &[]);
    assert!((g.limit().unwrap() - 1.9).abs() < 1e-9);
    g.step(&sample(16, 2.0, 1.0, 10, 0.0), &[]);
    assert!((g.limit().unwrap() - 2.4).abs() < 1e-9);
    // Online above the threshold on its own: the floor, not zero or negative.
    g.step(&sample(16, 16.0, 0.0, 10, 0.0), &[]);
    assert!((g.limit().unwrap() - 0.1).abs() < 1e-9);
    assert_eq!((g.cuts, g.raises), (2, 2));
}

/// One recorded series through the agent's guard (samples in, quota decisions
/// out) and through the simulator's model of it: the same cap at every tick.
/// Alibaba 2018's machine CPU (bundled, open), scaled to a 16-CPU node, one
/// reading a tick, with 2 cores of batch running.
#[test]
fn agent_and_simulator_cap_a_recorded_series_alike() {
    use greenfill_core::data::{UsageOptions, load_usage};
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/usage/alibaba2018_machine_usage_days_1_to_8_grouped_300_seconds.csv");
    let trace = load_usage(&path, &UsageOptions::default()).unwrap();
    let online: Vec<f64> = trace.series[0].values.iter().take(600).map(|u| u / 100.0 * 16.0 * 1.6).collect();
    let cfg = GuardConfig { online_cgroups: vec![], enforce: false, ..GuardConfig::default() };
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Guard::new(cfg, dir.path(), Path::new("greenfill/batch"));
    let mut sim = greenfill_sim::GuardModel::new(agent.policy(), 1, greenfill_sim::TICK_S);
    for (tick, o) in online.iter().enumerate() {
        agent.step(&sample(16, o + 2.0, 2.0, 10, 0.0), &[]);
        let modelled = sim.step(0, 16.0, *o);
        assert!(
            (agent.limit().unwrap() - modelled).abs() < 1e-12,
            "tick {tick}: agent {:?}, sim {modelled}",
            agent.limit()
        );
    }
    // The series moves the cap both ways, so the comparison means something.
    assert!(agent.cuts > 10 && agent.raises > 10, "cuts {} raises {}", agent.cuts, agent.raises);
}

#[test]
fn online_pressure_halves_the_cap_and_memory_pressure_evicts_lowest_priority_then_largest() {
    let dir = tempfile::tempdir().unwrap();
    v2_tree(dir.path());
    // Online's own pressure, in its cgroup (v2 `cpu.pressure`).
    let online = dir.path().join("kubepods");
    std::fs::create_dir_all(&online).unwrap();
    let pressure = |avg10: f64| {
        std::fs::write(online.join("cpu.pressure"), format!("some avg10={avg10:.2} avg60=0.00 avg300=0.00 total=1\n"))
            .unwrap();
    };
    pressure(5.0);
    let cfg = GuardConfig { online_cgroups: vec!["kubepods".into()], psi_threshold: 20.0, ..GuardConfig::default() };
    let mut g = Guard::new(cfg, dir.path(), Path::new("greenfill/batch"));
    // Node-wide pressure of 35 % (batch waiting on itself) cuts nothing.
    g.step(&sample(16, 4.0, 0.0, 10, 35.0), &[]);
    let before = g.limit().unwrap();
    g.step(&sample(16, 4.0, 0.0, 10, 35.0), &[]);
    assert!((g.limit().unwrap() - before).abs() < 1e-9, "node-wide PSI is not online's");
    assert_eq!(g.psi_cuts, 0);
    pressure(35.0);
    g.step(&sample(16, 4.0, 0.0, 10, 0.0), &[]);
    assert!((g.limit().unwrap() - before / 2.0).abs() < 1e-9, "{:?}", g.limit());
    assert_eq!(g.psi_cuts, 1);

    let jobs: Vec<GuardJob> = [("a", 0), ("b", 0), ("c", -5)]
        .into_iter()
        .map(|(j, p)| GuardJob {
            attempt: j.into(),
            cgroup: PathBuf::from("greenfill/batch").join(j),
            priority: p,
            cpu_cores: 1.0,
        })
        .collect();
    // 85 % used: under the high watermark, nothing happens.
    assert!(g.step(&sample(16, 4.0, 0.0, 85, 0.0), &jobs).is_empty());
    // 93 GiB of 100 used: evict toward 80 %: c (lowest priority, 1 GiB), then b
    // (largest of the rest, 8 GiB), then a (4 GiB) reaches 80 GiB.
    let out: Vec<String> = g.step(&sample(16, 4.0, 0.0, 93, 0.0), &jobs).into_iter().map(|(a, _)| a).collect();
    assert_eq!(out, ["c", "b", "a"]);
    let out: Vec<String> = g.step(&sample(16, 4.0, 0.0, 88, 0.0), &jobs).into_iter().map(|(a, _)| a).collect();
    assert_eq!(out, Vec::<String>::new(), "88 % is under the 90 % high watermark");
    let out: Vec<String> = g.step(&sample(16, 4.0, 0.0, 91, 0.0), &jobs).into_iter().map(|(a, _)| a).collect();
    // 91 GiB: c (1) → 90, b (8) → 82, still above 80 %, so a (4) → 78.
    assert_eq!(out, ["c", "b", "a"]);
    assert_eq!(g.evictions, 6);
}

#[test]
fn a_scheduler_cap_applies_while_valid() {
    let dir = tempfile::tempdir().unwrap();
    v2_tree(dir.path());
    let mut g = Guard::new(
        GuardConfig { online_cgroups: vec![], ..GuardConfig::default() },
        dir.path(),
        Path::new("greenfill/batch"),
    );
    g.scheduler_cap(1.0, Duration::from_secs(60), "test");
    g.step(&sample(16, 2.0, 0.0, 10, 0.0), &[]);
    assert!((g.limit().unwrap() - 1.0).abs() < 1e-9);
    g.scheduler_cap(1.0, Duration::ZERO, "expired");
    std::thread::sleep(Duration::from_millis(5));
    g.step(&sample(16, 2.0, 0.0, 10, 0.0), &[]);
    assert!((g.limit().unwrap() - 1.5).abs() < 1e-9, "rises by 0.5 once the cap expires: {:?}", g.limit());
}

/// On this machine: CPU burners start in an "online" cgroup; the guard, ticking
/// every second on real telemetry, must cut the batch root's real quota within 2 s.
#[test]
fn the_real_loop_cuts_batch_quota_within_two_seconds_of_online_load() {
    if !greenfill_core::testing::is_root() {
        greenfill_core::testing::cannot_run("the_real_loop_cuts", "needs root to create cgroups");
        return;
    }
    let cg = Path::new("/sys/fs/cgroup");
    let base = format!("greenfill-guard-{}", std::process::id());
    let batch = PathBuf::from(&base).join("batch");
    // Threshold 1.0 so the starting cap is large even if other tests keep a core busy.
    let cfg = GuardConfig { threshold: 1.0, online_cgroups: vec![], psi_threshold: 1000.0, ..GuardConfig::default() };
    let mut guard = Guard::new(cfg, cg, &batch);
    let mut sampler = Sampler::new(
        Roots { proc: "/proc".into(), cgroup: cg.into(), powercap: "/nonexistent".into() },
        LinearPowerModel { idle_w_per_cpu: 1.0, max_w_per_cpu: 3.0 },
    );
    sampler.watch(&batch);
    sampler.sample();
    std::thread::sleep(Duration::from_secs(1));
    guard.step(&sampler.sample(), &[]);
    let before = guard.applied_quota().expect("the guard wrote a quota on the batch root");
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    if before < 0.5 {
        eprintln!("skipped: the machine is too busy to see a cut (starting cap {before:.2} cores)");
        cleanup(cg, &base);
        return;
    }
    // Online load: one busy loop per CPU, in an online cgroup of the cpu hierarchy.
    let layout = detect(cg);
    let online_dir = layout.v1_cpu.clone().or(layout.v2.clone()).unwrap().join(&base).join("online");
    std::fs::create_dir_all(&online_dir).unwrap();
    let burners: Vec<std::process::Child> = (0..cpus)
        .map(|_| std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap())
        .collect();
    for b in &burners {
        std::fs::write(online_dir.join("cgroup.procs"), b.id().to_string()).unwrap();
    }
    let started = Instant::now();
    let mut after = before;
    while started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1000));
        guard.step(&sampler.sample(), &[]);
        after = guard.applied_quota().unwrap();
        if after <= 0.25 {
            break;
        }
    }
    let took = started.elapsed();
    for mut b in burners {
        let _ = b.kill();
        let _ = b.wait();
    }
    cleanup(cg, &base);
    assert!(after <= 0.25 && after < before, "quota {before:.2} → {after:.2} cores after {took:?}");
    assert!(took <= Duration::from_millis(2100), "cut took {took:?}");
    eprintln!("batch quota {before:.2} → {after:.2} cores, {took:?} after online load started");
}

fn cleanup(cg: &Path, base: &str) {
    for h in ["cpu,cpuacct", "cpu", "cpuacct", "memory", "unified", ""] {
        for d in ["batch", "online", ""] {
            let _ = std::fs::remove_dir(cg.join(h).join(base).join(d));
        }
    }
}

/// A quota the kernel refuses is an error with its file and value, counted, and
/// retried: the cap in force is not changed by a write that did not happen.
#[test]
fn a_refused_quota_write_is_counted_and_retried_not_taken_as_done() {
    use greenfill_agent::cgroups::{Cgroups, FakeCgroups};
    use std::sync::Arc;
    let fake = Arc::new(FakeCgroups::default());
    let dir = tempfile::tempdir().unwrap();
    let cfg = GuardConfig { online_cgroups: vec![], ..GuardConfig::default() };
    let mut g = Guard::with_cgroups(cfg, dir.path(), Path::new("greenfill/batch"), fake.clone());
    fake.fail_writes.store(true, std::sync::atomic::Ordering::Relaxed);
    g.step(&sample(16, 6.0, 2.0, 10, 0.0), &[]);
    assert_eq!((g.write_errors, g.limit()), (1, None), "a refused write is not a cap in force");
    g.step(&sample(16, 6.0, 2.0, 10, 0.0), &[]);
    assert_eq!(g.write_errors, 2, "retried at the next tick");
    fake.fail_writes.store(false, std::sync::atomic::Ordering::Relaxed);
    g.step(&sample(16, 6.0, 2.0, 10, 0.0), &[]);
    // 0.9 × 16 − 4 = 10.4 cores.
    assert!((fake.cpu_quota(Path::new("greenfill/batch")).unwrap() - 10.4).abs() < 1e-9);
    assert!((g.limit().unwrap() - 10.4).abs() < 1e-9);
}

fn jobs_under(root: &Path, cores: f64, ids: &[&str]) -> Vec<GuardJob> {
    ids.iter()
        .map(|id| GuardJob { attempt: (*id).into(), cgroup: root.join(id), priority: 0, cpu_cores: cores })
        .collect()
}

/// cgroup v1's rule (a parent's quota may not go below a child's) on the fake:
/// the cut lowers the jobs' quotas first and reaches the formula's value; the
/// rise restores each job's own limit after the root's.
#[test]
fn on_v1_rules_a_cut_reaches_the_formula_while_jobs_run() {
    use greenfill_agent::cgroups::{Cgroups, FakeCgroups};
    use std::sync::Arc;
    let fake = Arc::new(FakeCgroups { v1_quota_rule: true, ..FakeCgroups::default() });
    let root = Path::new("greenfill/batch");
    for id in ["a", "b"] {
        fake.set_cpu_quota(&root.join(id), 0.9).unwrap();
    }
    let jobs = jobs_under(root, 0.9, &["a", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = GuardConfig { online_cgroups: vec![], ..GuardConfig::default() };
    let mut g = Guard::with_cgroups(cfg, dir.path(), root, fake.clone());
    // 2 CPUs: 0.9 × 2 − 0 = 1.8; then online 1.5 → 0.3.
    g.step(&sample(2, 1.8, 1.8, 10, 0.0), &jobs);
    g.step(&sample(2, 3.3, 1.8, 10, 0.0), &jobs);
    assert_eq!(g.write_errors, 0);
    let q = |rel: &Path| fake.cpu_quota(rel).unwrap();
    assert!((q(root) - 0.3).abs() < 1e-9, "{}", q(root));
    assert!((q(&root.join("a")) - 0.3).abs() < 1e-9 && (q(&root.join("b")) - 0.3).abs() < 1e-9);
    // Online leaves: the cap rises 0.5 a tick, and the jobs get their 0.9 back.
    for _ in 0..4 {
        g.step(&sample(2, 0.6, 0.6, 10, 0.0), &jobs);
    }
    assert_eq!(g.write_errors, 0);
    assert!((q(root) - 1.8).abs() < 1e-9, "{}", q(root));
    assert!((q(&root.join("a")) - 0.9).abs() < 1e-9);
}

/// The same on this machine's real cgroups, with two spinning jobs under the
/// batch root (the case the shipped guard failed: EINVAL once a second).
#[test]
fn the_real_guard_cuts_below_a_running_jobs_limit() {
    use greenfill_agent::cgroups::{Cgroups, HostCgroups};
    use greenfill_agent::runner::{JobSpec, Runner};
    use std::sync::Arc;
    if !greenfill_core::testing::is_root() {
        greenfill_core::testing::cannot_run("the_real_guard_cuts_below", "needs root to create cgroups");
        return;
    }
    let cg = Path::new("/sys/fs/cgroup");
    let base = format!("greenfill-guardjobs-{}", std::process::id());
    let root = PathBuf::from(&base).join("batch");
    let host = Arc::new(HostCgroups::new(cg, Path::new("/proc")));
    let runner = Runner::new(&root, host.clone());
    let logs = tempfile::tempdir().unwrap();
    let spin = |id: &str| JobSpec {
        id: id.into(),
        argv: vec!["while :; do :; done".into()],
        shell: true,
        env: vec![],
        cwd: None,
        cpu_cores: 0.9,
        memory_bytes: 64 << 20,
        uid: None,
        gid: None,
        log_dir: logs.path().to_owned(),
        log_cap_bytes: 1000,
        image: None,
        deny_devices: Vec::new(),
    };
    let a = runner.start(&spin("a")).unwrap();
    let b = runner.start(&spin("b")).unwrap();
    let jobs = jobs_under(&root, 0.9, &["a", "b"]);
    let cfg = GuardConfig { online_cgroups: vec![], ..GuardConfig::default() };
    let mut g = Guard::with_cgroups(cfg, cg, &root, host.clone());
    g.step(&sample(2, 1.8, 1.8, 10, 0.0), &jobs);
    g.step(&sample(2, 3.3, 1.8, 10, 0.0), &jobs);
    let (root_q, job_q) = (host.cpu_quota(&root), host.cpu_quota(&root.join("a")));
    let errors = g.write_errors;
    runner.kill(a);
    runner.kill(b);
    runner.remove_root();
    let _ = std::fs::remove_dir(cg.join("cpu").join(&base));
    assert_eq!(errors, 0, "the kernel refused a quota");
    assert!((root_q.unwrap() - 0.3).abs() < 1e-6, "batch root quota {root_q:?}");
    assert!((job_q.unwrap() - 0.3).abs() < 1e-6, "job quota {job_q:?}");
}

/// At the kernel's idle priority (what the daemon finds on a 5.15+ kernel) the
/// quota loop is off by default: online near every CPU, and online pressure,
/// leave batch's cap alone. With `always` the formula applies, and a PSI
/// trigger's event halves the cap at once, between ticks.
#[test]
fn at_idle_priority_the_quota_loop_is_off_unless_asked_and_a_trigger_event_halves_at_once() {
    use greenfill_agent::guard::Suppress;
    let dir = tempfile::tempdir().unwrap();
    v2_tree(dir.path());
    let cfg = GuardConfig { online_cgroups: vec![], threshold: 1.0, ..GuardConfig::default() };
    let mut g = Guard::new(cfg.clone(), dir.path(), Path::new("greenfill/batch"));
    g.set_idle_priority(true);
    // 16 CPUs, node 15.5 busy, 0.5 of it batch: online 15.
    g.step(&sample(16, 15.5, 0.5, 10, 0.0), &[]);
    assert_eq!(quota(dir.path()), "1600000 100000");
    g.pressure_event(&[]);
    assert_eq!((quota(dir.path()).as_str(), g.psi_cuts), ("1600000 100000", 0));
    let always = GuardConfig { suppress: Suppress::Always, ..cfg };
    let mut g = Guard::new(always, dir.path(), Path::new("greenfill/batch"));
    g.set_idle_priority(true);
    // Online 8: 1.0 × 16 − 8.
    g.step(&sample(16, 8.5, 0.5, 10, 0.0), &[]);
    assert_eq!(quota(dir.path()), "800000 100000");
    g.pressure_event(&[]);
    assert_eq!((quota(dir.path()).as_str(), g.psi_cuts), ("400000 100000", 1));
}

/// A real PSI trigger on an online cgroup's `cpu.pressure` (cgroup v2, or the
/// unified hierarchy beside v1 controllers): quiet while the cgroup is empty,
/// fires once its tasks stall on CPU (twice as many spinners as CPUs).
#[test]
fn a_psi_trigger_fires_when_an_online_cgroup_stalls() {
    use greenfill_agent::telemetry::PsiTrigger;
    use greenfill_agent::telemetry::psi::MIN_WINDOW;
    if !greenfill_core::testing::is_root() {
        greenfill_core::testing::cannot_run("a_psi_trigger_fires", "needs root to create cgroups");
        return;
    }
    let cg = Path::new("/sys/fs/cgroup");
    let Some(v2) = detect(cg).v2 else {
        greenfill_core::testing::cannot_run("a_psi_trigger_fires", "no cgroup v2 (or unified) hierarchy");
        return;
    };
    let base = format!("greenfill-psi-{}", std::process::id());
    let online = v2.join(&base).join("online");
    std::fs::create_dir_all(&online).unwrap();
    let trigger = PsiTrigger::open(&[online.join("cpu.pressure")], 0.2, MIN_WINDOW);
    let trigger = match trigger {
        Ok(t) => t,
        Err(e) => {
            cleanup(cg, &base);
            panic!("the kernel refused a PSI trigger: {e}");
        }
    };
    let quiet = trigger.wait(Duration::from_secs(1)).unwrap();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<std::process::Child> = (0..2 * cpus)
        .map(|_| std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap())
        .collect();
    for s in &spinners {
        std::fs::write(online.join("cgroup.procs"), s.id().to_string()).unwrap();
    }
    let started = Instant::now();
    let mut fired = false;
    while !fired && started.elapsed() < Duration::from_secs(6) {
        fired = trigger.wait(Duration::from_millis(200)).unwrap();
    }
    let (took, window) = (started.elapsed(), trigger.window());
    for mut s in spinners {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(trigger);
    cleanup(cg, &base);
    assert!(!quiet, "the trigger fired on an empty cgroup");
    assert!(fired, "no trigger within {took:?} of {} spinners on {cpus} CPUs", 2 * cpus);
    eprintln!("PSI trigger fired {took:?} after the stall began (window {window:?})");
}
