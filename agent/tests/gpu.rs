//! GPUs through the fake NVML: assignment, the GPU guard, recorded limits
//! restored after a crash, energy-aware limits, and bad input named.

use greenfill_agent::gpu::{
    Curve, CurvePoint, Curves, GpuAsk, GpuGuard, GpuJob, GpuPolicy, Limits, NodeGpus, PowerAsk, auto_limit, choose,
};
use greenfill_agent::telemetry::{FakeGpus, GpuDevice, GpuProcess, GpuSource, Gpus};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

fn gpu(index: u32) -> GpuDevice {
    GpuDevice {
        index,
        uuid: format!("GPU-0000000{index}-fake"),
        model: "NVIDIA A100-SXM4-40GB".into(),
        minor: index,
        memory_total_bytes: 40 << 30,
        memory_used_bytes: 0,
        utilisation_pct: 0,
        power_w: 60.0,
        power_limit_w: 400.0,
        power_limit_min_w: 100.0,
        power_limit_max_w: 400.0,
        energy_j: Some(1.0e6),
        processes: Vec::new(),
    }
}

/// A fake with `n` GPUs in `dir`.
fn fake(dir: &Path, n: u32) -> (std::path::PathBuf, Arc<FakeGpus>) {
    let path = dir.join("gpus.json");
    FakeGpus::write(&path, &(0..n).map(gpu).collect::<Vec<_>>()).unwrap();
    (path.clone(), Arc::new(FakeGpus::new(path)))
}

fn limit_of(src: &FakeGpus, index: u32) -> f64 {
    src.devices().unwrap().iter().find(|d| d.index == index).unwrap().power_limit_w
}

/// Put an online process (`pid`, not in any batch cgroup) on GPU `index`.
fn online_on(path: &Path, index: u32, pid: u32, sm: u32) {
    let src = FakeGpus::new(path.to_owned());
    let mut all = src.devices().unwrap();
    let d = all.iter_mut().find(|d| d.index == index).unwrap();
    d.processes = vec![GpuProcess { pid, memory_bytes: 1 << 30, sm_util_pct: Some(sm) }];
    FakeGpus::write(path, &all).unwrap();
}

/// The node's GPUs over `src`, with `curves`, recording limits in `dir`.
fn node_over(src: Arc<FakeGpus>, curves: Curves, dir: &Path) -> NodeGpus {
    NodeGpus::open(Gpus::with_source(src), GpuPolicy::default(), curves, dir, Path::new("/proc"), Path::new("b"))
        .unwrap()
}

const ONLINE_PID: u32 = 4242;
fn batch_pids(pid: u32) -> bool {
    pid != ONLINE_PID
}

#[test]
fn a_job_gets_only_free_gpus_of_its_model_and_the_error_names_what_is_short() {
    let mut d: Vec<GpuDevice> = (0..4).map(gpu).collect();
    d[1].processes.push(GpuProcess { pid: ONLINE_PID, memory_bytes: 1 << 30, sm_util_pct: Some(5) });
    d[2].memory_used_bytes = 10 << 30;
    d[3].model = "NVIDIA L4".into();
    let taken = BTreeSet::from([0]);
    let ask = |count: u32, model: &str| GpuAsk { count, model: model.into(), memory_bytes: 0 };
    // GPU 0 is held by batch, 1 by an online process: 2 and 3 are free.
    let got: Vec<u32> = choose(&d, &ask(2, ""), &taken, &batch_pids).unwrap().iter().map(|d| d.index).collect();
    assert_eq!(got, vec![2, 3]);
    // The emptiest first: 3 (0 B used) before 2 (10 GiB).
    let one: Vec<u32> = choose(&d, &ask(1, ""), &taken, &batch_pids).unwrap().iter().map(|d| d.index).collect();
    assert_eq!(one, vec![3]);
    let a100: Vec<u32> = choose(&d, &ask(1, "A100"), &taken, &batch_pids).unwrap().iter().map(|d| d.index).collect();
    assert_eq!(a100, vec![2]);
    let e = choose(&d, &ask(2, "A100"), &taken, &batch_pids).unwrap_err();
    assert!(e.contains("asks for 2 GPU(s), 1 free"), "{e}");
    assert!(e.contains("GPU 0: held by a batch job"), "{e}");
    assert!(e.contains(&format!("GPU 1: used by online pid {ONLINE_PID}")), "{e}");
    assert!(e.contains("GPU 3: model \"NVIDIA L4\""), "{e}");
    let big = GpuAsk { count: 1, model: String::new(), memory_bytes: 80 << 30 };
    assert!(choose(&d, &big, &BTreeSet::new(), &batch_pids).unwrap_err().contains("40960 MiB"));
}

#[test]
fn the_guard_caps_batch_then_evicts_and_restores_when_online_calms() {
    let dir = tempfile::tempdir().unwrap();
    let (path, src) = fake(dir.path(), 2);
    let policy = GpuPolicy { stop_after: 2, restore_after: 2, ..GpuPolicy::default() };
    let mut g = GpuGuard::new(policy, src.clone(), Limits::load(dir.path()).unwrap());
    let jobs = [GpuJob { attempt: "a1".into(), gpus: vec![1] }];
    let tick = |g: &mut GpuGuard| g.step(&src.devices().unwrap(), &jobs, &batch_pids);

    assert!(tick(&mut g).is_empty());
    assert_eq!(limit_of(&src, 1), 400.0);
    // An online process on GPU 0 (no batch there): nothing to protect it from.
    online_on(&path, 0, ONLINE_PID, 90);
    assert!(tick(&mut g).is_empty());
    assert_eq!(limit_of(&src, 0), 400.0);
    // On GPU 1, which batch holds: capped to the minimum at once, recorded first.
    online_on(&path, 1, ONLINE_PID, 50);
    assert!(tick(&mut g).is_empty());
    assert_eq!(limit_of(&src, 1), 100.0);
    assert_eq!(g.recorded()["GPU-00000001-fake"].original_w, 400.0);
    assert!(g.recorded()["GPU-00000001-fake"].guard);
    // Still pressed after `stop_after` ticks at the minimum: batch there is evicted.
    assert!(tick(&mut g).is_empty());
    let evicted = tick(&mut g);
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    assert_eq!(evicted[0].0, "a1");
    assert!(evicted[0].1.contains(&format!("GPU 1: online pid {ONLINE_PID} uses 50 % SM")), "{evicted:?}");
    // Online calms (its SM share and memory below the policy): restored after two calm ticks.
    let mut all = src.devices().unwrap();
    all[1].processes[0] = GpuProcess { pid: ONLINE_PID, memory_bytes: 0, sm_util_pct: Some(2) };
    FakeGpus::write(&path, &all).unwrap();
    assert!(tick(&mut g).is_empty());
    assert_eq!(limit_of(&src, 1), 100.0);
    assert!(tick(&mut g).is_empty());
    assert_eq!(limit_of(&src, 1), 400.0);
    assert!(g.recorded().is_empty());
    assert_eq!((g.counts.caps, g.counts.restores, g.counts.evictions), (1, 1, 1));
}

#[test]
fn the_limit_goes_back_as_soon_as_no_batch_job_holds_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let (path, src) = fake(dir.path(), 1);
    let mut g = GpuGuard::new(GpuPolicy::default(), src.clone(), Limits::load(dir.path()).unwrap());
    online_on(&path, 0, ONLINE_PID, 80);
    let jobs = [GpuJob { attempt: "a1".into(), gpus: vec![0] }];
    g.step(&src.devices().unwrap(), &jobs, &batch_pids);
    assert_eq!(limit_of(&src, 0), 100.0);
    // The job ended (online still busy): the online service gets its full limit back.
    g.step(&src.devices().unwrap(), &[], &batch_pids);
    assert_eq!(limit_of(&src, 0), 400.0);
}

#[test]
fn a_cap_left_by_a_crashed_agent_is_restored_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let (path, src) = fake(dir.path(), 2);
    {
        let mut g = GpuGuard::new(GpuPolicy::default(), src.clone(), Limits::load(dir.path()).unwrap());
        online_on(&path, 1, ONLINE_PID, 80);
        g.step(&src.devices().unwrap(), &[GpuJob { attempt: "a1".into(), gpus: vec![1] }], &batch_pids);
        assert_eq!(limit_of(&src, 1), 100.0);
        // Dropped without a restore: the agent died mid-cap.
    }
    assert!(dir.path().join("gpu-limits.json").exists());
    let node = node_over(src.clone(), Curves::default(), dir.path());
    assert_eq!(limit_of(&src, 1), 400.0);
    assert_eq!(std::fs::read_to_string(dir.path().join("gpu-limits.json")).unwrap(), "{}");
    assert_eq!(node.inventory.len(), 2);
}

#[test]
fn a_jobs_power_limit_is_checked_set_and_restored_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_, src) = fake(dir.path(), 2);
    let node = node_over(src.clone(), Curves::default(), dir.path());
    let ask = GpuAsk { count: 1, ..GpuAsk::default() };
    let e = node.grant("a1", &ask, PowerAsk::Limit(50.0), &BTreeSet::new()).unwrap_err();
    assert!(!e.retryable);
    assert!(e.message.contains("gpu_power_limit_w = 50"), "{e:?}");
    assert!(e.message.contains("outside the card's range 100–400 W"), "{e:?}");
    assert_eq!(limit_of(&src, 0), 400.0, "a refused limit changes nothing");
    let g = node.grant("a1", &ask, PowerAsk::Limit(250.0), &BTreeSet::new()).unwrap();
    assert_eq!(g.indices, vec![0]);
    assert_eq!(g.limit_w, Some(250.0));
    assert_eq!(limit_of(&src, 0), 250.0);
    // It sees GPU 0 only, by UUID; GPU 1's device node is denied to it.
    assert!(g.env.contains(&("CUDA_VISIBLE_DEVICES".into(), "GPU-00000000-fake".into())), "{:?}", g.env);
    assert!(g.env.contains(&("NVIDIA_VISIBLE_DEVICES".into(), "GPU-00000000-fake".into())), "{:?}", g.env);
    assert_eq!(g.deny, vec!["c 195:1 rwm".to_owned()]);
    node.job_ended("a1");
    assert_eq!(limit_of(&src, 0), 400.0);
    // A job without GPUs on a GPU node sees none and may open none.
    let none = node.grant("a2", &GpuAsk::default(), PowerAsk::Default, &BTreeSet::new()).unwrap();
    assert!(none.env.contains(&("CUDA_VISIBLE_DEVICES".into(), String::new())));
    assert!(none.env.contains(&("NVIDIA_VISIBLE_DEVICES".into(), "none".into())));
    assert_eq!(none.deny, vec!["c 195:0 rwm".to_owned(), "c 195:1 rwm".to_owned()]);
    // Busy GPUs are worth a retry; a model the node lacks is not.
    let both = BTreeSet::from([0, 1]);
    assert!(node.grant("a3", &ask, PowerAsk::Default, &both).unwrap_err().retryable);
    let l4 = GpuAsk { count: 1, model: "L4".into(), memory_bytes: 0 };
    assert!(!node.grant("a4", &l4, PowerAsk::Default, &BTreeSet::new()).unwrap_err().retryable);
}

#[test]
fn a_node_without_gpus_refuses_a_gpu_job_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let gpus = Gpus::open_from(Some(std::ffi::OsStr::new("/nonexistent/libnvidia-ml.so.1")));
    let node =
        NodeGpus::open(gpus, GpuPolicy::default(), Curves::default(), dir.path(), Path::new("/proc"), Path::new("b"))
            .unwrap();
    assert!(node.grant("a", &GpuAsk::default(), PowerAsk::Default, &BTreeSet::new()).unwrap().env.is_empty());
    let e =
        node.grant("a", &GpuAsk { count: 1, ..GpuAsk::default() }, PowerAsk::Default, &BTreeSet::new()).unwrap_err();
    assert!(e.message.starts_with("asks for 1 GPU(s): NVML not available"), "{e:?}");
}

fn a100_curve() -> Curve {
    let p = |limit_w, throughput| CurvePoint { limit_w, throughput };
    // Energy per unit of work (limit / throughput): 208, 222, 258, 300, 400 → 150 W is the least.
    Curve {
        model: "A100".into(),
        points: vec![p(150.0, 0.72), p(200.0, 0.9), p(250.0, 0.97), p(300.0, 1.0), p(400.0, 1.0)],
    }
}

#[test]
fn auto_picks_the_least_energy_limit_that_still_meets_the_deadline() {
    let d = gpu(0);
    let c = a100_curve();
    assert_eq!(auto_limit(&c, &d, None), Ok(150.0));
    assert_eq!(auto_limit(&c, &d, Some(2.0)), Ok(150.0));
    // 1 / 0.72 = 1.39× slower does not fit 1.2×: 200 W (1.11×) does.
    assert_eq!(auto_limit(&c, &d, Some(1.2)), Ok(200.0));
    // No slack at all: the fastest point.
    assert_eq!(auto_limit(&c, &d, Some(1.0)), Ok(300.0));
    let mut small = d.clone();
    small.power_limit_min_w = 175.0;
    let e = auto_limit(&c, &small, None).unwrap_err();
    assert!(e.contains("power limit 150 W is outside the card's range 175–400 W"), "{e}");
}

#[test]
fn curves_files_are_checked_naming_the_model_and_point() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("curves.toml");
    std::fs::write(&f, "[[model]]\nmodel = \"A100\"\npoints = [{ limit_w = 200, throughput = 0.9 }, { limit_w = 300, throughput = 1.4 }]\n").unwrap();
    let e = Curves::load(&f).unwrap_err();
    assert!(e.contains("model[0].points[1]"), "{e}");
    assert!(e.contains("throughput = 1.4"), "{e}");
    std::fs::write(&f, "[[model]]\nmodel = \"A100\"\npoints = [{ limit_w = 200, throughput = 0.9 }]\n").unwrap();
    let c = Curves::load(&f).unwrap();
    assert!(c.for_model("NVIDIA A100-SXM4-40GB").is_some());
    assert!(c.for_model("NVIDIA L4").is_none());
    std::fs::write(&f, "[[modle]]\n").unwrap();
    assert!(Curves::load(&f).unwrap_err().contains("modle"));
}

#[test]
fn an_auto_job_runs_at_its_curves_limit_and_a_model_without_a_curve_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, src) = fake(dir.path(), 1);
    let curves = Curves { models: vec![a100_curve()] };
    let node = node_over(src.clone(), curves, dir.path());
    let ask = GpuAsk { count: 1, ..GpuAsk::default() };
    let g = node.grant("a1", &ask, PowerAsk::Auto { slack: Some(1.2) }, &BTreeSet::new()).unwrap();
    assert_eq!(g.limit_w, Some(200.0));
    assert_eq!(limit_of(&src, 0), 200.0);
    node.job_ended("a1");
    let bare = node_over(src, Curves::default(), dir.path());
    let e = bare.grant("a2", &ask, PowerAsk::Auto { slack: None }, &BTreeSet::new()).unwrap_err();
    assert!(e.message.contains("no curve for GPU model \"NVIDIA A100-SXM4-40GB\""), "{e:?}");
}
