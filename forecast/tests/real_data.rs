//! Backtests on real traces. The research-only Alibaba 2018 machines live in
//! `../shared/data`; the test skips with a printed reason where it is absent.

use greenfill_core::data::{UsageOptions, load_usage};
use greenfill_forecast::{BacktestOptions, backtest, models};
use std::path::Path;

fn run(path: &Path) -> Option<Vec<(String, f64, f64)>> {
    if !path.exists() {
        greenfill_core::testing::cannot_run("real_data", &format!("{} is absent", path.display()));
        return None;
    }
    let t = load_usage(path, &UsageOptions { step: Some(300), keep_gaps: true, ..UsageOptions::default() }).unwrap();
    let series: Vec<(String, Vec<f64>)> = t.series.into_iter().map(|s| (s.id, s.values)).collect();
    let opts = BacktestOptions {
        season: 288,
        horizon: 288,
        quantile: 0.95,
        min_train: 2 * 288,
        max_train: 7 * 288,
        origin_every: 72,
    };
    let b = backtest(&series, &models(), &opts);
    for m in &b.models {
        eprintln!(
            "{}: {} pinball {:.4} coverage {:.3} excess {:.3} mae {:.3}",
            path.display(),
            m.name,
            m.pinball_loss,
            m.coverage,
            m.mean_excess,
            m.mae
        );
    }
    Some(b.models.iter().map(|m| (m.name.clone(), m.pinball_loss, m.coverage)).collect())
}

/// A regression guard, not the bar: on the Alibaba 2018 machines greenfill's
/// bound must stay at least 5 % better than both baselines with coverage near 0.95.
/// (The issue asks for 15 % below the better baseline; greenfill is at about 8.6 %
/// — see BENCHMARKS.md.)
#[test]
fn alibaba_machines_greenfill_beats_both_baselines() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/usage/alibaba2018-machines/machine_usage.csv");
    let Some(r) = run(&path) else { return };
    let get = |n: &str| r.iter().find(|x| x.0 == n).unwrap();
    let (g, sn, k) = (get("greenfill"), get("seasonal_naive"), get("koordinator_p95"));
    assert!(g.1 < 0.95 * sn.1.min(k.1), "greenfill {} vs seasonal naive {} / koordinator {}", g.1, sn.1, k.1);
    assert!((0.93..=0.99).contains(&g.2), "coverage {}", g.2);
}

#[test]
fn google_2019_bundled() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/usage/google2019_instance_usage_grouped_300_seconds_month.csv");
    let r = run(&path).unwrap();
    let g = r.iter().find(|x| x.0 == "greenfill").unwrap();
    let sn = r.iter().find(|x| x.0 == "seasonal_naive").unwrap();
    assert!(g.1 < sn.1, "{g:?} vs {sn:?}");
}
