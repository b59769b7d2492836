//! The API from another language: Python stubs generated from the .proto files
//! with grpcio-tools talk to the real scheduler binary (clients/python/run.sh).
//! Skips, saying why, where python3 or PyPI is not reachable.

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn a_python_grpcio_client_submits_reads_and_is_refused_like_any_other() {
    if Command::new("python3").arg("--version").output().is_err() {
        greenfill_core::testing::cannot_run("python client", "no python3 on this machine");
        return;
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("s.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:{port}\"\nuser_tokens = [\"py-user\"]\nagent_tokens = [\"py-agent\"]\n"),
    )
    .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_greenfill-scheduler"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("db"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(repo.join("clients/python/run.sh"))
        .args([format!("127.0.0.1:{port}"), "py-user".into()])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) {
        greenfill_core::testing::cannot_run(
            "python client",
            &format!("could not install grpcio/grpcio-tools:\n{stderr}"),
        );
        return;
    }
    assert!(out.status.success(), "python client failed:\n{}\n{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client ok"));
}
