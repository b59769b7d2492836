//! A real image world on loopback for image-job tests and benchmarks: a
//! `containerd` (with runc) of its own, two `docker-registry` instances (one
//! open, one behind htpasswd) and a one-layer image built here from
//! `busybox-static` with `umoci` and pushed with `skopeo`, so nothing comes from
//! the network. `scripts/setup.sh` installs every tool; everything stops and is
//! removed when the [`World`] drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOOLS: &[&str] = &["containerd", "runc", "docker-registry", "umoci", "skopeo", "htpasswd", "ctr"];
pub const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &["sh", "echo", "cat", "sleep", "yes", "head", "tail", "timeout", "id", "true"];
pub const REG_USER: &str = "puller";
pub const REG_PASSWORD: &str = "pull-secret-e2e";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What this machine lacks of the world's tools, as a reason; `None` when all are there.
pub fn missing() -> Option<String> {
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !have(t)).collect();
    (!missing.is_empty() || !Path::new(BUSYBOX).exists()).then(|| {
        format!(
            "needs {missing:?} and {BUSYBOX} (scripts/setup.sh installs containerd, runc, docker-registry, umoci, skopeo, apache2-utils, busybox-static)"
        )
    })
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// containerd, two registries (open; htpasswd) and the test image in both.
#[derive(Debug)]
pub struct World {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub open_port: u16,
    pub auth_port: u16,
    _procs: Vec<Proc>,
}

impl World {
    /// Start containerd and both registries, then build and push the image.
    pub fn start() -> World {
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

    /// A two-layer image: busybox and its applets, then `/etc/greenfill-layer`;
    /// `/bin/sh` as its command.
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
        run(Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image"])
            .arg(format!("{}:bb", layout.display()))
            .arg(&bundle));
        // A second layer on the first, so unpacking follows a chain of parents.
        let etc = bundle.join("rootfs/etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("greenfill-layer"), "second layer\n").unwrap();
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

    pub fn image(&self, port: u16) -> String {
        format!("127.0.0.1:{port}/greenfill/bb:1")
    }

    pub fn agent_args(&self, extra_registries: &[u16]) -> Vec<String> {
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

    pub fn ctr(&self, args: &[&str]) -> Vec<String> {
        let out = run(Command::new("ctr").arg("-a").arg(&self.socket).args(["-n", "greenfill"]).args(args));
        out.lines().map(str::to_owned).filter(|l| !l.trim().is_empty()).collect()
    }

    /// Forget every image, blob and committed snapshot of namespace greenfill,
    /// so the next image job pulls from scratch (no containers may be left).
    pub fn forget_images(&self) {
        for i in self.ctr(&["images", "ls", "-q"]) {
            self.ctr(&["images", "rm", "--sync", &i]);
        }
        for d in self.ctr(&["content", "ls", "-q"]) {
            let _ =
                Command::new("ctr").arg("-a").arg(&self.socket).args(["-n", "greenfill", "content", "rm", &d]).output();
        }
        let snapshots: Vec<String> = self.ctr(&["snapshots", "ls"]).into_iter().skip(1).collect();
        for line in snapshots {
            if let Some(key) = line.split_whitespace().next() {
                let _ = Command::new("ctr")
                    .arg("-a")
                    .arg(&self.socket)
                    .args(["-n", "greenfill", "snapshots", "rm", key])
                    .output();
            }
        }
    }

    /// The committed snapshots (chain ids) of `namespace`, sorted.
    pub fn committed(&self, namespace: &str) -> Vec<String> {
        let out = run(Command::new("ctr").arg("-a").arg(&self.socket).args(["-n", namespace, "snapshots", "ls"]));
        let mut keys: Vec<String> = out
            .lines()
            .skip(1)
            .filter(|l| l.contains("Committed"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        keys.sort();
        keys
    }

    /// Kill and delete every task and container of namespace greenfill (a test
    /// that failed midway leaves them; containerd's shims outlive containerd).
    pub fn remove_all_containers(&self) {
        let ctr = |args: &[&str]| {
            let _ = Command::new("ctr").arg("-a").arg(&self.socket).args(["-n", "greenfill"]).args(args).output();
        };
        let listed = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "greenfill", "containers", "ls", "-q"])
            .output();
        let ids = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        for id in ids.split_whitespace() {
            ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
            ctr(&["tasks", "rm", "-f", id]);
            ctr(&["containers", "rm", id]);
        }
    }

    /// No job container, task, active snapshot or pull lease is left in containerd.
    pub fn assert_nothing_left(&self) {
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

impl Drop for World {
    fn drop(&mut self) {
        if self.socket.exists() {
            self.remove_all_containers();
        }
    }
}
