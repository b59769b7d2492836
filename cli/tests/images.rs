//! Image jobs end to end with real parts: a real `containerd` (with runc), a
//! real OCI registry on loopback (Debian's `docker-registry`, one open and one
//! behind htpasswd), an image built here from `busybox-static` with `umoci` and
//! pushed with `skopeo` (no network), and the real scheduler, agent and CLI.
//! `scripts/setup.sh` installs all of them; they need root (runc, cgroups).

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const TOOLS: &[&str] = &["containerd", "runc", "docker-registry", "umoci", "skopeo", "htpasswd", "ctr"];
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &["sh", "echo", "cat", "sleep", "yes", "head", "tail", "timeout", "id", "true"];
const REG_USER: &str = "puller";
const REG_PASSWORD: &str = "pull-secret-e2e";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Root and every tool, or a printed reason (a failure under CI, where setup installs them).
fn can_run(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !have(t)).collect();
    if !missing.is_empty() || !Path::new(BUSYBOX).exists() {
        greenfill_core::testing::cannot_run(
            test,
            &format!(
                "needs {missing:?} and {BUSYBOX} (scripts/setup.sh installs containerd, runc, docker-registry, umoci, skopeo, apache2-utils, busybox-static)"
            ),
        );
        return false;
    }
    true
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// containerd, two registries (open; htpasswd) and the test image in both.
struct World {
    dir: tempfile::TempDir,
    socket: PathBuf,
    open_port: u16,
    auth_port: u16,
    _procs: Vec<Proc>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("containerd.sock");
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n",
                r = d.display(),
                s = socket.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(d.join("containerd.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let (open_port, auth_port) = (free_port(), free_port());
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", REG_USER, REG_PASSWORD]));
        std::fs::write(d.join("htpasswd"), htpasswd).unwrap();
        let registry = |name: &str, port: u16, auth: bool| {
            let auth = if auth {
                format!("auth:\n  htpasswd:\n    realm: greenfill-e2e\n    path: {}\n", d.join("htpasswd").display())
            } else {
                String::new()
            };
            let cfg = d.join(format!("{name}.yml"));
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n{auth}http:\n  addr: 127.0.0.1:{port}\n",
                    d.join(name).display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(d.join(format!("{name}.log"))).unwrap();
            Proc(
                Command::new("docker-registry")
                    .arg("serve")
                    .arg(&cfg)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        };
        let procs = vec![Proc(containerd), registry("open", open_port, false), registry("auth", auth_port, true)];
        wait_for("containerd's socket", Duration::from_secs(20), || socket.exists());
        for port in [open_port, auth_port] {
            wait_for("a registry", Duration::from_secs(20), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
        let w = World { dir, socket, open_port, auth_port, _procs: procs };
        w.build_and_push();
        w
    }

    /// A one-layer image: busybox and its applets, `/bin/sh` as its command.
    fn build_and_push(&self) {
        let d = self.dir.path();
        let layout = d.join("oci");
        let bundle = d.join("bundle");
        run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
        run(Command::new("umoci").args(["new", "--image"]).arg(format!("{}:bb", layout.display())));
        run(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:bb", layout.display())).arg(&bundle));
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
        }
        run(Command::new("umoci").args(["repack", "--image"]).arg(format!("{}:bb", layout.display())).arg(&bundle));
        run(Command::new("umoci").args(["config", "--image"]).arg(format!("{}:bb", layout.display())).args([
            "--config.cmd",
            "/bin/sh",
            "--config.env",
            "PATH=/bin",
            "--config.env",
            "FROM_IMAGE=yes",
        ]));
        for (port, creds) in [(self.open_port, None), (self.auth_port, Some(format!("{REG_USER}:{REG_PASSWORD}")))] {
            let mut copy = Command::new("skopeo");
            copy.args(["copy", "--dest-tls-verify=false"]);
            if let Some(c) = &creds {
                copy.args(["--dest-creds", c]);
            }
            run(copy
                .arg(format!("oci:{}:bb", layout.display()))
                .arg(format!("docker://127.0.0.1:{port}/greenfill/bb:1")));
        }
    }

    fn image(&self, port: u16) -> String {
        format!("127.0.0.1:{port}/greenfill/bb:1")
    }

    fn agent_args(&self, extra_registries: &[u16]) -> Vec<String> {
        let creds = self.dir.path().join("credentials");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(creds.join("e2e"), format!("{REG_USER}:{REG_PASSWORD}\n")).unwrap();
        let mut args = vec![
            "--containerd-socket".to_owned(),
            self.socket.display().to_string(),
            "--registry-credentials".to_owned(),
            creds.display().to_string(),
        ];
        for port in [self.open_port, self.auth_port].iter().chain(extra_registries) {
            args.extend(["--insecure-registry".to_owned(), format!("127.0.0.1:{port}")]);
        }
        args
    }

    fn ctr(&self, args: &[&str]) -> Vec<String> {
        let out = run(Command::new("ctr").arg("-a").arg(&self.socket).args(["-n", "greenfill"]).args(args));
        out.lines().map(str::to_owned).filter(|l| !l.trim().is_empty()).collect()
    }

    /// No job container, task, active snapshot or pull lease is left in containerd.
    fn assert_nothing_left(&self) {
        assert_eq!(self.ctr(&["containers", "ls", "-q"]), Vec::<String>::new(), "containers left");
        assert_eq!(self.ctr(&["tasks", "ls", "-q"]), Vec::<String>::new(), "tasks left");
        let active: Vec<String> =
            self.ctr(&["snapshots", "ls"]).into_iter().skip(1).filter(|l| !l.contains("Committed")).collect();
        assert_eq!(active, Vec::<String>::new(), "active snapshots left");
        let leases: Vec<String> =
            self.ctr(&["leases", "ls", "-q"]).into_iter().filter(|l| l.contains("greenfill")).collect();
        assert_eq!(leases, Vec::<String>::new(), "pull leases left");
    }
}

fn job<'a>(jobs: &'a [Value], id: &str) -> &'a Value {
    jobs.iter().find(|j| j["id"] == id).unwrap_or_else(|| panic!("job {id} not listed: {jobs:#?}"))
}

fn done(c: &Cluster, id: &str, limit: Duration) -> Value {
    let jobs = c.wait_until(&format!("job {id} finished"), limit, |jobs| {
        jobs.iter().any(|j| j["id"] == id && ["succeeded", "failed", "cancelled"].contains(&state(j)))
    });
    job(&jobs, id).clone()
}

fn log(c: &Cluster, id: &str, ext: &str) -> String {
    std::fs::read_to_string(c.dir.path().join(format!("agent/logs/{id}-1.{ext}"))).unwrap_or_default()
}

/// CPU seconds of a job's cgroup, from the host's accounting.
fn cgroup_cpu_seconds(c: &Cluster, attempt: &str) -> Option<f64> {
    let rel = format!("{}/{attempt}", c.batch_root);
    for h in ["cpuacct", "cpu,cpuacct"] {
        if let Ok(s) = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(h).join(&rel).join("cpuacct.usage")) {
            return s.trim().parse::<f64>().ok().map(|ns| ns / 1e9);
        }
    }
    let stat = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(&rel).join("cpu.stat")).ok()?;
    let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
    usec.trim().parse::<f64>().ok().map(|us| us / 1e6)
}

#[test]
fn image_jobs_run_in_their_cgroups_with_limits_logs_exit_codes_and_survive_an_agent_kill() {
    if !can_run("image_jobs") {
        return;
    }
    let w = World::new();
    let mut c = Cluster::with_agent_args("images", w.agent_args(&[]));
    let image = w.image(w.open_port);
    let sub = |args: &[&str]| {
        let base = ["--duration", "30s", "--image", &image];
        let memory: &[&str] = if args.contains(&"--memory") { &[] } else { &["--memory", "64Mi"] };
        c.submit(&[&base[..], memory, args].concat())
    };
    // Exit code and stdout come back; the image's env and the job's are both
    // there; it runs as nobody in its cgroup under the batch root (which the
    // guard's cuts hold).
    let script = "echo hello-from-image; echo FROM_IMAGE=$FROM_IMAGE JOB=$JOB; id -u; cat /proc/self/cgroup; exit 3";
    let first = sub(&["--cpu", "0.2", "--pull", "always", "--env", "JOB=set", "--", "/bin/sh", "-c", script]);
    let j = done(&c, &first, Duration::from_secs(90));
    assert_eq!((state(&j), &j["exit_code"]), ("failed", &Value::from(3)), "{j}");
    let out = log(&c, &first, "out");
    assert!(out.starts_with("hello-from-image\nFROM_IMAGE=yes JOB=set\n65534\n"), "{out}");
    let cgroup = format!(":/{}/{first}-1", c.batch_root);
    assert!(out.lines().any(|l| l.contains(":cpu") && l.ends_with(&cgroup)), "not in its cgroup {cgroup}: {out}");

    // The image's own command when the job gives none (/bin/sh, empty stdin: exit 0).
    let own = sub(&["--cpu", "0.2"]);
    // Over its memory limit: OOM-killed, and said so.
    let oom =
        sub(&["--cpu", "0.5", "--memory", "32Mi", "--", "/bin/sh", "-c", "head -c 256m /dev/zero | tail -c 200m"]);
    // Half a core, measured from its cgroup while it spins.
    let half = sub(&["--cpu", "0.5", "--", "/bin/sh", "-c", "timeout 8 yes > /dev/null; echo spun"]);
    c.wait_until("the half-core job running", Duration::from_secs(60), |jobs| state(job(jobs, &half)) == "running");
    let attempt = format!("{half}-1");
    std::thread::sleep(Duration::from_millis(1500));
    let (t0, u0) = (Instant::now(), cgroup_cpu_seconds(&c, &attempt).expect("the job's cgroup accounting"));
    std::thread::sleep(Duration::from_secs(4));
    let u1 = cgroup_cpu_seconds(&c, &attempt).expect("the job's cgroup accounting");
    let cores = (u1 - u0) / t0.elapsed().as_secs_f64();
    assert!((0.35..=0.6).contains(&cores), "a 0.5-core image job used {cores:.3} cores");
    assert_eq!(state(&done(&c, &own, Duration::from_secs(60))), "succeeded");
    let j = done(&c, &oom, Duration::from_secs(60));
    assert!(j["reason"].as_str().unwrap_or_default().contains("OOM"), "{j}");
    assert_eq!(state(&done(&c, &half, Duration::from_secs(60))), "succeeded");

    // The agent SIGKILLed mid-job and restarted: the container ran on, is found
    // again by its label, and its exit is collected; never started twice.
    let long = sub(&["--cpu", "0.2", "--", "/bin/sh", "-c", "echo before; sleep 5; echo after; exit 7"]);
    c.wait_until("the long job running", Duration::from_secs(60), |jobs| state(job(jobs, &long)) == "running");
    c.agent.take();
    std::thread::sleep(Duration::from_millis(500));
    c.start_agent();
    let j = done(&c, &long, Duration::from_secs(90));
    assert_eq!((&j["exit_code"], &j["attempts"]), (&Value::from(7), &Value::from(1)), "{j}");
    assert_eq!(log(&c, &long, "out"), "before\nafter\n", "the logger outlived the agent");
    let agent_log = std::fs::read_to_string(c.dir.path().join("agent.log")).unwrap();
    assert!(agent_log.contains("re-adopted a job"), "{agent_log}");
    w.assert_nothing_left();
    for id in [&first, &own, &oom, &half, &long] {
        assert!(
            !Path::new("/sys/fs/cgroup/memory").join(&c.batch_root).join(format!("{id}-1")).exists(),
            "cgroup of {id} left"
        );
    }
}

#[test]
fn image_jobs_that_cannot_start_fail_naming_the_image_and_the_cause() {
    if !can_run("image_failures") {
        return;
    }
    let w = World::new();
    let down = free_port();
    let c = Cluster::with_agent_args("imgfail", w.agent_args(&[down]));
    let sub = |image: &str, extra: &[&str]| {
        let base = ["--cpu", "0.2", "--memory", "64Mi", "--duration", "30s", "--image", image];
        c.submit(&[&base[..], extra, &["--", "/bin/sh", "-c", "echo ran"]].concat())
    };
    let missing = format!("127.0.0.1:{}/greenfill/nothere:1", w.open_port);
    let refused = w.image(w.auth_port);
    let unreachable = format!("127.0.0.1:{down}/greenfill/bb:1");
    let cases = [
        (sub(&missing, &[]), missing.clone(), vec!["MANIFEST_UNKNOWN", "manifest unknown", "not found"]),
        (sub(&refused, &[]), refused.clone(), vec!["401", "nauthorized", "authentication"]),
        (sub(&unreachable, &[]), unreachable.clone(), vec!["connect", "refused"]),
        (sub(&w.image(w.open_port), &["--pull", "never"]), w.image(w.open_port), vec!["pull policy is never"]),
    ];
    for (id, image, causes) in &cases {
        let j = done(&c, id, Duration::from_secs(60));
        let reason = j["reason"].as_str().unwrap_or_default();
        assert_eq!(state(&j), "failed", "{j}");
        assert!(reason.contains(image.as_str()), "the reason names the image {image}: {reason}");
        assert!(causes.iter().any(|k| reason.contains(k)), "the reason names the cause ({causes:?}): {reason}");
        assert!(!reason.contains(REG_PASSWORD), "a secret in a reason: {reason}");
    }
    // With the node's credential for that registry, the same image runs.
    let ok = sub(&refused, &["--registry-credential", "e2e"]);
    let j = done(&c, &ok, Duration::from_secs(60));
    assert_eq!(state(&j), "succeeded", "{j}");
    assert_eq!(log(&c, &ok, "out"), "ran\n");
    let agent_log = std::fs::read_to_string(c.dir.path().join("agent.log")).unwrap();
    assert!(!agent_log.contains(REG_PASSWORD), "the credential was logged");
    w.assert_nothing_left();
    drop(c);

    // No containerd at the socket: image jobs fail naming it, the node stays
    // healthy, and process jobs run on.
    let nowhere = w.dir.path().join("no-containerd.sock");
    let c = Cluster::with_agent_args("nosock", vec!["--containerd-socket".into(), nowhere.display().to_string()]);
    let id = c.submit(&[
        "--cpu",
        "0.2",
        "--memory",
        "64Mi",
        "--duration",
        "30s",
        "--image",
        &w.image(w.open_port),
        "--",
        "/bin/true",
    ]);
    let j = done(&c, &id, Duration::from_secs(60));
    let reason = j["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&nowhere.display().to_string()) && reason.contains(&w.image(w.open_port)), "{reason}");
    let id = c.submit(&["--cpu", "0.2", "--memory", "64Mi", "--duration", "30s", "--", "sh", "-c", "exit 0"]);
    assert_eq!(state(&done(&c, &id, Duration::from_secs(60))), "succeeded");
    let nodes = c.greenfill(&["nodes", "--json"]).unwrap();
    assert!(nodes.contains("\"connected\": true"), "{nodes}");
}
