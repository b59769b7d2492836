//! Jobs in real cgroups on this machine (they need root, to create cgroups and
//! switch uid: off CI they skip with a printed reason), and the runner's logic on
//! in-memory cgroups, which runs anywhere.

use greenfill_agent::cgroups::{Cgroups, FakeCgroups, HostCgroups, JobLimits};
use greenfill_agent::runner::{JobSpec, NOBODY, Runner};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Root, or a printed reason (and a failure under CI, which runs as root).
fn root_or_skip() -> bool {
    let root = greenfill_core::testing::is_root();
    if !root {
        greenfill_core::testing::cannot_run("runner", "needs root to create cgroups and run jobs as another uid");
    }
    root
}

fn spec(id: &str, argv: &[&str], shell: bool, cores: f64, mem: u64, logs: &Path) -> JobSpec {
    JobSpec {
        id: id.into(),
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        shell,
        env: vec![],
        cwd: None,
        cpu_cores: cores,
        memory_bytes: mem,
        uid: None,
        gid: None,
        log_dir: logs.to_owned(),
        log_cap_bytes: 1000,
        image: None,
        deny_devices: Vec::new(),
    }
}

fn runner(test: &str) -> Runner {
    let host = HostCgroups::new(Path::new("/sys/fs/cgroup"), Path::new("/proc"));
    Runner::new(format!("greenfill-test/{test}-{}", std::process::id()), Arc::new(host))
}

/// This process's uid and gid, so a job may "switch" to them without root.
fn me() -> (u32, u32) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u32 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("Uid:"), field("Gid:"))
}

#[test]
fn on_fake_cgroups_a_job_gets_its_limits_its_process_and_is_cleaned_up() {
    let fake = Arc::new(FakeCgroups::default());
    let r = Runner::new("greenfill/batch", fake.clone());
    let logs = tempfile::tempdir().unwrap();
    let (uid, gid) = me();
    let mut s = spec("j1", &["echo hello; sleep 0.3; exit 3"], true, 0.5, 64 << 20, logs.path());
    (s.uid, s.gid) = (Some(uid), Some(gid));
    let job = r.start(&s).unwrap();
    let group = fake.group(Path::new("greenfill/batch/j1")).expect("the job's cgroup");
    assert_eq!(group.limits, Some(JobLimits { cpu_cores: 0.5, memory_bytes: 64 << 20, deny_devices: Vec::new() }));
    assert_eq!(group.processes, [job.pid], "the job's process was put in its cgroup");
    let exit = r.wait(job);
    assert_eq!(exit.code, Some(3));
    assert_eq!(std::fs::read_to_string(logs.path().join("j1.out")).unwrap(), "hello\n");
    assert!(fake.group(Path::new("greenfill/batch/j1")).is_none(), "the cgroup is removed after the job");

    // kill signals every process of the group.
    let mut s = spec("j2", &["sleep", "30"], false, 0.5, 64 << 20, logs.path());
    (s.uid, s.gid) = (Some(uid), Some(gid));
    let job = r.start(&s).unwrap();
    let started = std::time::Instant::now();
    let exit = r.kill(job);
    assert_eq!(exit.signal, Some(9));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_cgroup_write_the_kernel_refuses_fails_the_start_naming_the_file_and_value() {
    let fake = Arc::new(FakeCgroups::default());
    fake.fail_writes.store(true, std::sync::atomic::Ordering::Relaxed);
    let r = Runner::new("greenfill/batch", fake.clone());
    let logs = tempfile::tempdir().unwrap();
    let (uid, gid) = me();
    let mut s = spec("j3", &["true"], false, 1.5, 64 << 20, logs.path());
    (s.uid, s.gid) = (Some(uid), Some(gid));
    let err = r.start(&s).unwrap_err().to_string();
    assert!(err.contains("job `j3`") && err.contains("/fake/greenfill/batch/j3/cpu.max"), "{err}");
    assert!(err.contains("value \"150000\"") && err.contains("Invalid argument"), "{err}");
    assert!(fake.group(Path::new("greenfill/batch/j3")).is_none(), "nothing left behind");
}

#[test]
fn a_cpu_bound_job_limited_to_half_a_core_uses_half_a_core() {
    if !root_or_skip() {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let r = runner("cpu");
    let job = r.start(&spec("spin", &["while :; do :; done"], true, 0.5, 64 << 20, logs.path())).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let c0 = r.cpu_seconds(&job).unwrap();
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let c1 = r.cpu_seconds(&job).unwrap();
    let used = (c1 - c0) / t0.elapsed().as_secs_f64();
    let exit = r.kill(job);
    eprintln!("limited to 0.5 CPU, measured {used:.3} cores from the cgroup's counters");
    assert!((0.4..=0.6).contains(&used), "{used}");
    assert_eq!(exit.signal, Some(9));
    assert!(!exit.oom_killed);
    r.remove_root();
}

#[test]
fn a_job_over_its_memory_limit_is_reported_oom_killed() {
    if !root_or_skip() {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let r = runner("oom");
    // dd allocates one 256 MiB block; the limit is 32 MiB.
    let job = r
        .start(&spec(
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
            false,
            1.0,
            32 << 20,
            logs.path(),
        ))
        .unwrap();
    let exit = r.wait(job);
    eprintln!("{exit:?}");
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.signal, Some(9));
    r.remove_root();
}

#[test]
fn exit_codes_uid_and_capped_logs() {
    if !root_or_skip() {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let r = runner("exit");
    let exit = r.wait(r.start(&spec("three", &["exit 3"], true, 1.0, 64 << 20, logs.path())).unwrap());
    assert_eq!((exit.code, exit.signal, exit.oom_killed), (Some(3), None, false));
    let exit = r.wait(r.start(&spec("who", &["id", "-u"], false, 1.0, 64 << 20, logs.path())).unwrap());
    assert_eq!(exit.code, Some(0));
    assert_eq!(
        std::fs::read_to_string(logs.path().join("who.out")).unwrap().trim(),
        NOBODY.to_string(),
        "never root by default"
    );
    // `yes` writes forever: its log stops at the cap and the job never blocks.
    let chatty = r.start(&spec("chatty", &["yes"], false, 1.0, 64 << 20, logs.path())).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.kill(chatty).signal, Some(9));
    assert_eq!(std::fs::metadata(logs.path().join("chatty.out")).unwrap().len(), 1000, "stdout is capped");
    let exit = r.wait(
        r.start(&spec("finite", &["head", "-c", "100000", "/dev/zero"], false, 1.0, 64 << 20, logs.path())).unwrap(),
    );
    assert_eq!(exit.code, Some(0));
    assert_eq!(std::fs::metadata(logs.path().join("finite.out")).unwrap().len(), 1000);
    let err = r.start(&spec("bad", &["/no/such/program"], false, 1.0, 64 << 20, logs.path())).unwrap_err().to_string();
    assert!(err.contains("cannot start `/no/such/program`"), "{err}");
    let err = r.start(&spec("../escape", &["true"], false, 1.0, 64 << 20, logs.path())).unwrap_err().to_string();
    assert!(err.contains("id = \"../escape\""), "{err}");
    r.remove_root();
    // Every hierarchy the runner may have used: v1 controllers and the v2 tree.
    let leaf = Path::new("greenfill-test").join(format!("exit-{}", std::process::id()));
    for h in ["cpu", "cpu,cpuacct", "cpuacct", "memory", "pids", "unified", ""] {
        let left = Path::new("/sys/fs/cgroup").join(h).join(&leaf);
        assert!(!left.exists(), "{} is left behind", left.display());
    }
}

/// Through the shim, a job outlives the runner that started it: a new runner
/// re-adopts it from its cgroup and shim pid and reads its exit status and logs.
#[test]
fn a_shimmed_job_is_re_adopted_by_a_new_runner_with_its_exit_status() {
    if !root_or_skip() {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let shim = std::path::PathBuf::from(env!("CARGO_BIN_EXE_greenfill-agent"));
    let first = runner("adopt").with_shim(shim.clone());
    let s = spec("adoptee", &["sh", "-c", "sleep 1; echo still here; exit 7"], false, 0.5, 64 << 20, logs.path());
    let running = first.start(&s).unwrap();
    let (pid, root) = (running.pid, first.root().to_owned());
    // The "agent" goes away without waiting: its handles are dropped, the job runs on.
    drop(running);
    drop(first);
    let second = runner("adopt").with_shim(shim);
    assert_eq!(second.root(), root);
    let adopted = second.adopt("adoptee", pid, logs.path()).expect("the job is still there to adopt");
    let exit = second.wait(adopted);
    assert_eq!(exit.code, Some(7), "{exit:?}");
    assert_eq!(std::fs::read_to_string(logs.path().join("adoptee.out")).unwrap(), "still here\n");
    // Nothing left to adopt once it is reported.
    assert!(second.adopt("adoptee", pid, logs.path()).is_none());
    second.remove_root();
}

/// An agent whose state dir was wiped finds its old jobs by their cgroups: job
/// cgroups under the batch root that its state does not know are stopped and
/// removed, and the known ones are left alone.
#[test]
fn job_cgroups_the_state_does_not_know_are_stopped_and_removed() {
    if !root_or_skip() {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let r = runner("orphans");
    let known = r.start(&spec("known", &["sleep 300"], true, 0.5, 64 << 20, logs.path())).unwrap();
    let orphan = r.start(&spec("orphan", &["sleep 300"], true, 0.5, 64 << 20, logs.path())).unwrap();
    let orphan_path = orphan.cgroup_path.clone();
    let swept = r.sweep_orphans(std::slice::from_ref(&known.cgroup_path));
    let host = HostCgroups::new(Path::new("/sys/fs/cgroup"), Path::new("/proc"));
    let orphan_left = host.processes(&orphan_path);
    let known_left = host.processes(&known.cgroup_path);
    let exit = r.kill(known);
    let orphan_exit = r.kill(orphan);
    r.remove_root();
    assert_eq!(orphan_exit.signal, Some(9), "{orphan_exit:?}");
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert_eq!(swept[0].0, orphan_path);
    assert!(swept[0].1 >= 1, "the orphan's process was killed: {swept:?}");
    assert!(orphan_left.is_empty(), "{orphan_left:?}");
    assert!(!known_left.is_empty(), "the known job kept running");
    assert_eq!(exit.signal, Some(9));
}

/// A GPU job's device cgroup (v1) denies it the other GPUs' device nodes: with
/// `/dev/nvidia0`-like nodes (char 195:N, no driver here), opening its own GPU
/// reaches the (absent) driver, ENXIO; opening another's is refused, EPERM.
#[test]
fn a_gpu_job_may_open_only_its_own_gpus_device_node() {
    if !root_or_skip() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let devs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(devs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for minor in [0u64, 1] {
        let node = devs.path().join(format!("nvidia{minor}"));
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(195, minor),
        )
        .unwrap();
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let host = HostCgroups::new(Path::new("/sys/fs/cgroup"), Path::new("/proc"));
    if host.layout().v1_devices.is_none() {
        println!("SKIP: no cgroup v1 devices controller here");
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let r = runner("devices");
    let d = devs.path().display();
    let mut s = spec("gpu0", &[&format!("cat {d}/nvidia0; cat {d}/nvidia1; true")], true, 0.5, 64 << 20, logs.path());
    s.deny_devices = vec!["c 195:1 rwm".into()];
    assert_eq!(r.wait(r.start(&s).unwrap()).code, Some(0));
    let err = std::fs::read_to_string(logs.path().join("gpu0.err")).unwrap();
    assert!(err.contains("nvidia0: No such device or address"), "its own GPU reaches the driver: {err}");
    assert!(err.contains("nvidia1: Operation not permitted"), "another GPU is denied: {err}");
    r.remove_root();
    let left = Path::new("/sys/fs/cgroup/devices/greenfill-test").join(format!("devices-{}", std::process::id()));
    assert!(!left.exists(), "{} is left behind", left.display());
}
