//! A few seconds of `scheduler-load` on both stores, to check that it runs and
//! measures (the figures are by hand, in release: BENCHMARKS.md). It asserts no
//! rate: only that every submission was acknowledged and every agent connected.

use std::process::Command;

fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_scheduler-load")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scheduler-load {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

#[test]
fn scheduler_load_submits_on_both_stores_and_counts_its_agents() {
    if greenfill_benches::pg::installed().is_none() {
        greenfill_core::testing::cannot_run("scheduler-load", "PostgreSQL is not installed (scripts/setup.sh)");
        return;
    }
    let r = run(&["submit", "--clients", "4", "--jobs", "400", "--store", "both"]);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{r:#}");
    for (run, store) in runs.iter().zip(["sqlite", "postgres"]) {
        assert_eq!(run["store"], store, "{r:#}");
        assert_eq!(run["jobs"], 400, "{r:#}");
    }
    assert!(r["postgres_over_sqlite"].as_f64().unwrap() > 0.0, "{r:#}");
    let a = run(&["agents", "--agents", "300", "--seconds", "2"]);
    assert_eq!(a["connected"], 300.0, "{a:#}");
}
