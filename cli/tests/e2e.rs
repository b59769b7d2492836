//! End to end on this machine with the three real binaries: `greenfill-scheduler`
//! and `greenfill-agent` on loopback, jobs submitted and inspected with
//! `greenfill`. Jobs run in real cgroups, so these tests need root; elsewhere they
//! print why they skip.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn twenty_real_jobs_run_to_completion_with_their_exit_codes() {
    if !root_or_skip("twenty_real_jobs") {
        return;
    }
    let c = Cluster::new("twenty");
    let mut expected = std::collections::HashMap::new();
    for i in 0..20 {
        let code = if i % 5 == 4 { 3 } else { 0 };
        let script = format!("echo job-{i}; sleep 0.{i}; exit {code}");
        let id = c.submit(&[
            "--cpu",
            "0.2",
            "--memory",
            "64Mi",
            "--duration",
            "20s",
            "--name",
            &format!("job-{i}"),
            "--",
            "sh",
            "-c",
            &script,
        ]);
        expected.insert(id, code);
    }
    let jobs = c.wait_until("20 finished jobs", Duration::from_secs(120), |jobs| {
        jobs.len() == 20 && jobs.iter().all(|j| ["succeeded", "failed"].contains(&state(j)))
    });
    for j in &jobs {
        let id = j["id"].as_str().unwrap();
        let code = expected[id];
        assert_eq!(j["exit_code"], Value::from(code), "{j}");
        assert_eq!(state(j), if code == 0 { "succeeded" } else { "failed" }, "{j}");
        assert_eq!(j["node"], "e2e");
        assert_eq!(j["attempts"], 1, "ran more than once: {j}");
        let out = std::fs::read_to_string(c.dir.path().join(format!("agent/logs/{id}-1.out"))).unwrap();
        assert_eq!(out.trim(), j["name"].as_str().unwrap(), "the job's own stdout");
    }
    // The table form shows the same.
    let table = c.greenfill(&["jobs"]).unwrap();
    assert_eq!(table.lines().filter(|l| l.contains("succeeded")).count(), 16, "{table}");
    let nodes = c.greenfill(&["nodes", "--json"]).unwrap();
    assert!(nodes.contains("\"connected\": true"), "{nodes}");
    exported_jobs_replay_with_the_same_count_and_core_hours(&c, &jobs);
}

/// Issue 28: the scheduler's history as a trace. The 16 that succeeded,
/// exported, are what `sim run` replays: the same count and core-hours.
fn exported_jobs_replay_with_the_same_count_and_core_hours(c: &Cluster, jobs: &[Value]) {
    let dir = c.dir.path();
    let trace = dir.join("history.csv");
    c.greenfill(&["jobs", "export", "--format", "trace", "--out", trace.to_str().unwrap()]).unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 16, "{text}");
    let mut core_s = 0.0;
    for r in &rows {
        let j = jobs.iter().find(|j| j["id"] == r[5]).unwrap_or_else(|| panic!("not a job: {r:?}"));
        assert_eq!(state(j), "succeeded");
        assert_eq!((r[2], r[3]), ("0.2", "67108864"), "{r:?}");
        assert_eq!(r[0], j["submitted_at"].as_str().unwrap());
        core_s += 0.2 * r[1].parse::<f64>().unwrap();
    }
    let later = c.greenfill(&["jobs", "export", "--since", "2100-01-01T00:00:00Z"]).unwrap();
    assert_eq!(later.trim(), "arrival,duration,cpus,memory,deadline,id,owner", "--since filters");
    // One-second steps, so durations replay whole.
    std::fs::write(dir.join("online.csv"), "time,instance,cpu_fraction\n0,a,0.1\n1200,a,0.1\n").unwrap();
    let pool = |name: &str, on: bool| {
        format!(
            "[[cluster.pools]]\nname = \"{name}\"\nnodes = 1\ncores = 4\nmemory_gib = 16\npue = 1.2\nalways_on = {on}\n\
             power = {{ kind = \"linear\", idle_w = 50, max_w = 100 }}\n"
        )
    };
    let scenario = format!(
        "name = \"history\"\nstart = \"2022-06-01T00:00:00Z\"\nlength = \"10m\"\ndrain = \"10m\"\nstep = \"1s\"\n\
         plan_every = \"1m\"\nhorizon = \"1h\"\nslot = \"1m\"\npolicies = [\"dedicated\", \"asap\"]\n{}{}\
         [online]\nfile = \"online.csv\"\n[batch]\nfile = \"history.csv\"\n[carbon]\nconstant = 400\n",
        pool("online", true),
        pool("batch", false)
    );
    std::fs::write(dir.join("history.toml"), scenario).unwrap();
    // The simulator is offline: it takes no scheduler flags.
    let sim = std::process::Command::new(env!("CARGO_BIN_EXE_greenfill"))
        .args(["sim", "run", "--json", "--scenario"])
        .arg(dir.join("history.toml"))
        .arg("--out")
        .arg(dir.join("sim"))
        .output()
        .unwrap();
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
    let run = String::from_utf8(sim.stdout).unwrap();
    let v: Value = serde_json::from_str(&run).unwrap();
    for p in ["dedicated", "asap"] {
        assert_eq!(v["policies"][p]["jobs_completed"], 16, "{p}");
        let h = v["policies"][p]["batch_core_hours"].as_f64().unwrap();
        assert!((h - core_s / 3600.0).abs() < 1e-9, "{p}: {h} core-hours replayed, {} exported", core_s / 3600.0);
    }
}

#[test]
fn a_killed_agent_re_adopts_its_job_and_a_missing_scheduler_does_not_stop_jobs() {
    if !root_or_skip("agent_faults") {
        return;
    }
    let mut c = Cluster::new("faults");
    // 1. Kill the agent mid-job: the job runs on under its shim, the restarted
    //    agent re-adopts it and reports its exit; one attempt. Never two at once:
    //    the marker file catches concurrent runs.
    let marker = c.dir.path().join("running");
    let script = format!(
        "if [ -e {m} ]; then echo TWICE >> {m}.bad; fi; touch {m}; sleep 4; rm -f {m}; exit 0",
        m = marker.display()
    );
    let id = c.submit(&["--cpu", "0.2", "--memory", "64Mi", "--duration", "10s", "--", "sh", "-c", &script]);
    c.wait_until("the job running", Duration::from_secs(60), |j| j.iter().any(|j| state(j) == "running"));
    c.agent.take(); // SIGKILL
    std::thread::sleep(Duration::from_millis(500));
    c.start_agent();
    let jobs = c.wait_until("the re-adopted job done", Duration::from_secs(90), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "succeeded")
    });
    let j = jobs.iter().find(|j| j["id"] == id.as_str()).unwrap();
    assert_eq!(j["attempts"], 1, "re-adopted, not rerun: {j}");
    let log = std::fs::read_to_string(c.dir.path().join("agent.log")).unwrap();
    assert!(log.contains("re-adopted a job"), "{log}");
    assert!(!c.dir.path().join("running.bad").exists(), "two attempts ran at once");

    // 2. Scheduler away for a minute while a job runs: the job goes on, and its
    //    exit is reported after the agent reconnects.
    let id = c.submit(&["--cpu", "0.2", "--memory", "64Mi", "--duration", "10s", "--", "sh", "-c", "sleep 3; exit 0"]);
    c.wait_until("the second job running", Duration::from_secs(60), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "running")
    });
    c.scheduler.take(); // SIGKILL
    // A full minute away (the agent's backoff grows to its 30 s cap meanwhile).
    std::thread::sleep(Duration::from_secs(60));
    c.start_scheduler();
    let jobs = c.wait_until("the second job reported done", Duration::from_secs(60), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "succeeded")
    });
    let j = jobs.iter().find(|j| j["id"] == id.as_str()).unwrap();
    assert_eq!(j["attempts"], 1, "the job ran through the outage, once: {j}");
}

#[test]
fn sigterm_stops_both_daemons_cleanly_and_keeps_every_acknowledged_job() {
    if !root_or_skip("sigterm") {
        return;
    }
    let mut c = Cluster::new("sigterm");
    let long =
        c.submit(&["--cpu", "0.1", "--memory", "32Mi", "--duration", "20s", "--", "sh", "-c", "sleep 6; exit 0"]);
    c.wait_until("the long job running", Duration::from_secs(60), |j| j.iter().any(|j| state(j) == "running"));
    // Acknowledged submissions that wait for later: every one must survive.
    let later: Vec<String> = (0..25).map(|_| c.submit(&["--not-before", "+2h", "--", "true"])).collect();
    let (code, took) = terminate(c.agent.as_mut().unwrap(), Duration::from_secs(5));
    assert_eq!(code, Some(0), "the agent exits 0 on SIGTERM");
    eprintln!("agent stopped {took:?} after SIGTERM");
    let (code, took) = terminate(c.scheduler.as_mut().unwrap(), Duration::from_secs(5));
    let log = std::fs::read_to_string(c.dir.path().join("scheduler.log")).unwrap();
    assert_eq!(code, Some(0), "the scheduler exits 0 on SIGTERM; its log:\n{log}");
    eprintln!("scheduler stopped {took:?} after SIGTERM");
    assert!(log.contains("shutting down") && log.contains("every acknowledged change is on disk"), "{log}");
    let agent_log = std::fs::read_to_string(c.dir.path().join("agent.log")).unwrap();
    assert!(agent_log.contains("agent stopped"), "{agent_log}");
    c.agent.take();
    c.scheduler.take();

    // Restarted: every acknowledged job is there once, and the job that ran
    // through the stop (under its shim) is re-adopted and finishes once.
    c.start_scheduler();
    c.start_agent();
    let jobs = c.wait_until("the long job done after the restart", Duration::from_secs(60), |j| {
        j.iter().any(|j| j["id"] == long.as_str() && state(j) == "succeeded")
    });
    let ids: std::collections::HashSet<&str> = jobs.iter().filter_map(|j| j["id"].as_str()).collect();
    assert_eq!(jobs.len(), 26, "{jobs:#?}");
    for id in &later {
        assert!(ids.contains(id.as_str()), "acknowledged job {id} lost");
    }
    let long_job = jobs.iter().find(|j| j["id"] == long.as_str()).unwrap();
    assert_eq!(long_job["attempts"], 1, "ran more than once: {long_job}");
}

/// Pids whose command line contains `marker`.
fn pids_running(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(marker))
        })
        .collect()
}

/// Issue 19, as it was found: a second agent started with the same
/// `--node-name` (its own state dir) while the first runs a job. It is refused
/// by the scheduler, touches nothing, and says why; `greenfill cancel` is
/// `cancelling` until the first agent has stopped the process, then `cancelled`
/// with the process gone. (On one machine the second agent needs its own batch
/// root: one with the first one's is refused at start, checked here too.)
#[test]
fn a_second_agent_for_the_same_node_is_refused_and_a_cancel_reaches_the_process() {
    if !root_or_skip("second_agent") {
        return;
    }
    let c = Cluster::new("second");
    let marker = format!("sleep 300.{}", std::process::id());
    let id = c.submit(&["--cpu", "0.1", "--memory", "32Mi", "--duration", "5m", "--", "sh", "-c", &marker]);
    c.wait_until("the job running", Duration::from_secs(60), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "running")
    });
    assert!(!pids_running(&marker).is_empty(), "the job's process runs");
    let same_root = c.agent_command("other", &c.batch_root, "agent3").output().unwrap();
    let err = String::from_utf8_lossy(&same_root.stderr);
    assert_eq!(same_root.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("already uses --batch-root {}", c.batch_root)), "{err}");
    let log2 = c.dir.path().join("agent2.log");
    let second_root = format!("{}2/batch", c.batch_root.trim_end_matches("/batch"));
    let second = c
        .agent_command("e2e", &second_root, "agent2")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log2).unwrap())
        .spawn()
        .unwrap();
    let second = Proc(second);
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let log = std::fs::read_to_string(&log2).unwrap_or_default();
        if log.contains("already served by agent instance") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(refused.contains("node e2e is already served by agent instance"), "second agent's log:\n{refused}");
    assert!(!pids_running(&marker).is_empty(), "the second agent touched the first one's job");
    let out = c.greenfill(&["cancel", &id]).unwrap();
    assert!(out.contains("cancelling"), "{out}");
    let jobs = c.wait_until("the cancel confirmed", Duration::from_secs(30), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "cancelled")
    });
    let j = jobs.iter().find(|j| j["id"] == id.as_str()).unwrap();
    assert!(j["reason"].as_str().unwrap().contains("stopped on e2e"), "{j}");
    assert!(pids_running(&marker).is_empty(), "cancelled, but the process still runs");
    // ... and its cgroup is gone: the batch root holds no job cgroup.
    for h in ["cpu", "cpu,cpuacct", "memory"] {
        let root = Path::new("/sys/fs/cgroup").join(h).join(&c.batch_root);
        let left: Vec<_> = std::fs::read_dir(&root)
            .map(|d| d.filter_map(Result::ok).filter(|e| e.path().is_dir()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "job cgroups left under {}: {left:?}", root.display());
    }
    drop(second);
    for h in ["cpu,cpuacct", "cpu", "cpuacct", "memory", "unified", ""] {
        let base = Path::new("/sys/fs/cgroup").join(h);
        let _ = std::fs::remove_dir(base.join(&second_root));
        let _ = std::fs::remove_dir(base.join(second_root.trim_end_matches("/batch")));
    }
}

/// An agent killed mid-job and restarted with its state dir wiped: the old
/// job's process is found by its cgroup and stopped (nothing runs that no
/// scheduler knows of), the scheduler requeues the attempt the agent no longer
/// reports, and the job runs again: one process, attempt 2.
#[test]
fn an_agent_restarted_with_a_wiped_state_dir_stops_the_orphan_and_the_job_runs_again() {
    if !root_or_skip("wiped_state") {
        return;
    }
    let mut c = Cluster::new("wiped");
    let marker = format!("sleep 300.{}", std::process::id() + 7);
    let id = c.submit(&["--cpu", "0.1", "--memory", "32Mi", "--duration", "5m", "--", "sh", "-c", &marker]);
    c.wait_until("the job running", Duration::from_secs(60), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "running")
    });
    let first = pids_running(&marker);
    assert!(!first.is_empty());
    c.agent.take(); // SIGKILL: the job goes on under its shim
    std::fs::remove_dir_all(c.dir.path().join("agent")).unwrap();
    c.start_agent();
    let jobs = c.wait_until("the job running again", Duration::from_secs(60), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "running" && j["attempts"] == 2)
    });
    let j = jobs.iter().find(|j| j["id"] == id.as_str()).unwrap();
    let now = pids_running(&marker);
    assert!(first.iter().all(|p| !now.contains(p)), "the orphan still runs: {first:?} in {now:?}");
    assert!(!now.is_empty(), "attempt 2 runs: {j}");
    let out = c.greenfill(&["cancel", &id]).unwrap();
    assert!(out.contains("cancelling"), "{out}");
    c.wait_until("the cancel confirmed", Duration::from_secs(30), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "cancelled")
    });
    assert!(pids_running(&marker).is_empty());
}

/// The fake NVML's state: GPUs 0 and 1 (A100, 100–400 W), no processes.
fn fake_gpus(path: &Path) {
    let gpu = |i: u32| {
        serde_json::json!({
            "index": i, "uuid": format!("GPU-e2e-{i}"), "model": "NVIDIA A100-SXM4-40GB", "minor": i,
            "memory_total_bytes": 42_949_672_960u64, "memory_used_bytes": 0, "utilisation_pct": 0,
            "power_w": 60.0, "power_limit_w": 400.0, "power_limit_min_w": 100.0, "power_limit_max_w": 400.0,
            "energy_j": 1.0e6, "processes": []
        })
    };
    std::fs::write(path, serde_json::to_vec(&vec![gpu(0), gpu(1)]).unwrap()).unwrap();
}

fn gpu_field(path: &Path, index: usize, field: &str) -> Value {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v[index][field].clone()
}

/// With the fake NVML behind the real agent: a 1-GPU job sees exactly one GPU;
/// an online process busy on that GPU gets batch there capped to the card's
/// minimum; the agent is SIGKILLed mid-cap, and its next start restores the limit.
#[test]
fn a_gpu_job_sees_its_gpu_the_guard_caps_it_and_a_restarted_agent_restores_the_limit() {
    if !root_or_skip("gpu_guard") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gpus = tmp.path().join("gpus.json");
    fake_gpus(&gpus);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let setup = Setup {
        // The guard never evicts here: this test is about the cap and its restore.
        agent_args: vec!["--gpu-stop-after".into(), "1000".into()],
        agent_env: vec![("GREENFILL_FAKE_GPUS".into(), gpus.display().to_string())],
        ..Setup::default()
    };
    let mut c = Cluster::configured("gpu", &setup);
    let script = format!("echo \"$CUDA_VISIBLE_DEVICES\" > {}/seen; sleep 300", out.display());
    let id =
        c.submit(&["--gpus", "1", "--cpu", "0.1", "--memory", "32Mi", "--duration", "5m", "--shell", "--", &script]);
    c.wait_until("the GPU job running", Duration::from_secs(60), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "running")
    });
    let seen = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_to_string(out.join("seen")).ok().filter(|s| !s.is_empty())
        })
        .expect("the job wrote what it sees");
    assert_eq!(seen.trim(), "GPU-e2e-0", "exactly its one GPU, by UUID");

    // An online process (this test, in no batch cgroup) at 80 % SM on GPU 0.
    let mut state_v: Value = serde_json::from_slice(&std::fs::read(&gpus).unwrap()).unwrap();
    state_v[0]["processes"] =
        serde_json::json!([{ "pid": std::process::id(), "memory_bytes": 1_073_741_824u64, "sm_util_pct": 80 }]);
    std::fs::write(&gpus, serde_json::to_vec(&state_v).unwrap()).unwrap();
    let capped = Instant::now();
    while gpu_field(&gpus, 0, "power_limit_w") != 100.0 {
        assert!(
            capped.elapsed() < Duration::from_secs(20),
            "GPU 0 never capped: {}",
            gpu_field(&gpus, 0, "power_limit_w")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(gpu_field(&gpus, 1, "power_limit_w"), 400.0, "a GPU with no batch is left alone");

    // SIGKILL mid-cap: the record survives, the card stays capped.
    c.agent.take();
    let record = c.dir.path().join("agent/gpu-limits.json");
    let r: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(r["GPU-e2e-0"]["original_w"], 400.0, "{r}");
    assert_eq!(gpu_field(&gpus, 0, "power_limit_w"), 100.0);
    // The online process is gone; the next agent restores the limit at start.
    let mut state_v: Value = serde_json::from_slice(&std::fs::read(&gpus).unwrap()).unwrap();
    state_v[0]["processes"] = serde_json::json!([]);
    std::fs::write(&gpus, serde_json::to_vec(&state_v).unwrap()).unwrap();
    c.start_agent();
    let restarted = Instant::now();
    while gpu_field(&gpus, 0, "power_limit_w") != 400.0 {
        assert!(restarted.elapsed() < Duration::from_secs(20), "the limit was never restored");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(c.dir.path().join("agent.log")).unwrap();
    assert!(log.contains("GPU power limit restored from a previous run"), "{log}");
    let out = c.greenfill(&["cancel", &id]).unwrap();
    assert!(out.contains("cancelling"), "{out}");
    c.wait_until("the cancel confirmed", Duration::from_secs(30), |j| {
        j.iter().any(|j| j["id"] == id.as_str() && state(j) == "cancelled")
    });
}
