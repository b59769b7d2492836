//! End to end on this machine with the three real binaries: `greenfill-scheduler`
//! and `greenfill-agent` on loopback, jobs submitted and inspected with
//! `greenfill`. Jobs run in real cgroups, so these tests need root; elsewhere they
//! print why they skip.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Root, or a printed reason (and a failure under CI, which runs as root).
fn root_or_skip(test: &str) -> bool {
    let root = greenfill_core::testing::is_root();
    if !root {
        greenfill_core::testing::cannot_run(test, "needs root to create cgroups for jobs");
    }
    root
}

fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_greenfill")).parent().unwrap().to_owned();
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: build the whole workspace (cargo build --workspace)", p.display());
    p
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Credentials on, as in production: every CLI call and agent carries one.
const USER_TOKEN: &str = "e2e-user-secret";
const AGENT_TOKEN: &str = "e2e-agent-secret";

struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    scheduler: Option<Proc>,
    agent: Option<Proc>,
    batch_root: String,
}

impl Cluster {
    fn new(test: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(
            dir.path().join("scheduler.toml"),
            format!(
                "listen = \"127.0.0.1:{port}\"\nuser_tokens = [\"{USER_TOKEN}\"]\nagent_tokens = [\"{AGENT_TOKEN}\"]\n\
                 data_dir = \"{}\"\n\
                 [planning]\ninterval = \"1s\"\nmin_gap = \"200ms\"\nslot = \"1m\"\nhorizon = \"2h\"\n\
                 reconcile_grace = \"2s\"\n",
                dir.path().join("scheduler").display()
            ),
        )
        .unwrap();
        let mut c = Cluster {
            dir,
            port,
            scheduler: None,
            agent: None,
            batch_root: format!("greenfill-test-{test}-{}/batch", std::process::id()),
        };
        // The node runs no online services: its online root cgroup is empty
        // (else every other process on this machine, the rest of the test suite
        // included, counts as online load and takes the batch capacity away).
        for h in ["cpu,cpuacct", "memory", "unified"] {
            let base = Path::new("/sys/fs/cgroup").join(h);
            if base.is_dir() {
                let _ = std::fs::create_dir_all(base.join(c.online_root()));
            }
        }
        c.start_scheduler();
        c.start_agent();
        c
    }

    fn online_root(&self) -> String {
        format!("{}/online", self.batch_root.trim_end_matches("/batch"))
    }

    fn start_scheduler(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("scheduler.log")).unwrap();
        let child = Command::new(bin("greenfill-scheduler"))
            .arg("--config")
            .arg(self.dir.path().join("scheduler.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.scheduler = Some(Proc(child));
    }

    /// `greenfill-agent run` against this cluster as `node`, with its batch
    /// root and state dir.
    fn agent_command(&self, node: &str, batch_root: &str, state: &str) -> Command {
        let mut cmd = Command::new(bin("greenfill-agent"));
        cmd.args(["run", "--server", &format!("http://127.0.0.1:{}", self.port), "--token", AGENT_TOKEN])
            .args(["--node-name", node, "--batch-root", batch_root, "--online-cgroup", &self.online_root()])
            .arg("--state-dir")
            .arg(self.dir.path().join(state));
        cmd
    }

    fn start_agent(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).unwrap();
        let child =
            self.agent_command("e2e", &self.batch_root, "agent").stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.agent = Some(Proc(child));
    }

    fn greenfill(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_greenfill"))
            .args(["--server", &format!("http://127.0.0.1:{}", self.port), "--token", USER_TOKEN])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `greenfill jobs --json`, retried while the scheduler starts.
    fn jobs(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.greenfill(&["jobs", "--json"]) {
                Ok(s) => return serde_json::from_str::<Vec<Value>>(&s).unwrap(),
                Err(e) if Instant::now() > deadline => panic!("jobs: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn submit(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.greenfill(&[&["submit"], args].concat()) {
                Ok(s) => return s.trim().to_owned(),
                Err(e) if Instant::now() > deadline => panic!("submit: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let jobs = self.jobs();
            if done(&jobs) {
                return jobs;
            }
            if Instant::now() > deadline {
                let logs = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
                let tail: Vec<&str> = logs.lines().rev().take(30).collect();
                panic!("timed out waiting for {what}: {jobs:#?}\nagent log (newest first):\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agent.take();
        self.scheduler.take();
        // Leave no cgroups behind.
        let root = self.batch_root.trim_end_matches("/batch");
        for h in ["cpu,cpuacct", "cpu", "cpuacct", "memory", "unified", ""] {
            let base = Path::new("/sys/fs/cgroup").join(h);
            let _ = std::fs::remove_dir(base.join(&self.batch_root));
            let _ = std::fs::remove_dir(base.join(self.online_root()));
            let _ = std::fs::remove_dir(base.join(root));
        }
    }
}

/// SIGTERM `proc` and wait for it to exit; returns its exit code and how long it took.
fn terminate(proc: &mut Proc, limit: Duration) -> (Option<i32>, Duration) {
    let pid = proc.0.id().to_string();
    let sent = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            return (status.code(), sent.elapsed());
        }
        assert!(sent.elapsed() < limit, "pid {pid} still running {limit:?} after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(j: &Value) -> &str {
    j["state"].as_str().unwrap()
}

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
