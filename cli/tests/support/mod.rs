//! What the end-to-end tests share: the three real binaries on loopback, with
//! credentials on, and cleanup of every cgroup they made.

#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Root, or a printed reason (and a failure under CI, which runs as root).
pub fn root_or_skip(test: &str) -> bool {
    let root = greenfill_core::testing::is_root();
    if !root {
        greenfill_core::testing::cannot_run(test, "needs root to create cgroups for jobs");
    }
    root
}

pub fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_greenfill")).parent().unwrap().to_owned();
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: build the whole workspace (cargo build --workspace)", p.display());
    p
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Credentials on, as in production: every CLI call and agent carries one.
pub const USER_TOKEN: &str = "e2e-user-secret";
pub const AGENT_TOKEN: &str = "e2e-agent-secret";

/// More of the scheduler's config, and the agents' flags.
#[derive(Debug, Default)]
pub struct Setup {
    /// Top-level keys (before any table).
    pub top: String,
    /// Tables after `[planning]`.
    pub tables: String,
    /// The planning slot [default 1m].
    pub slot: Option<String>,
    pub agent_args: Vec<String>,
    /// Environment for every agent (e.g. `GREENFILL_FAKE_GPUS`).
    pub agent_env: Vec<(String, String)>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub scheduler: Option<Proc>,
    pub agent: Option<Proc>,
    pub batch_root: String,
    /// More flags for every agent this cluster starts.
    pub agent_args: Vec<String>,
    pub agent_env: Vec<(String, String)>,
}

impl Cluster {
    pub fn new(test: &str) -> Cluster {
        Cluster::with_agent_args(test, Vec::new())
    }

    pub fn with_agent_args(test: &str, agent_args: Vec<String>) -> Cluster {
        Cluster::configured(test, &Setup { agent_args, ..Setup::default() })
    }

    /// A cluster whose scheduler config has `setup`'s keys and tables too.
    pub fn configured(test: &str, setup: &Setup) -> Cluster {
        let agent_args = setup.agent_args.clone();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let slot = setup.slot.as_deref().unwrap_or("1m");
        std::fs::write(
            dir.path().join("scheduler.toml"),
            format!(
                "listen = \"127.0.0.1:{port}\"\nuser_tokens = [\"{USER_TOKEN}\"]\nagent_tokens = [\"{AGENT_TOKEN}\"]\n\
                 data_dir = \"{}\"\n{}\n\
                 [planning]\ninterval = \"1s\"\nmin_gap = \"200ms\"\nslot = \"{slot}\"\nhorizon = \"2h\"\n\
                 reconcile_grace = \"2s\"\n{}\n",
                dir.path().join("scheduler").display(),
                setup.top,
                setup.tables,
            ),
        )
        .unwrap();
        let mut c = Cluster {
            dir,
            port,
            scheduler: None,
            agent: None,
            agent_args,
            agent_env: setup.agent_env.clone(),
            batch_root: format!("greenfill-test-{test}-{}/batch", std::process::id()),
        };
        // The node runs no online services: its online root cgroup is empty
        // (else every other process on this machine, the rest of the test suite
        // included, counts as online load and takes the batch capacity away).
        for h in ["cpu,cpuacct", "cpu", "cpuacct", "memory", "unified"] {
            let base = Path::new("/sys/fs/cgroup").join(h);
            if base.is_dir() {
                let _ = std::fs::create_dir_all(base.join(c.online_root()));
            }
        }
        c.start_scheduler();
        c.start_agent();
        c
    }

    pub fn online_root(&self) -> String {
        format!("{}/online", self.batch_root.trim_end_matches("/batch"))
    }

    pub fn start_scheduler(&mut self) {
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
    pub fn agent_command(&self, node: &str, batch_root: &str, state: &str) -> Command {
        let mut cmd = Command::new(bin("greenfill-agent"));
        cmd.args(["run", "--server", &format!("http://127.0.0.1:{}", self.port), "--token", AGENT_TOKEN])
            .args(["--node-name", node, "--batch-root", batch_root, "--online-cgroup", &self.online_root()])
            .arg("--state-dir")
            .arg(self.dir.path().join(state))
            .args(&self.agent_args)
            .envs(self.agent_env.iter().cloned());
        cmd
    }

    pub fn start_agent(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).unwrap();
        let child =
            self.agent_command("e2e", &self.batch_root, "agent").stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.agent = Some(Proc(child));
    }

    pub fn greenfill(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_greenfill"))
            .args(&args[..1])
            .args(["--server", &format!("http://127.0.0.1:{}", self.port), "--token", USER_TOKEN])
            .args(&args[1..])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `greenfill jobs --json`, retried while the scheduler starts.
    pub fn jobs(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.greenfill(&["jobs", "--json"]) {
                Ok(s) => return serde_json::from_str::<Vec<Value>>(&s).unwrap(),
                Err(e) if Instant::now() > deadline => panic!("jobs: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn submit(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.greenfill(&[&["submit"], args].concat()) {
                Ok(s) => return s.trim().to_owned(),
                Err(e) if Instant::now() > deadline => panic!("submit: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
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
        for h in ["cpu,cpuacct", "cpu", "cpuacct", "memory", "devices", "unified", ""] {
            let base = Path::new("/sys/fs/cgroup").join(h);
            let _ = std::fs::remove_dir(base.join(&self.batch_root));
            let _ = std::fs::remove_dir(base.join(self.online_root()));
            let _ = std::fs::remove_dir(base.join(root));
        }
    }
}

/// SIGTERM `proc` and wait for it to exit; returns its exit code and how long it took.
pub fn terminate(proc: &mut Proc, limit: Duration) -> (Option<i32>, Duration) {
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

pub fn state(j: &Value) -> &str {
    j["state"].as_str().unwrap()
}
