//! Power actuation end to end: a scheduler and three agents in one sleepable pool,
//! the `exec` driver, where "suspend" stops the node's agent (SIGTERM) and
//! "resume" starts it again. An empty queue lets the nodes drain and sleep; a
//! burst of jobs wakes them; every job runs once, on a node that is `on`.
//! Needs root (jobs run in real cgroups).

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NODES: [&str; 3] = ["p1", "p2", "p3"];

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_greenfill")).parent().unwrap().join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Site {
    dir: tempfile::TempDir,
    port: u16,
    metrics: u16,
    scheduler: Option<std::process::Child>,
    tag: String,
}

impl Site {
    fn new() -> Site {
        Site::with_suspend_delay(0)
    }

    /// `delay`: seconds the site's suspend program takes before it stops the agent.
    fn with_suspend_delay(delay: u32) -> Site {
        Site::build(&|d| exec_power(d, delay, "-", 30), &|_, _| String::new())
    }

    /// A site whose pool has the `[pools.power]` body `power(dir)`, and whose
    /// agents get `agent_flags(dir, node)`.
    fn build(power: &dyn Fn(&str) -> String, agent_flags: &dyn Fn(&str, &str) -> String) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let (port, metrics) = (free_port(), free_port());
        let d = dir.path().display().to_string();
        let tag = format!("greenfill-power-{}", std::process::id());
        for node in NODES {
            // The pool runs no online services: its online root cgroup is empty
            // (else every other process on this machine, tests included, would
            // count as online load and move the plan's capacity).
            for h in ["cpu,cpuacct", "cpu", "cpuacct", "memory", "unified"] {
                let base = Path::new("/sys/fs/cgroup").join(h);
                if base.is_dir() {
                    std::fs::create_dir_all(base.join(format!("{tag}-{node}/online"))).unwrap();
                }
            }
            std::fs::write(
                dir.path().join(format!("{node}.start")),
                format!(
                    "{agent} run --server http://127.0.0.1:{port} --node-name {node} --pool sleepy \
                     --batch-root {tag}-{node}/batch --online-cgroup {tag}-{node}/online --state-dir {d}/{node} {flags} </dev/null >>{d}/{node}.log 2>&1 &\n\
                     echo $! > {d}/{node}.pid\n",
                    agent = bin("greenfill-agent").display(),
                    flags = agent_flags(&d, node),
                ),
            )
            .unwrap();
        }
        std::fs::write(
            dir.path().join("scheduler.toml"),
            format!(
                "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\ninsecure_local = true\n\
                 data_dir = \"{d}/scheduler\"\n\
                 [planning]\ninterval = \"1s\"\nmin_gap = \"200ms\"\nslot = \"10s\"\nhorizon = \"30m\"\n\
                 [[pools]]\nname = \"sleepy\"\ncores = 2\nmemory_gib = 1\n\
                 [pools.power]\nsuspend_after = \"2s\"\nwake = \"2s\"\nmin_off = \"3s\"\nsuspend_timeout = \"15s\"\n\
                 max_suspends_per_day = 50\ncall_timeout = \"10s\"\n{}",
                power(&d)
            ),
        )
        .unwrap();
        let mut site = Site { dir, port, metrics, scheduler: None, tag };
        site.start_scheduler();
        for node in NODES {
            assert!(Command::new("sh").arg(site.path(&format!("{node}.start"))).status().unwrap().success());
        }
        site
    }

    fn start_scheduler(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("scheduler.log")).unwrap();
        let child = Command::new(bin("greenfill-scheduler"))
            .arg("--config")
            .arg(self.path("scheduler.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.scheduler = Some(child);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn greenfill(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_greenfill"))
            .args(&args[..1])
            .args(["--server", &format!("http://127.0.0.1:{}", self.port)])
            .args(&args[1..])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn json(&self, args: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.greenfill(args) {
                Ok(s) => return serde_json::from_str(&s).unwrap(),
                Err(e) if Instant::now() > deadline => panic!("{args:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Poll `greenfill jobs --json` until job `id` has succeeded, or fail with the logs.
    fn wait_succeeded(&self, id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let jobs = self.json(&["jobs", "--json"]);
            if let Some(j) = jobs.iter().find(|j| j["id"] == id.trim() && j["state"] == "succeeded") {
                return j.clone();
            }
            assert!(Instant::now() < deadline, "job {id} did not succeed: {jobs:#?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Poll `greenfill nodes --json` until `done`, or fail with the logs.
    fn wait_nodes(&self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let nodes = self.json(&["nodes", "--json"]);
            if done(&nodes) {
                return nodes;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {nodes:#?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.path(f)).unwrap_or_default();
        let tail = |s: String| s.lines().rev().take(25).collect::<Vec<_>>().join("\n");
        let jobs = self.greenfill(&["jobs", "--json"]).unwrap_or_else(|e| e);
        let plan = self.greenfill(&["plan", "--json"]).unwrap_or_else(|e| e);
        let jobs = format!("{jobs}\nplan: {plan}");
        format!(
            "jobs: {jobs}\ncalls:\n{}\nscheduler log (newest first):\n{}",
            read("calls.log"),
            tail(read("scheduler.log"))
        )
    }

    fn scrape(&self) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for node in NODES {
            if let Ok(pid) = std::fs::read_to_string(self.path(&format!("{node}.pid"))) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
        if let Some(mut s) = self.scheduler.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        std::thread::sleep(Duration::from_millis(200));
        for node in NODES {
            for h in ["cpu,cpuacct", "cpu", "cpuacct", "memory", "unified", ""] {
                let base = Path::new("/sys/fs/cgroup").join(h).join(format!("{}-{node}", self.tag));
                let _ = std::fs::remove_dir(base.join("batch"));
                let _ = std::fs::remove_dir(base.join("online"));
                let _ = std::fs::remove_dir(base);
            }
        }
    }
}

/// The `exec` driver with the site's power program: log the call, then stop
/// (after `delay` seconds) or start the node's agent, except node `dead`'s,
/// which never comes back.
fn exec_power(d: &str, delay: u32, dead: &str, resume_timeout_s: u32) -> String {
    std::fs::write(
        format!("{d}/power.sh"),
        format!(
            "#!/bin/sh\nset -e\necho \"$1 $2 $(date +%s.%N)\" >> {d}/calls.log\n\
             case $1 in\n  suspend) sleep {delay}; kill -TERM \"$(cat {d}/$2.pid)\";;\n  resume) [ \"$2\" = {dead} ] || sh {d}/$2.start;;\nesac\n"
        ),
    )
    .unwrap();
    format!(
        "driver = \"exec\"\nsuspend_command = [\"sh\", \"{d}/power.sh\", \"suspend\"]\n\
         resume_command = [\"sh\", \"{d}/power.sh\", \"resume\"]\nresume_timeout = \"{resume_timeout_s}s\"\n"
    )
}

fn power_states(nodes: &[Value]) -> Vec<&str> {
    nodes.iter().map(|n| n["power_state"].as_str().unwrap()).collect()
}

fn calls(site: &Site) -> Vec<(String, String, f64)> {
    std::fs::read_to_string(site.path("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn an_empty_queue_sleeps_the_pool_and_a_burst_wakes_it() {
    if !greenfill_core::testing::is_root() {
        greenfill_core::testing::cannot_run("power e2e", "needs root to create cgroups for jobs");
        return;
    }
    let site = Site::new();
    // 1. Three nodes register; with nothing to run they drain and sleep.
    site.wait_nodes("three nodes off", Duration::from_secs(60), |n| {
        n.len() == 3 && power_states(n).iter().all(|s| *s == "off")
    });
    let slept = calls(&site);
    assert_eq!(slept.iter().filter(|c| c.0 == "suspend").count(), 3, "{}", site.logs());
    // 2. A burst: six jobs of 3 s each. They are small (0.3 core): the agents
    // count every other process on this 2-core machine as online load, and
    // the tests around them leave little room.
    let burst_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let ids: Vec<String> = (0..6)
        .map(|i| {
            site.greenfill(&[
                "submit",
                "--cpu",
                "0.3",
                "--memory",
                "32Mi",
                "--duration",
                "3s",
                "--name",
                &format!("burst-{i}"),
                "--",
                "sleep",
                "3",
            ])
            .unwrap()
            .trim()
            .to_owned()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let jobs = loop {
        let jobs = site.json(&["jobs", "--json"]);
        if jobs.len() == 6 && jobs.iter().all(|j| j["state"] == "succeeded") {
            break jobs;
        }
        assert!(Instant::now() < deadline, "jobs did not finish: {jobs:#?}\n{}", site.logs());
        std::thread::sleep(Duration::from_millis(300));
    };
    // 3. Every job ran exactly once, on a node of the pool: a dispatch to a node
    // that is not on would have been requeued (its agent is gone) and run again.
    for j in &jobs {
        assert!(ids.contains(&j["id"].as_str().unwrap().to_owned()));
        assert_eq!(j["attempts"], 1, "ran more than once: {j}");
        assert!(NODES.contains(&j["node"].as_str().unwrap()), "{j}");
    }
    // 4. The queue empty again, they all sleep again.
    site.wait_nodes("three nodes off again", Duration::from_secs(60), |n| power_states(n).iter().all(|s| *s == "off"));
    let all = calls(&site);
    let resumes: Vec<&(String, String, f64)> = all.iter().filter(|c| c.0 == "resume").collect();
    assert!(!resumes.is_empty(), "the burst woke nobody: {}", site.logs());
    // started_at has whole seconds.
    let first_start = jobs
        .iter()
        .filter_map(|j| chrono::DateTime::parse_from_rfc3339(j["started_at"].as_str()?).ok())
        .map(|t| {
            #[allow(clippy::cast_precision_loss, reason = "unix seconds fit f64")]
            let secs = t.timestamp() as f64;
            secs
        })
        .fold(f64::INFINITY, f64::min);
    let metrics = site.scrape();
    let powered: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("greenfill_powered_node_seconds_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert!(metrics.contains("greenfill_power_transitions_total"), "{metrics}");
    assert!(metrics.contains("power_state=\"off\""), "{metrics}");
    println!(
        "power e2e: {} suspends, {} resumes; first resume {:.1} s after the burst; first job started at most \
         {:.0} s after the burst (its start has whole seconds); powered node-hours {:.4}",
        all.iter().filter(|c| c.0 == "suspend").count(),
        resumes.len(),
        resumes[0].2 - burst_at,
        (first_start + 1.0 - burst_at).max(0.0),
        powered / 3600.0
    );
}

#[test]
fn a_scheduler_killed_mid_transition_reconciles_and_calls_nobody_twice() {
    if !greenfill_core::testing::is_root() {
        greenfill_core::testing::cannot_run("power crash e2e", "needs root to create cgroups for jobs");
        return;
    }
    // The suspend program takes 4 s: the scheduler is killed while it runs.
    let mut site = Site::with_suspend_delay(4);
    site.wait_nodes("three nodes suspending", Duration::from_secs(60), |n| {
        n.len() == 3 && power_states(n).iter().all(|s| *s == "suspending")
    });
    let mut s = site.scheduler.take().unwrap();
    s.kill().unwrap();
    s.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    site.start_scheduler();
    // The programs it started finish on their own; after the restart each node's
    // state comes back from disk and is reconciled: its agent went silent, so off.
    let nodes = site.wait_nodes("three nodes off after the restart", Duration::from_secs(60), |n| {
        n.len() == 3 && power_states(n).iter().all(|s| *s == "off")
    });
    assert!(nodes.iter().all(|n| n["power_reason"] == "went silent after its suspend"), "{nodes:#?}");
    std::thread::sleep(Duration::from_secs(3));
    let all = calls(&site);
    let suspends: Vec<&str> = all.iter().filter(|c| c.0 == "suspend").map(|c| c.1.as_str()).collect();
    assert_eq!(suspends.len(), 3, "one suspend per node and decision: {}", site.logs());
    for node in NODES {
        assert!(suspends.contains(&node), "{node}: {suspends:?}");
    }
    assert!(all.iter().all(|c| c.0 == "suspend"), "nothing woken: {}", site.logs());
}

#[test]
fn the_agent_driver_suspends_through_the_agent_and_wakes_it_by_wake_on_lan() {
    if !greenfill_core::testing::is_root() {
        greenfill_core::testing::cannot_run("power agent e2e", "needs root to create cgroups for jobs");
        return;
    }
    // The "NIC": a UDP socket on loopback that takes magic packets and wakes the
    // node whose MAC it carries (its power-down command waits for that, 90 s at
    // most, so nothing outlives the test).
    let nic = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let wol = nic.local_addr().unwrap();
    let macs: Vec<(String, [u8; 6])> = NODES
        .iter()
        .enumerate()
        .map(|(i, n)| ((*n).to_owned(), [0x02, 0, 0, 0, 0, u8::try_from(i).unwrap() + 1]))
        .collect();
    let table: Vec<String> = macs
        .iter()
        .map(|(n, m)| format!("{n} = \"{}\"", m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")))
        .collect();
    let power = move |_: &str| {
        format!(
            "driver = \"agent\"\nresume_timeout = \"30s\"\n[pools.power.agent]\nbroadcast = \"{wol}\"\nmacs = {{ {} }}\n",
            table.join(", ")
        )
    };
    let flags = |d: &str, node: &str| {
        format!(
            "--power-down-command 'echo down >> {d}/{node}.power; \
             for i in $(seq 900); do [ -f {d}/{node}.woke ] && break; sleep 0.1; done; \
             rm -f {d}/{node}.woke; echo up >> {d}/{node}.power'"
        )
    };
    let site = Site::build(&power, &flags);
    let dir = site.dir.path().to_owned();
    nic.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let woken = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let listener = {
        let (stop, woken, macs) = (stop.clone(), woken.clone(), macs.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = nic.recv(&mut buf) else { continue };
                let p = &buf[..n];
                assert_eq!(n, 102, "a magic packet is 102 bytes");
                assert!(p[..6].iter().all(|b| *b == 0xFF), "{p:?}");
                let mac = &p[6..12];
                assert!(p[6..].chunks(6).all(|c| c == mac), "the MAC 16 times");
                let (node, _) = macs.iter().find(|(_, m)| m == mac).expect("a MAC of the pool");
                std::fs::write(dir.join(format!("{node}.woke")), "").unwrap();
                woken.lock().unwrap().push(node.clone());
            }
        })
    };
    site.wait_nodes("three nodes off", Duration::from_secs(60), |n| {
        n.len() == 3 && power_states(n).iter().all(|s| *s == "off")
    });
    let id = site
        .greenfill(&["submit", "--cpu", "0.3", "--memory", "32Mi", "--duration", "2s", "--", "sleep", "2"])
        .unwrap();
    let job = site.wait_succeeded(&id, Duration::from_secs(120));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.join().unwrap();
    let node = job["node"].as_str().unwrap();
    assert_eq!(job["attempts"], 1, "{job}");
    let woken = woken.lock().unwrap().clone();
    assert!(woken.contains(&node.to_owned()), "the node that ran it was woken by its magic packet: {woken:?}");
    let log = std::fs::read_to_string(site.path(&format!("{node}.power"))).unwrap();
    assert!(log.starts_with("down\nup\n"), "its agent ran the power-down command once, then woke: {log:?}");
    println!("power agent e2e: woken {woken:?}; {node} ran the job");
}

#[test]
fn a_node_that_does_not_wake_fails_and_its_work_runs_elsewhere() {
    if !greenfill_core::testing::is_root() {
        greenfill_core::testing::cannot_run("power failed-wake e2e", "needs root to create cgroups for jobs");
        return;
    }
    // p1's resume "succeeds" but its machine never comes back.
    let site = Site::build(&|d| exec_power(d, 0, "p1", 5), &|_, _| String::new());
    site.wait_nodes("three nodes off", Duration::from_secs(60), |n| {
        n.len() == 3 && power_states(n).iter().all(|s| *s == "off")
    });
    let id = site
        .greenfill(&["submit", "--cpu", "0.3", "--memory", "32Mi", "--duration", "2s", "--", "sleep", "2"])
        .unwrap();
    let nodes = site.wait_nodes("p1 failed", Duration::from_secs(60), |n| {
        n.iter().any(|n| n["name"] == "p1" && n["power_state"] == "failed")
    });
    let p1 = nodes.iter().find(|n| n["name"] == "p1").unwrap();
    assert!(p1["power_reason"].as_str().unwrap().contains("resume_timeout 5 s"), "{p1}");
    let job = site.wait_succeeded(&id, Duration::from_secs(90));
    assert_ne!(job["node"], "p1", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    let resumes_of_p1 = calls(&site).iter().filter(|c| c.0 == "resume" && c.1 == "p1").count();
    assert_eq!(resumes_of_p1, 1, "a failed node is not woken again: {}", site.logs());
    let log = std::fs::read_to_string(site.path("scheduler.log")).unwrap();
    assert_eq!(log.matches("power transition failed").count(), 1, "logged once");
}
