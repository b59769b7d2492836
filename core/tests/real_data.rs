//! Readers on the real files: the bundled open ones (always present) and the
//! research-only ones in `../shared/data/` (skipped, with a printed reason, when absent).

use greenfill_core::data::{CarbonOptions, JobFormat, UsageFormat, UsageOptions, load_carbon, load_jobs, load_usage};
use std::path::{Path, PathBuf};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn shared(p: &str) -> Option<PathBuf> {
    let path = repo("../shared/data").join(p);
    if path.exists() {
        Some(path)
    } else {
        let why = format!("{} is absent (research-only data lives in ../shared/data)", path.display());
        greenfill_core::testing::cannot_run("real_data", &why);
        None
    }
}

#[test]
fn ciso_mean_over_non_empty_rows() {
    let t = load_carbon(&repo("data/carbon/CISO_2022_hourly_ci.csv"), &CarbonOptions::default()).unwrap();
    assert_eq!(t.rows, 8760);
    assert_eq!(t.stats.count, 8757);
    assert_eq!(t.series.filled, 3);
    assert_eq!(t.series.step, 3600);
    assert!((t.stats.mean - 256.19).abs() < 0.01, "{}", t.stats.mean);
}

#[test]
fn every_bundled_carbon_file_is_a_full_year() {
    for area in ["AZPS", "BPAT", "CISO", "ERCO", "MISO", "NYIS", "PJM", "SOCO"] {
        let t =
            load_carbon(&repo(&format!("data/carbon/{area}_2022_hourly_ci.csv")), &CarbonOptions::default()).unwrap();
        assert_eq!(t.series.values.len(), 8760, "{area}");
        assert!(t.series.values.iter().all(|v| v.is_finite() && *v > 0.0), "{area}");
    }
}

#[test]
fn bundled_usage_series() {
    let cases = [
        ("data/usage/google2019_instance_usage_grouped_300_seconds_month.csv", 8064, "fraction"),
        ("data/usage/azure_v2_vm_cpu_readings_month_aggregated_cpu_mem.csv", 8640, "cpu_usage"),
        ("data/usage/alibaba2018_machine_usage_days_1_to_8_grouped_300_seconds.csv", 2243, "percent"),
        ("data/usage/derived_rnd_2013-7_500vm_sum_5min.csv", 8640, "fraction"),
    ];
    for (path, points, unit) in cases {
        let t = load_usage(&repo(path), &UsageOptions::default()).unwrap();
        assert_eq!(t.series.len(), 1, "{path}");
        assert_eq!(t.series[0].step, 300, "{path}");
        assert_eq!(t.series[0].values.len(), points, "{path}");
        assert_eq!(t.unit, unit, "{path}");
    }
}

#[test]
fn bundled_gaia_jobs() {
    let t = load_jobs(&repo("data/jobs/pai-100k.csv"), JobFormat::Auto).unwrap();
    assert_eq!(t.format, JobFormat::Gaia);
    assert_eq!(t.jobs.len(), 99_998);
    assert!(t.jobs.iter().all(|j| j.duration > 0 && j.cpus > 0.0));
}

#[test]
fn alibaba2018_machines_resampled_to_five_minutes() {
    let Some(path) = shared("usage/alibaba2018-machines/machine_usage.csv") else { return };
    let t = load_usage(&path, &UsageOptions::default()).unwrap();
    assert_eq!(t.format, UsageFormat::Alibaba2018Machines);
    let ids: Vec<&str> = t.series.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["m_1932", "m_1933", "m_1934", "m_1935", "m_1936", "m_1937", "m_1938", "m_1939"]);
    // m_1932 is sampled for 3.5 days only; the others for about 8.
    for s in &t.series {
        assert_eq!(s.step, 300);
        let days = if s.id == "m_1932" { 3 } else { 7 };
        assert!(s.values.len() > days * 288, "{} has {} points", s.id, s.values.len());
        assert!(s.values.iter().all(|v| (0.0..=100.0).contains(v)));
    }
}

#[test]
fn alibaba2017_tasks() {
    let Some(path) = shared("jobs/alibaba2017_batch_task.csv") else { return };
    let t = load_jobs(&path, JobFormat::Auto).unwrap();
    assert_eq!(t.format, JobFormat::Alibaba2017);
    assert_eq!(t.rows, 80_553);
    assert_eq!(t.jobs.len() + t.skipped.iter().map(|s| s.1).sum::<usize>(), t.rows);
    assert!(t.jobs.windows(2).all(|w| w[0].arrival <= w[1].arrival));
}

#[test]
fn bitbrains_raw_vms() {
    for i in 1..=5 {
        let Some(path) = shared(&format!("usage/bitbrains-rnd/rnd_2013-7_vm{i}.csv")) else { return };
        let t = load_usage(&path, &UsageOptions::default()).unwrap();
        assert_eq!(t.format, UsageFormat::BitbrainsVm);
        assert_eq!(t.series[0].id, format!("rnd_2013-7_vm{i}"));
        assert!(t.series[0].values.len() > 8000);
    }
}

#[test]
fn gaps_can_be_kept_as_nan_for_scoring() {
    let Some(path) = shared("usage/bitbrains-rnd/rnd_2013-7_vm1.csv") else { return };
    let filled = load_usage(&path, &UsageOptions::default()).unwrap();
    let kept = load_usage(&path, &UsageOptions { keep_gaps: true, ..UsageOptions::default() }).unwrap();
    let nan = kept.series[0].values.iter().filter(|v| v.is_nan()).count();
    assert_eq!(nan, filled.series[0].filled);
    assert!(nan > 0);
}
