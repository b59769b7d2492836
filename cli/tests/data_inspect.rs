use assert_cmd::Command;

fn greenfill() -> Command {
    Command::cargo_bin("greenfill").unwrap()
}

fn repo(p: &str) -> String {
    format!("{}/../{p}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn inspect_carbon_json() {
    let out =
        greenfill().args(["data", "inspect", &repo("data/carbon/CISO_2022_hourly_ci.csv"), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "carbon");
    assert_eq!(v["rows"], 8760);
    assert_eq!(v["step_s"], 3600);
    assert_eq!(v["filled"], 3);
    assert!((v["value"]["mean"].as_f64().unwrap() - 256.19).abs() < 0.01);
}

#[test]
fn inspect_jobs_text() {
    let out = greenfill().args(["data", "inspect", &repo("data/jobs/azure-100k.csv")]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("jobs 99988"), "{text}");
}

#[test]
fn a_broken_file_names_line_and_column_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, "timestamp,avg_CI\n2022-01-01 00:00,100\n2022-01-01 01:00,lots\n").unwrap();
    let out = greenfill().args(["data", "inspect", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bad.csv:3: column `avg_CI`: `lots` is not a number"), "{err}");
}

#[test]
fn help_lists_the_subcommands() {
    let out = greenfill().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("data"), "{text}");
}
