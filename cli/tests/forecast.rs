//! `greenfill forecast backtest` on the bundled Google 2019 cluster series.

use assert_cmd::Command;

fn greenfill() -> Command {
    Command::cargo_bin("greenfill").unwrap()
}

fn google() -> String {
    format!("{}/../data/usage/google2019_instance_usage_grouped_300_seconds_month.csv", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn backtest_json_has_every_model_and_its_figures() {
    let out = greenfill().args(["forecast", "backtest", "--input", &google(), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["horizon"], 288);
    assert_eq!(v["season"], 288);
    let models = v["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    for want in [
        "seasonal_naive",
        "koordinator_p95",
        "daily_profile",
        "holt_winters",
        "lag_ridge",
        "lag_forest",
        "profile_holt_winters",
        "greenfill",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for m in models {
        let series = m["series"].as_array().unwrap();
        assert_eq!(series.len(), 1, "one series in the file");
        // One series: the model's figures are that series' figures.
        for k in ["pinball_loss", "coverage", "mean_excess", "mae"] {
            assert_eq!(m[k], series[0][k], "{} {k}", m["name"]);
        }
        let coverage = m["coverage"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&coverage), "{}: coverage {coverage}", m["name"]);
        assert!(m["pinball_loss"].as_f64().unwrap() > 0.0);
        // Origins every 6 h over a month, after two days of history.
        assert!(series[0]["origins"].as_u64().unwrap() > 100, "{}", series[0]["origins"]);
    }
}

#[test]
fn backtest_runs_only_the_models_asked_for() {
    let out = greenfill()
        .args(["forecast", "backtest", "--input", &google(), "--model", "lag_forest", "--model", "greenfill", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["lag_forest", "greenfill"]);
}

#[test]
fn an_unknown_model_is_refused_with_the_known_names() {
    let out = greenfill().args(["forecast", "backtest", "--input", &google(), "--model", "prophet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--model prophet: unknown"), "{err}");
    assert!(err.contains("lag_ridge") && err.contains("greenfill"), "{err}");
}
