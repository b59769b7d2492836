use assert_cmd::Command;

fn repo(p: &str) -> String {
    format!("{}/../{p}", env!("CARGO_MANIFEST_DIR"))
}

fn plan(extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "plan".to_owned(),
        "--cluster".into(),
        repo("examples/cluster.toml"),
        "--jobs".into(),
        repo("examples/jobs.csv"),
        "--carbon".into(),
        repo("data/carbon/CISO_2022_hourly_ci.csv"),
        "--online".into(),
        repo("examples/online.csv"),
        "--start".into(),
        "2022-06-01T00:00:00Z".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Command::cargo_bin("greenfill").unwrap().args(args).output().unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn plan_json_has_the_documented_fields_and_no_violations() {
    let v = json(&plan(&["--json"]));
    for key in [
        "jobs_total",
        "jobs_planned",
        "jobs_waiting",
        "energy_kwh",
        "carbon_kg",
        "powered_nodes",
        "solve_ms",
        "capacity_violations",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["jobs_total"], 300);
    assert_eq!(v["jobs_planned"], 300);
    assert_eq!(v["capacity_violations"], 0);
    assert_eq!(v["powered_nodes"]["web"].as_array().unwrap().len(), 96);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 300);
}

#[test]
fn the_planner_emits_less_carbon_than_earliest_fit_on_the_example() {
    let lp = json(&plan(&["--json"]));
    let ef = json(&plan(&["--json", "--strategy", "earliest-fit"]));
    let (a, b) = (lp["batch_carbon_kg"].as_f64().unwrap(), ef["batch_carbon_kg"].as_f64().unwrap());
    eprintln!("batch carbon: greenfill {a:.3} kg, earliest-fit {b:.3} kg");
    assert!(a < b * 0.9, "{a} vs {b}");
}

#[test]
fn a_bad_cluster_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[pools]]\nname='a'\nnodes=1\ncores=4\nmemory_gib=8\npue=0.5\npower={kind='linear',idle_w=1,max_w=2}\n",
    )
    .unwrap();
    let out = Command::cargo_bin("greenfill")
        .unwrap()
        .args(["plan", "--cluster", path.to_str().unwrap(), "--jobs", &repo("examples/jobs.csv")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("pools[0] (`a`): pue = 0.5: must be >= 1"), "{err}");
}
