//! A short run of the image-jobs benchmark, to check that it runs and measures
//! (the full run is by hand: `cargo run --release -p greenfill-benches --bin
//! image-jobs`). It asserts no speed bound: figures live in BENCHMARKS.md.

use std::process::Command;

#[test]
fn the_image_jobs_benchmark_runs_and_measures_every_kind() {
    if !greenfill_core::testing::is_root() {
        greenfill_core::testing::cannot_run("image-jobs smoke", "needs root for cgroups and containerd");
        return;
    }
    if let Some(why) = greenfill_benches::testbed::missing() {
        greenfill_core::testing::cannot_run("image-jobs smoke", &why);
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_image-jobs"))
        .args(["--repeats", "1", "--jobs", "2", "--window", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "image-jobs failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = v["starts"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["process", "image present", "image absent"]);
    for s in v["starts"].as_array().unwrap() {
        assert!(
            s["start_ms"].as_f64().unwrap() > 0.0
                && s["to_exit_ms"].as_f64().unwrap() >= s["start_ms"].as_f64().unwrap(),
            "{s}"
        );
    }
    let overhead = v["overhead"].as_array().unwrap();
    assert_eq!(overhead.len(), 2);
    // Each image job has containerd's shim and a logger beside it; each process job greenfill's shim.
    assert_eq!(overhead[0]["beside_processes"], 4, "{v}");
    assert_eq!(overhead[1]["beside_processes"], 2, "{v}");
    assert!(overhead.iter().all(|o| o["agent_rss_mib"].as_f64().unwrap() > 0.0), "{v}");
}
