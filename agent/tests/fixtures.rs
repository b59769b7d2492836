//! Telemetry against recorded trees: cgroup v1, v2 and hybrid layouts, PSI files,
//! RAPL zones with a wrap-around and a reset, `/proc` files with garbage. And one
//! sample of the real machine.

use greenfill_agent::telemetry::{
    CgroupVersion, LinearPowerModel, PowerSource, Rapl, cgroup_stats, cpu_ticks, detect, meminfo, parse_pressure,
};
use greenfill_agent::{Roots, Sampler};
use proptest::prelude::*;
use std::fs;
use std::path::Path;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// The lines after the CPUs that every kernel writes in /proc/stat.
const TAIL: &str = "intr 0\nctxt 10\nbtime 1\nprocesses 5\nprocs_running 1\nprocs_blocked 0\n";

const PSI: &str =
    "some avg10=2.50 avg60=1.00 avg300=0.10 total=5000\nfull avg10=1.00 avg60=0.50 avg300=0.00 total=100\n";

#[test]
fn cgroup_v2_systemd_layout() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "cgroup.controllers", "cpuset cpu io memory pids\n");
    let pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice";
    write(
        r,
        &format!("{pod}/cpu.stat"),
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 10\nnr_throttled 3\nthrottled_usec 40000\n",
    );
    write(r, &format!("{pod}/memory.current"), "104857600\n");
    write(r, &format!("{pod}/memory.max"), "max\n");
    write(r, &format!("{pod}/cpu.pressure"), PSI);
    let l = detect(r);
    assert_eq!(l.version, CgroupVersion::V2);
    let s = cgroup_stats(&l, Path::new(pod));
    assert_eq!(s.cpu_usage_ns, Some(2_500_000_000));
    assert_eq!(s.throttled_ns, Some(40_000_000));
    assert_eq!(s.nr_throttled, Some(3));
    assert_eq!(s.memory_bytes, Some(104_857_600));
    assert_eq!(s.memory_limit_bytes, None, "max = unlimited");
    assert_eq!(s.cpu_pressure.unwrap().some_avg10, 2.5);
}

#[test]
fn cgroup_v1_cgroupfs_layout() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    for c in ["cpu", "cpuacct", "memory"] {
        fs::create_dir_all(r.join(c)).unwrap();
    }
    write(r, "cpu/cpu.shares", "1024\n");
    write(r, "cpuacct/cpuacct.usage", "1\n");
    write(r, "memory/memory.usage_in_bytes", "1\n");
    let pod = "kubepods/burstable/pod1234/abcd";
    write(r, &format!("cpuacct/{pod}/cpuacct.usage"), "7000000000\n");
    write(r, &format!("cpu/{pod}/cpu.stat"), "nr_periods 5\nnr_throttled 1\nthrottled_time 2000000\n");
    write(r, &format!("memory/{pod}/memory.usage_in_bytes"), "2048\n");
    write(r, &format!("memory/{pod}/memory.limit_in_bytes"), "9223372036854771712\n");
    let l = detect(r);
    assert_eq!(l.version, CgroupVersion::V1);
    let s = cgroup_stats(&l, Path::new(pod));
    assert_eq!(s.cpu_usage_ns, Some(7_000_000_000));
    assert_eq!(s.throttled_ns, Some(2_000_000));
    assert_eq!(s.memory_bytes, Some(2048));
    assert_eq!(s.memory_limit_bytes, None);
    assert_eq!(s.cpu_pressure, None, "v1 has no PSI");
}

#[test]
fn hybrid_reads_v1_controllers_and_v2_pressure() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "cpuacct/cpuacct.usage", "1\n");
    write(r, "cpuacct/batch/job1/cpuacct.usage", "500\n");
    write(r, "unified/cgroup.controllers", "\n");
    write(r, "unified/batch/job1/cpu.pressure", PSI);
    let l = detect(r);
    assert_eq!(l.version, CgroupVersion::Hybrid);
    let s = cgroup_stats(&l, Path::new("batch/job1"));
    assert_eq!(s.cpu_usage_ns, Some(500));
    assert!(s.cpu_pressure.is_some());
}

#[test]
fn missing_and_garbled_files_are_missing_fields() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "cgroup.controllers", "cpu memory\n");
    write(r, "x/cpu.stat", "usage_usec lots\n");
    write(r, "x/memory.current", "-5\n");
    let s = cgroup_stats(&detect(r), Path::new("x"));
    assert_eq!((s.cpu_usage_ns, s.memory_bytes), (None, None));
    assert_eq!(cgroup_stats(&detect(r), Path::new("does/not/exist")).cpu_usage_ns, None);
    assert_eq!(detect(&r.join("nothing")).version, CgroupVersion::None);
}

fn rapl_tree(r: &Path) {
    write(r, "intel-rapl:0/name", "package-0\n");
    write(r, "intel-rapl:0/max_energy_range_uj", "262143328850\n");
    write(r, "intel-rapl:0/energy_uj", "262143000000\n");
    write(r, "intel-rapl:0:0/name", "core\n");
    write(r, "intel-rapl:0:0/max_energy_range_uj", "262143328850\n");
    write(r, "intel-rapl:0:0/energy_uj", "1000\n");
    write(r, "intel-rapl:0:1/name", "dram\n");
    write(r, "intel-rapl:0:1/max_energy_range_uj", "65712999613\n");
    write(r, "intel-rapl:0:1/energy_uj", "1000000\n");
}

#[test]
fn rapl_counts_packages_and_dram_once_and_unwraps_each_zone() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    rapl_tree(r);
    let mut rapl = Rapl::discover(r);
    let names: Vec<&str> = rapl.zones.iter().map(|z| z.name.as_str()).collect();
    assert_eq!(names, ["package-0 (intel-rapl:0)", "dram (intel-rapl:0:1)"], "core is inside the package");
    assert!(rapl.read(Some(1.0)).is_empty(), "first read has no previous value");
    // The package wraps: 262143000000 → 171671150 over 2 s = (328850 + 171671150) µJ.
    write(r, "intel-rapl:0/energy_uj", "171671150\n");
    write(r, "intel-rapl:0:1/energy_uj", "11000000\n");
    let w = rapl.read(Some(2.0));
    assert_eq!(w.len(), 2);
    assert!((w[0].watts - 86.0).abs() < 1e-9, "{}", w[0].watts);
    assert!((w[1].watts - 5.0).abs() < 1e-9);
    assert!(w.iter().all(|p| p.source == PowerSource::Rapl));
    // A reset (driver reload): the counter drops to near zero; unwrapping would
    // claim ~131 kW, so the zone is left out of that sample, then recovers.
    write(r, "intel-rapl:0/energy_uj", "10\n");
    write(r, "intel-rapl:0:1/energy_uj", "12000000\n");
    let w = rapl.read(Some(1.0));
    assert_eq!(w.iter().map(|p| p.component.as_str()).collect::<Vec<_>>(), ["dram (intel-rapl:0:1)"]);
    write(r, "intel-rapl:0/energy_uj", "50000010\n");
    let w = rapl.read(Some(1.0));
    assert!((w[0].watts - 50.0).abs() < 1e-9);
}

#[test]
fn a_sampler_on_a_fixture_tree_falls_back_to_the_model_without_rapl() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("proc");
    write(
        &p,
        "stat",
        &format!("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0 0 0\n{TAIL}"),
    );
    write(&p, "meminfo", "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\n");
    write(&p, "loadavg", "1.00 0.50 0.25 2/300 99\n");
    write(&p, "pressure/cpu", PSI);
    let roots = Roots { proc: p.clone(), cgroup: d.path().join("cg"), powercap: d.path().join("none") };
    let mut s = Sampler::new(roots, LinearPowerModel::default());
    let first = s.sample();
    assert_eq!(first.node.cpu_cores_used, None);
    assert!(first.power.is_empty());
    write(
        &p,
        "stat",
        &format!(
            "cpu  200 0 200 1000 0 0 0 0 0 0\ncpu0 100 0 100 500 0 0 0 0 0 0\ncpu1 100 0 100 500 0 0 0 0 0 0\n{TAIL}"
        ),
    );
    let second = s.sample();
    // 200 busy of 400 ticks on 2 CPUs = 1 core.
    assert_eq!(second.node.cpu_cores_used, Some(1.0));
    assert_eq!(second.node.memory_used_bytes, Some(600 * 1024));
    assert_eq!(second.power.len(), 1);
    assert_eq!(second.power[0].source, PowerSource::Model);
    assert!((second.power[0].watts - 2.0 * (0.74 + (3.5 - 0.74) * 0.5)).abs() < 1e-9);
    assert_eq!(second.gpus, None);
    // A counter going backwards: CPU is missing, never negative.
    write(
        &p,
        "stat",
        &format!("cpu  10 0 10 10 0 0 0 0 0 0\ncpu0 5 0 5 5 0 0 0 0 0 0\ncpu1 5 0 5 5 0 0 0 0 0 0\n{TAIL}"),
    );
    assert_eq!(s.sample().node.cpu_cores_used, None);
    write(&p, "stat", "\u{0}\u{1}garbage");
    write(&p, "meminfo", "MemTotal: lots\n");
    let bad = s.sample();
    assert_eq!((bad.node.cpus, bad.node.memory_total_bytes), (None, None));
}

#[test]
fn this_machine() {
    let mut s = Sampler::new(Roots::default(), LinearPowerModel::default());
    s.sample();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let x = s.sample();
    assert!(x.node.cpus.unwrap_or(0) >= 1);
    assert!(x.node.memory_total_bytes.unwrap_or(0) > 0);
    assert!(x.node.cpu_cores_used.is_some());
    eprintln!("cgroup layout here: {:?}", x.cgroup.version);
    assert_ne!(x.cgroup.version, CgroupVersion::None, "this machine mounts cgroups");
    let sources: Vec<PowerSource> = x.power.iter().map(|p| p.source).collect();
    assert!(sources == [PowerSource::Model] || sources.iter().all(|s| *s == PowerSource::Rapl), "{sources:?}");
}

proptest! {
    #[test]
    fn parsers_never_panic(text in "(?s).{0,300}", lines in prop::collection::vec("(cpu[0-9]? |some |full |MemTotal: |usage_usec )[ -~]{0,40}", 0..8)) {
        let joined = lines.join("\n");
        for t in [text.as_str(), joined.as_str()] {
            let _ = cpu_ticks(t);
            let _ = meminfo(t);
            let _ = parse_pressure(t);
        }
    }
}

#[test]
fn watched_workload_cgroups_are_summed_per_class() {
    let d = tempfile::tempdir().unwrap();
    let cg = d.path().join("cg");
    write(&cg, "cgroup.controllers", "cpu memory\n");
    for (i, usec) in [(0, 1_000_000u64), (1, 3_000_000)] {
        write(&cg, &format!("kubepods.slice/pod{i}/cpu.stat"), &format!("usage_usec {usec}\n"));
        write(&cg, &format!("kubepods.slice/pod{i}/memory.current"), "1048576\n");
    }
    fs::create_dir_all(cg.join("kubepods.slice/pod2")).unwrap();
    let roots = Roots { proc: d.path().join("proc"), cgroup: cg.clone(), powercap: d.path().join("none") };
    let mut s = Sampler::new(roots, LinearPowerModel::default());
    s.watch("kubepods.slice");
    let first = s.sample();
    assert_eq!((first.workloads.cgroups, first.workloads.readable), (3, 2), "pod2 has no counters: missing, not zero");
    assert_eq!(first.workloads.memory_bytes, 2 << 20);
    assert_eq!(first.workloads.cpu_cores, None, "no interval yet");
    write(&cg, "kubepods.slice/pod0/cpu.stat", "usage_usec 2000000\n");
    let second = s.sample();
    let cores = second.workloads.cpu_cores.unwrap();
    assert!(cores > 0.0, "1 s of CPU over a short interval: {cores}");
}

/// NVML's library missing (this machine, or a path that does not exist): GPUs are
/// absent with a reason, the sample is otherwise whole, nothing fails.
#[test]
fn nvml_absent_means_gpus_absent_not_an_error() {
    use greenfill_agent::telemetry::{Gpus, LinearPowerModel, Roots, Sampler};
    let gpus = Gpus::open_from(Some(std::ffi::OsStr::new("/nonexistent/libnvidia-ml.so.1")));
    assert!(gpus.read().is_none());
    assert!(!gpus.absent_reason.is_empty());
    let roots = Roots { proc: "/proc".into(), cgroup: "/sys/fs/cgroup".into(), powercap: "/nonexistent".into() };
    let mut s = Sampler::with_gpus(roots, LinearPowerModel { idle_w_per_cpu: 1.0, max_w_per_cpu: 3.0 }, gpus);
    s.sample();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let x = s.sample();
    assert_eq!(x.gpus, None);
    assert!(x.gpus_absent.as_deref().is_some_and(|r| !r.is_empty()));
    assert!(x.power.iter().all(|p| !p.component.starts_with("gpu")), "{:?}", x.power);
    assert!(x.node.cpu_cores_used.is_some(), "the rest of the sample is still read");
}

/// Online root cgroups (kubepods): their CPU over the interval and memory; a
/// counter going backwards is a missing rate, not a negative one; no roots → None.
#[test]
fn online_roots_rates_and_missing_roots() {
    use greenfill_agent::telemetry::OnlineRoots;
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "cgroup.controllers", "cpu memory io\n");
    write(r, "kubepods.slice/cpu.stat", "usage_usec 1000000\nuser_usec 1\nsystem_usec 1\n");
    write(r, "kubepods.slice/memory.current", "1048576\n");
    let mut o = OnlineRoots::new(r, vec!["kubepods.slice".into(), "kubepods".into()]);
    assert_eq!(o.read(), Some((None, 1_048_576)));
    std::thread::sleep(std::time::Duration::from_millis(100));
    write(r, "kubepods.slice/cpu.stat", "usage_usec 1500000\n");
    let (cores, _) = o.read().unwrap();
    let c = cores.unwrap();
    assert!(c > 0.0 && c <= 5.0 + 1e-9, "0.5 s of CPU over >= 0.1 s: {c}");
    write(r, "kubepods.slice/cpu.stat", "usage_usec 10\n");
    assert_eq!(o.read().unwrap().0, None, "a counter going backwards");
    let mut none = OnlineRoots::new(r, vec!["nope".into()]);
    assert_eq!(none.read(), None);
}
