//! `greenfill sim replay`: a small scenario through the real scheduler on its
//! virtual clock, against the simulator's greenfill run; and the inputs it
//! refuses.

mod support;

use assert_cmd::Command;
use serde_json::Value;
use std::path::Path;

/// Half a day of arrivals on five machines (three online, two that sleep), and
/// a drain long enough for every job to finish.
fn scenario(dir: &Path, extra: &str) -> std::path::PathBuf {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data");
    let text = format!(
        r#"name = "replay test"
start = "2022-06-01T00:00:00Z"
length = "12h"
drain = "4d"
step = "5m"
plan_every = "15m"
horizon = "24h"
slot = "15m"
seed = 1
safety_margin = 0.1
forecast = "greenfill"
{extra}
[[cluster.pools]]
name = "online"
nodes = 3
cores = 48
memory_gib = 384
pue = 1.3
always_on = true
power = {{ kind = "linear", idle_w = 170, max_w = 440 }}

[[cluster.pools]]
name = "batch"
nodes = 2
cores = 48
memory_gib = 384
pue = 1.3
power = {{ kind = "linear", idle_w = 170, max_w = 440 }}

[online]
file = "{data}/usage/derived_rnd_2013-7_500vm_sum_5min.csv"
node_spread = 0.2
memory_share = 0.3

[batch]
file = "{data}/jobs/azure-100k.csv"
cpus_scale = 1.0
memory_gib_per_core = 2.0
deadline_slack = "24h"

[carbon]
file = "{data}/carbon/CISO_2022_hourly_ci.csv"
forecast_error = 0.05
"#
    );
    let path = dir.join("s.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn replay(scenario: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("greenfill")
        .unwrap()
        .args(["sim", "replay", "--json", "--scheduler"])
        .arg(support::bin("greenfill-scheduler"))
        .arg("--scenario")
        .arg(scenario)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_small_scenario_through_the_real_service_matches_the_simulator_within_one_percent() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), "");
    let out = dir.path().join("out");
    let o = replay(&s, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = |k: &str| v["diff_pct"][k].as_f64().unwrap();
    assert!(f("energy").abs() <= 1.0, "energy {}", v["diff_pct"]);
    assert!(f("carbon").abs() <= 1.0, "carbon {}", v["diff_pct"]);
    assert!(f("core_hours").abs() <= 0.5, "core-hours {}", v["diff_pct"]);
    assert!(f("powered_node_hours").abs() <= 1.0, "node-hours {}", v["diff_pct"]);
    for run in ["simulator", "service"] {
        assert_eq!(v[run]["jobs_unfinished"], 0, "{run}: {}", v[run]);
        assert_eq!(v[run]["jobs_late"], 0, "{run}: {}", v[run]);
        assert!(v[run]["jobs_done"].as_u64().unwrap() > 100, "{run}: {}", v[run]);
    }
    // The sleeping pool slept and woke through the service's own driver
    // (PowerDown on the session, Wake-on-LAN to the replay).
    assert!(v["service"]["suspends"].as_u64().unwrap() > 0, "{}", v["service"]);
    assert!(v["service"]["resumes"].as_u64().unwrap() > 0, "{}", v["service"]);
    assert!(v["planning_rounds"].as_u64().unwrap() > 0);
    // Each differing job names where both runs put it and what the service said.
    for d in v["differing"].as_array().unwrap() {
        assert!(d["service"]["node"].is_string() && d["simulator"]["node"].is_string(), "{d}");
        assert!(d["explain"].as_str().unwrap().starts_with("planned start"), "{d}");
    }
    // What the replay wrote, and what it removed: the scheduler's store.
    let written: Value = serde_json::from_str(&std::fs::read_to_string(out.join("replay.json")).unwrap()).unwrap();
    assert_eq!(written["diff_pct"], v["diff_pct"]);
    assert!(out.join("scheduler.log").exists());
    assert!(!out.join(".scheduler").exists(), "the replay's store was left behind");
}

#[test]
fn what_the_service_cannot_run_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let instant = scenario(dir.path(), "[power]\nmodel = \"instant\"\n");
    let o = replay(&instant, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("power.model = \"instant\""), "{err}");

    let s = scenario(dir.path(), "");
    let o = replay(&s, &out, &["--policy", "asap"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--policy \"asap\""), "{err}");

    // A scheduler that does not start is reported with its log's tail.
    let o = Command::cargo_bin("greenfill")
        .unwrap()
        .args(["sim", "replay", "--scheduler", "/bin/false", "--scenario"])
        .arg(&s)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exited") && err.contains("before serving"), "{err}");
    assert!(!out.join(".scheduler").exists());
}
