//! The `redfish` power driver against a real Redfish emulator: sushy-tools' fake
//! driver (OpenStack's, installed by `scripts/setup.sh`), started on loopback
//! with HTTPS and basic auth. A suspend and a resume are seen in the emulator's
//! system state; a BMC that refuses (401) or hangs fails the node with the reason.

use greenfill_planner::power::{Call, NodePower, PowerSettings, PowerState, Seen, step};
use greenfill_scheduler::service::config::RedfishDecl;
use greenfill_scheduler::service::power::Driver;
use greenfill_scheduler::service::redfish::Redfish;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

fn emulator() -> Option<PathBuf> {
    let tools = std::env::var_os("GREENFILL_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/greenfill/tools")))?;
    let bin = tools.join("sushy/bin");
    bin.join("sushy-emulator").exists().then_some(bin)
}

struct Emulator {
    child: Child,
    url: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &std::path::Path) -> Emulator {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let (cert, keyf, ca) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&ca, key.cert.pem()).unwrap();
    std::fs::write(&keyf, key.signing_key.serialize_pem()).unwrap();
    // sushy-tools accepts bcrypt entries only.
    let hash = Command::new(bin.join("python"))
        .args(["-c", "import bcrypt; print(bcrypt.hashpw(b'secret', bcrypt.gensalt()).decode())"])
        .output()
        .unwrap();
    assert!(hash.status.success(), "{}", String::from_utf8_lossy(&hash.stderr));
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("admin:{}", String::from_utf8(hash.stdout).unwrap().trim())).unwrap();
    let conf = dir.path().join("emulator.conf");
    std::fs::write(
        &conf,
        format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\nSUSHY_EMULATOR_AUTH_FILE = '{}'\n\
             SUSHY_EMULATOR_FAKE_DRIVER = True\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{UUID}', 'name': 'node-a', 'power_state': 'On'}}]\n",
            cert.display(),
            keyf.display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin.join("sushy-emulator"))
        .args(["--config", conf.to_str().unwrap(), "--fake"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("emulator.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the emulator did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Emulator { child, url: format!("https://127.0.0.1:{port}/redfish/v1/Systems/{UUID}"), ca, _dir: dir }
}

fn driver(e: &Emulator, password: &str, systems: &[(&str, &str)], timeout: Duration) -> Arc<Redfish> {
    let decl = RedfishDecl {
        username: "admin".into(),
        password: Some(password.into()),
        password_env: None,
        ca_cert: Some(e.ca.clone()),
        insecure_tls: false,
        systems: systems.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
    };
    Arc::new(Redfish::new(&decl, timeout).unwrap())
}

/// The emulator's own answer: the system's `PowerState`.
async fn power_state(e: &Emulator) -> String {
    let pem = std::fs::read(&e.ca).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let v: serde_json::Value =
        client.get(&e.url).basic_auth("admin", Some("secret")).send().await.unwrap().json().await.unwrap();
    v["PowerState"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_and_resume_reach_the_bmc_and_refusals_fail_with_the_reason() {
    let Some(bin) = emulator() else {
        greenfill_core::testing::cannot_run(
            "redfish driver",
            "sushy-tools not installed (scripts/setup.sh installs it)",
        );
        return;
    };
    let e = start(&bin);
    let url = e.url.clone();
    let good = driver(&e, "secret", &[("node-a", &url)], Duration::from_secs(40));
    assert_eq!(power_state(&e).await, "On");
    let t0 = Instant::now();
    good.clone().call("node-a".into(), Call::Suspend).await.unwrap();
    assert_eq!(power_state(&e).await, "Off", "the emulator's system is off after the suspend");
    let took = t0.elapsed();
    good.clone().call("node-a".into(), Call::Resume).await.unwrap();
    assert_eq!(power_state(&e).await, "On", "and on after the resume");
    // A repeated call finds the system in its state already and resets nothing.
    good.clone().call("node-a".into(), Call::Resume).await.unwrap();
    println!("redfish: GracefulShutdown reached Off in {:.1} s (the fake driver delays 1-11 s)", took.as_secs_f64());

    // Refused: 401, named.
    let wrong = driver(&e, "wrong", &[("node-a", &url)], Duration::from_secs(10));
    let err = wrong.call("node-a".into(), Call::Suspend).await.unwrap_err();
    assert!(err.contains("401"), "{err}");
    assert_eq!(power_state(&e).await, "On", "a refused call changes nothing");
    // A node with no BMC address.
    let err = good.clone().call("node-z".into(), Call::Suspend).await.unwrap_err();
    assert!(err.contains("no BMC address for node-z"), "{err}");

    // A BMC that accepts connections and never answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = format!("https://127.0.0.1:{}/redfish/v1/Systems/1", hang.local_addr().unwrap().port());
    let slow = driver(&e, "secret", &[("node-h", &hung)], Duration::from_secs(2));
    let t0 = Instant::now();
    let err = slow.call("node-h".into(), Call::Suspend).await.unwrap_err();
    assert!(err.contains("did not reach the state within 2 s") && err.contains(&hung), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "the call timeout bounds it");
    drop(hang);

    // The machine takes the driver's answer: the node is failed, with the reason,
    // and is no capacity; the other nodes of the pool go on.
    let s = PowerSettings::default();
    let mut nodes = vec![NodePower::on(0, false), NodePower::on(0, false)];
    let idle = Seen { registered_at: Some(0), running: 0, wanted_at: None };
    step(&s, 600, &mut nodes, &[idle, idle]);
    let t = nodes[0].driver_failed(0, 601, &err).unwrap();
    assert_eq!(t.to, PowerState::Failed);
    assert!(nodes[0].reason.contains("did not reach the state"), "{}", nodes[0].reason);
    assert_eq!(nodes[0].ready_at(&s, 700), None);
    assert_eq!(nodes[1].state, PowerState::Suspending);
}
