use assert_cmd::Command;

#[test]
fn the_bundled_scenario_runs_and_reports_savings() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("greenfill")
        .unwrap()
        .args([
            "sim",
            "run",
            "--scenario",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/underused-fleet.toml"),
            "--json",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in ["dedicated", "asap", "coloc", "greenfill"] {
        assert!(v["policies"][p]["carbon_kg"].as_f64().unwrap() > 0.0, "{p}");
        assert_eq!(v["policies"][p]["jobs_late"], 0, "{p}");
    }
    assert!(v["saved"]["vs_dedicated"]["carbon_kg"].as_f64().unwrap() > 0.0);
    assert_eq!(v["policies"]["greenfill"]["online_overload_steps"], 0);
    // The claims for this scenario: co-location lifts the utilisation of
    // powered nodes (while jobs arrive) from ~9 % online to at least 40 %, and
    // greenfill emits less than both coloc and asap.
    let f = |p: &str, k: &str| v["policies"][p][k].as_f64().unwrap();
    for p in ["coloc", "greenfill"] {
        assert!(f(p, "mean_cpu_util_powered") >= 0.40, "{p}: {}", f(p, "mean_cpu_util_powered"));
    }
    assert!(f("greenfill", "carbon_kg") < f("coloc", "carbon_kg"));
    assert!(f("greenfill", "carbon_kg") < f("asap", "carbon_kg"));
    // greenfill's placements hold: the agent's guard has to cut them back far less
    // often than those of the policies that place by the current reading.
    for p in ["asap", "coloc"] {
        assert!(f("greenfill", "guard_throttled_steps") * 3.0 < f(p, "guard_throttled_steps"), "vs {p}");
    }
    assert!(dir.path().join("report.html").exists());
}

#[test]
fn a_bad_scenario_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, "name = \"x\"\nstart = \"2022-01-01\"\nlength = \"1d\"\npolicy = \"asap\"\n").unwrap();
    let out = Command::cargo_bin("greenfill")
        .unwrap()
        .args(["sim", "run", "--scenario", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unknown field `policy`"), "{err}");
}

#[test]
fn a_missing_trace_is_named_once() {
    // The scenario's own error and the reader's both name the file; the message
    // says it once, with the reason.
    let out = Command::cargo_bin("greenfill")
        .unwrap()
        .args([
            "sim",
            "sweep",
            "--scenario",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/underused-fleet.toml"),
            "--set",
            "carbon.file=no-such-grid.csv",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.matches("no-such-grid.csv").count(), 1, "{err}");
    assert_eq!(err.matches("cannot read").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
