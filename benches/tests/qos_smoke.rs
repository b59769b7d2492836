//! A few seconds of the qos benchmark, to check that it runs and measures (the
//! full run is by hand: `cargo run --release -p greenfill-benches --bin qos`).
//! It asserts no latency bound: figures live in BENCHMARKS.md, not in tests.

use std::process::Command;

#[test]
fn the_qos_harness_runs_measures_and_leaves_nothing_behind() {
    if !greenfill_core::testing::is_root() {
        greenfill_core::testing::cannot_run("qos smoke", "needs root for cgroups");
        return;
    }
    if !std::path::Path::new("/usr/bin/memcached").exists() {
        greenfill_core::testing::cannot_run("qos smoke", "memcached is not installed (scripts/setup.sh installs it)");
        return;
    }
    let ours = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir("/sys/fs/cgroup/cpu")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("greenfill-qos-"))
            .collect();
        names.sort();
        names
    };
    let before = ours();
    let out = Command::new(env!("CARGO_BIN_EXE_qos")).args(["--smoke", "--json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qos --smoke failed: {stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for r in &rows {
        assert!(r["achieved_rate"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["p99_us"].as_u64().unwrap() > 0, "{r}");
    }
    let greenfill = rows.iter().find(|r| r["condition"] == "greenfill").unwrap();
    assert!(greenfill["batch_cpu_s"].as_f64().unwrap() > 0.0, "batch ran: {greenfill}");
    assert_eq!(greenfill["guard_write_errors"], 0, "{greenfill}");
    // Nothing left: no cgroups of this run.
    assert_eq!(ours(), before, "cgroups left behind");
}

#[test]
fn bad_input_is_refused_with_a_message_and_leaves_nothing_running() {
    let out = Command::new(env!("CARGO_BIN_EXE_qos")).args(["--memcached", "/no/such/memcached"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("qos: "), "{stderr}");
    assert!(stderr.contains("/no/such/memcached not found") || stderr.contains("needs root"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_qos")).args(["--conditions", "fifo"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--conditions: `fifo` is not one of"), "{stderr}");
    if greenfill_core::testing::is_root() && std::path::Path::new("/usr/bin/memcached").exists() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port().to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_qos")).args(["--smoke", "--port", &port]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("port {port} on 127.0.0.1 is busy")), "{stderr}");
    }
}
