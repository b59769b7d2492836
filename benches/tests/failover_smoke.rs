//! The failover harness at full fault count and a short quiet period: a real
//! PostgreSQL, three scheduler replicas, eight clients, three agents, 30 faults
//! on the leader (SIGKILL, SIGSTOP past the lease, SIGTERM) and a PostgreSQL
//! restart. Asserts what must hold whatever the timing: nothing acknowledged is
//! lost, no job is stored twice or dispatched twice, no message from a stale
//! epoch, no failover without a fault. The failover times are figures for
//! BENCHMARKS.md (`cargo run --release -p greenfill-benches --bin failover`).

use std::process::Command;

#[test]
fn thirty_faults_on_the_leader_lose_and_duplicate_nothing() {
    if greenfill_benches::pg::installed().is_none() {
        greenfill_core::testing::cannot_run("failover", "PostgreSQL is not installed (scripts/setup.sh installs it)");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_failover"))
        .args(["--faults", "30", "--quiet", "20"])
        .output()
        .expect("running the failover harness");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("failover printed no JSON ({e}); stderr:\n{stderr}"));
    assert!(out.status.success(), "{r:#}\n{stderr}");
    for (key, want) in [
        ("lost", 0),
        ("duplicated_jobs", 0),
        ("dispatched_twice", 0),
        ("stale_epoch_messages", 0),
        ("spurious_failovers", 0),
    ] {
        assert_eq!(r[key], want, "{key}: {r:#}");
    }
    let faults: u64 = ["kill", "stop", "term"].iter().map(|k| r["failover"][k]["n"].as_u64().unwrap_or(0)).sum();
    assert_eq!(faults, 30, "{r:#}");
    assert!(r["postgres_restart"]["then_next_ack_s"].as_f64().is_some(), "the PostgreSQL restart was survived: {r:#}");
    let acked = r["acknowledged"].as_u64().unwrap();
    assert!(acked > 100 && r["stored"].as_u64().unwrap() >= acked, "{r:#}");
    assert!(r["jobs_dispatched"].as_u64().unwrap() > 0, "agents ran jobs: {r:#}");
}
